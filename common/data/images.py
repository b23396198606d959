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


def to_grayscale(image: Image.Image) -> Image.Image:
    """Convert any NIH PNG (8-bit L, 16-bit I;16/I, RGB, RGBA, LA, P) to 8-bit grayscale ``L``.

    16-bit images are stretched from their own [min, max] range to 0..255 (a 12-bit image stays visible).
    """
    if image.mode == "L":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit containers often hold 10-, 12- or 14-bit data: dividing by 65535 would leave a 12-bit X-ray
        # nearly black. Stretch the values the image really uses, [min, max], to 0..255.
        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        scaled = (array - low) * (255.0 / (high - low)) if high > low else np.zeros_like(array)
        return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "PA"):
        # The few RGBA NIH files are opaque grey images; drop alpha before taking the luminance.
        image = image.convert("RGB")
    return image.convert("L")


def load_png(path: Path) -> Image.Image:
    """Open one image file (PNG, or any format Pillow reads) as 8-bit grayscale; an unreadable file is a
    :class:`UserError` naming it."""
    try:
        with Image.open(path) as handle:
            handle.load()
            return to_grayscale(handle)
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise UserError(f"cannot read image {path}: {err}") from None
