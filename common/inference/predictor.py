"""Predict the 14 findings on a user's own images: PNG, JPEG or DICOM files, or folders of them.

- :func:`read_image_any`: one file -> 8-bit grayscale PIL image, by the one pixel rule (docs/guide/predictions.md,
  "Pixels"): PNG and JPEG through :func:`common.data.images.load_png`; DICOM through :func:`dicom_to_uint8`.
- :func:`collect_images`: files and folders -> the image files, in order (extension-less DICOM found by its marker).
- :class:`TorchPredictor`: a PyTorch model behind the interface of :class:`~common.inference.onnx.OnnxPredictor`
  (``metadata``, ``preprocess``, ``predict_array``).
- :func:`predict_images`: probabilities from either predictor, streamed: decoding threads run a bounded number of
  batches ahead of the model, so memory does not grow with the number of files; unreadable files are reported (one
  warning line each) and skipped, the others are still predicted.
- :func:`prediction_table`: the printed per-image table (probability, threshold, mark).

The ``predict.py`` command itself is :mod:`common.commands.predict`; the CSV layout is
:mod:`common.inference.prediction_files`.
"""
from __future__ import annotations

import os
import sys
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from common.constants import CLASS_NAMES
from common.data.images import eval_view, load_png
from common.errors import UserError
from common.inference.metadata import model_metadata

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")
DICOM_SUFFIXES = (".dcm", ".dicom")
DICM_MAGIC_OFFSET = 128   # DICOM Part 10 files: a 128-byte preamble, then "DICM"
# Batches decoded ahead of the one the model is running: enough to keep the model busy, few enough that memory stays
# a few batches whatever the number of files.
BATCHES_AHEAD = 2
RESEARCH_NOTE = ("Research model, not a medical device: these probabilities are for research and must not be used "
                 "for diagnosis or treatment.")


# --------------------------------------------------------------------------------------------------------------------
# Reading images
# --------------------------------------------------------------------------------------------------------------------
def has_dicom_marker(path: Path) -> bool:
    """True when the file holds ``DICM`` after the 128-byte preamble (a DICOM Part 10 file, any name)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(DICM_MAGIC_OFFSET)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def _is_dicom(path: Path) -> bool:
    return path.suffix.lower() in DICOM_SUFFIXES or has_dicom_marker(path)


def _output_range(dataset) -> tuple[float, float]:
    """The values the stored bits can hold, through the Modality LUT: ``[0, 2**BitsStored - 1]`` (unsigned) or the
    signed range, times RescaleSlope plus RescaleIntercept; a Modality LUT Sequence's own bit depth. The same range
    pydicom's ``apply_windowing`` maps a window onto."""
    if dataset.get("ModalityLUTSequence"):
        bits = int(dataset.ModalityLUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2 ** bits - 1)
    bits = int(dataset.get("BitsStored") or dataset.get("BitsAllocated") or 8)
    if int(dataset.get("PixelRepresentation") or 0) == 0:
        low, high = 0.0, float(2 ** bits - 1)
    else:
        low, high = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    slope, intercept = dataset.get("RescaleSlope"), dataset.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        low, high = sorted((low * float(slope) + float(intercept), high * float(slope) + float(intercept)))
    return low, high


def dicom_to_uint8(pixels: np.ndarray, dataset) -> np.ndarray:
    """Stored DICOM pixel values -> displayed 8-bit grey values, by the pixel rule (pydicom's LUT functions).

    1. Modality LUT (``RescaleSlope``/``RescaleIntercept`` or a Modality LUT Sequence).
    2. VOI: the file's VOI LUT Sequence, else its first window (``WindowCenter``/``WindowWidth``; LINEAR,
       LINEAR_EXACT or SIGMOID), mapped onto [0, 1]. Without either, the values are scaled by the bit depth the
       file stores (``BitsStored``, through the Modality LUT): never stretched to the image's own [min, max], so a
       DICOM holding an 8-bit PNG's values gives that PNG's grey levels.
    3. ``MONOCHROME1`` (bright = low values) is inverted so bone is bright, as in ``MONOCHROME2`` and the NIH PNGs.
    """
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    values = np.asarray(apply_modality_lut(pixels, dataset), dtype=np.float64)
    low, high = _output_range(dataset)
    try:
        if dataset.get("VOILUTSequence"):
            bits = int(dataset.VOILUTSequence[0].LUTDescriptor[2])
            scaled = np.asarray(apply_voi_lut(values, dataset, prefer_lut=True), dtype=np.float64) / (2 ** bits - 1)
        elif "WindowCenter" in dataset and "WindowWidth" in dataset:
            windowed = np.asarray(apply_voi_lut(values, dataset, prefer_lut=False), dtype=np.float64)
            scaled = (windowed - low) / (high - low)
        else:
            scaled = (values - low) / (high - low)
    except ValueError as err:  # pydicom: a window width below its minimum, an unknown VOI LUT function
        raise UserError(str(err)) from None
    scaled = np.clip(scaled, 0.0, 1.0)
    if str(getattr(dataset, "PhotometricInterpretation", "MONOCHROME2")) == "MONOCHROME1":
        scaled = 1.0 - scaled
    return np.rint(scaled * 255.0).astype(np.uint8)


