"""Performance by patient subgroup and calibration: what distillation may change besides the mean AUROC.

- :func:`read_demographics`: sex, age and view position of every image from a Data_Entry file.
- :func:`subgroup_aurocs`: mean and per-class AUROC by sex, age band and view position (PA/AP), each with a
  patient-level bootstrap interval (``metrics.patient_bootstrap_auroc_ci``).
- :func:`calibration`: per-class expected calibration error (ECE), Brier score and the reliability curve.
- :func:`plot_reliability`: reliability diagrams, one per class.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from sklearn.calibration import calibration_curve
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import brier_score_loss

from common.constants import CLASS_NAMES
from common.data.labels import ages_in_years, read_data_entry_table
from common.errors import UserError
from common.evaluation.metrics import patient_bootstrap_auroc_ci

# Lower edges of the age bands; the last band is open up to MAX_AGE.
AGE_EDGES = (0, 20, 40, 60, 80)
AGE_BANDS = ("0-20", "20-40", "40-60", "60-80", "80+")
# Recorded ages above this are data errors (the 2017 Data_Entry has 16 images aged 148-414): left out of every band.
MAX_AGE = 120
AGE_LEFT_OUT = "age above 120"
VIEWS = ("PA", "AP")
SEXES = ("M", "F")


@dataclass(frozen=True)
class Demographics:
    """Per-image sex (``M``/``F``), age in years (float: months and days converted) and view position (``PA``/``AP``)
    by image name."""

    source: str
    sex: dict
    age: dict
    view: dict


def read_demographics(label_file: str | os.PathLike = "v2020") -> Demographics:
    """Read ``Patient Gender``, ``Patient Age`` and ``View Position`` from a Data_Entry file (``"2017"``, ``"v2020"``
    or a path). 2017's ages carry a unit: ``058Y`` is 58 years, ``020M`` 20 months (1.67 years), ``001D`` one day
    (:func:`common.data.labels.ages_in_years`)."""
    path, _, frame = read_data_entry_table(label_file, columns=("Image Index", "Patient Age", "Patient Gender",
                                                                "View Position"))
    names = frame["Image Index"].str.strip()
    ages = ages_in_years(frame["Patient Age"].tolist(), str(path))
    return Demographics(str(path), dict(zip(names, frame["Patient Gender"].str.strip())),
                        dict(zip(names, ages.tolist())), dict(zip(names, frame["View Position"].str.strip())))


def age_band(age: float) -> str:
    """``0-20``, ``20-40``, ``40-60``, ``60-80`` or ``80+`` (lower edge included: 20 is in ``20-40``; 19.9 in
    ``0-20``), or :data:`AGE_LEFT_OUT` above :data:`MAX_AGE` years."""
    if age < 0:
        raise ValueError(f"negative age {age}")
    if age > MAX_AGE:
        return AGE_LEFT_OUT
    return AGE_BANDS[int(np.searchsorted(AGE_EDGES, age, side="right")) - 1]


# A class enters a subgroup's mean AUROC only when the subgroup holds at least this many positive and negative images
# of it: below that, one image moves the AUROC by a tenth or more and a 2-image group reads 1.000 [1.000, 1.000].
MIN_POSITIVES = 5
MIN_NEGATIVES = 5
SUBGROUP_RULE = (f"a class counts in a subgroup's mean only with at least {MIN_POSITIVES} positive and "
                 f"{MIN_NEGATIVES} negative images there; a subgroup with no such class, or under 2 patients, is n/a")


def _group_scores(targets, probs, patient_ids, rows, n_boot, seed, class_names) -> dict:
    """Mean AUROC and patient bootstrap interval of ``rows`` over the classes that pass the :data:`SUBGROUP_RULE`;
    which classes those are, and why a group that has none is n/a."""
    n_patients = len(set(patient_ids[rows].tolist()))
    positives = targets[rows].sum(axis=0).astype(int)
    negatives = rows.size - positives
    estimable = [c for c in range(len(class_names)) if positives[c] >= MIN_POSITIVES and negatives[c] >= MIN_NEGATIVES]
    entry = {"n_images": int(rows.size), "n_patients": n_patients,
             "positives": dict(zip(class_names, positives.tolist())),
             "classes": [class_names[c] for c in estimable], "n_classes": len(estimable),
             "auroc": dict.fromkeys(class_names)}
    reason = None
    if n_patients < 2:
        reason = "fewer than 2 patients"
    elif not estimable:
        reason = f"no class has {MIN_POSITIVES} positive and {MIN_NEGATIVES} negative images"
    if reason:
        entry.update({"mean_auroc": None, "ci_low": None, "ci_high": None, "n_classes": 0, "classes": [],
                      "not_estimated": reason})
        return entry
    columns = np.asarray(estimable)
    with warnings.catch_warnings():
        # A class can lose one label value in a resample; the bootstrap leaves it out of that resample's mean.
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        ci = patient_bootstrap_auroc_ci(targets[rows][:, columns], probs[rows][:, columns], patient_ids[rows],
                                        n_boot=n_boot, seed=seed)
    names = entry["classes"]
    entry.update({"mean_auroc": ci["mean_auroc"], "ci_low": ci["ci_low"], "ci_high": ci["ci_high"],
                  "auroc": {**entry["auroc"], **dict(zip(names, ci["per_class"]["auroc"]))},
                  "auroc_ci_low": dict(zip(names, ci["per_class"]["ci_low"])),
                  "auroc_ci_high": dict(zip(names, ci["per_class"]["ci_high"]))})
    return entry


def subgroup_aurocs(targets, probs, names: Sequence[str], patient_ids, data_entry: Demographics, n_boot: int = 1000,
                    seed: int = 0, class_names: Sequence[str] = CLASS_NAMES) -> dict:
    """Mean and per-class AUROC by sex, age band and view position, with patient-level 95% intervals.

    Args:
        targets, probs: ``[N, C]`` labels and probabilities of the evaluated images.
        names, patient_ids: the images' names and patients (intervals resample patients).
        data_entry: :func:`read_demographics` of the label file.
        n_boot, seed: bootstrap resamples and seed (one seed: intervals of several models are paired).

    Returns:
        ``{"sex": {"M": group, "F": group}, "age": {"0-20": group, ...}, "view": {"PA": group, "AP": group},
        "rule": SUBGROUP_RULE}``; a group is ``{"n_images", "n_patients", "positives", "classes", "n_classes",
        "mean_auroc", "ci_low", "ci_high", "auroc" {class: value or None}, ...}``: its mean covers ``classes``
        only (:data:`SUBGROUP_RULE`), so two groups' means may cover different classes; a group with none is
        n/a with ``not_estimated`` saying why. Images whose sex or view is outside M/F and PA/AP are counted under
        ``"other"`` of that grouping; images recorded older than :data:`MAX_AGE` under ``age[AGE_LEFT_OUT]``.
    """
    targets, probs = np.asarray(targets), np.asarray(probs, dtype=np.float64)
    patient_ids = np.asarray(patient_ids)
    names = list(names)
    missing = [n for n in names if n not in data_entry.sex]
    if missing:
        raise UserError(f"{len(missing)} evaluated image(s) are not in {data_entry.source} (first: {missing[0]})")
    keys = {
        "sex": ([data_entry.sex[n] for n in names], SEXES, "other"),
        "age": ([age_band(data_entry.age[n]) for n in names], AGE_BANDS, AGE_LEFT_OUT),
        "view": ([data_entry.view[n] for n in names], VIEWS, "other"),
    }
    result = {}
    for grouping, (values, groups, rest) in keys.items():
        values = np.asarray(values)
        result[grouping] = {g: _group_scores(targets, probs, patient_ids, np.flatnonzero(values == g), n_boot, seed,
                                             class_names) for g in groups}
        other = np.flatnonzero(~np.isin(values, groups))
        if other.size:
            result[grouping][rest] = {"n_images": int(other.size),
                                      "n_patients": len(set(patient_ids[other].tolist()))}
    result["rule"] = SUBGROUP_RULE
    return result


def _ece(labels: np.ndarray, probs: np.ndarray, n_bins: int) -> float:
    """Expected calibration error with ``n_bins`` equal-width bins, binned exactly as ``calibration_curve``
    (strategy "uniform") bins, so the ECE and the reliability diagram describe the same bins:
    ``sum_b n_b / N * |mean(label)_b - mean(prob)_b|``."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.searchsorted(edges[1:-1], probs)
    counts = np.bincount(bins, minlength=n_bins)
    label_sums = np.bincount(bins, weights=labels, minlength=n_bins)
    prob_sums = np.bincount(bins, weights=probs, minlength=n_bins)
    filled = counts > 0
    return float(np.abs(label_sums[filled] - prob_sums[filled]).sum() / probs.size)


