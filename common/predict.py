"""Predict the 14 findings on a user's own images: PNG, JPEG or DICOM files, or folders of them.

- :func:`read_image_any`: one file -> 8-bit grayscale PIL image (DICOM: Modality LUT, then the VOI window when the
  file has one, else min-max; MONOCHROME1 inverted).
- :func:`collect_images`: files and folders -> the image files, in order.
- :func:`predict_images`: probabilities from a PyTorch model or an :class:`~common.onnx_export.OnnxPredictor`;
  unreadable files are reported (one warning line each) and skipped, the others are still predicted.
- :func:`main`: the ``predict.py`` script of a numbered folder (``--checkpoint``, ``--onnx``, ``--output``, ``--cam``,
  ``--export-onnx``).
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from .atomic import write_text_atomic
from .constants import CLASS_NAMES, DISTILL_FOLDER
from .images import load_png
from .errors import ArgumentParser, UserError, positive_int

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")
DICOM_SUFFIXES = (".dcm", ".dicom")
DICM_MAGIC_OFFSET = 128   # DICOM Part 10 files: a 128-byte preamble, then "DICM"


# --------------------------------------------------------------------------------------------------------------------
# Reading images
# --------------------------------------------------------------------------------------------------------------------
def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as handle:
            handle.seek(DICM_MAGIC_OFFSET)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def _first(value) -> float:
    """WindowCenter / WindowWidth may hold several values (several suggested windows); the first is the default."""
    try:
        return float(value[0])
    except TypeError:
        return float(value)


def dicom_to_uint8(pixels: np.ndarray, dataset) -> np.ndarray:
    """Stored DICOM pixel values -> displayed 8-bit grey values.

    1. Modality LUT: ``value * RescaleSlope + RescaleIntercept`` (1 and 0 when absent).
    2. VOI: the DICOM linear window (PS3.3 C.11.2.1.2) of the first ``WindowCenter``/``WindowWidth`` when present:
       ``((x - (c - 0.5)) / (w - 1) + 0.5)`` clipped to [0, 1]; otherwise min-max over the image.
    3. ``MONOCHROME1`` (bright = low values) is inverted so bone is bright, as in ``MONOCHROME2`` and the NIH PNGs.
    """
    values = pixels.astype(np.float64)
    values = values * float(getattr(dataset, "RescaleSlope", 1) or 1) + float(getattr(dataset, "RescaleIntercept", 0)
                                                                                or 0)
    function = str(getattr(dataset, "VOILUTFunction", "LINEAR") or "LINEAR").upper()
    if "WindowCenter" in dataset and "WindowWidth" in dataset:
        if function != "LINEAR":
            raise UserError(f"VOI LUT function {function} is not supported (only LINEAR windows)")
        center, width = _first(dataset.WindowCenter), _first(dataset.WindowWidth)
        if width < 1:
            raise UserError(f"window width {width} is below 1")
        scaled = np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)
    else:
        low, high = values.min(), values.max()
        if high <= low:
            raise UserError("the image is blank (every pixel has the same value)")
        scaled = (values - low) / (high - low)
    if str(getattr(dataset, "PhotometricInterpretation", "MONOCHROME2")) == "MONOCHROME1":
        scaled = 1.0 - scaled
    return np.rint(scaled * 255.0).astype(np.uint8)


def _read_dicom(path: Path) -> Image.Image:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        dataset = pydicom.dcmread(str(path))
        pixels = dataset.pixel_array
    except (InvalidDicomError, OSError, AttributeError, ValueError, RuntimeError, NotImplementedError) as err:
        # pixel_array raises AttributeError without pixel data, RuntimeError/NotImplementedError for a compressed
        # transfer syntax without its decoder, ValueError for inconsistent sizes.
        raise UserError(f"cannot read DICOM {path}: {str(err).splitlines()[0] if str(err) else type(err).__name__}") \
            from None
    photometric = str(getattr(dataset, "PhotometricInterpretation", "MONOCHROME2"))
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        if pixels.ndim == 3 and pixels.shape[-1] == 3:
            # Colour DICOM (rare for radiographs): pydicom gives RGB for RGB/YBR; its luminance is the grey image.
            return Image.fromarray(np.asarray(pixels, dtype=np.uint8), mode="RGB").convert("L")
        raise UserError(f"cannot read DICOM {path}: photometric interpretation {photometric} is not supported")
    if pixels.ndim != 2:
        raise UserError(f"cannot read DICOM {path}: {pixels.ndim}-D pixel data (multi-frame?) is not supported")
    try:
        return Image.fromarray(dicom_to_uint8(pixels, dataset), mode="L")
    except UserError as err:
        raise UserError(f"cannot read DICOM {path}: {err}") from None


def read_image_any(path: str | os.PathLike) -> Image.Image:
    """Open a PNG (8-bit, 16-bit, RGB/RGBA), JPEG or DICOM file as an 8-bit grayscale ('L') PIL image.

    PNG and JPEG go through ``common.images.to_grayscale`` (16-bit: its own [min, max] stretched to 0..255; alpha
    dropped). DICOM: see :func:`dicom_to_uint8`. Any problem is a :class:`UserError` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"image {path} does not exist")
    if _is_dicom(path):
        return _read_dicom(path)
    return load_png(path)


