"""Image conversions that need only numpy and Pillow, so the torch-free ONNX predictor (``predict.py --onnx``) can
read images exactly as training and evaluation do."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from common.errors import UserError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# How deep below --data-dir images are searched: images/<name>, images_0XX/images/<name>.
MAX_INDEX_DEPTH = 3


# --------------------------------------------------------------------------------------------------------------------
# Images: index, decoding, sources
# --------------------------------------------------------------------------------------------------------------------
def index_images(data_dir: str | os.PathLike) -> dict[str, Path]:
    """Map every ``*.png`` name under ``data_dir`` (up to 3 folders deep) to its path.

    This finds the flat NIH ``images/`` folder, Kaggle's ``images_0XX/images/`` and ``images_0XX/`` folders and
    resized copies alike. A name found twice (for example a full-size and a resized copy side by side) is an error,
    because either choice could be the wrong one.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise UserError(f"data directory {root} does not exist (pass --data-dir, the folder holding the PNGs)")
    found: dict[str, Path] = {}
    duplicates: list[str] = []
    pending = [(root, 0)]
    while pending:
        folder, depth = pending.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError as err:
            raise UserError(f"cannot list {folder}: {err.strerror or err}") from None
        for entry in entries:
            if entry.is_dir() and depth < MAX_INDEX_DEPTH and not entry.name.startswith("."):
                pending.append((Path(entry.path), depth + 1))
            elif entry.name.lower().endswith(".png") and entry.is_file():
                if entry.name in found:
                    duplicates.append(f"{found[entry.name]} and {entry.path}")
                found[entry.name] = Path(entry.path)
    if duplicates:
        raise UserError(f"{len(duplicates)} image name(s) occur twice under {root} (first: {duplicates[0]}); "
                        "point --data-dir at one copy")
    return found


