"""Predict the 14 findings on a user's own images: PNG, JPEG or DICOM files, or folders of them.

- :func:`read_image_any`: one file -> 8-bit grayscale PIL image (DICOM: Modality LUT, then the VOI window when the
  file has one, else min-max; MONOCHROME1 inverted).
- :func:`collect_images`: files and folders -> the image files, in order.
- :func:`predict_images`: probabilities from a PyTorch model or an :class:`~common.inference.onnx.OnnxPredictor`;
  unreadable files are reported (one warning line each) and skipped, the others are still predicted.
- :func:`predictions_csv`: the CSV ``predict.py`` writes.

The ``predict.py`` command itself is :mod:`common.commands.predict`.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from common.constants import CLASS_NAMES
from common.data.images import load_png
from common.errors import UserError

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

    PNG and JPEG go through ``common.data.images.to_grayscale`` (16-bit: its own [min, max] stretched to 0..255; alpha
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
    ood_scores: np.ndarray | None = None                # [N] out-of-distribution scores (common.inference.ood)

    def image_names(self) -> list[str]:
        """The ``Image Index`` column: file names, or the paths as given when two files share a name."""
        names = [p.name for p in self.paths]
        return names if len(set(names)) == len(names) else [str(p) for p in self.paths]


def predict_images(predictor, meta: dict, paths: Sequence[str | os.PathLike], batch_size: int = 16,
                   warn=None, ood: dict | None = None) -> Predictions:
    """Probabilities of the 14 classes for each readable image.

    Args:
        predictor: a PyTorch model (logits out; evaluated in eval mode on its device, mode restored) or an
            :class:`~common.inference.onnx.OnnxPredictor` (probabilities out, its own preprocessing).
        meta: the checkpoint's ``img_size``, ``mean`` and ``std`` (ignored for an OnnxPredictor, which carries its
            own).
        paths: image files (see :func:`collect_images`).
        batch_size: images per forward pass.
        warn: called with one line per unreadable file; default prints ``warning: ...`` to stderr.
        ood: the checkpoint's OOD statistics, for a PyTorch model (an OnnxPredictor computes the score in its graph
            when it was exported with them).

    Returns:
        :class:`Predictions`; unreadable files are in ``failed`` and absent from ``paths``/``probs``; ``ood_scores``
        is None without OOD statistics.
    """
    from common.inference.onnx import OnnxPredictor

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
        probs, scores = predictor.predict_with_ood(images, batch_size=batch_size)
    else:
        probs, scores = _predict_torch(predictor, meta, images, batch_size, ood)
    return Predictions(good, np.asarray(probs, dtype=np.float64).reshape(len(good), -1), failed,
                       None if scores is None else np.asarray(scores, dtype=np.float64).reshape(len(good)))


def _predict_torch(model, meta: dict, images, batch_size: int, ood: dict | None = None):
    """Probabilities ``[N, C]`` and, with ``ood`` statistics, the OOD scores ``[N]`` of the same forward pass."""
    import torch

    from common.data.transforms import build_transform
    from common.inference.ood import ood_score_module

    transform = build_transform(int(meta["img_size"]), meta["mean"], meta["std"], train=False)
    device = next(model.parameters()).device
    score = None if ood is None else ood_score_module(ood, int(meta["img_size"])).to(device)
    was_training = model.training
    model.eval()
    outputs, scores = [], []
    try:
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                batch = torch.stack([transform(image) for image in images[start:start + batch_size]]).to(device)
                features = model.forward_features(batch)  # model(x) is forward_head(forward_features(x))
                outputs.append(torch.sigmoid(model.forward_head(features).float()).cpu().numpy())
                if score is not None:
                    scores.append(score(batch, model.forward_head(features, pre_logits=True)).cpu().numpy())
    finally:
        model.train(was_training)
    probs = np.concatenate(outputs) if outputs else np.zeros((0, len(CLASS_NAMES)))
    if score is None:
        return probs, None
    return probs, np.concatenate(scores) if scores else np.zeros(0)


def predictions_csv(names: Sequence[str], probs: np.ndarray, class_names: Sequence[str] = CLASS_NAMES,
                    ood_scores: Sequence[float] | None = None, ood_threshold: float | None = None) -> str:
    """``Image Index,prob_<Class>,...`` (jrzech/reproduce-chexnet's layout) with 6-decimal probabilities; with OOD
    scores two more columns at the end, ``ood_score`` and ``unlike_training_images`` (1 above the threshold), which
    readers that take the class columns by name ignore."""
    from common.inference.ood import ood_flags

    header = ["Image Index", *(f"prob_{c.replace(' ', '_')}" for c in class_names)]
    flags = None
    if ood_scores is not None:
        header += ["ood_score", "unlike_training_images"]
        flags = ood_flags(ood_scores, ood_threshold)
    lines = [",".join(header)]
    for index, (name, row) in enumerate(zip(names, probs)):
        if "," in name or '"' in name:
            name = '"' + name.replace('"', '""') + '"'
        cells = [name, *(f"{float(p):.6f}" for p in row)]
        if flags is not None:
            cells += [f"{float(ood_scores[index]):.4f}", str(int(flags[index]))]
        lines.append(",".join(cells))
    return "\n".join(lines) + "\n"
