"""``train-model.py``: the argument parser and the training run shared by folders 1-5 and the distillation folder."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import torch

from .checkpoint import git_commit, load_checkpoint, rng_state, save_atomic, seed_everything, set_rng_state
from .constants import CLASS_NAMES, NUM_CLASSES
from .data import build_transform
from .engine import (SupervisedCriterion, amp_dtype_for, build_optimizer, build_scheduler, predict_logits,
                     resolve_device, sigmoid, train_one_epoch)
from .errors import (ArgumentParser, UserError, non_negative_float, non_negative_int, positive_float,
                     positive_int, unit_fraction)
from .losses import LabelLoss
from .metrics import choose_thresholds, mean_auroc, per_class_auroc
from .models import create_model, load_pretrained, model_info
from .pipeline import make_paths_absolute, SplitData, default_workers, eval_transform_for
from .plots import plot_training_curves

LOG_COLUMNS = ("epoch", "train_loss", "val_mean_auroc", "best_val_mean_auroc", "lr", "img_per_s", "epoch_seconds")


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
    group.add_argument("--workers", type=non_negative_int, default=default_workers(),
                       help="DataLoader worker processes (default: CPU cores, at most 8; original: 4)")
    group.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N")


def get_args_parser(prog: str = "train-model.py", description: str | None = None) -> ArgumentParser:
    """The training flags; defaults are documented against the original repository's settings (seed.md §5)."""
    parser = ArgumentParser(prog=prog, description=description)
    add_data_arguments(parser)
    group = parser.add_argument_group("training")
    group.add_argument("--epochs", type=positive_int, default=10, help="epochs (default 10, as the original)")
    group.add_argument("--batch-size", type=positive_int, default=32, help="batch size (default 32; original 16)")
    group.add_argument("--lr", type=positive_float, default=3e-4,
                       help="peak AdamW learning rate (default 3e-4 with warm-up and cosine decay; original 1e-3, "
                            "constant)")
    group.add_argument("--weight-decay", type=non_negative_float, default=0.01,
                       help="AdamW weight decay (default 0.01, as the original)")
    group.add_argument("--warmup-epochs", type=non_negative_float, default=1.0, help="linear warm-up (default 1)")
    group.add_argument("--clip-grad", type=non_negative_float, default=1.0,
                       help="gradient-norm clipping, 0 to disable (default 1.0; original none)")
    group.add_argument("--pos-weight", choices=("none", "balanced"), default="none",
                       help="BCE per-class pos_weight: none, or balanced = negatives/positives of the training part")
    group.add_argument("--img-size", type=positive_int, default=224, help="input size (default 224, as the original)")
    group.add_argument("--crop-scale", type=unit_fraction, default=0.08,
                       help="smallest area share of RandomResizedCrop (default 0.08, torchvision's and the original's)")
    group.add_argument("--pretrained", default=None,
                       help="initial weights: a local checkpoint file in a published format, or 'imagenet' to "
                            "download the published ImageNet file (needs the network); default: random init")
    group.add_argument("--seed", type=non_negative_int, default=0, help="random seed (default 0)")
    group.add_argument("--no-amp", action="store_true", help="train in fp32 on CUDA too (default: bf16/fp16 AMP)")
    group.add_argument("--eval-batch-size", type=positive_int, default=None, help="default: 2 x --batch-size")
    group = parser.add_argument_group("output")
    group.add_argument("--output-dir", default=None, help="where checkpoints and logs go (default: the script's folder)")
    group.add_argument("--resume", nargs="?", const="auto", default=None,
                       help="continue an interrupted run from its *-last.pth (or from the given file)")
    group.add_argument("--overwrite", action="store_true", help="start again even if checkpoints already exist")
    return parser


def _paths(output_dir: Path, prefix: str) -> dict:
    return {"best": output_dir / f"{prefix}.pth", "last": output_dir / f"{prefix}-last.pth",
            "log": output_dir / f"{prefix}-log.csv", "curves": output_dir / f"{prefix}-curves.png"}