def calibration(targets, probs, n_bins: int = 15, class_names: Sequence[str] = CLASS_NAMES) -> dict:
    """Per-class calibration of sigmoid probabilities.

    Returns:
        ``{"n_bins", "per_class": {class: {"ece", "brier", "prob_pred", "prob_true"}}, "mean_ece", "mean_brier"}``;
        Brier from ``sklearn.metrics.brier_score_loss``; ``prob_pred``/``prob_true`` are
        ``sklearn.calibration.calibration_curve``'s points (non-empty bins only).
    """
    targets = np.asarray(targets).astype(int)
    probs = np.asarray(probs, dtype=np.float64)
    if targets.shape != probs.shape or targets.ndim != 2 or targets.shape[1] != len(class_names):
        raise ValueError(f"labels {targets.shape} and probabilities {probs.shape} must both be [N, {len(class_names)}]")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    if probs.size and (probs.min() < 0 or probs.max() > 1):
        raise ValueError("calibration needs probabilities in [0, 1] (were logits passed?)")
    per_class = {}
    for c, name in enumerate(class_names):
        prob_true, prob_pred = calibration_curve(targets[:, c], probs[:, c], n_bins=n_bins, strategy="uniform")
        per_class[name] = {
            "ece": _ece(targets[:, c].astype(np.float64), probs[:, c], n_bins),
            # pos_label=1: a class without positives in this split still has a defined Brier score.
            "brier": float(brier_score_loss(targets[:, c], probs[:, c], pos_label=1)),
            "prob_pred": prob_pred.tolist(), "prob_true": prob_true.tolist(),
        }
    return {"n_bins": n_bins, "per_class": per_class,
            "mean_ece": float(np.mean([v["ece"] for v in per_class.values()])),
            "mean_brier": float(np.mean([v["brier"] for v in per_class.values()]))}