def _missing_decoder_message(dataset) -> str | None:
    """For compressed pixel data without an installed decoder: what to install (pydicom lists the plugins)."""
    from pydicom.pixels import get_decoder

    syntax = dataset.file_meta.get("TransferSyntaxUID") if hasattr(dataset, "file_meta") else None
    if syntax is None or not syntax.is_compressed:
        return None
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        return f"its pixel data is {syntax.name}, which pydicom cannot decode"
    if decoder.is_available:
        return None
    options = []
    for line in decoder.missing_dependencies:  # e.g. "pylibjpeg - requires pylibjpeg>=2.0 and pylibjpeg-libjpeg>=2.1"
        plugin, _, needs = line.partition(" - requires ")
        packages = [p.strip() for p in needs.split(" and ") if p.strip() and p.strip() != "numpy"]
        # gdcm's PyPI package is python-gdcm.
        packages = ["python-" + p if p.startswith("gdcm") else p for p in packages]
        options.append(f"{plugin.strip()} (pip install {' '.join(packages)})" if packages else plugin.strip())
    return (f"its pixel data is {syntax.name} and no decoder for it is installed; install one of: "
            f"{'; '.join(options)}")


def _read_dicom(path: Path) -> Image.Image:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        dataset = pydicom.dcmread(str(path))
    except (InvalidDicomError, OSError, AttributeError, ValueError, EOFError) as err:
        raise UserError(f"cannot read DICOM {path}: {_first_line(err)}") from None
    missing = _missing_decoder_message(dataset)
    if missing:
        raise UserError(f"cannot read DICOM {path}: {missing}")
    try:
        pixels = dataset.pixel_array
    except (OSError, AttributeError, ValueError, RuntimeError, NotImplementedError, KeyError) as err:
        # pixel_array raises AttributeError/KeyError without pixel data, ValueError for inconsistent sizes,
        # RuntimeError from a decoder that fails.
        raise UserError(f"cannot read DICOM {path}: {_first_line(err)}") from None
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


def _first_line(err: Exception) -> str:
    text = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
    return text or type(err).__name__