def _plain(value):
    """JSON-able copy of an argparse value, so checkpoints stay loadable with weights_only=True."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value)


def pos_weight_for(mode: str, labels: np.ndarray):
    """``balanced``: negatives / positives per class of the training labels (classes without positives get 1)."""
    if mode == "none":
        return None
    positives = labels.sum(0).astype(np.float64)
    negatives = len(labels) - positives
    weights = np.where(positives > 0, negatives / np.maximum(positives, 1), 1.0)
    return torch.tensor(weights, dtype=torch.float32)


def supervised_criterion(args, data: SplitData, device, amp_dtype, model_cfg):
    """The base-training criterion factory (BCE on the hard labels)."""
    weight = pos_weight_for(args.pos_weight, data.split.parts["train"].labels)
    return SupervisedCriterion(LabelLoss(pos_weight=None if weight is None else weight.to(device)))


def _truncate_log(log_path: Path, last_epoch: int) -> None:
    """On resume, drop log rows of epochs after the checkpoint (a kill can land between the two writes)."""
    if not log_path.is_file():
        return
    with open(log_path, newline="") as stream:
        rows = [row for row in csv.DictReader(stream) if int(row["epoch"]) <= last_epoch]
    _write_log(log_path, rows)


def _write_log(log_path: Path, rows: list[dict]) -> None:
    with open(log_path, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=LOG_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def _append_log(log_path: Path, row: dict) -> None:
    exists = log_path.is_file()
    with open(log_path, "a", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=LOG_COLUMNS)
        if not exists:
            writer.writeheader()
        writer.writerow(row)


def training_data(args) -> SplitData:
    """The split and image index a training run reads (train and val parts)."""
    return SplitData(args.data_dir, args.split, args.label_file, args.val_fraction, args.seed,
                     parts=("train", "val"), workers=args.workers)


def run_training(args, model_name: str, prefix: str, output_dir: Path, make_criterion=supervised_criterion,
                 init_source: str | None = None, extra_metadata: dict | None = None,
                 data: SplitData | None = None) -> dict:
    """Train ``model_name`` with the engine, choose the checkpoint on validation mean AUROC, support --resume.

    Writes ``<prefix>.pth`` (best validation mean AUROC), ``<prefix>-last.pth`` (everything needed to resume),
    ``<prefix>-log.csv`` and ``<prefix>-curves.png`` into ``output_dir``. Returns a summary dict. ``data`` reuses
    an already indexed split (several runs on the same images); by default it is built from ``args``.
    """
    paths = _paths(output_dir, prefix)
    resume_path = None
    if args.resume is not None:
        resume_path = paths["last"] if args.resume == "auto" else Path(args.resume)
        if not resume_path.is_file():
            raise UserError(f"--resume: {resume_path} does not exist (nothing to resume)")
    elif not args.overwrite and (paths["best"].exists() or paths["last"].exists()):
        existing = paths["best"] if paths["best"].exists() else paths["last"]
        raise UserError(f"{existing} already exists: pass --resume to continue that run or --overwrite to start "
                        "again (the existing files are kept until a new epoch replaces them)")

    resumed = load_checkpoint(resume_path) if resume_path else None
    if resumed is not None:
        if resumed.get("model_name") != model_name or "optimizer" not in resumed:
            raise UserError(f"--resume: {resume_path} is not a {model_name} *-last.pth training state")
        for key in ("split", "label_file", "img_size"):
            if resumed["config"].get(key) != getattr(args, key):
                raise UserError(f"--resume: {resume_path} was trained with --{key.replace('_', '-')} "
                                f"{resumed['config'].get(key)}, not {getattr(args, key)}")
        if resumed["epoch"] >= args.epochs:
            print(f"{resume_path} already finished {resumed['epoch']} of {args.epochs} epochs; nothing to do")
            return {"best": paths["best"], "best_val_mean_auroc": resumed["best_val_mean_auroc"]}

    seed_everything(args.seed)
    device = resolve_device(args.device)
    amp_dtype = amp_dtype_for(device, not args.no_amp)
    info = model_info(model_name)
    data = data or training_data(args)
    print(data.split.describe())

    model = create_model(model_name, num_classes=NUM_CLASSES, img_size=args.img_size)
    if init_source and resumed is None:
        load_pretrained(model, model_name, init_source)
    channels_last = device.type == "cuda"
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    model_cfg = {"mean": info.mean, "std": info.std}
    criterion = make_criterion(args, data, device, amp_dtype, model_cfg)

    train_transform = build_transform(args.img_size, info.mean, info.std, train=True,
                                      crop_scale=(args.crop_scale, 1.0))
    val_loader = data.loader("val", eval_transform_for(model_cfg, args.img_size),
                             args.eval_batch_size or 2 * args.batch_size, shuffle=False)
    steps_per_epoch = max(1, len(data.split.parts["train"]) // args.batch_size)
    optimizer = build_optimizer(model, args.lr, args.weight_decay)
    scheduler = build_scheduler(optimizer, args.epochs, steps_per_epoch, args.warmup_epochs)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    start_epoch, best_auroc, best_epoch = 1, -1.0, 0
    config = {k: _plain(v) for k, v in vars(args).items()}
    if resumed is not None:
        model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        scheduler.load_state_dict(resumed["scheduler"])
        scaler.load_state_dict(resumed["scaler"])
        set_rng_state(resumed["rng"])
        start_epoch = resumed["epoch"] + 1
        best_auroc, best_epoch = resumed["best_val_mean_auroc"], resumed["best_epoch"]
        _truncate_log(paths["log"], resumed["epoch"])
        print(f"resuming {resume_path} at epoch {start_epoch} (best so far {best_auroc:.4f} at epoch {best_epoch})")
    elif paths["log"].exists():
        paths["log"].unlink()

    metadata = {
        "model_name": model_name, "num_classes": NUM_CLASSES, "class_names": list(CLASS_NAMES),
        "img_size": args.img_size, "mean": list(info.mean), "std": list(info.std),
        "split": data.split.name, "split_description": data.split.describe(), "label_file": data.split.labels,
        "git_commit": git_commit(), "config": config, **(extra_metadata or {}),
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    print(f"training {model_name} on {device} ({'AMP ' + str(amp_dtype).split('.')[-1] if amp_dtype else 'fp32'}), "
          f"{sum(p.numel() for p in model.parameters()):,} parameters, writing {paths['best']}")
    for epoch in range(start_epoch, args.epochs + 1):
        loader = data.loader("train", train_transform, args.batch_size, shuffle=True,
                             seed=args.seed * 1000 + epoch, drop_last=len(data.split.parts["train"]) > args.batch_size)
        stats = train_one_epoch(model, criterion, loader, optimizer, scheduler, scaler, device, amp_dtype,
                                epoch, args.epochs, clip_grad=args.clip_grad or None, channels_last=channels_last)
        logits, targets = predict_logits(model, val_loader, device, amp_dtype, desc=f"epoch {epoch} val",
                                         channels_last=channels_last)
        probs = sigmoid(logits)
        aurocs = per_class_auroc(targets, probs, CLASS_NAMES)
        val_auroc = mean_auroc(aurocs)
        improved = np.isfinite(val_auroc) and val_auroc > best_auroc
        print(f"Epoch {epoch}/{args.epochs}, Total Loss: {stats['loss']:.4f}, Time: {stats['seconds']:.2f} sec, "
              f"{stats['img_per_s']:.1f} img/s, Val mean AUROC: {val_auroc:.4f}")
        state = {**metadata, "epoch": epoch, "val_mean_auroc": float(val_auroc),
                 "val_auroc": [None if a is None else float(a) for a in aurocs]}
        if improved:
            best_auroc, best_epoch = float(val_auroc), epoch
            thresholds = choose_thresholds(targets, probs)
            save_atomic({**state, "kind": "best", "model": model.state_dict(),
                         "val_thresholds": [float(t) for t in thresholds]}, paths["best"])
            print(f"Model saved as {paths['best'].name} (best validation mean AUROC {best_auroc:.4f})")
        _append_log(paths["log"], {
            "epoch": epoch, "train_loss": f"{stats['loss']:.6f}", "val_mean_auroc": f"{val_auroc:.6f}",
            "best_val_mean_auroc": f"{best_auroc:.6f}", "lr": f"{scheduler.get_last_lr()[0]:.3e}",
            "img_per_s": f"{stats['img_per_s']:.2f}", "epoch_seconds": f"{stats['seconds']:.2f}"})
        save_atomic({**state, "kind": "last", "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "rng": rng_state(),
                     "best_val_mean_auroc": best_auroc, "best_epoch": best_epoch}, paths["last"])
        plot_training_curves(paths["log"], paths["curves"], title=prefix)
    if best_epoch == 0:
        raise UserError("validation mean AUROC was undefined in every epoch (each class has a single label value "
                        "in the validation part); no checkpoint was chosen")
    print(f"best validation mean AUROC {best_auroc:.4f} at epoch {best_epoch}: {paths['best']}")
    summary = {"best": str(paths["best"]), "best_val_mean_auroc": best_auroc, "best_epoch": best_epoch}
    print(json.dumps(summary))
    return summary


def main(argv=None, model_name: str = "chexnet", prefix: str = "model3", default_output: Path | None = None):
    """Entry point of folders 1-5: ``python train-model.py [flags]``."""
    parser = get_args_parser(description=f"Train {model_name} on ChestX-ray14; writes {prefix}.pth")
    args = parser.parse_args(argv)
    make_paths_absolute(args)
    output_dir = Path(args.output_dir) if args.output_dir else default_output
    run_training(args, model_name, prefix, output_dir, init_source=args.pretrained)
    return 0