def collect_images(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """The image files named by ``paths``: files as given (any extension), folders searched recursively for
    ``*.png``, ``*.jpg``, ``*.jpeg``, ``*.dcm`` and ``*.dicom`` (sorted). A path that does not exist, or a folder
    without images, is a :class:`UserError`."""
    found: list[Path] = []
    for entry in paths:
        path = Path(entry)
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            inside = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                            and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not inside:
                raise UserError(f"folder {path} holds no {', '.join(IMAGE_SUFFIXES)} files")
            found.extend(inside)
        else:
            raise UserError(f"{path} does not exist")
    if not found:
        raise UserError("no images given")
    return found


# --------------------------------------------------------------------------------------------------------------------
# Predicting
# --------------------------------------------------------------------------------------------------------------------
@dataclass
class Predictions:
    """Probabilities of the images that could be read, and the ones that could not."""

    paths: list[Path]
    probs: np.ndarray                                   # [N, C]
    failed: list[tuple[Path, str]] = field(default_factory=list)  # (path, one-line reason)

    def image_names(self) -> list[str]:
        """The ``Image Index`` column: file names, or the paths as given when two files share a name."""
        names = [p.name for p in self.paths]
        return names if len(set(names)) == len(names) else [str(p) for p in self.paths]


def predict_images(predictor, meta: dict, paths: Sequence[str | os.PathLike], batch_size: int = 16,
                   warn=None) -> Predictions:
    """Probabilities of the 14 classes for each readable image.

    Args:
        predictor: a PyTorch model (logits out; evaluated in eval mode on its device, mode restored) or an
            :class:`~common.onnx_export.OnnxPredictor` (probabilities out, its own preprocessing).
        meta: the checkpoint's ``img_size``, ``mean`` and ``std`` (ignored for an OnnxPredictor, which carries its
            own).
        paths: image files (see :func:`collect_images`).
        batch_size: images per forward pass.
        warn: called with one line per unreadable file; default prints ``warning: ...`` to stderr.

    Returns:
        :class:`Predictions`; unreadable files are in ``failed`` and absent from ``paths``/``probs``.
    """
    from .onnx_export import OnnxPredictor

    warn = warn or (lambda line: print(f"warning: {line}", file=sys.stderr))
    images, good, failed = [], [], []
    for path in map(Path, paths):
        try:
            images.append(read_image_any(path))
            good.append(path)
        except UserError as err:
            failed.append((path, str(err)))
            warn(f"{err}; skipped")
    if isinstance(predictor, OnnxPredictor):
        probs = predictor.predict(images, batch_size=batch_size)
    else:
        probs = _predict_torch(predictor, meta, images, batch_size)
    return Predictions(good, np.asarray(probs, dtype=np.float64).reshape(len(good), -1), failed)


def _predict_torch(model, meta: dict, images, batch_size: int) -> np.ndarray:
    import torch

    from .data import build_transform

    transform = build_transform(int(meta["img_size"]), meta["mean"], meta["std"], train=False)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    outputs = []
    try:
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                batch = torch.stack([transform(image) for image in images[start:start + batch_size]]).to(device)
                outputs.append(torch.sigmoid(model(batch).float()).cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(outputs) if outputs else np.zeros((0, len(CLASS_NAMES)))


def predictions_csv(names: Sequence[str], probs: np.ndarray, class_names: Sequence[str] = CLASS_NAMES) -> str:
    """``Image Index,prob_<Class>,...`` (jrzech/reproduce-chexnet's layout) with 6-decimal probabilities."""
    lines = [",".join(["Image Index", *(f"prob_{c.replace(' ', '_')}" for c in class_names)])]
    for name, row in zip(names, probs):
        if "," in name or '"' in name:
            name = '"' + name.replace('"', '""') + '"'
        lines.append(",".join([name, *(f"{float(p):.6f}" for p in row)]))
    return "\n".join(lines) + "\n"


def write_prediction_cams(out_dir: Path, model, model_name: str, meta: dict, paths: Sequence[Path],
                          probs: np.ndarray, top: int = 1, class_names: Sequence[str] = CLASS_NAMES) -> list[Path]:
    """Grad-CAM overlays of each image's ``top`` most probable classes, on the evaluation crop the model saw."""
    import torch

    from .data import build_transform
    from .explain import gradcam_maps, input_view_gray, write_cam_overlays

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
    parser.add_argument("--batch-size", type=positive_int, default=16, help="images per batch (default 16)")
    args = parser.parse_args(argv)
    if not args.images and not args.export_onnx:
        raise UserError("give images or folders to predict, or --export-onnx FILE")
    if args.onnx and (args.cam or args.export_onnx):
        raise UserError("--cam and --export-onnx need the PyTorch checkpoint; leave out --onnx")

    model = checkpoint = None
    if args.onnx:
        from .onnx_export import OnnxPredictor
        predictor, meta = OnnxPredictor(args.onnx), {}
    else:
        # Imported here: the checkpoint loader needs torch, and the --onnx path above must run without it.
        from .checkpoint import load_model_from_checkpoint
        checkpoint, model = load_model_from_checkpoint(args.checkpoint, expected_model=model_name)
        model.eval()
        predictor = model
        meta = {"img_size": checkpoint["img_size"], "mean": checkpoint["mean"], "std": checkpoint["std"]}
    if args.export_onnx:
        from .onnx_export import export_onnx
        path = export_onnx(model, int(meta["img_size"]), args.export_onnx, mean=meta["mean"], std=meta["std"],
                           model_name=checkpoint["model_name"],
                           class_names=CLASS_NAMES)
        print(f"exported {args.checkpoint} to {path}")
    if not args.images:
        return 0

    result = predict_images(predictor, meta, collect_images(args.images), batch_size=args.batch_size)
    if not result.paths:
        raise UserError(f"none of the {len(result.failed)} image(s) could be read")
    output = Path(args.output)
    write_text_atomic(predictions_csv(result.image_names(), result.probs), output)
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
