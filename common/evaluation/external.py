"""Score another model's published predictions (a CSV) on this project's test images.

The layout is the project's one predictions layout (:mod:`common.inference.prediction_files`, docs/guide/predictions.md):
jrzech/reproduce-chexnet's ``Image Index,prob_Atelectasis,...,prob_Hernia``, this project's own ``test-model.py``
files, and other tools' bare class-name columns. Columns are matched by class *name*, never by position
(torchxrayvision, for one, orders its classes alphabetically); labels are never read as probabilities.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from common.constants import CLASS_NAMES
from common.evaluation.metrics import evaluation_report
from common.inference.prediction_files import read_probabilities


def read_predictions_csv(path: str | os.PathLike, names_expected: Sequence[str],
                         class_names: Sequence[str] = CLASS_NAMES) -> np.ndarray:
    """Probabilities ``[N, C]`` for ``names_expected`` (in that order) from a predictions file: see
    :func:`common.inference.prediction_files.read_probabilities` for the columns read and the files refused."""
    return read_probabilities(path, names_expected, class_names)


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
