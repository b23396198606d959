"""Image conversions that need only numpy and Pillow, so the torch-free ONNX predictor (``predict.py --onnx``) can
read images exactly as training and evaluation do."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import UserError


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
