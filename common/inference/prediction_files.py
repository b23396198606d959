"""The one layout of every per-image predictions file this project writes and reads (docs/guide/predictions.md).

One row per image, comma-separated, UTF-8 (a byte-order mark is accepted on reading), first line the header:

- ``Image Index``: the image's file name (first column);
- ``Patient ID``: optional (``test-model.py`` writes it);
- ``prob_<Class>``: the probability of each of the 14 classes, ``<Class>`` spelled as in :data:`CLASS_NAMES`
  (underscores: ``prob_Pleural_Thickening``); jrzech/reproduce-chexnet's ``preds.csv`` layout;
- ``label_<Class>``: optional 0/1 ground truth (``test-model.py``);
- ``logit_<Class>``: optional float32 logits, written exactly (``test-model.py``; the comparison reuses them);
- any other column (an out-of-distribution score, say) is ignored by the reader.

``predict.py`` writes ``Image Index,prob_<Class>...`` with 6 decimals; ``test-model.py`` writes every column with
the probabilities in full (shortest round-trip) precision, so scoring its file again reproduces its report exactly.
The per-class thresholds ``predict.py`` applies go to a side file (:func:`thresholds_csv`), so the predictions file
keeps the layout other tools read. The reader (:func:`read_probabilities`) never takes labels for probabilities.
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
from common.errors import UserError

IMAGE_COLUMN = "Image Index"
PATIENT_COLUMN = "Patient ID"
PROB_PREFIX = "prob_"
LABEL_PREFIX = "label_"
LOGIT_PREFIX = "logit_"
# test-model.py before this layout wrote p_<Class> probabilities beside bare <Class> 0/1 labels; such files are read
# by their p_ columns.
LEGACY_PROB_PREFIX = "p_"
THRESHOLD_COLUMNS = ("class", "column", "threshold", "source")


def column_key(name: str) -> str:
    """A column or class name as compared: ``"Pleural Thickening"`` and ``"Pleural_Thickening"`` are one class."""
    return name.strip().replace(" ", "_")


def prob_column(class_name: str) -> str:
    return PROB_PREFIX + column_key(class_name)


def label_column(class_name: str) -> str:
    return LABEL_PREFIX + column_key(class_name)


def logit_column(class_name: str) -> str:
    return LOGIT_PREFIX + column_key(class_name)


def _exact(value) -> str:
    # repr of a Python float is the shortest text that reads back as the same float64.
    return repr(float(value))


def format_predictions(names: Sequence[str], probs: np.ndarray, class_names: Sequence[str] = CLASS_NAMES, *,
                       decimals: int | None = 6, patient_ids=None, labels=None, logits=None) -> str:
    """The text of a predictions file (header and one row per image), columns in the order of the module docstring.

    Args:
        names: ``Image Index`` values.
        probs: ``[N, C]`` probabilities.
        decimals: digits after the point of the probabilities; ``None`` writes them exactly (round trip).
        patient_ids, labels, logits: optional ``[N]``, ``[N, C]`` 0/1 and ``[N, C]`` float32 columns.
    """
    probs = np.asarray(probs, dtype=np.float64)
    header = [IMAGE_COLUMN]
    if patient_ids is not None:
        header.append(PATIENT_COLUMN)
    header += [prob_column(c) for c in class_names]
    if labels is not None:
        header += [label_column(c) for c in class_names]
    if logits is not None:
        header += [logit_column(c) for c in class_names]
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(header)
    number = _exact if decimals is None else (lambda value: f"{float(value):.{decimals}f}")
    for row, name in enumerate(names):
        cells = [name]
        if patient_ids is not None:
            cells.append(str(int(patient_ids[row])))
        cells += [number(p) for p in probs[row]]
        if labels is not None:
            cells += [str(int(v)) for v in labels[row]]
        if logits is not None:
            # float32 values: 9 significant digits give the same float32 back.
            cells += [f"{float(v):.9g}" for v in logits[row]]
        writer.writerow(cells)
    return table.getvalue()


def _read_text(path: Path) -> str:
    from common.data.labels import read_text  # pandas: imported only when a file is read

    # Spreadsheet programs save "CSV UTF-8" with a byte-order mark before the first header name.
    return read_text(path).removeprefix("\ufeff")


def _probability_columns(path: Path, header: list[str], class_names: Sequence[str]) -> list[int]:
    """The column of each class's probabilities: ``prob_<Class>``, else the legacy ``p_<Class>``, else the bare
    class name (other tools' files). Two probability columns for one class are refused; a bare class column beside a
    ``prob_``/``p_`` one is a label column and is not read."""
    keys = [column_key(c) for c in header]
    columns = []
    for cls in class_names:
        key = column_key(cls)
        prefixed = [i for i, k in enumerate(keys) if k in (PROB_PREFIX + key, LEGACY_PROB_PREFIX + key)]
        bare = [i for i, k in enumerate(keys) if k == key]
        if len(prefixed) > 1 or (not prefixed and len(bare) > 1):
            doubled = prefixed if len(prefixed) > 1 else bare
            raise UserError(f"{path} has {len(doubled)} probability columns for class {cls}: "
                            f"{', '.join(header[i] for i in doubled)}")
        if prefixed:
            columns.append(prefixed[0])
        elif bare:
            columns.append(bare[0])
        else:
            raise UserError(f"{path} has no column for class {cls} (expected {prob_column(cls)}, or the bare class "
                            "name)")
    return columns


def read_probabilities(path: str | os.PathLike, names_expected: Sequence[str],
                       class_names: Sequence[str] = CLASS_NAMES) -> np.ndarray:
    """Probabilities ``[N, C]`` for ``names_expected`` (in that order) from a predictions file (``.csv`` or
    ``.csv.gz``).

    Columns are matched by name, never by position (:func:`_probability_columns`); other columns are ignored. Refused,
    each with one :class:`UserError` naming the file: no ``Image Index`` column, a missing or doubled class column,
    a row with too few fields, an image listed twice, a value that is not a number in [0, 1] (logits?), a class
    column that holds only the values 0 and 1 (labels or yes/no decisions, not probabilities), and missing or extra
    images (with the counts).
    """
    path = Path(path)
    reader = csv.reader(io.StringIO(_read_text(path)))
    header = next(reader, None)
    if not header:
        raise UserError(f"{path} is empty")
    keys = [column_key(c) for c in header]
    if column_key(IMAGE_COLUMN) not in keys:
        raise UserError(f"{path} has no {IMAGE_COLUMN!r} column (its header starts {', '.join(header[:3])})")
    name_column = keys.index(column_key(IMAGE_COLUMN))
    columns = _probability_columns(path, header, class_names)
    values: dict[str, list[float]] = {}
    for number, row in enumerate(reader, start=2):
        if not any(cell.strip() for cell in row):
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
    if values:
        table = np.asarray(list(values.values()), dtype=np.float64)
        for position, column in enumerate(columns):
            seen = set(np.unique(table[:, position]).tolist())
            if seen == {0.0, 1.0}:
                raise UserError(f"{path}: column {header[column]!r} holds only 0 and 1 over {len(values)} images: "
                                "labels or yes/no decisions, not probabilities (write the probabilities as "
                                f"{prob_column(class_names[position])})")
    expected = list(names_expected)
    missing = [n for n in expected if n not in values]
    extra = sorted(set(values) - set(expected))
    if missing or extra:
        raise UserError(f"{path} does not hold the {len(expected)} evaluated images: {len(missing)} missing"
                        f"{' (first: ' + missing[0] + ')' if missing else ''}, {len(extra)} extra"
                        f"{' (first: ' + extra[0] + ')' if extra else ''}, {len(values)} in the file")
    return np.asarray([values[n] for n in expected], dtype=np.float64)


def thresholds_path(predictions_path: str | os.PathLike) -> Path:
    """The side file of a predictions file: ``predictions.csv`` -> ``predictions-thresholds.csv``."""
    path = Path(predictions_path)
    stem = path.name[:-len(".csv.gz")] if path.name.endswith(".csv.gz") else path.stem
    return path.with_name(f"{stem}-thresholds.csv")


def thresholds_csv(class_names: Sequence[str], thresholds, source: str) -> str:
    """The thresholds side file: ``class,column,threshold,source``, one row per class; an empty threshold when the
    model carries none (``source`` says why)."""
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(THRESHOLD_COLUMNS)
    for index, cls in enumerate(class_names):
        value = "" if thresholds is None else _exact(thresholds[index])
        writer.writerow([cls, prob_column(cls), value, source])
    return table.getvalue()
