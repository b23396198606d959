"""``predict.py`` of every numbered folder: probabilities for the user's images beside each class's validation
threshold, the predictions CSV and its thresholds side file, Grad-CAM overlays, the ONNX export
(docs/guide/predictions.md)."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from common.atomic import write_text_atomic
from common.commands._cli import ArgumentParser, non_negative_int, positive_int
from common.constants import CLASS_NAMES, DISTILL_FOLDER
from common.errors import UserError

# Per-image tables printed before "... more in the CSV": a folder of thousands of images must not flood the terminal.
DEFAULT_PRINT_LIMIT = 20


def write_prediction_cams(out_dir: Path, model, model_name: str, meta: dict, paths: Sequence[Path],
                          probs: np.ndarray, top: int = 1, class_names: Sequence[str] = CLASS_NAMES) -> list[Path]:
    """Grad-CAM overlays of each image's ``top`` most probable classes, on the evaluation crop the model saw."""

    from common.data.transforms import build_transform
    from common.explain.gradcam import gradcam_maps, input_view_gray, write_cam_overlays
    from common.inference.predictor import read_image_any

    transform = build_transform(int(meta["img_size"]), meta["mean"], meta["std"], train=False)
    device = next(model.parameters()).device
    written = []
    for path, row in zip(paths, probs):
        image = transform(read_image_any(path))[None].to(device)
        classes = np.argsort(-row, kind="stable")[:top]
        batch = image.expand(len(classes), -1, -1, -1)
        maps = gradcam_maps(model, model_name, batch, classes)
        view = input_view_gray(image, meta["mean"], meta["std"])[0]
        for cls, heatmap in zip(classes, maps):
            written += write_cam_overlays(out_dir, [view], heatmap[None], [path.name], class_names[cls],
                                          [float(row[cls])])
    return written


# Folder 6 predicts with a student. The one distilled from the ensemble of all five teachers is its default: it is the
# recipe the folder exists for, and it does not single out one teacher; --checkpoint picks any other.
DISTILL_DEFAULT_CHECKPOINT = "modeld-ensemble.pth"


def default_checkpoint(index: int, folder: Path) -> Path:
    """``model<index>.pth`` of a model folder, or :data:`DISTILL_DEFAULT_CHECKPOINT` in the distillation folder."""
    if folder.name == DISTILL_FOLDER:
        return folder / DISTILL_DEFAULT_CHECKPOINT
    return folder / f"model{index}.pth"


def get_args_parser(model_name: str, default: Path) -> ArgumentParser:
    """The flags of ``predict.py``."""
    parser = ArgumentParser(prog="predict.py",
                            description=f"Predict the 14 ChestX-ray14 findings with {model_name} on PNG, JPEG or "
                                        "DICOM images (files or folders). Research model, not a medical device.")
    parser.add_argument("images", nargs="*", help="image files or folders (searched recursively; DICOM files "
                                                  "without an extension are recognised by their DICM marker)")
    parser.add_argument("--checkpoint", default=str(default),
                        help=f"checkpoint (default: {default.name} of this folder)")
    parser.add_argument("--onnx", default=None, metavar="FILE",
                        help="predict with this exported ONNX file (onnxruntime on the CPU, no torch) instead of the "
                             "checkpoint")
    parser.add_argument("--output", default="predictions.csv", metavar="CSV",
                        help="CSV to write: Image Index,prob_<Class>,...; the thresholds go to <stem>-thresholds.csv "
                             "beside it (default: predictions.csv in the working directory)")
    parser.add_argument("--print-limit", type=non_negative_int, default=DEFAULT_PRINT_LIMIT, metavar="N",
                        help=f"print the per-image table of the first N images; the CSV has all (default "
                             f"{DEFAULT_PRINT_LIMIT})")
    parser.add_argument("--cam", action="store_true",
                        help="also write Grad-CAM overlays of each image's most probable class(es)")
    parser.add_argument("--cam-top", type=positive_int, default=1, help="classes per image for --cam (default 1)")
    parser.add_argument("--cam-dir", default=None, help="folder of the overlays (default: <output stem>-cam)")
    parser.add_argument("--export-onnx", default=None, metavar="FILE",
                        help="export the checkpoint to this ONNX file (its metadata carries the preprocessing, the "
                             "class names and the validation thresholds)")
    parser.add_argument("--export-hub", default=None, metavar="DIR",
                        help="write a model folder to publish: model.safetensors, config.json, README.md (the model "
                             "card), model.onnx; --checkpoint DIR and --pretrained DIR read it")
    parser.add_argument("--license", default="other",
                        help="license written into the model folder's config.json and card (default: other)")
    parser.add_argument("--export-web", default=None, metavar="DIR",
                        help="export the checkpoint as a static web page that predicts in the browser (needs "
                             "`npm ci --prefix web` once; docs/guide/browser.md)")
    parser.add_argument("--onnx-exporter", choices=("torchscript", "dynamo"), default="torchscript",
                        help="exporter of --export-onnx: torch's TorchScript one (opset 17) or its torch.export-based "
                             "one (opset 18; needs pip install onnxscript; 5-20x slower to export) (default: "
                             "torchscript)")
    parser.add_argument("--batch-size", type=positive_int, default=16, help="images per batch (default 16)")
    parser.add_argument("--device", default="cpu",
                        help="where the PyTorch model runs: cpu, auto (CUDA if available), cuda or cuda:N "
                             "(default: cpu); --onnx always runs on the CPU")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="intra-op threads of the model, torch or onnxruntime (default: the cores the decoding "
                             "threads leave, printed at the start)")
    parser.add_argument("--workers", type=non_negative_int, default=None,
                        help="image-decoding threads running ahead of the model (default: a third of the cores, half "
                             "with --onnx, all but one with a CUDA --device; at least 1)")
    return parser