def read_image_any(path: str | os.PathLike) -> Image.Image:
    """Open a PNG (8-bit, 16-bit, RGB/RGBA), JPEG or DICOM file as an 8-bit grayscale ('L') PIL image.

    PNG and JPEG go through :func:`common.data.images.load_png` (the reader of training images and the image cache:
    16-bit divided by its bit depth, alpha dropped, decompression bombs refused). DICOM (by extension or by its
    ``DICM`` marker): :func:`dicom_to_uint8`. Any problem is a :class:`UserError` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"image {path} does not exist")
    if _is_dicom(path):
        return _read_dicom(path)
    return load_png(path)


def collect_images(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """The image files named by ``paths``: files as given (any extension), folders searched recursively (sorted,
    hidden entries skipped) for ``*.png``, ``*.jpg``, ``*.jpeg``, ``*.dcm``, ``*.dicom`` and DICOM files under any
    other name (recognised by the ``DICM`` marker after their 128-byte preamble). A path that does not exist, or a
    folder without images, is a :class:`UserError`."""
    found: list[Path] = []
    for entry in paths:
        path = Path(entry)
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            inside = sorted(p for p in path.rglob("*")
                            if not any(part.startswith(".") for part in p.relative_to(path).parts) and p.is_file()
                            and (p.suffix.lower() in IMAGE_SUFFIXES or has_dicom_marker(p)))
            if not inside:
                raise UserError(f"folder {path} holds no {', '.join(IMAGE_SUFFIXES)} or DICOM files")
            found.extend(inside)
        else:
            raise UserError(f"{path} does not exist")
    if not found:
        raise UserError("no images given")
    return found


# --------------------------------------------------------------------------------------------------------------------
# Predicting
# --------------------------------------------------------------------------------------------------------------------
class TorchPredictor:
    """A PyTorch model (logits out) with the interface of :class:`~common.inference.onnx.OnnxPredictor`.

    Args:
        model: the network; evaluated in eval mode (set here; the caller's mode is not restored, use a model for
            prediction only).
        metadata: the model's metadata dict (:func:`common.inference.metadata.checkpoint_metadata`).
        device: where the forward passes run (torch device or name); fp32 everywhere.
    """

    def __init__(self, model, metadata: dict, device="cpu"):
        import torch

        self.model = model.eval()
        self.metadata = metadata
        self.device = torch.device(device)
        self.model.to(self.device)
        self.img_size = int(metadata["img_size"])
        self.resize = int(metadata["resize"])
        self.mean, self.std = list(metadata["mean"]), list(metadata["std"])
        self.class_names = list(metadata["class_names"])
        thresholds = metadata.get("val_thresholds")
        self.val_thresholds = None if thresholds is None else np.asarray(thresholds, dtype=np.float64)
        self.ood = self._ood_score = None
        self.has_ood = False
        self.ood_threshold = None

    def set_ood(self, ood: dict) -> None:
        """Score every batch's out-of-distribution distance too, with the checkpoint's statistics
        (:mod:`common.inference.ood`)."""
        from common.inference.ood import check_ood_statistics, ood_score_module

        check_ood_statistics(ood)
        self.ood, self.has_ood, self.ood_threshold = ood, True, float(ood["threshold"])
        self._ood_score = ood_score_module(ood, self.img_size).to(self.device)

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """The evaluation view, :func:`common.data.images.eval_view` (equal to ``build_transform``'s)."""
        return eval_view(image, self.img_size, self.mean, self.std, resize=self.resize)

    def predict_array(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities ``[N, C]`` (float32) of normalised inputs ``[N, 3, s, s]``."""
        import torch

        with torch.inference_mode():
            inputs = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
            return torch.sigmoid(self.model(inputs).float()).cpu().numpy()

    def predict_array_with_ood(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities ``[N, C]`` and, with OOD statistics, the OOD scores ``[N]`` of the same forward pass."""
        import torch

        if not self.has_ood:
            return self.predict_array(batch), None
        with torch.inference_mode():
            inputs = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
            features = self.model.forward_features(inputs)  # model(x) is forward_head(forward_features(x))
            probabilities = torch.sigmoid(self.model.forward_head(features).float())
            scores = self._ood_score(inputs, self.model.forward_head(features, pre_logits=True))
            return probabilities.cpu().numpy(), scores.cpu().numpy()


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


def _as_predictor(predictor, meta: dict):
    """An object with ``preprocess`` and ``predict_array``: predictors as they are, a bare torch model wrapped."""
    if hasattr(predictor, "predict_array") and hasattr(predictor, "preprocess"):
        return predictor
    info = meta if "resize" in meta else model_metadata(meta.get("model_name", ""), meta["img_size"], meta["mean"],
                                                       meta["std"])
    return TorchPredictor(predictor, info, next(predictor.parameters()).device)


def _view_of(predictor, path: Path) -> np.ndarray:
    return predictor.preprocess(read_image_any(path))


def predict_images(predictor, meta: dict | None, paths: Sequence[str | os.PathLike], batch_size: int = 16,
                   warn=None, decoders: int = 1, show_progress: bool = True, ood: dict | None = None) -> Predictions:
    """Probabilities of the classes for each readable image, streamed in batches.

    ``decoders`` threads read and preprocess the images of up to :data:`BATCHES_AHEAD` batches ahead of the one the
    model runs (Pillow, numpy, onnxruntime and torch release the GIL in their heavy parts), so decoding hides behind
    the model and peak memory is a few batches whatever the number of files; 0 decodes in the calling thread.

    Args:
        predictor: a :class:`TorchPredictor`, an :class:`~common.inference.onnx.OnnxPredictor`, or a bare PyTorch
            model (logits out; wrapped with ``meta``).
        meta: for a bare model, its ``img_size``, ``mean`` and ``std``; otherwise ignored (may be None).
        paths: image files (see :func:`collect_images`).
        batch_size: images per forward pass.
        warn: called with one line per unreadable file; default prints ``warning: ...`` to stderr.
        decoders: decoding threads.
        show_progress: a progress bar on stderr (tqdm).
        ood: the checkpoint's OOD statistics, for a PyTorch model (an OnnxPredictor computes the score in its graph
            when it was exported with them).

    Returns:
        :class:`Predictions`; unreadable files are in ``failed`` and absent from ``paths``/``probs``; ``ood_scores``
        is None without OOD statistics.
    """
    from tqdm import tqdm

    predictor = _as_predictor(predictor, meta or {})
    if ood is not None and getattr(predictor, "ood", False) is None:
        predictor.set_ood(ood)
    warn = warn or (lambda line: print(f"warning: {line}", file=sys.stderr))
    paths = [Path(p) for p in paths]
    chunks = iter([paths[start:start + batch_size] for start in range(0, len(paths), batch_size)])
    good: list[Path] = []
    failed: list[tuple[Path, str]] = []
    outputs: list[np.ndarray] = []
    scores: list[np.ndarray] = []
    pool = ThreadPoolExecutor(max_workers=decoders, thread_name_prefix="decode") if decoders > 0 else None
    ahead: deque = deque()

    def submit_next() -> None:
        chunk = next(chunks, None)
        if chunk is not None:
            ahead.append((chunk, [pool.submit(_view_of, predictor, p) for p in chunk] if pool else None))

    bar = tqdm(total=len(paths), desc="predicting", unit="img", leave=False, dynamic_ncols=True,
               disable=not show_progress or len(paths) < 2 * batch_size,
               mininterval=0.1 if sys.stderr.isatty() else 30)
    try:
        if pool:
            for _ in range(BATCHES_AHEAD + 1):
                submit_next()
        else:
            submit_next()
        while ahead:
            chunk, futures = ahead.popleft()
            submit_next()
            views, names = [], []
            for index, path in enumerate(chunk):
                try:
                    views.append(futures[index].result() if futures else _view_of(predictor, path))
                    names.append(path)
                except UserError as err:
                    failed.append((path, str(err)))
                    warn(f"{err}; skipped")
            if views:
                batch = np.stack(views)
                if getattr(predictor, "has_ood", False):
                    probabilities, ood_scores = predictor.predict_array_with_ood(batch)
                else:
                    probabilities, ood_scores = predictor.predict_array(batch), None
                outputs.append(np.asarray(probabilities, dtype=np.float64))
                if ood_scores is not None:
                    scores.append(np.asarray(ood_scores, dtype=np.float64).reshape(-1))
                good.extend(names)
            bar.update(len(chunk))
    finally:
        bar.close()
        if pool:
            pool.shutdown(wait=True, cancel_futures=True)
    classes = len(getattr(predictor, "class_names", CLASS_NAMES))
    probs = np.concatenate(outputs) if outputs else np.zeros((0, classes), dtype=np.float64)
    has_ood = getattr(predictor, "has_ood", False)
    ood_scores = (np.concatenate(scores) if scores else np.zeros(0, dtype=np.float64)) if has_ood else None
    return Predictions(good, probs, failed, ood_scores)


# --------------------------------------------------------------------------------------------------------------------
# Printing
# --------------------------------------------------------------------------------------------------------------------
ABOVE_MARK = "*"


def prediction_table(names: Sequence[str], probs: np.ndarray, class_names: Sequence[str],
                     thresholds=None) -> list[str]:
    """Lines of the printed predictions: per image, its name and the findings at or above their threshold, then one
    line per class with the probability, the class's validation threshold and :data:`ABOVE_MARK` when
    ``probability >= threshold`` (the rule ``test-model.py`` scores F1 with). Without thresholds nothing is marked."""
    width = max(len(c) for c in class_names)
    lines = []
    for name, row in zip(names, np.asarray(probs, dtype=np.float64)):
        if thresholds is None:
            lines.append(f"{name}")
        else:
            above = [c for c, p, t in zip(class_names, row, thresholds) if p >= t]
            lines.append(f"{name}: at or above threshold: {', '.join(above) if above else 'none'}")
        lines.append(f"  {'class':<{width}}  probability  threshold")
        for index, cls in enumerate(class_names):
            if thresholds is None:
                lines.append(f"  {cls:<{width}}  {row[index]:>11.4f}  {'n/a':>9}")
            else:
                mark = f"  {ABOVE_MARK}" if row[index] >= thresholds[index] else ""
                lines.append(f"  {cls:<{width}}  {row[index]:>11.4f}  {thresholds[index]:>9.4f}{mark}")
    return lines


def predictions_csv(names: Sequence[str], probs: np.ndarray, class_names: Sequence[str] = CLASS_NAMES,
                    ood_scores: Sequence[float] | None = None, ood_threshold: float | None = None) -> str:
    """The CSV ``predict.py`` writes: ``Image Index,prob_<Class>,...`` with 6-decimal probabilities
    (:func:`common.inference.prediction_files.format_predictions`); with OOD scores two more columns at the end,
    ``ood_score`` and ``unlike_training_images`` (1 above the threshold), which readers that take the class columns
    by name ignore."""
    from common.inference.ood import ood_flags
    from common.inference.prediction_files import format_predictions

    text = format_predictions(names, probs, class_names, decimals=6)
    if ood_scores is None:
        return text
    flags = ood_flags(ood_scores, ood_threshold)
    lines = text.rstrip("\n").split("\n")
    lines[0] += ",ood_score,unlike_training_images"
    for index in range(1, len(lines)):
        lines[index] += f",{float(ood_scores[index - 1]):.4f},{int(flags[index - 1])}"
    return "\n".join(lines) + "\n"
