"""What a predictor needs to know about its model, as one JSON-ready dict: the same dict is built from a checkpoint
for the PyTorch path, stored in an exported ONNX file's ``metadata_props`` (key :data:`METADATA_KEY`) and read back
by :class:`~common.inference.onnx.OnnxPredictor` (docs/guide/predictions.md, "ONNX metadata").

Keys (version :data:`METADATA_VERSION`):

- ``metadata_version`` (int), ``model_name`` (registry name), ``checkpoint`` (file name it came from, or "");
- ``img_size`` (input side ``s``), ``resize`` (shorter side before the centre crop), ``mean``, ``std`` (3 floats
  each), ``class_names`` (output order), ``output`` ("sigmoid probabilities");
- ``val_thresholds`` (one per class, chosen for the highest F1 on the validation patients when the checkpoint was
  saved; ``null`` when the checkpoint has none) and ``thresholds_source`` (where they come from, in words);
- ``preprocess`` (the evaluation view in words).

Required on reading: ``model_name``, ``img_size``, ``resize``, ``mean``, ``std``, ``class_names`` (files exported
before version 2 have only these). Any other key is kept as it is, so later additions (an out-of-distribution
threshold, say) travel in the same dict.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from common.constants import CLASS_NAMES, IMAGENET_MEAN, IMAGENET_STD
from common.data.images import eval_resize
from common.errors import UserError

METADATA_KEY = "dtforcxr8"
METADATA_VERSION = 2
REQUIRED_KEYS = ("model_name", "img_size", "resize", "mean", "std", "class_names")
PREPROCESS = ("8-bit grey image (docs/guide/predictions.md, Pixels); shorter side resized to `resize` with PIL "
              "bilinear; centre crop img_size; x / 255; (x - mean) / std, the grey copied to 3 channels")


def model_metadata(model_name: str, img_size: int, mean: Sequence[float] = IMAGENET_MEAN,
                   std: Sequence[float] = IMAGENET_STD, class_names: Sequence[str] = CLASS_NAMES,
                   val_thresholds=None, thresholds_source: str | None = None, checkpoint: str = "") -> dict:
    """The metadata dict of a model (see the module docstring), checked."""
    info = {
        "metadata_version": METADATA_VERSION, "model_name": str(model_name), "checkpoint": str(checkpoint),
        "img_size": int(img_size), "resize": eval_resize(int(img_size)),
        "mean": [float(v) for v in mean], "std": [float(v) for v in std], "class_names": list(class_names),
        "output": "sigmoid probabilities",
        "val_thresholds": None if val_thresholds is None else [float(t) for t in val_thresholds],
        "thresholds_source": thresholds_source, "preprocess": PREPROCESS,
    }
    return check_metadata(info, f"the metadata of {model_name or 'the model'}")


def checkpoint_metadata(checkpoint: dict, path: str | Path) -> dict:
    """The metadata dict of one of this project's checkpoints (loaded with ``common.runs.checkpoint``).

    The best checkpoint of a run carries ``val_thresholds``; a ``-last.pth`` checkpoint, or one written before
    thresholds were recorded, does not, and ``thresholds_source`` says so.
    """
    name = Path(path).name
    thresholds = checkpoint.get("val_thresholds")
    if thresholds is not None:
        epoch = checkpoint.get("epoch")
        source = (f"max F1 on the validation patients of {name}'s training split"
                  f"{'' if epoch is None else f' (epoch {epoch})'}")
    else:
        source = (f"{name} carries no validation thresholds (only the best checkpoint of a run, modelK.pth, "
                  "records them)")
    return model_metadata(checkpoint["model_name"], checkpoint["img_size"], checkpoint["mean"], checkpoint["std"],
                          checkpoint.get("class_names") or CLASS_NAMES, thresholds, source, checkpoint=name)


def _numbers(value, count: int) -> bool:
    return (isinstance(value, list) and len(value) == count
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value))


def check_metadata(info, source: str) -> dict:
    """``info`` when it is a usable metadata dict; else a :class:`UserError` naming ``source`` and the first problem."""
    if not isinstance(info, dict):
        raise UserError(f"{source} is not a JSON object but {type(info).__name__}")
    missing = [key for key in REQUIRED_KEYS if key not in info]
    if missing:
        raise UserError(f"{source} lacks {', '.join(repr(k) for k in missing)}; export the model again with "
                        "predict.py --export-onnx")
    for key in ("img_size", "resize"):
        if not isinstance(info[key], int) or isinstance(info[key], bool) or info[key] < 1:
            raise UserError(f"{source}: {key!r} must be a positive integer, not {info[key]!r}")
    if info["resize"] < info["img_size"]:
        raise UserError(f"{source}: 'resize' {info['resize']} is smaller than 'img_size' {info['img_size']}")
    for key in ("mean", "std"):
        if not _numbers(info[key], 3):
            raise UserError(f"{source}: {key!r} must be 3 finite numbers, not {info[key]!r}")
    if not all(v > 0 for v in info["std"]):
        raise UserError(f"{source}: 'std' must be positive, not {info['std']!r}")
    names = info["class_names"]
    if (not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names)
            or len(set(names)) != len(names)):
        raise UserError(f"{source}: 'class_names' must be distinct non-empty names, not {names!r}")
    thresholds = info.get("val_thresholds")
    if thresholds is not None and not (_numbers(thresholds, len(names)) and all(0 <= t <= 1 for t in thresholds)):
        raise UserError(f"{source}: 'val_thresholds' must be null or {len(names)} numbers in [0, 1], not "
                        f"{thresholds!r}")
    return info
