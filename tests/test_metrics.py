"""Tests of common.evaluation.metrics against hand-computed values."""
import json
import math
import warnings

import numpy as np
import pytest
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import f1_score, roc_auc_score

from common.constants import CLASS_NAMES
from common.evaluation import metrics

NAMES = ("A", "B", "C")
# Three classes, four images.
# A: labels 0 0 1 1, probs .1 .4 .35 .8
# B: labels 1 0 0 1, probs .5 .5 .2 .9 (a tie between a positive and a negative)
# C: labels all 0 (AUROC undefined), probs .6 .1 .2 .3
Y = np.array([[0, 1, 0], [0, 0, 0], [1, 0, 0], [1, 1, 0]])
P = np.array([[0.1, 0.5, 0.6], [0.4, 0.5, 0.1], [0.35, 0.2, 0.2], [0.8, 0.9, 0.3]])


def test_per_class_auroc_hand_values_and_undefined_class():
    # A: positive/negative pairs (.35>.1 win, .35<.4 loss, .8>.1 win, .8>.4 win) -> 3/4.
    # B: pairs (.5=.5 tie counts 1/2, .5>.2, .9>.5, .9>.2) -> 3.5/4 = 0.875.
    # C: only label 0 -> None, with a warning naming the class.
    with pytest.warns(UndefinedMetricWarning, match="AUROC of C is undefined"):
        aurocs = metrics.per_class_auroc(Y, P, NAMES)
    assert aurocs[0] == pytest.approx(0.75)
    assert aurocs[1] == pytest.approx(0.875)
    assert aurocs[2] is None
    # The undefined class is left out of the mean: (0.75 + 0.875) / 2.
    assert metrics.mean_auroc(aurocs) == pytest.approx(0.8125)


def test_per_class_auroc_accepts_float_labels():
    # roc_auc_score rejects float labels; the function casts them to int.
    with pytest.warns(UndefinedMetricWarning):
        aurocs = metrics.per_class_auroc(Y.astype(np.float32), P, NAMES)
    assert aurocs[0] == pytest.approx(0.75)


def test_mean_auroc_all_undefined_is_nan():
    assert math.isnan(metrics.mean_auroc([None, float("nan")]))
    assert metrics.mean_auroc([0.5, None, 0.7]) == pytest.approx(0.6)


def test_binary_metrics_hand_values():
    # Threshold 0.5, predicted positive when prob >= 0.5.
    # A: pred 0 0 0 1 -> TP1 FN1 FP0 TN2: F1 = 2/(2+1) = 2/3, acc 3/4, sens 1/2, spec 1.
    # B: pred 1 1 0 1 -> TP2 FN0 FP1 TN1: F1 = 4/5, acc 3/4, sens 1, spec 1/2.
    # C: pred 1 0 0 0 -> TP0 FP1 TN3: F1 = 0 (no positives), acc 3/4, sens undefined (NaN), spec 3/4.
    result = metrics.binary_metrics(Y, P, 0.5)
    assert result["f1"] == pytest.approx([2 / 3, 0.8, 0.0])
    assert result["accuracy"] == pytest.approx([0.75, 0.75, 0.75])
    assert result["sensitivity"][:2] == pytest.approx([0.5, 1.0])
    assert math.isnan(result["sensitivity"][2])
    assert result["specificity"] == pytest.approx([1.0, 0.5, 0.75])
    # Macro: plain means, NaN-ignoring for the sensitivity.
    assert result["macro"]["f1"] == pytest.approx((2 / 3 + 0.8 + 0.0) / 3)
    assert result["macro"]["sensitivity"] == pytest.approx(0.75)
    assert result["macro"]["specificity"] == pytest.approx(0.75)
    assert result["thresholds"] == [0.5, 0.5, 0.5]


def test_positive_class_f1_differs_from_two_value_macro():
    # Class A at 0.5: negative-class F1 = 2*(2/3*1)/(2/3+1) = 0.8, so the original's macro = (2/3 + 0.8)/2 = 0.7333.
    result = metrics.binary_metrics(Y, P, 0.5)
    predicted = (P[:, 0] >= 0.5).astype(int)
    macro = f1_score(Y[:, 0], predicted, average="macro")
    assert macro == pytest.approx((2 / 3 + 0.8) / 2)
    assert result["f1"][0] == pytest.approx(2 / 3)
    assert result["f1"][0] != pytest.approx(macro)


