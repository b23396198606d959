"""``test-model.py`` of folders 1-5: evaluate a checkpoint (or a file of another model's predictions) on the test part
of a split, write results beside it; optionally Grad-CAM sheets and the localisation score on the NIH boxes."""
from __future__ import annotations

from pathlib import Path

from common.commands._cli import ArgumentParser, positive_int
from common.commands._flags import add_evaluation_arguments, add_localization_arguments, make_paths_absolute
from common.errors import UserError


def get_args_parser(prog: str = "test-model.py", description: str | None = None) -> ArgumentParser:
    """Flags of the test scripts; split and label file default to the ones the checkpoint was trained with."""
    parser = ArgumentParser(prog=prog, description=description)
    parser.add_argument("--checkpoint", default=None, help="checkpoint to test (default: modelK.pth of this folder)")
    parser.add_argument("--predictions", default=None, metavar="CSV",
                        help="score this CSV of per-image probabilities (Image Index,prob_<Class>,...) instead of a "
                             "checkpoint, on the test part of --split (here official unless typed, with --label-file "
                             "v2020 and --val-fraction 0.1 unless typed); results go beside it")
    add_evaluation_arguments(parser)
    parser.add_argument("--cam", type=positive_int, default=None, metavar="K",
                        help="write Grad-CAM overlays of the K most probable test images of every class and one "
                             "summary sheet (<stem>-test-cam/, <stem>-test-cam-sheet.png)")
    add_localization_arguments(parser)
    parser.add_argument("--no-ood", action="store_true",
                        help="do not fit the out-of-distribution statistics (<stem>-ood.json: Mahalanobis distance of "
                             "the pre-logits features, fitted on training images, threshold on validation images)")
    return parser


def main(argv=None, *, model: str, index: int, folder: Path | None = None) -> int:
    """``python test-model.py [flags]`` of folder ``index``: tests ``model<index>.pth`` (a ``model`` network).

    The checkpoint is ``--checkpoint`` or else ``model<index>.pth`` in ``folder`` (the script's own folder). With
    ``--predictions FILE.csv`` the file is scored instead, with the same report, and no checkpoint is read.
    """
    prefix = f"model{index}"
    from common.models import model_info
    name = model_info(model).display_name
    args = get_args_parser(description=f"Test {prefix}.pth ({name}) on the test split").parse_args(argv)
    # Imported after parsing: --help (and a bad flag) answer without loading torch.
    from common.commands._setup import scoring_settings
    from common.data.split_data import split_data_for
    from common.evaluation.scoring import evaluate_checkpoint, print_result, write_results
    from common.explain.localization import read_boxes
    from common.explain.report import (
        json_ready,
        localization_report,
        localization_text,
        write_cam_report,
        write_localization,
    )
    from common.runs.checkpoint import load_checkpoint
    make_paths_absolute(args)
    if args.predictions:
        return _score_predictions(args)
    if args.checkpoint is None and folder is None:
        raise UserError("no checkpoint: pass --checkpoint")
    checkpoint = Path(args.checkpoint) if args.checkpoint else Path(folder) / f"{prefix}.pth"
    if checkpoint.is_dir():
        raise UserError(f"{checkpoint} is a model folder; test-model.py scores the checkpoint file it was exported "
                        "from (its config.json names it)")
    settings = scoring_settings(args)
    boxes = read_boxes(args.bbox_file) if (args.localization or args.cam or args.bbox_file) else None
    print("=> loading checkpoint")
    data = None
    if args.cam or args.localization:
        # The maps are drawn on the images of the split the checkpoint is scored on: keep that split's image source.
        config = load_checkpoint(checkpoint)["config"]
        data = split_data_for(config, settings.data, parts=("test", "val") if args.tencrop else ("test",))
    result = evaluate_checkpoint(checkpoint, model, data, settings)
    print("=> loaded checkpoint")
    print_result(result)
    extra = []
    if args.cam:
        cams = write_cam_report(result, data, args.cam, boxes[0], batch_size=args.batch_size)
        print(f"Grad-CAM: {len(cams['overlays'])} overlays in {cams['folder']}, sheet {cams['sheet']}")
        extra.append(cams["sheet"])
    if args.localization:
        loc = localization_report(result, data, boxes[0], boxes[1], batch_size=args.batch_size)
        print(localization_text(result, loc))
        result.report["localization"] = json_ready(loc)
        extra.append(write_localization(result, loc))
    from common.evaluation.card import write_model_card
    from common.evaluation.ood import OodSettings, ensure_ood_statistics, ood_path, ood_summary
    checkpoint_dict = load_checkpoint(checkpoint)
    if args.no_ood:
        ood = ood_summary(None, "not fitted (--no-ood)")
    else:
        stats, note = ensure_ood_statistics(checkpoint, result.model, checkpoint_dict, settings.data,
                                            settings.device, settings.batch_size, OodSettings())
        print(f"Out-of-distribution statistics: {note}")
        ood = ood_summary(stats, note)
        if stats is not None:
            extra.append(ood_path(checkpoint))
    result.report["ood"] = ood
    paths = write_results(result)
    extra.append(write_model_card(result, checkpoint_dict, ood))
    print("results written: " + ", ".join(str(p) for p in [*paths.values(), *extra]))
    return 0


def _score_predictions(args) -> int:
    """``--predictions FILE.csv``: the checkpoint's report for another model's probabilities."""
    from common.commands._setup import scoring_settings
    from common.evaluation.scoring import predictions_split, print_result, score_predictions_file, write_results
    if args.checkpoint or args.cam or args.localization or args.tencrop:
        raise UserError("--predictions scores a file of probabilities; --checkpoint, --cam, --localization and "
                        "--tencrop need a checkpoint")
    path = Path(args.predictions)
    if not path.is_file():
        raise UserError(f"predictions file {path} does not exist")
    settings = scoring_settings(args)
    result = score_predictions_file(path, predictions_split(settings.data), settings)
    print_result(result)
    paths = write_results(result)
    print("results written: " + ", ".join(str(p) for p in paths.values()))
    return 0