def main(argv=None, *, model: str, index: int, folder: str | os.PathLike) -> int:
    """``predict.py`` of numbered folder ``index`` (a ``model`` network): probabilities for the user's images,
    optionally Grad-CAM overlays and an ONNX export.

    The checkpoint is ``--checkpoint`` or else the folder's own (:func:`default_checkpoint`; folder 6:
    ``modeld-ensemble.pth``).

    Exit status: 0, or 1 when some images could not be read (their warnings are on stderr; the others are in the
    CSV). Problems with the flags or the checkpoint, and no readable image at all, are :class:`UserError` (the
    caller's ``run_main`` prints one line and returns 2).
    """
    folder = Path(folder)
    model_name = model
    default = default_checkpoint(index, folder)
    args = get_args_parser(model_name, default).parse_args(argv)
    exports = args.export_onnx or args.export_hub or args.export_web
    if not args.images and not exports:
        raise UserError("give images or folders to predict, or --export-onnx FILE, --export-hub DIR or "
                        "--export-web DIR")
    if args.onnx and (args.cam or exports):
        raise UserError("--cam, --export-onnx, --export-hub and --export-web need the PyTorch checkpoint; leave out "
                        "--onnx")
    if args.onnx and args.device not in ("cpu", "auto"):
        raise UserError(f"--onnx runs on the CPU (onnxruntime's CPU provider); leave out --device {args.device}")
    # Imported after parsing: --help answers without them, and the --onnx path never imports torch.
    from common.inference.prediction_files import thresholds_csv, thresholds_path
    from common.inference.predictor import (
        ABOVE_MARK,
        RESEARCH_NOTE,
        collect_images,
        predict_images,
        prediction_table,
        predictions_csv,
    )
    from common.runtime.threads import available_cores, choose_threads_and_workers
    if args.export_web:
        # Imported here: the export needs torch, which --help and --onnx must not import.
        from common.explain.browser_export import export_browser_folder
        print(export_browser_folder(args.checkpoint, args.export_web, expected_model=model_name).summary())
        if not args.images and not args.export_onnx and not args.export_hub:
            return 0

    # Collected first: a wrong path is one line before any model is loaded.
    paths = collect_images(args.images) if args.images else []
    model = checkpoint = ood = None
    if args.onnx:
        from common.inference.onnx import OnnxPredictor

        threads, decoders = choose_threads_and_workers(args.workers, args.threads, cores=available_cores(),
                                                       kind="predict_onnx")
        predictor = OnnxPredictor(args.onnx, threads=threads)
        print(f"predicting with {args.onnx} ({predictor.model_name}) with onnxruntime on the CPU")
        ood_note = "" if predictor.has_ood else f"{args.onnx} was exported without out-of-distribution statistics"
    else:
        import torch

        from common.evaluation.ood import load_ood_statistics
        from common.inference.metadata import checkpoint_metadata
        from common.inference.predictor import TorchPredictor
        from common.runs.checkpoint import load_model_from_checkpoint
        from common.runtime.device import resolve_device

        device = resolve_device(args.device)
        threads, decoders = choose_threads_and_workers(args.workers, args.threads, cores=available_cores(),
                                                       kind="decode" if device.type == "cuda" else "predict")
        torch.set_num_threads(threads)
        checkpoint, model = load_model_from_checkpoint(args.checkpoint, expected_model=model_name)
        predictor = TorchPredictor(model, checkpoint_metadata(checkpoint, args.checkpoint), device)
        print(f"predicting with {args.checkpoint} ({checkpoint['model_name']}) on {device}")
        ood, ood_note = load_ood_statistics(args.checkpoint, checkpoint)
        if ood is not None:
            predictor.set_ood(ood)
    if args.export_onnx:
        from common.inference.onnx import export_onnx

        path = export_onnx(model, predictor.img_size, args.export_onnx, metadata=predictor.metadata,
                           exporter=args.onnx_exporter, ood=ood)
        print(f"exported {args.checkpoint} to {path} (metadata: preprocessing, class names, validation thresholds"
              + (", out-of-distribution threshold)" if ood else f"; no ood_score output: {ood_note})"))
    if args.export_hub:
        from common.evaluation.card import export_model_folder
        folder_written = export_model_folder(Path(args.checkpoint), checkpoint, model, ood, Path(args.export_hub),
                                             license_name=args.license)
        print(f"wrote model folder {folder_written} (model.safetensors, config.json, README.md, model.onnx)")
    if not paths:
        return 0

    result = predict_images(predictor, None, paths, batch_size=args.batch_size, decoders=decoders)
    if not result.paths:
        raise UserError(f"none of the {len(result.failed)} image(s) could be read (see the warnings above); "
                        "nothing was written")
    names = result.image_names()
    thresholds = predictor.val_thresholds
    class_names = predictor.class_names
    source = predictor.metadata.get("thresholds_source") or "the model carries no validation thresholds"
    print(RESEARCH_NOTE)
    if thresholds is None:
        print(f"Thresholds: none ({source}); no finding is marked.")
    else:
        print(f"Thresholds: {source}; {ABOVE_MARK} marks a probability at or above its class's threshold.")
    shown = min(args.print_limit, len(names))
    for line in prediction_table(names[:shown], result.probs[:shown], class_names, thresholds):
        print(line)
    if shown < len(names):
        print(f"... {len(names) - shown} more image(s) in the CSV (--print-limit to print more)")
    output = Path(args.output)
    # --- out-of-distribution score (issue 17 §2): printed per image, two trailing CSV columns ---
    ood_threshold = ood["threshold"] if ood else getattr(predictor, "ood_threshold", None)
    ood_percentile = ood["percentile"] if ood else getattr(predictor, "ood_percentile", None)
    if result.ood_scores is not None:
        from common.inference.ood import format_ood_lines
        for line in format_ood_lines(names, result.ood_scores, ood_threshold, ood_percentile):
            print(line)
    else:
        print(f"note: no out-of-distribution score: {ood_note}")
    side = thresholds_path(output)
    write_text_atomic(predictions_csv(names, result.probs, class_names, ood_scores=result.ood_scores,
                                      ood_threshold=ood_threshold), output)
    write_text_atomic(thresholds_csv(class_names, thresholds, source), side)
    print(f"wrote probabilities of {len(result.paths)} image(s) to {output}, thresholds to {side}")
    if args.cam:
        cam_dir = Path(args.cam_dir) if args.cam_dir else output.with_name(f"{output.stem}-cam")
        meta = {"img_size": predictor.img_size, "mean": predictor.mean, "std": predictor.std}
        written = write_prediction_cams(cam_dir, model, model_name, meta, result.paths, result.probs, args.cam_top)
        print(f"wrote {len(written)} Grad-CAM overlay(s) to {cam_dir}")
    if result.failed:
        print(f"{len(result.failed)} of {len(result.failed) + len(result.paths)} image(s) could not be read "
              "(see the warnings above)", file=sys.stderr)
        return 1
    return 0
