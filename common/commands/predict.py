"""``predict.py`` of every numbered folder: probabilities for the user's images, Grad-CAM overlays, the ONNX export."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from common.atomic import write_text_atomic
from common.commands._cli import ArgumentParser, positive_int
from common.constants import CLASS_NAMES, DISTILL_FOLDER
from common.errors import UserError
from common.inference.predictor import collect_images, predict_images, predictions_csv, read_image_any


def write_prediction_cams(out_dir: Path, model, model_name: str, meta: dict, paths: Sequence[Path],
                          probs: np.ndarray, top: int = 1, class_names: Sequence[str] = CLASS_NAMES) -> list[Path]:
    """Grad-CAM overlays of each image's ``top`` most probable classes, on the evaluation crop the model saw."""

    from common.data.transforms import build_transform
    from common.explain.gradcam import gradcam_maps, input_view_gray, write_cam_overlays

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


def main(argv=None, *, model: str, index: int, folder: str | os.PathLike) -> int:
    """``predict.py`` of numbered folder ``index`` (a ``model`` network): probabilities for the user's images,
    optionally Grad-CAM overlays and an ONNX export.

    The checkpoint is ``--checkpoint`` or else the folder's own (:func:`default_checkpoint`; folder 6:
    ``modeld-ensemble.pth``).

    Exit status: 0, or 1 when some images could not be read (their warnings are on stderr; the others are in the
    CSV). Problems with the flags or the checkpoint are :class:`UserError` (the caller's ``run_main`` prints one line
    and returns 2).
    """
    folder = Path(folder)
    model_name = model
    default = default_checkpoint(index, folder)
    parser = ArgumentParser(prog="predict.py",
                            description=f"Predict the 14 ChestX-ray14 findings with {model_name} on PNG, JPEG or "
                                        "DICOM images (files or folders).")
    parser.add_argument("images", nargs="*", help="image files or folders (searched recursively)")
    parser.add_argument("--checkpoint", default=str(default),
                        help=f"checkpoint (default: {default.name} of this folder)")
    parser.add_argument("--onnx", default=None, metavar="FILE",
                        help="predict with this exported ONNX file (onnxruntime) instead of the checkpoint")
    parser.add_argument("--output", default="predictions.csv", metavar="CSV",
                        help="CSV to write: Image Index,prob_<Class>,... (default predictions.csv here)")
    parser.add_argument("--cam", action="store_true",
                        help="also write Grad-CAM overlays of each image's most probable class(es)")
    parser.add_argument("--cam-top", type=positive_int, default=1, help="classes per image for --cam (default 1)")
    parser.add_argument("--cam-dir", default=None, help="folder of the overlays (default: <output stem>-cam)")
    parser.add_argument("--export-onnx", default=None, metavar="FILE", help="export the checkpoint to this ONNX file")
    parser.add_argument("--export-hub", default=None, metavar="DIR",
                        help="write a model folder to publish: model.safetensors, config.json, README.md (the model "
                             "card), model.onnx; --checkpoint DIR and --pretrained DIR read it")
    parser.add_argument("--license", default="other",
                        help="license written into the model folder's config.json and card (default: other)")
    parser.add_argument("--export-web", default=None, metavar="DIR",
                        help="export the checkpoint as a static web page that predicts in the browser (needs "
                             "`npm ci --prefix web` once; docs/guide/browser.md)")
    parser.add_argument("--batch-size", type=positive_int, default=16, help="images per batch (default 16)")
    args = parser.parse_args(argv)
    exports = args.export_onnx or args.export_hub or args.export_web
    if not args.images and not exports:
        raise UserError("give images or folders to predict, or --export-onnx FILE, --export-hub DIR or "
                        "--export-web DIR")
    if args.onnx and (args.cam or exports):
        raise UserError("--cam, --export-onnx, --export-hub and --export-web need the PyTorch checkpoint; leave out "
                        "--onnx")
    if args.export_web:
        # Imported here: the export needs torch, which --help and --onnx must not import.
        from common.explain.browser_export import export_browser_folder
        print(export_browser_folder(args.checkpoint, args.export_web, expected_model=model_name).summary())
        if not args.images and not args.export_onnx and not args.export_hub:
            return 0

    model = checkpoint = ood = None
    if args.onnx:
        from common.inference.onnx import OnnxPredictor
        predictor, meta = OnnxPredictor(args.onnx), {}
        ood_note = "" if predictor.has_ood else f"{args.onnx} was exported without out-of-distribution statistics"
    else:
        # Imported here: the checkpoint loader needs torch, and the --onnx path above must run without it.
        from common.evaluation.ood import load_ood_statistics
        from common.runs.checkpoint import load_model_from_checkpoint
        checkpoint, model = load_model_from_checkpoint(args.checkpoint, expected_model=model_name)
        model.eval()
        predictor = model
        meta = {"img_size": checkpoint["img_size"], "mean": checkpoint["mean"], "std": checkpoint["std"]}
        ood, ood_note = load_ood_statistics(args.checkpoint, checkpoint)
    if args.export_onnx:
        from common.inference.onnx import export_onnx
        path = export_onnx(model, int(meta["img_size"]), args.export_onnx, mean=meta["mean"], std=meta["std"],
                           model_name=checkpoint["model_name"],
                           class_names=CLASS_NAMES, ood=ood)
        print(f"exported {args.checkpoint} to {path}" + ("" if ood else f" (no ood_score output: {ood_note})"))
    if args.export_hub:
        from common.evaluation.card import export_model_folder
        folder_written = export_model_folder(Path(args.checkpoint), checkpoint, model, ood, Path(args.export_hub),
                                             license_name=args.license)
        print(f"wrote model folder {folder_written} (model.safetensors, config.json, README.md, model.onnx)")
    if not args.images:
        return 0

    result = predict_images(predictor, meta, collect_images(args.images), batch_size=args.batch_size, ood=ood)
    if not result.paths:
        raise UserError(f"none of the {len(result.failed)} image(s) could be read")
    output = Path(args.output)
    # --- out-of-distribution score (issue 17 §2): printed per image, two trailing CSV columns ---
    ood_threshold = ood["threshold"] if ood else getattr(predictor, "ood_threshold", None)
    ood_percentile = ood["percentile"] if ood else getattr(predictor, "ood_percentile", None)
    if result.ood_scores is not None:
        from common.inference.ood import format_ood_lines
        for line in format_ood_lines(result.image_names(), result.ood_scores, ood_threshold, ood_percentile):
            print(line)
    else:
        print(f"note: no out-of-distribution score: {ood_note}")
    write_text_atomic(predictions_csv(result.image_names(), result.probs, ood_scores=result.ood_scores,
                                      ood_threshold=ood_threshold), output)
    print(f"wrote probabilities of {len(result.paths)} image(s) to {output}")
    if args.cam:
        cam_dir = Path(args.cam_dir) if args.cam_dir else output.with_name(f"{output.stem}-cam")
        written = write_prediction_cams(cam_dir, model, model_name, meta, result.paths, result.probs, args.cam_top)
        print(f"wrote {len(written)} Grad-CAM overlay(s) to {cam_dir}")
    if result.failed:
        print(f"{len(result.failed)} of {len(result.failed) + len(result.paths)} image(s) could not be read "
              "(see the warnings above)", file=sys.stderr)
        return 1
    return 0
