"""Score another model's published predictions (a CSV) on this project's test images.

The layout is jrzech/reproduce-chexnet's ``preds.csv``: ``Image Index,prob_Atelectasis,...,prob_Hernia``. Columns are
matched by class *name*, never by position (torchxrayvision, for one, orders its classes alphabetically).
"""
from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from common.constants import CLASS_NAMES
from common.data.labels import read_text
from common.errors import UserError
from common.evaluation.metrics import evaluation_report


def _key(column: str) -> str:
    # "Pleural Thickening", "Pleural_Thickening" and "prob_Pleural_Thickening" all name one class.
    return column.strip().replace(" ", "_")


def read_predictions_csv(path: str | os.PathLike, names_expected: Sequence[str],
                         class_names: Sequence[str] = CLASS_NAMES) -> np.ndarray:
    """Read probabilities ``[N, C]`` for ``names_expected`` (in that order) from a predictions CSV.

    Columns: ``Image Index`` and, per class, ``prob_<Class>`` or the bare class name (spaces or underscores);
    other columns are ignored. The file must hold exactly the expected images: missing or extra images, a repeated
    image, a missing or doubled class column, or a value that is not a probability in [0, 1] is one
    :class:`UserError` naming the file (with the counts, or the line).
    """
    path = Path(path)
    reader = csv.reader(io.StringIO(read_text(path)))
    header = next(reader, None)
    if not header:
        raise UserError(f"{path} is empty")
    keys = [_key(c) for c in header]
    if "Image_Index" not in keys:
        raise UserError(f"{path} has no 'Image Index' column")
    name_column = keys.index("Image_Index")
    columns = []
    for cls in class_names:
        matches = [i for i, k in enumerate(keys) if k in (f"prob_{_key(cls)}", _key(cls))]
        if not matches:
            raise UserError(f"{path} has no column for class {cls} (expected prob_{_key(cls)} or {cls})")
        if len(matches) > 1:
            raise UserError(f"{path} has {len(matches)} columns for class {cls}: "
                            f"{', '.join(header[i] for i in matches)}")
        columns.append(matches[0])
    values: dict[str, list[float]] = {}
    for number, row in enumerate(reader, start=2):
        if not any(field.strip() for field in row):
            continue
        if len(row) < len(header):
            raise UserError(f"{path}, line {number}: {len(row)} fields, the header has {len(header)}")
        name = row[name_column].strip()
        if name in values:
            raise UserError(f"{path}, line {number}: image {name} is listed twice")
        try:
            probs = [float(row[i]) for i in columns]
        except ValueError:
            raise UserError(f"{path}, line {number}: a probability of {name} is not a number") from None
        if not all(math.isfinite(p) and 0.0 <= p <= 1.0 for p in probs):
            raise UserError(f"{path}, line {number}: probabilities of {name} must lie in [0, 1] (logits?)")
        values[name] = probs
    expected = list(names_expected)
    missing = [n for n in expected if n not in values]
    extra = sorted(set(values) - set(expected))
    if missing or extra:
        raise UserError(f"{path} does not hold the {len(expected)} evaluated images: {len(missing)} missing"
                        f"{' (first: ' + missing[0] + ')' if missing else ''}, {len(extra)} extra"
                        f"{' (first: ' + extra[0] + ')' if extra else ''}, {len(values)} in the file")
    return np.asarray([values[n] for n in expected], dtype=np.float64)


def score_predictions_csv(path: str | os.PathLike, names: Sequence[str], targets: np.ndarray,
                          class_names: Sequence[str] = CLASS_NAMES, val_thresholds=None) -> tuple[dict, np.ndarray]:
    """``metrics.evaluation_report`` of a predictions CSV on the images ``names`` with labels ``targets``.

    Returns:
        (report with ``"source": str(path)`` added, probabilities ``[N, C]``).
    """
    probs = read_predictions_csv(path, names, class_names)
    report = evaluation_report(targets, probs, class_names, val_thresholds=val_thresholds)
    report["source"] = str(path)
    return report, probs
