"""Evaluation metrics for the 14-label ChestX-ray14 task, all computed with scikit-learn.

Conventions used throughout:

- ``y_true`` is an [N, C] array of 0/1 labels (cast to int before any sklearn call, because ``roc_auc_score`` rejects
  float or object labels; docs/data.md §10).
- ``y_prob`` / ``y_score`` are [N, C] sigmoid **probabilities** (the caller applies the sigmoid once). Functions that
  threshold scores check that they lie in [0, 1], so logits cannot silently be thresholded at 0.5 (docs/original.md §13, bug 20).
- A class is predicted positive when ``prob >= threshold``: the rule ``precision_recall_curve`` uses, so a threshold
  chosen on validation data reproduces its F1 exactly.
- A class whose evaluated labels hold a single value has an undefined AUROC: it is reported as ``None`` ("n/a") with a
  warning and left out of the mean, never silently dropped and never a crash.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
from scipy.sparse import csr_array
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_curve,
    roc_auc_score,
)

from common.runtime.progress import progress

BINARY_METRICS = ("f1", "accuracy", "sensitivity", "specificity")


def _as_label_matrix(y_true, num_classes=None):
    """[N, C] int array of 0/1 labels; ValueError for anything else."""
    labels = np.asarray(y_true)
    if labels.ndim != 2:
        raise ValueError(f"labels must be a 2-D [N, C] array, got shape {labels.shape}")
    if num_classes is not None and labels.shape[1] != num_classes:
        raise ValueError(f"labels have {labels.shape[1]} columns, expected {num_classes}")
    if labels.size and not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    return labels.astype(np.int64)


def _as_score_matrix(y_score, shape, probabilities):
    """[N, C] float64 array of finite scores with the given shape; if ``probabilities``, also within [0, 1]."""
    scores = np.asarray(y_score, dtype=np.float64)
    if scores.shape != tuple(shape):
        raise ValueError(f"scores have shape {scores.shape}, labels have shape {tuple(shape)}")
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or infinite values")
    if probabilities and scores.size and (scores.min() < 0.0 or scores.max() > 1.0):
        raise ValueError("expected sigmoid probabilities in [0, 1], got values outside that range "
                         "(were logits passed? apply the sigmoid once before thresholding)")
    return scores


def _single_value_classes(labels):
    """Boolean [C]: True where a column holds only one label value (AUROC undefined)."""
    positives = labels.sum(axis=0)
    return (positives == 0) | (positives == labels.shape[0])


def per_class_auroc(y_true, y_score, class_names) -> list:
    """AUROC per class with ``sklearn.metrics.roc_auc_score``.

    Args:
        y_true: [N, C] 0/1 labels.
        y_score: [N, C] scores (probabilities or logits: AUROC only depends on the ranking).
        class_names: C names, used in the warnings.

    Returns:
        list of C floats; ``None`` for a class whose labels hold a single value in this split, with an
        ``UndefinedMetricWarning`` naming the class.
    """
    class_names = list(class_names)
    labels = _as_label_matrix(y_true, len(class_names))
    scores = _as_score_matrix(y_score, labels.shape, probabilities=False)
    undefined = _single_value_classes(labels)
    result = []
    for index, name in enumerate(class_names):
        if undefined[index]:
            value = int(labels[0, index]) if labels.shape[0] else "none"
            warnings.warn(f"AUROC of {name} is undefined (n/a): every one of the {labels.shape[0]} evaluated "
                          f"images has label {value}; it is left out of the mean AUROC",
                          UndefinedMetricWarning, stacklevel=2)
            result.append(None)
        else:
            result.append(float(roc_auc_score(labels[:, index], scores[:, index])))
    return result


def mean_auroc(aurocs) -> float:
    """Unweighted mean of the defined per-class AUROCs (``None``/NaN entries are left out); NaN if none is defined."""
    defined = [float(v) for v in aurocs if v is not None and not math.isnan(float(v))]
    return float(np.mean(defined)) if defined else float("nan")


def choose_thresholds(y_true, y_prob, class_names=None) -> np.ndarray:
    """Per-class probability thresholds that maximise the positive-class F1 on the given (validation) data.

    Uses ``sklearn.metrics.precision_recall_curve``; each candidate threshold is a score value, and a class is
    predicted positive when ``prob >= threshold``. Among tied F1 values the lowest threshold wins. A class with no
    positive label gets 0.5, with an ``UndefinedMetricWarning`` naming it (by ``class_names`` when given).

    Returns:
        float64 array [C].
    """
    labels = _as_label_matrix(y_true)
    probs = _as_score_matrix(y_prob, labels.shape, probabilities=True)
    thresholds = np.full(labels.shape[1], 0.5)
    for index in range(labels.shape[1]):
        if labels[:, index].sum() == 0:
            name = class_names[index] if class_names is not None else f"class index {index}"
            warnings.warn(f"{name} has no positive label in the threshold-selection data; "
                          f"its threshold is set to 0.5", UndefinedMetricWarning, stacklevel=2)
            continue
        precision, recall, candidates = precision_recall_curve(labels[:, index], probs[:, index])
        # The last (precision=1, recall=0) point has no threshold.
        precision, recall = precision[:-1], recall[:-1]
        denominator = precision + recall
        f1 = np.divide(2 * precision * recall, denominator, out=np.zeros_like(denominator), where=denominator > 0)
        thresholds[index] = candidates[int(np.argmax(f1))]
    return thresholds


def _nanmean_or_nan(values):
    """Mean of the non-NaN values, NaN (without a RuntimeWarning) when all are NaN."""
    values = np.asarray(values, dtype=np.float64)
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else float("nan")


def binary_metrics(y_true, y_prob, thresholds) -> dict:
    """Per-class and macro F1 / accuracy / sensitivity / specificity at the given probability thresholds.

    - F1 is the positive-class F1 (``f1_score(pos_label=1, average='binary', zero_division=0)``), not the two-value
      macro F1 of the original project (docs/original.md §8), which also averaged in the negative-class F1.
    - Sensitivity TP/(TP+FN) and specificity TN/(TN+FP) come from ``confusion_matrix(labels=[0, 1])``; they are NaN
      when undefined (no positive, respectively no negative, label).
    - Macro values are NaN-ignoring means over classes.

    Args:
        y_true: [N, C] 0/1 labels.
        y_prob: [N, C] probabilities in [0, 1].
        thresholds: a scalar or [C] thresholds; predicted positive when ``prob >= threshold``.

    Returns:
        dict with lists ``thresholds``, ``f1``, ``accuracy``, ``sensitivity``, ``specificity`` (length C, floats,
        NaN where undefined), ``predicted_positives`` (length C, ints: images predicted positive) and ``macro``
        (dict of the four macro values). A class with no predicted positive is a degenerate operating point: its F1
        is 0 and its accuracy is the share of negative labels, whatever the model has learnt.
    """
    labels = _as_label_matrix(y_true)
    probs = _as_score_matrix(y_prob, labels.shape, probabilities=True)
    num_classes = labels.shape[1]
    thresholds = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (num_classes,)).copy()
    predictions = (probs >= thresholds[None, :]).astype(np.int64)
    result = {"thresholds": thresholds.tolist(), **{name: [] for name in BINARY_METRICS},
              "predicted_positives": [int(count) for count in predictions.sum(axis=0)]}
    for index in range(num_classes):
        truth, predicted = labels[:, index], predictions[:, index]
        tn, fp, fn, tp = confusion_matrix(truth, predicted, labels=[0, 1]).ravel()
        result["f1"].append(float(f1_score(truth, predicted, pos_label=1, average="binary", zero_division=0)))
        result["accuracy"].append(float(accuracy_score(truth, predicted)))
        result["sensitivity"].append(float(tp / (tp + fn)) if tp + fn > 0 else float("nan"))
        result["specificity"].append(float(tn / (tn + fp)) if tn + fp > 0 else float("nan"))
    result["macro"] = {name: _nanmean_or_nan(result[name]) for name in BINARY_METRICS}
    return result


def _json_number(value):
    """float, or None for NaN / None, so the report is strict JSON."""
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def _threshold_block(metrics, class_names):
    """Reshape a ``binary_metrics`` result into per-class dicts keyed by class name, NaN -> None; with
    ``predicted_positives`` per class and ``no_positive_classes``, the classes predicted positive for no image (their
    F1 and accuracy at this threshold say nothing about skill)."""
    block = {"thresholds": dict(zip(class_names, (float(t) for t in metrics["thresholds"])))}
    for name in BINARY_METRICS:
        block[name] = {cls: _json_number(v) for cls, v in zip(class_names, metrics[name])}
    block["macro"] = {name: _json_number(metrics["macro"][name]) for name in BINARY_METRICS}
    block["predicted_positives"] = dict(zip(class_names, metrics["predicted_positives"]))
    block["no_positive_classes"] = [cls for cls, count in zip(class_names, metrics["predicted_positives"])
                                    if count == 0]
    return block


def evaluation_report(y_true, y_prob, class_names, val_thresholds=None) -> dict:
    """A JSON-serialisable evaluation of one split.

    Args:
        y_true: [N, C] 0/1 labels.
        y_prob: [N, C] sigmoid probabilities.
        class_names: the C class names (keys of the per-class dicts, in this order).
        val_thresholds: optional [C] thresholds chosen on the validation split (``choose_thresholds``).

    Returns:
        dict with ``classes``, ``n_images``, ``positives`` {class: count}, ``auroc`` {class: float or None},
        ``mean_auroc`` (None if no class is defined), ``n_auroc_classes``, and block ``threshold_0.5`` (plus
        ``threshold_val_max_f1`` when ``val_thresholds`` is given), each with ``thresholds``, ``f1``,
        ``accuracy``, ``sensitivity``, ``specificity`` as {class: value or None}, ``macro`` {metric: value},
        ``predicted_positives`` {class: images predicted positive} and ``no_positive_classes`` (the classes with
        none: a degenerate operating point).
    """
    class_names = list(class_names)
    labels = _as_label_matrix(y_true, len(class_names))
    probs = _as_score_matrix(y_prob, labels.shape, probabilities=True)
    aurocs = per_class_auroc(labels, probs, class_names)
    report = {
        "classes": class_names,
        "n_images": int(labels.shape[0]),
        "positives": {name: int(count) for name, count in zip(class_names, labels.sum(axis=0))},
        "auroc": dict(zip(class_names, aurocs)),
        "mean_auroc": _json_number(mean_auroc(aurocs)),
        "n_auroc_classes": sum(value is not None for value in aurocs),
        "threshold_0.5": _threshold_block(binary_metrics(labels, probs, 0.5), class_names),
    }
    if val_thresholds is not None:
        val_thresholds = np.asarray(val_thresholds, dtype=np.float64)
        if val_thresholds.shape != (len(class_names),):
            raise ValueError(f"val_thresholds must have shape ({len(class_names)},), got {val_thresholds.shape}")
        report["threshold_val_max_f1"] = _threshold_block(binary_metrics(labels, probs, val_thresholds),
                                                          class_names)
    return report


def _patient_index(patient_ids, num_images):
    """(inverse [N] into unique patients, number of patients)."""
    patient_ids = np.asarray(patient_ids)
    if patient_ids.shape != (num_images,):
        raise ValueError(f"patient_ids must have shape ({num_images},), got {patient_ids.shape}")
    _, inverse = np.unique(patient_ids, return_inverse=True)
    return inverse.reshape(-1), int(inverse.max()) + 1 if num_images else 0


class PatientWeightedAuroc:
    """Exact AUROC of each class of one model on patient resamples, from the patients' multiplicities.

    A resample is a vector ``counts`` [n_patients] (how many times each patient was drawn); each image weighs its
    patient's count. With integer weights the AUROC is the Mann-Whitney statistic with ties counted one half,
    ``sum_g P_g * (N_below_g + N_g / 2) / (P * N)`` over the groups g of images with one score value, where ``P_g``
    and ``N_g`` are the positive and negative weight of group g, ``N_below_g`` the negative weight of lower scores and
    ``P``, ``N`` the totals: the area ``roc_curve`` + trapezoidal ``auc`` (that is, ``roc_auc_score``) compute.

    Each class's images are sorted by score and grouped into ties once, at construction, into sparse
    [groups, patients] matrices of image counts (positives, negatives); a resample then costs two sparse products
    and a cumulative sum, with none of scikit-learn's per-call input checks (docs/guide/benchmarks.md). Every
    intermediate is a whole or half-whole number below 2**53, so the sums are exact in float64 and the one division
    rounds once: the result is the correctly rounded AUROC, within a few ulp of ``roc_auc_score``'s
    (tests/test_metrics.py checks 1e-12 with ties, all-equal scores and single-label classes).
    """

    def __init__(self, labels: np.ndarray, scores: np.ndarray, inverse: np.ndarray, n_patients: int):
        """``labels`` [N, C] 0/1, ``scores`` [N, C] finite, ``inverse`` [N] each image's patient in 0..n_patients-1."""
        num_images, num_classes = labels.shape
        if num_images == 0:
            raise ValueError("an AUROC needs at least one image")
        rows, columns, positive = [], [], []
        self._first_group = np.zeros(num_classes + 1, dtype=np.int64)
        for c in range(num_classes):
            order = np.argsort(scores[:, c], kind="stable")
            # Group index of each sorted image: a new group wherever the score changes (exact equality, as sklearn).
            group = self._first_group[c] + np.concatenate(([0], np.cumsum(np.diff(scores[order, c]) != 0)))
            self._first_group[c + 1] = group[-1] + 1
            rows.append(group)
            columns.append(inverse[order])
            positive.append(labels[order, c] == 1)
        rows, columns, positive = np.concatenate(rows), np.concatenate(columns), np.concatenate(positive)
        shape = (int(self._first_group[-1]), n_patients)

        def count_matrix(keep):
            # Duplicate (group, patient) entries are summed: how many such images the patient has in the group.
            return csr_array((np.ones(int(keep.sum())), (rows[keep], columns[keep])), shape=shape)

        self._negatives = count_matrix(~positive)
        positives = count_matrix(positive)
        # Only groups holding a positive image add to the numerator: keep those rows of the positive matrix.
        self._positive_groups = np.flatnonzero(np.diff(positives.indptr) > 0)
        self._positives = positives[self._positive_groups]
        self._class_bounds = np.searchsorted(self._positive_groups, self._first_group)
        self._num_classes = num_classes

    def __call__(self, counts: np.ndarray) -> np.ndarray:
        """[C] AUROCs for one resample (``counts`` float64 [n_patients]); NaN where a class has one label value."""
        negative = self._negatives @ counts
        # Negative weight at or below each group, over the classes in order (the class's own start is taken off).
        negative_through = np.concatenate(([0.0], np.cumsum(negative)))
        positive = self._positives @ counts
        groups = self._positive_groups
        term = positive * (negative_through[groups + 1] - 0.5 * negative[groups])
        term_through = np.concatenate(([0.0], np.cumsum(term)))
        positive_through = np.concatenate(([0.0], np.cumsum(positive)))
        if (2.0 * max(negative_through[-1], positive_through[-1])) ** 2 >= 2.0 ** 53:
            raise ValueError("the resample's total weight is too large for the exact float64 AUROC")
        start, stop = self._class_bounds[:-1], self._class_bounds[1:]
        class_positive = positive_through[stop] - positive_through[start]
        negative_before = negative_through[self._first_group[:-1]]
        class_negative = negative_through[self._first_group[1:]] - negative_before
        numerator = term_through[stop] - term_through[start] - negative_before * class_positive
        defined = (class_positive > 0) & (class_negative > 0)
        result = np.full(self._num_classes, np.nan)
        result[defined] = numerator[defined] / (class_positive[defined] * class_negative[defined])
        return result