def plot_reliability(path: str | os.PathLike, calibration_result: dict, title: str = "") -> Path:
    """Reliability diagrams (observed frequency against mean predicted probability) in a 4 x 4 grid, one per class,
    with the ECE in each title; written atomically as PNG."""
    from common.evaluation.plots import _save, plt

    from common.evaluation.plots import wrap_title

    per_class = calibration_result["per_class"]
    figure, axes = plt.subplots(4, 4, figsize=(12, 12), layout="constrained")
    for index, axis in enumerate(axes.flat):
        if index >= len(per_class):
            axis.axis("off")
            continue
        name, entry = list(per_class.items())[index]
        axis.plot([0, 1], [0, 1], linestyle=":", color="grey")
        axis.plot(entry["prob_pred"], entry["prob_true"], marker="o", markersize=3)
        axis.set(xlim=(0, 1), ylim=(0, 1))
        axis.set_title(f"{name} (ECE {entry['ece']:.3f})", fontsize=9)
        axis.set_xlabel("mean predicted probability", fontsize=7)
        axis.set_ylabel("observed frequency", fontsize=7)
        axis.tick_params(labelsize=7)
    figure.suptitle(wrap_title(title or f"reliability ({calibration_result['n_bins']} bins; mean ECE "
                                        f"{calibration_result['mean_ece']:.3f}, mean Brier "
                                        f"{calibration_result['mean_brier']:.3f})", 12))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _save(figure, path)
    return path