def test_binary_metrics_rejects_logits():
    with pytest.raises(ValueError, match="logits"):
        metrics.binary_metrics(Y, P * 10 - 3, 0.5)


def test_choose_thresholds_hand_values():
    # A: candidates .1 (P=1/2,R=1,F1=2/3), .35 (P=2/3,R=1,F1=0.8), .4 (F1=1/2), .8 (P=1,R=1/2,F1=2/3) -> 0.35.
    # B: candidates .2 (F1=2/3), .5 (P=2/3,R=1,F1=0.8), .9 (F1=2/3) -> 0.5.
    # C: no positive -> 0.5 with a warning.
    with pytest.warns(UndefinedMetricWarning, match="no positive"):
        thresholds = metrics.choose_thresholds(Y, P)
    assert thresholds == pytest.approx([0.35, 0.5, 0.5])
    # The chosen thresholds reproduce the maximal F1 on the same data.
    assert metrics.binary_metrics(Y, P, thresholds)["f1"][:2] == pytest.approx([0.8, 0.8])


def test_choose_thresholds_maximises_f1_against_brute_force():
    rng = np.random.default_rng(3)
    labels = (rng.uniform(size=(200, 2)) < 0.3).astype(int)
    probs = np.clip(rng.uniform(size=(200, 2)) * 0.7 + 0.3 * labels, 0, 1)
    thresholds = metrics.choose_thresholds(labels, probs)
    for c in range(2):
        best = max(f1_score(labels[:, c], (probs[:, c] >= t).astype(int), zero_division=0) for t in probs[:, c])
        assert metrics.binary_metrics(labels, probs, thresholds)["f1"][c] == pytest.approx(best)


def test_evaluation_report_is_strict_json_and_complete():
    with pytest.warns(UndefinedMetricWarning):
        report = metrics.evaluation_report(Y, P, NAMES, val_thresholds=[0.35, 0.5, 0.5])
    text = json.dumps(report, allow_nan=False)  # NaN would make this raise
    assert json.loads(text) == report
    assert report["classes"] == list(NAMES)
    assert report["n_images"] == 4
    assert report["positives"] == {"A": 2, "B": 2, "C": 0}
    assert report["auroc"]["C"] is None
    assert report["mean_auroc"] == pytest.approx(0.8125)
    assert report["n_auroc_classes"] == 2
    block = report["threshold_0.5"]
    assert block["f1"]["A"] == pytest.approx(2 / 3)
    assert block["sensitivity"]["C"] is None
    val_block = report["threshold_val_max_f1"]
    assert val_block["thresholds"] == {"A": 0.35, "B": 0.5, "C": 0.5}
    assert val_block["f1"]["A"] == pytest.approx(0.8)
    assert set(val_block["macro"]) == {"f1", "accuracy", "sensitivity", "specificity"}


def test_report_without_val_thresholds_has_no_val_block():
    with pytest.warns(UndefinedMetricWarning):
        report = metrics.evaluation_report(Y, P, NAMES)
    assert "threshold_val_max_f1" not in report


def test_format_auroc_lines_and_table():
    with pytest.warns(UndefinedMetricWarning):
        report = metrics.evaluation_report(Y, P, NAMES, val_thresholds=[0.35, 0.5, 0.5])
    lines = metrics.format_auroc_lines(report)
    assert lines[0] == "The average AUROC is 0.812"
    assert lines[1] == "The AUROC of A is 0.75"
    assert lines[2] == "The AUROC of B is 0.875"
    assert lines[3] == "The AUROC of C is n/a"
    table = metrics.format_metrics_table(report)
    rows = table.splitlines()
    assert "F1@0.5" in rows[0] and "F1@val" in rows[0] and "Spec@val" in rows[0]
    assert any(row.startswith("Macro") for row in rows)
    row_a = next(row for row in rows if row.startswith("A "))
    assert "0.750" in row_a and "0.667" in row_a and "0.350" in row_a
    # Fixed width: every table row (header, class rows, macro) has the header's length.
    assert len({len(row) for row in rows[:-1]}) == 1


