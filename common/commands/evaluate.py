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
    parser.add_argument("--overwrite", action="store_true",
                        help="replace results beside the checkpoint that were made with other options (default: "
                             "refuse; results made with the same options are replaced)")
    return parser


#: The flags that change what test-model.py measures. Results beside a checkpoint made with other values of any of
#: them are not replaced without --overwrite (docs/guide/faults.md §4); rerunning with the same values replaces them.
RESULT_OPTIONS = ("predictions", "split", "label_file", "val_fraction", "tencrop", "no_amp", "n_boot",
                  "subgroup_boot", "demographics", "cam", "localization", "bbox_file", "no_ood")

# Result files a run with other options may have left that a new run does not write (removed by --overwrite).
_EXTRA_OUTPUTS = ("-test-cam", "-test-cam-sheet.png", "-test-localization.txt", "-test-reliability.png")


def result_options(args) -> dict:
    """The values of :data:`RESULT_OPTIONS` this run uses, as recorded in ``<stem>-test.json``."""
    return {key: getattr(args, key, None) for key in RESULT_OPTIONS}


def check_results_replaceable(stem: Path, options: dict, overwrite: bool) -> None:
    """Refuse (UserError) to replace ``<stem>-test.json`` and its companions when they were made with other
    options, unless ``overwrite``; results of the same options (of this or an earlier version of the checkpoint)
    are replaced."""
    import json
    report_path = Path(f"{stem}-test.json")
    if overwrite or not report_path.exists():
        return
    advice = "pass --overwrite to replace them, or test a copy of the checkpoint under another name"
    try:
        recorded = json.loads(report_path.read_text(encoding="utf-8")).get("options")
    except (OSError, ValueError, AttributeError) as err:
        raise UserError(f"{report_path} exists but cannot be read ({err}); {advice}") from None
    if recorded is None:
        raise UserError(f"{report_path} holds results of an earlier version that did not record its options; "
                        f"{advice}")
    # An option a results file does not record came after it was written: it had that option's default then.
    differing = [f"--{key.replace('_', '-')} {_shown(recorded[key])} then, {_shown(options[key])} now"
                 for key in RESULT_OPTIONS if key in recorded and recorded[key] != options[key]]
    if differing:
        raise UserError(f"{report_path} holds results made with other options ({'; '.join(differing)}); {advice}")


def _shown(value) -> str:
    if value is None or isinstance(value, bool):
        return {True: "on", False: "off", None: "unset"}[value]
    return str(value)


def remove_other_outputs(stem: Path, written) -> None:
    """After ``--overwrite``: remove the result files of the replaced run that this run did not write again."""
    import shutil
    written = {Path(p) for p in written}
    for suffix in _EXTRA_OUTPUTS:
        path = Path(f"{stem}{suffix}")
        if path in written or not path.exists():
            continue
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
        print(f"removed {path} (a result of the replaced run)")


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
    from common.explain.localization import box_list_sha256, read_boxes
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
    options = result_options(args)
    check_results_replaceable(checkpoint.with_suffix(""), options, args.overwrite)
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
        loc = localization_report(result, data, boxes[0], boxes[1], batch_size=args.batch_size,
                                  bbox_sha256=box_list_sha256(args.bbox_file))
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
    result.report["options"] = options
    paths = write_results(result)
    extra.append(write_model_card(result, checkpoint_dict, ood))
    if args.overwrite:
        cam_folder = [Path(f"{checkpoint.with_suffix('')}-test-cam")] if args.cam else []
        remove_other_outputs(checkpoint.with_suffix(""), [*paths.values(), *extra, *cam_folder])
    print("results written: " + ", ".join(str(p) for p in [*paths.values(), *extra]))
    return 0


def _score_predictions(args) -> int:
    """``--predictions FILE.csv``: the checkpoint's report for another model's probabilities."""
    from common.commands._setup import scoring_settings
    from common.evaluation.scoring import (
        predictions_split,
        print_result,
        results_stem,
        score_predictions_file,
        write_results,
    )
    if args.checkpoint or args.cam or args.localization or args.tencrop:
        raise UserError("--predictions scores a file of probabilities; --checkpoint, --cam, --localization and "
                        "--tencrop need a checkpoint")
    path = Path(args.predictions)
    if not path.is_file():
        raise UserError(f"predictions file {path} does not exist")
    options = result_options(args)
    check_results_replaceable(results_stem(path), options, args.overwrite)
    settings = scoring_settings(args)
    result = score_predictions_file(path, predictions_split(settings.data), settings)
    print_result(result)
    result.report["options"] = options
    paths = write_results(result)
    if args.overwrite:
        remove_other_outputs(results_stem(path), paths.values())
    print("results written: " + ", ".join(str(p) for p in paths.values()))
    return 0