def _bootstrap_class_aurocs(labels, score_list, patient_ids, n_boot, seed):
    """Per-resample, per-model, per-class AUROC under a patient-level (cluster) bootstrap.

    Each resample draws ``n_patients`` patients with replacement and takes all images of every drawn patient. It is
    represented by multiplicity weights (image weight = how many times its patient was drawn); with integer weights
    the weighted AUROC equals the AUROC of the resample with the images physically repeated (ties included), and
    zero-weight images are simply absent. All models share each resample. The AUROC of a resample is computed
    exactly by :class:`PatientWeightedAuroc` (equal to ``roc_auc_score`` on the repeated images to 1e-12; the
    random draws are those of the earlier ``roc_curve`` implementation, so intervals did not move).

    Returns:
        (aurocs [n_boot, M, C] with NaN where a class holds a single label value in that resample, n_patients).
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    num_images, num_classes = labels.shape
    inverse, n_patients = _patient_index(patient_ids, num_images)
    if n_patients < 2:
        raise ValueError("a patient-level bootstrap needs at least two patients")
    models = [PatientWeightedAuroc(labels, scores, inverse, n_patients) for scores in score_list]
    rng = np.random.default_rng(seed)
    result = np.full((n_boot, len(score_list), num_classes), np.nan)
    # About 2 ms per resample and model at the official test size: a bar only for the long ones.
    for b in progress(range(n_boot), "patient bootstrap", unit="resample", disable=n_boot * num_images < 20_000_000):
        counts = np.bincount(rng.integers(0, n_patients, size=n_patients), minlength=n_patients).astype(np.float64)
        for m, model in enumerate(models):
            result[b, m] = model(counts)
    return result, n_patients


def _nanmean_rows(values):
    """Row-wise mean ignoring NaN; NaN (no warning) for all-NaN rows."""
    counts = (~np.isnan(values)).sum(axis=-1)
    sums = np.nansum(values, axis=-1)
    return np.divide(sums, counts, out=np.full(sums.shape, np.nan), where=counts > 0)


def _percentile_ci(values, confidence):
    """(low, high) percentile interval of the non-NaN values; (None, None) when there are none."""
    finite = values[~np.isnan(values)]
    if finite.size == 0:
        return None, None
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(finite, [tail, 100.0 - tail])
    return float(low), float(high)


def _validated_inputs(y_true, scores):
    labels = _as_label_matrix(y_true)
    return labels, [_as_score_matrix(s, labels.shape, probabilities=False) for s in scores]


def patient_bootstrap_auroc_ci(y_true, prob, patient_ids, n_boot=1000, seed=0, confidence=0.95) -> dict:
    """Patient-level (cluster) bootstrap confidence interval of one model's mean and per-class AUROC.

    Resampling is as in :func:`patient_bootstrap_auroc_diff` (same seed -> same resamples, so intervals of several
    models computed with one seed are paired). In each resample the mean is taken over the classes with both label
    values present.

    Returns:
        dict with ``mean_auroc`` (full set), ``ci_low``, ``ci_high``, ``per_class`` (lists of length C ``auroc``,
        ``ci_low``, ``ci_high``; None where undefined), ``n_boot``, ``n_boot_defined`` (resamples with at
        least one defined class), ``confidence`` and ``n_patients``.
    """
    labels, (scores,) = _validated_inputs(y_true, [prob])
    undefined_full = _single_value_classes(labels)
    full = [None if undefined_full[c] else float(roc_auc_score(labels[:, c], scores[:, c]))
            for c in range(labels.shape[1])]
    boot, n_patients = _bootstrap_class_aurocs(labels, [scores], patient_ids, n_boot, seed)
    boot = boot[:, 0, :]
    # Classes undefined on the full set stay out of every resample's mean, as they are out of the point estimate.
    boot[:, undefined_full] = np.nan
    means = _nanmean_rows(boot)
    low, high = _percentile_ci(means, confidence)
    class_cis = [_percentile_ci(boot[:, c], confidence) for c in range(labels.shape[1])]
    return {
        "mean_auroc": _json_number(mean_auroc(full)),
        "ci_low": low,
        "ci_high": high,
        "per_class": {"auroc": full, "ci_low": [ci[0] for ci in class_cis], "ci_high": [ci[1] for ci in class_cis]},
        "n_boot": int(n_boot),
        "n_boot_defined": int((~np.isnan(means)).sum()),
        "confidence": float(confidence),
        "n_patients": n_patients,
    }


def patient_bootstrap_auroc_diff(y_true, prob_a, prob_b, patient_ids, n_boot=1000, seed=0) -> dict:
    """Paired patient-level bootstrap of mean-AUROC(b) - mean-AUROC(a) on the same images.

    Resampling: ``n_patients`` patients are drawn with replacement and all their images are taken; this is encoded as
    per-image multiplicity weights (``np.bincount`` of the drawn patients), whose weighted AUROC
    (:class:`PatientWeightedAuroc`) is exactly the AUROC of the resample with repeated images. Both models are
    scored on the same resample. A class whose labels hold a single value in a resample is dropped from *both* means for that
    resample (and a class undefined on the full set from all of them).

    p-value: two-sided, from the bootstrap distribution of the difference d*:
    ``p = min(1, 2 * (min(#{d* <= 0}, #{d* >= 0}) + 1) / (n + 1))`` over the n resamples with a defined difference.
    The +1 keeps p > 0 (the smallest reportable value is 2/(n+1)); identical models give p = 1.

    Returns:
        dict with ``diff`` (on the full set), ``ci_low``/``ci_high`` (2.5/97.5 percentiles), ``mean_auroc_a``,
        ``mean_auroc_b``, ``n_boot``, ``n_boot_defined``, ``p_value_two_sided`` and ``n_patients``.
    """
    labels, (scores_a, scores_b) = _validated_inputs(y_true, [prob_a, prob_b])
    undefined_full = _single_value_classes(labels)
    defined_classes = np.flatnonzero(~undefined_full)
    full_a = [float(roc_auc_score(labels[:, c], scores_a[:, c])) for c in defined_classes]
    full_b = [float(roc_auc_score(labels[:, c], scores_b[:, c])) for c in defined_classes]
    boot, n_patients = _bootstrap_class_aurocs(labels, [scores_a, scores_b], patient_ids, n_boot, seed)
    boot[:, :, undefined_full] = np.nan
    diffs = _nanmean_rows(boot[:, 1, :]) - _nanmean_rows(boot[:, 0, :])
    finite = diffs[~np.isnan(diffs)]
    low, high = _percentile_ci(diffs, 0.95)
    if finite.size:
        extreme = min(int((finite <= 0).sum()), int((finite >= 0).sum()))
        p_value = min(1.0, 2.0 * (extreme + 1) / (finite.size + 1))
    else:
        p_value = None
    mean_a, mean_b = mean_auroc(full_a), mean_auroc(full_b)
    return {
        "diff": _json_number(mean_b - mean_a),
        "ci_low": low,
        "ci_high": high,
        "mean_auroc_a": _json_number(mean_a),
        "mean_auroc_b": _json_number(mean_b),
        "n_boot": int(n_boot),
        "n_boot_defined": int(finite.size),
        "p_value_two_sided": p_value,
        "n_patients": n_patients,
    }


def format_auroc_lines(report) -> list:
    """The original project's AUROC lines (docs/original.md §9): the mean with 3 decimals, then one line per class with the
    full float repr, or ``n/a`` for an undefined class."""
    mean = report["mean_auroc"]
    lines = [f"The average AUROC is {mean:.3f}" if mean is not None else "The average AUROC is n/a"]
    for name in report["classes"]:
        value = report["auroc"][name]
        lines.append(f"The AUROC of {name} is {'n/a' if value is None else repr(float(value))}")
    return lines


def _cell(value, width, digits=3):
    """Right-aligned number (or n/a) of fixed width."""
    text = "n/a" if value is None else f"{value:.{digits}f}"
    return text.rjust(width)


# Beside an F1 or accuracy that comes from a degenerate operating point (no image predicted positive).
NO_POSITIVE_MARK = "*"
# Metrics whose value a degenerate operating point fixes (F1 = 0, accuracy = share of negatives).
_DEGENERATE_METRICS = ("f1", "accuracy")


def _marked_cell(value, width, marked):
    """A number of fixed width with room for the no-positive mark after it (a space when unmarked), so marked and
    unmarked values stay aligned."""
    text = "n/a" if value is None else f"{value:.3f}"
    return (text + (NO_POSITIVE_MARK if marked else " ")).rjust(width)


def degenerate_note(block, num_classes, where="0.5") -> str | None:
    """One line naming the classes predicted positive for no image at a threshold block, or None when there are
    none: their F1 and accuracy there are those of an all-negative rule, not skill."""
    classes = block.get("no_positive_classes") or []
    if not classes:
        return None
    return (f"{NO_POSITIVE_MARK} no image predicted positive at {where} for {len(classes)} of {num_classes} classes "
            f"({', '.join(classes)}): F1 there is 0 and accuracy is the share of negative labels (an all-negative "
            "rule), not skill")


def format_metrics_table(report) -> str:
    """A fixed-width table of an ``evaluation_report``: class, positives, AUROC, and F1 / accuracy / sensitivity /
    specificity and the images predicted positive (Pred+) at threshold 0.5 and, when present, at the validation
    max-F1 thresholds; then a macro row. F1 and accuracy of a class predicted positive for no image are marked
    (``NO_POSITIVE_MARK``), and so are the macro values they enter, with a line under the table naming the classes."""
    blocks = [("@0.5", report["threshold_0.5"])]
    if "threshold_val_max_f1" in report:
        blocks.append(("@val", report["threshold_val_max_f1"]))
    name_width = max(len("Class"), len("Macro"), *(len(name) for name in report["classes"]))
    header = f"{'Class'.ljust(name_width)} {'Pos':>6} {'AUROC':>6}"
    for suffix, block in blocks:
        if suffix == "@val":
            header += f" {'Thr@val':>7}"
        header += "".join(f" {label + suffix + ' ':>9}" if metric in _DEGENERATE_METRICS else f" {label + suffix:>9}"
                          for label, metric in zip(("F1", "Acc", "Sens", "Spec"), BINARY_METRICS))
        header += f" {'Pred+' + suffix:>10}"
    lines = [header, "-" * len(header)]
    for name in report["classes"]:
        row = f"{name.ljust(name_width)} {report['positives'][name]:>6d} {_cell(report['auroc'][name], 6)}"
        for suffix, block in blocks:
            if suffix == "@val":
                row += f" {_cell(block['thresholds'][name], 7)}"
            predicted = block.get("predicted_positives", {}).get(name)
            for metric in BINARY_METRICS:
                if metric in _DEGENERATE_METRICS:
                    row += f" {_marked_cell(block[metric][name], 9, predicted == 0)}"
                else:
                    row += f" {_cell(block[metric][name], 9)}"
            row += f" {'n/a' if predicted is None else str(predicted):>10}"
        lines.append(row)
    lines.append("-" * len(header))
    row = f"{'Macro'.ljust(name_width)} {'':>6} {_cell(report['mean_auroc'], 6)}"
    for suffix, block in blocks:
        if suffix == "@val":
            row += f" {'':>7}"
        marked = bool(block.get("no_positive_classes"))
        for metric in BINARY_METRICS:
            if metric in _DEGENERATE_METRICS:
                row += f" {_marked_cell(block['macro'][metric], 9, marked)}"
            else:
                row += f" {_cell(block['macro'][metric], 9)}"
        row += f" {'':>10}"
    lines.append(row)
    lines.append(f"{report['n_images']} images; AUROC mean over {report['n_auroc_classes']} of "
                 f"{len(report['classes'])} classes; predicted positive when probability >= threshold")
    for suffix, block in blocks:
        note = degenerate_note(block, len(report["classes"]),
                               "0.5" if suffix == "@0.5" else "the validation thresholds")
        if note:
            lines.append(note)
    return "\n".join(lines)