def test_format_auroc_lines_full_repr_like_original():
    rng = np.random.default_rng(0)
    labels = (rng.uniform(size=(50, len(CLASS_NAMES))) < 0.4).astype(int)
    probs = rng.uniform(size=labels.shape)
    report = metrics.evaluation_report(labels, probs, CLASS_NAMES)
    line = metrics.format_auroc_lines(report)[1]
    value = float(roc_auc_score(labels[:, 0], probs[:, 0]))
    assert line == f"The AUROC of Atelectasis is {value!r}"


def _clustered_data(seed, n_patients=60, per_patient=3, num_classes=3):
    """Labels, two models' scores (b better than a) and patient ids."""
    rng = np.random.default_rng(seed)
    patient_ids = np.repeat(np.arange(n_patients), per_patient)
    labels = (rng.uniform(size=(patient_ids.size, num_classes)) < 0.3).astype(int)
    prob_a = 1 / (1 + np.exp(-rng.normal(size=labels.shape)))  # uninformative
    prob_b = 1 / (1 + np.exp(-(rng.normal(size=labels.shape) + 3.0 * labels)))  # clearly informative
    return labels, prob_a, prob_b, patient_ids


def test_bootstrap_identical_models_give_zero_difference():
    labels, prob_a, _, patients = _clustered_data(0)
    result = metrics.patient_bootstrap_auroc_diff(labels, prob_a, prob_a, patients, n_boot=50, seed=1)
    assert result["diff"] == 0.0
    assert result["ci_low"] <= 0.0 <= result["ci_high"]
    assert result["p_value_two_sided"] == 1.0
    assert result["n_patients"] == 60
    assert result["n_boot"] == 50


def test_bootstrap_better_model_has_ci_above_zero():
    labels, prob_a, prob_b, patients = _clustered_data(1)
    result = metrics.patient_bootstrap_auroc_diff(labels, prob_a, prob_b, patients, n_boot=200, seed=0)
    assert result["diff"] > 0.3
    assert 0.0 < result["ci_low"] <= result["diff"] <= result["ci_high"]
    # No resample favours a: p is the smallest reportable value 2 / (n + 1).
    assert result["p_value_two_sided"] == pytest.approx(2 / 201)
    # Swapping the models flips the sign.
    swapped = metrics.patient_bootstrap_auroc_diff(labels, prob_b, prob_a, patients, n_boot=200, seed=0)
    assert swapped["diff"] == pytest.approx(-result["diff"])
    assert swapped["ci_high"] == pytest.approx(-result["ci_low"])


def test_bootstrap_weights_equal_explicit_patient_resampling():
    # Replays the documented draw (patients with replacement, all their images) and computes roc_auc_score on the
    # physically repeated images: the weighted computation must agree exactly.
    labels, prob_a, _, patients = _clustered_data(2, n_patients=15, per_patient=4, num_classes=2)
    aurocs, n_patients = metrics._bootstrap_class_aurocs(labels, [prob_a], patients, n_boot=5, seed=7)
    rng = np.random.default_rng(7)
    for b in range(5):
        drawn = rng.integers(0, n_patients, size=n_patients)
        images = np.concatenate([np.flatnonzero(patients == p) for p in drawn])
        for c in range(2):
            column = labels[images, c]
            expected = roc_auc_score(column, prob_a[images, c]) if 0 < column.sum() < column.size else np.nan
            np.testing.assert_allclose(aurocs[b, 0, c], expected, rtol=1e-12, equal_nan=True)


def test_bootstrap_resamples_patients_not_images():
    # Repeating every image three times under the same patient id leaves a patient bootstrap unchanged (the same
    # patients are drawn, every AUROC is the same), while an image-level bootstrap of the repeated data (unique id
    # per image) wrongly treats the copies as independent and gives a narrower interval.
    labels, prob_a, _, _ = _clustered_data(3, n_patients=80, per_patient=1)
    one = metrics.patient_bootstrap_auroc_ci(labels, prob_a, np.arange(80), n_boot=200, seed=5)
    repeated = np.repeat(np.arange(80), 3)
    tripled = metrics.patient_bootstrap_auroc_ci(labels[repeated], prob_a[repeated], repeated, n_boot=200, seed=5)
    assert tripled["ci_low"] == pytest.approx(one["ci_low"])
    assert tripled["ci_high"] == pytest.approx(one["ci_high"])
    by_image = metrics.patient_bootstrap_auroc_ci(labels[repeated], prob_a[repeated], np.arange(240), n_boot=200,
                                                  seed=5)
    assert by_image["ci_high"] - by_image["ci_low"] < 0.8 * (one["ci_high"] - one["ci_low"])


