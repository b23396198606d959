"""The command-line flags the commands share, and how parsed flags are normalised and recorded.

Training, evaluation, distillation and the comparison build their parsers from these groups, so that one flag has
one definition. Defaults are documented against the original repository's settings (docs/original.md §5).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from common.commands._cli import (
    ArgumentParser,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    unit_fraction,
)
from common.data.labels import LABEL_VERSIONS, NAMED_SPLITS
from common.errors import UserError


def add_data_arguments(parser: ArgumentParser) -> None:
    """Flags that say which images and which split: shared by training, testing and distillation."""
    group = parser.add_argument_group("data")
    group.add_argument("--data-dir", default=None,
                       help="folder holding the CXR8 PNGs in any layout: images/, images_0XX/(images/), resized "
                            "copies (default: $CXR8_DATA_DIR; original: ../ChestX-ray14/images-224)")
    group.add_argument("--split", default="official",
                       help="official (NIH lists, validation carved by patient), arnoweng (arnoweng/CheXNet lists), "
                            "or a directory of list files (default: official; original: arnoweng train list, "
                            "no validation, unlabelled official test list)")
    group.add_argument("--label-file", default=None,
                       help="labels for names-only lists: v2020, 2017 or a Data_Entry CSV path (default: v2020 for "
                            "official; the inline labels for labelled lists)")
    group.add_argument("--val-fraction", type=unit_fraction, default=0.1,
                       help="share of train_val patients held out for validation in the official split (default 0.1)")
    group.add_argument("--workers", type=non_negative_int, default=None,
                       help="DataLoader worker processes (default: chosen with --threads to share the cores, printed "
                            "at the start; original: 4)")
    group.add_argument("--threads", type=positive_int, default=None,
                       help="torch intra-op threads of the training process (default: the cores the workers leave)")
    group.add_argument("--image-cache", default=None,
                       help="folder of the image cache built with python -m common.image_cache (one read per batch, "
                            "augmentation on the device); default: decode the PNGs")
    group.add_argument("--cache-size", type=positive_int, default=None,
                       help="which size of a --image-cache folder holding several (256 and 512): default the size "
                            "the model is evaluated at (256 for 224-px models, 512 for 448-px ones), or the "
                            "folder's only size")
    group.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N (default auto)")


def add_training_arguments(parser: ArgumentParser) -> None:
    """The training flags (schedule, augmentation, initial weights, output) of every ``train-model.py``."""
    group = parser.add_argument_group("training")
    group.add_argument("--epochs", type=positive_int, default=10, help="epochs (default 10, as the original)")
    group.add_argument("--batch-size", type=positive_int, default=32, help="batch size (default 32; original 16)")
    group.add_argument("--lr", type=positive_float, default=3e-4,
                       help="peak AdamW learning rate (default 3e-4 with warm-up and cosine decay; original 1e-3, "
                            "constant). A run whose training loss rises above 100x its first step's loss stops as "
                            "diverged (docs/guide/faults.md)")
    group.add_argument("--weight-decay", type=non_negative_float, default=0.01,
                       help="AdamW weight decay (default 0.01, as the original)")
    group.add_argument("--warmup-epochs", type=non_negative_float, default=1.0, help="linear warm-up (default 1)")
    group.add_argument("--clip-grad", type=non_negative_float, default=1.0,
                       help="gradient-norm clipping, 0 to disable (default 1.0; original none)")
    group.add_argument("--pos-weight", choices=("none", "balanced"), default="none",
                       help="BCE per-class pos_weight: none, or balanced = negatives/positives of the training part "
                            "(default none)")
    group.add_argument("--img-size", type=positive_int, default=224, help="input size (default 224, as the original)")
    group.add_argument("--crop-scale", type=unit_fraction, default=0.08,
                       help="smallest area share of RandomResizedCrop (default 0.08, torchvision's and the original's)")
    group.add_argument("--pretrained", default=None,
                       help="initial weights: a local checkpoint file in a published format, or 'imagenet' to "
                            "download the published ImageNet file (needs the network); default: random weights, "
                            "much weaker on the real data set")
    group.add_argument("--trust-checkpoint", action="store_true",
                       help="let --pretrained / --student-init unpickle a file that asks for classes other than "
                            "tensors and the published formats' argparse.Namespace and numpy scalars: this RUNS CODE "
                            "FROM THE FILE, so only for files you trust (default: such a file is refused)")
    group.add_argument("--seed", type=non_negative_int, default=0, help="random seed (default 0)")
    group.add_argument("--no-amp", action="store_true", help="train in fp32 on CUDA too (default: bf16/fp16 AMP)")
    group.add_argument("--compile", action="store_true",
                       help="compile the training forward pass with torch.compile (slower start, faster steps)")
    group.add_argument("--eval-batch-size", type=positive_int, default=None, help="default: 2 x --batch-size")
    group = parser.add_argument_group("output")
    group.add_argument("--output-dir", default=None, help="where checkpoints and logs go (default: the script's folder)")
    group.add_argument("--resume", nargs="?", const="auto", default=None,
                       help="continue an interrupted run from its *-last.pth (or from the given file); the run's "
                            "flags come from that file: type none of them, or only with the values the run had "
                            "(another value is refused); --threads, --workers and --compile may differ")
    group.add_argument("--overwrite", action="store_true", help="start again even if checkpoints already exist")


# What the data flags of a command that scores checkpoints mean when they are not typed (the checkpoint's own).
CHECKPOINT_DATA_HELP = {
    "data_dir": "folder holding the CXR8 PNGs (default: the folder the checkpoint was trained on, else "
                "$CXR8_DATA_DIR)",
    "split": "official, arnoweng or a directory of list files (default: the split the checkpoint was trained on)",
    "label_file": "v2020, 2017 or a Data_Entry CSV path, for names-only lists (default: the checkpoint's)",
    "val_fraction": "share of train_val patients held out for validation in the official split; the validation "
                    "thresholds are chosen on that part (default: the checkpoint's)",
    "threads": "torch intra-op threads (default: the cores the workers leave)",
}


def add_evaluation_arguments(parser: ArgumentParser) -> None:
    """Data and evaluation flags of the test scripts; split and labels default to those of the checkpoint."""
    add_data_arguments(parser)
    parser.set_defaults(split=None, val_fraction=None)
    for action in parser._actions:
        action.help = CHECKPOINT_DATA_HELP.get(action.dest, action.help)
    parser.add_argument("--batch-size", type=positive_int, default=32, help="images per batch (default 32)")
    parser.add_argument("--tencrop", action="store_true",
                        help="average the probabilities of TenCrop(224) after resize 256, as the original did "
                             "(10x the compute; default: one centre crop)")
    parser.add_argument("--no-amp", action="store_true", help="evaluate in fp32 on CUDA too")
    parser.add_argument("--n-boot", type=positive_int, default=1000,
                        help="patient-level bootstrap resamples for the 95%% intervals (default 1000)")
    parser.add_argument("--subgroup-boot", type=positive_int, default=200,
                        help="patient-level bootstrap resamples for the intervals of the subgroup AUROCs (by sex, "
                             "age band, view; default 200)")
    parser.add_argument("--demographics", default=None, metavar="DATA_ENTRY_CSV",
                        help="Data_Entry file giving sex, age and view for the subgroups (default: the split's label "
                             "file, or the Data_Entry*.csv beside a folder split)")


def add_localization_arguments(parser: ArgumentParser) -> None:
    """``--localization`` and ``--bbox-file``: scoring Grad-CAM heatmaps against NIH-format boxes."""
    group = parser.add_argument_group("localisation (Wang et al. 2017 protocol)")
    group.add_argument("--localization", action="store_true",
                       help="score Grad-CAM heatmaps against the boxes of the test images: Acc. and AFP per class "
                            "at T(IoBB) 0.1-0.9 and T(IoU) 0.1-0.5, beside Wang et al.'s published row")
    group.add_argument("--bbox-file", default=None, metavar="CSV",
                       help="box list in the BBox_List_2017.csv layout (default: the packaged NIH list, 984 boxes; "
                            "the synthetic set writes BBox_List_synthetic.csv); also the boxes drawn by --cam")


# Flags a resumed run takes from its -last.pth when they are not typed again (the run's own settings).
RESUMED_FLAGS = ("data_dir", "split", "label_file", "val_fraction", "seed", "epochs", "batch_size", "lr",
                 "weight_decay", "warmup_epochs", "clip_grad", "pos_weight", "img_size", "crop_scale", "pretrained",
                 "no_amp", "eval_batch_size", "alpha", "temperature", "teacher_mode", "ensemble_weights",
                 "student_init", "cache_dir", "image_cache", "cache_size")


def parse_args(parser: argparse.ArgumentParser, argv) -> argparse.Namespace:
    """``parser.parse_args(argv)``, plus ``explicit_flags``: the destinations typed on the command line.

    A resumed run takes every flag the user did not type from its checkpoint, and refuses a typed one that differs
    (:func:`restore_resumed_flags`); for that it must know which were typed.
    """
    args = parser.parse_args(argv)
    defaults = {action.dest: action.default for action in parser._actions}
    try:
        for action in parser._actions:
            action.default = argparse.SUPPRESS
        typed = parser.parse_args(argv)
    finally:
        for action in parser._actions:
            action.default = defaults[action.dest]
    args.explicit_flags = sorted(vars(typed))
    return args


def restore_resumed_flags(args, recorded: dict, path) -> None:
    """Take the run's flags from its recorded config; a flag typed again with another value is refused."""
    differing = []
    for key in RESUMED_FLAGS:
        if key not in recorded or not hasattr(args, key):
            continue
        if key in getattr(args, "explicit_flags", ()):
            if getattr(args, key) != recorded[key]:
                differing.append(f"--{key.replace('_', '-')} {getattr(args, key)} (now) vs {recorded[key]} (recorded)")
        else:
            setattr(args, key, recorded[key])
    if differing:
        raise UserError(f"--resume: {path} is another run: {'; '.join(differing)}; resume with the run's own flags "
                        "(leave them out to take them from the checkpoint) or start a new run with --overwrite")


def make_paths_absolute(args) -> None:
    """Store ``--data-dir`` and a directory ``--split`` as absolute paths, so that checkpoints which record them
    work from any folder and compare equal however the path was typed."""
    if getattr(args, "data_dir", None):
        args.data_dir = str(Path(args.data_dir).expanduser().resolve())
    if getattr(args, "image_cache", None):
        args.image_cache = str(Path(args.image_cache).expanduser().resolve())
    split = getattr(args, "split", None)
    if split and split not in NAMED_SPLITS and Path(split).is_dir():
        args.split = str(Path(split).resolve())
    if getattr(args, "label_file", None) and args.label_file not in LABEL_VERSIONS:
        args.label_file = str(Path(args.label_file).expanduser().resolve())


def recorded_config(args) -> dict:
    """The parsed flags as plain JSON-able values, as checkpoints record them (loadable with weights_only=True)."""
    return {key: _plain(value) for key, value in vars(args).items() if key != "explicit_flags"}


def _plain(value):
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value)