def _looks_like_png(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(8) == PNG_SIGNATURE
    except OSError:
        return False


def require_images(index: dict[str, Path], names: list[str], data_dir, workers: int = 8) -> None:
    """Check that every name is indexed and starts like a PNG; one error gives the count and the first few names."""
    missing = [n for n in names if n not in index]
    if missing:
        raise UserError(f"{len(missing)} of {len(names)} listed image(s) are not under {data_dir} "
                        f"(first: {', '.join(missing[:3])})")
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        ok = list(pool.map(_looks_like_png, (index[n] for n in names), chunksize=256))
    unreadable = [n for n, good in zip(names, ok) if not good]
    if unreadable:
        raise UserError(f"{len(unreadable)} image(s) under {data_dir} are unreadable or not PNG files "
                        f"(first: {', '.join(str(index[n]) for n in unreadable[:3])})")


def eval_resize(img_size: int) -> int:
    """Resize-before-crop size: 256 for 224, as CheXNet's protocol, scaled for other sizes."""
    return int(round(img_size * 256 / 224))


# The pixel rule (docs/guide/predictions.md, "Pixels"): every format becomes the same 8-bit grey image, scaled by
# the bit depth the file actually stores, never stretched to the image's own [min, max]. An 8-bit PNG, the same
# pixels as a 16-bit PNG (x * 257) and as a DICOM therefore give the same model input.
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
SIXTEEN_BIT_MAX = 65535


def scale_to_uint8(values: np.ndarray, full_scale: int) -> np.ndarray:
    """Integers in ``[0, full_scale]`` -> 0..255, rounded to nearest (``full_scale`` is ``2**bits - 1`` of the
    stored bit depth). Integer arithmetic, so ``x * 257`` of a 16-bit image gives back ``x`` exactly."""
    values = np.asarray(values, dtype=np.int64)
    return ((values * 255 + full_scale // 2) // full_scale).astype(np.uint8)


def to_grayscale(image: Image.Image) -> Image.Image:
    """Convert any NIH PNG (8-bit L, 16-bit I;16/I, RGB, RGBA, LA, P) or JPEG to 8-bit grayscale ``L``.

    16-bit images are divided by their bit depth (0..65535 -> 0..255; PNG stores every sample scaled to the full
    depth, its optional sBIT chunk notwithstanding), so a 16-bit copy of an 8-bit image (``x * 257``) reads back as
    the 8-bit image. A 16-bit file holding unscaled 12-bit values reads as a dark image: rescale such a file to the
    full 16 bits first. 32-bit integer images (Pillow's ``I``) are read as 16-bit when their values fit; floating-point
    images have no stored bit depth and are refused.
    """
    if image.mode == "L":
        return image
    if image.mode in SIXTEEN_BIT_MODES or image.mode == "I":
        array = np.asarray(image)
        if image.mode == "I" and array.size and (int(array.min()) < 0 or int(array.max()) > SIXTEEN_BIT_MAX):
            raise ValueError(f"32-bit integer pixels from {int(array.min())} to {int(array.max())} do not fit 16 "
                             "bits; save the image as an 8- or 16-bit PNG")
        return Image.fromarray(scale_to_uint8(array, SIXTEEN_BIT_MAX), mode="L")
    if image.mode == "F":
        raise ValueError("floating-point pixels have no stored bit depth; save the image as an 8- or 16-bit PNG")
    if image.mode in ("RGBA", "LA", "PA"):
        # The few RGBA NIH files are opaque grey images; drop alpha before taking the luminance.
        image = image.convert("RGB")
    return image.convert("L")


def load_png(path: Path) -> Image.Image:
    """Open one image file (PNG, or any format Pillow reads) as 8-bit grayscale (:func:`to_grayscale`).

    This is the one reader of training images, the image cache build and prediction. Any file it cannot decode is a
    :class:`UserError` naming it, a decompression bomb (more pixels than Pillow's ``MAX_IMAGE_PIXELS`` limit allows,
    ``Image.DecompressionBombError``) included: callers skip or report it like any other unreadable file.
    """
    try:
        with Image.open(path) as handle:
            handle.load()
            return to_grayscale(handle)
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as err:
        # DecompressionBombError is refused from the header, before decoding (a 20000 x 20000 PNG would need 400 MB
        # as 8-bit grey); it is not an OSError, hence named here.
        raise UserError(f"cannot read image {path}: {err}") from None


def evaluation_crop(image: Image.Image, img_size: int, resize: int | None = None) -> np.ndarray:
    """The uint8 ``[s, s]`` grey crop of the evaluation view (``common.data.transforms.build_transform``, eval).

    Resize the shorter side to ``resize`` (default :func:`eval_resize`), the longer to ``int(resize * long / short)``
    (torchvision's rule), PIL bilinear; centre crop at offsets ``int(round((size - s) / 2))`` (Python's round:
    halves to even).
    """
    if image.mode != "L":
        raise ValueError(f"expected a grayscale 'L' image, got mode {image.mode!r} (see to_grayscale)")
    resize = eval_resize(img_size) if resize is None else int(resize)
    width, height = image.size
    short, long = min(width, height), max(width, height)
    resized_long = int(resize * long / short)
    size = (resize, resized_long) if width <= height else (resized_long, resize)
    if size != image.size:
        image = image.resize(size, Image.BILINEAR)
    left = int(round((size[0] - img_size) / 2.0))
    top = int(round((size[1] - img_size) / 2.0))
    return np.asarray(image.crop((left, top, left + img_size, top + img_size)), dtype=np.uint8)


def eval_view(image: Image.Image, img_size: int, mean, std, resize: int | None = None) -> np.ndarray:
    """A grey 'L' image -> the normalised float32 ``[3, s, s]`` evaluation input, exactly as
    ``common.data.transforms.build_transform(s, mean, std, train=False)`` gives it (a test checks equality), with
    numpy and Pillow only: :func:`evaluation_crop`, ``/ 255``, ``(x - mean) / std`` per channel, the grey image
    copied into the three channels.
    """
    crop = evaluation_crop(image, img_size, resize).astype(np.float32) / np.float32(255.0)
    mean = np.asarray(mean, dtype=np.float32)
    std = np.asarray(std, dtype=np.float32)
    return (crop[None, :, :] - mean[:, None, None]) / std[:, None, None]