def test_bootstrap_ci_single_model_and_undefined_class():
    labels, _, prob_b, patients = _clustered_data(4)
    labels = labels.copy()
    labels[:, 2] = 0  # undefined on the full set: left out of every mean, None per class
    result = metrics.patient_bootstrap_auroc_ci(labels, prob_b, patients, n_boot=100, seed=0)
    full = [roc_auc_score(labels[:, c], prob_b[:, c]) for c in range(2)]
    assert result["mean_auroc"] == pytest.approx(np.mean(full))
    assert result["ci_low"] <= result["mean_auroc"] <= result["ci_high"]
    assert result["per_class"]["auroc"][2] is None
    assert result["per_class"]["ci_low"][2] is None
    assert result["per_class"]["ci_low"][0] <= full[0] <= result["per_class"]["ci_high"][0]
    json.dumps(result, allow_nan=False)


def test_bootstrap_drops_classes_undefined_in_a_resample():
    # Class 1 has a single positive image: many resamples miss it; they must still yield a finite difference from
    # the other class instead of NaN or a crash.
    rng = np.random.default_rng(6)
    labels = np.zeros((40, 2), dtype=int)
    labels[:20, 0] = 1
    labels[0, 1] = 1
    probs = rng.uniform(size=(40, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no sklearn warning may leak out of the resamples
        result = metrics.patient_bootstrap_auroc_diff(labels, probs, probs[::-1].copy(), np.arange(40), n_boot=100)
    assert result["n_boot_defined"] == 100
    assert result["ci_low"] is not None and np.isfinite(result["ci_low"])


def test_bootstrap_rejects_bad_inputs():
    labels, prob_a, prob_b, patients = _clustered_data(5)
    with pytest.raises(ValueError):
        metrics.patient_bootstrap_auroc_diff(labels, prob_a, prob_b[:-1], patients)
    with pytest.raises(ValueError):
        metrics.patient_bootstrap_auroc_diff(labels, prob_a, prob_b, patients[:-1])
    with pytest.raises(ValueError):
        metrics.patient_bootstrap_auroc_diff(labels, prob_a, prob_b, patients, n_boot=0)


def _awkward_data(seed, n_patients=25):
    """Labels and scores with what an exact AUROC can get wrong: ties within and across labels, a class whose scores
    are all equal, a class with one positive image (single-label in many resamples) and one with no positive."""
    rng = np.random.default_rng(seed)
    patient_ids = np.repeat(np.arange(n_patients), rng.integers(1, 5, size=n_patients))
    rng.shuffle(patient_ids)
    n = patient_ids.size
    labels = (rng.uniform(size=(n, 5)) < 0.35).astype(int)
    labels[:, 3] = 0
    labels[rng.integers(n), 3] = 1                      # one positive image
    labels[:, 4] = 0                                    # no positive: undefined everywhere
    scores = np.column_stack([
        np.round(rng.uniform(size=n) + 0.3 * labels[:, 0], 1),  # few distinct values: many ties
        np.full(n, 0.25),                                       # all equal: 0.5 wherever defined
        rng.uniform(size=n),                                    # continuous
        np.round(rng.uniform(size=n), 1),
        rng.uniform(size=n),
    ])
    return labels, scores, patient_ids


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bootstrap_auroc_equals_roc_auc_score_with_ties_and_single_label_classes(seed):
    # §2 of issue 18: the bootstrap's own AUROC kernel must equal sklearn's roc_auc_score on the physically
    # repeated images of each resample to 1e-12, and be NaN (then n/a) exactly where sklearn's is undefined.
    labels, scores, patients = _awkward_data(seed)
    aurocs, n_patients = metrics._bootstrap_class_aurocs(labels, [scores], patients, n_boot=40, seed=seed)
    rng = np.random.default_rng(seed)
    _, inverse = np.unique(patients, return_inverse=True)
    defined_seen = np.zeros(labels.shape[1], dtype=bool)
    for b in range(40):
        drawn = rng.integers(0, n_patients, size=n_patients)
        images = np.concatenate([np.flatnonzero(inverse == p) for p in drawn])
        for c in range(labels.shape[1]):
            column = labels[images, c]
            if 0 < column.sum() < column.size:
                expected = roc_auc_score(column, scores[images, c])
                assert abs(aurocs[b, 0, c] - expected) <= 1e-12, (b, c, aurocs[b, 0, c], expected)
                defined_seen[c] = True
            else:
                assert np.isnan(aurocs[b, 0, c]), (b, c)
    assert defined_seen[:3].all() and not defined_seen[4]
    assert np.nanmax(np.abs(aurocs[:, 0, 1] - 0.5)) == 0.0  # all-equal scores: exactly one half
    # The undefined class stays n/a in the interval's report, as before the exact kernel.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        result = metrics.patient_bootstrap_auroc_ci(labels, scores, patients, n_boot=40, seed=seed)
    assert result["per_class"]["auroc"][4] is None
    assert result["per_class"]["ci_low"][4] is None and result["per_class"]["ci_high"][4] is None


def test_weighted_auroc_kernel_equals_roc_auc_score_on_repeated_images():
    # Arbitrary integer multiplicities (zeros included) with one image per "patient": the kernel against
    # roc_auc_score on the images repeated that many times.
    labels, scores, _ = _awkward_data(3)
    n = labels.shape[0]
    kernel = metrics.PatientWeightedAuroc(labels, scores, np.arange(n), n)
    rng = np.random.default_rng(3)
    for _ in range(20):
        counts = rng.integers(0, 4, size=n)
        repeated = np.repeat(np.arange(n), counts)
        got = kernel(counts.astype(np.float64))
        for c in range(labels.shape[1]):
            column = labels[repeated, c]
            if 0 < column.sum() < column.size:
                assert abs(got[c] - roc_auc_score(column, scores[repeated, c])) <= 1e-12
            else:
                assert np.isnan(got[c])


def test_a_class_predicted_positive_for_no_image_is_flagged_beside_f1_and_accuracy():
    # Class B gets probabilities below 0.5 everywhere: at 0.5 it predicts no positive, so its F1 is 0 and its
    # accuracy is exactly the share of negatives (2 of 4) -- an all-negative rule, not skill.
    probs = P.copy()
    probs[:, 1] = [0.1, 0.2, 0.3, 0.4]
    with pytest.warns(UndefinedMetricWarning):
        report = metrics.evaluation_report(Y, probs, NAMES, val_thresholds=[0.35, 0.25, 0.5])
    block = report["threshold_0.5"]
    assert block["predicted_positives"] == {"A": 1, "B": 0, "C": 1}
    assert block["no_positive_classes"] == ["B"]
    assert block["f1"]["B"] == 0.0 and block["accuracy"]["B"] == pytest.approx((Y[:, 1] == 0).mean())
    assert report["threshold_val_max_f1"]["no_positive_classes"] == []
    assert json.loads(json.dumps(report, allow_nan=False)) == report
    table = metrics.format_metrics_table(report)
    rows = table.splitlines()
    row_b = next(row for row in rows if row.startswith("B "))
    assert "0.000*" in row_b and "0.500*" in row_b  # F1@0.5 and Acc@0.5 marked
    assert row_b.count("*") == 2  # the @val values of B are not (its val threshold predicts positives)
    row_a = next(row for row in rows if row.startswith("A "))
    assert "*" not in row_a
    macro = next(row for row in rows if row.startswith("Macro"))
    assert macro.count("*") == 2
    assert rows[-1].startswith("* no image predicted positive at 0.5 for 1 of 3 classes (B)")
    assert "not skill" in rows[-1]
    assert len({len(row) for row in rows[:-2]}) == 1  # still fixed width


def test_a_table_without_degenerate_classes_has_no_mark():
    with pytest.warns(UndefinedMetricWarning):
        report = metrics.evaluation_report(Y, P, NAMES)
    assert report["threshold_0.5"]["no_positive_classes"] == []
    table = metrics.format_metrics_table(report)
    assert "*" not in table and "no image predicted positive" not in table
