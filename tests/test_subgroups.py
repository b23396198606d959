"""Subgroup AUROCs (sex, age band, view) with patient intervals, and calibration (ECE, Brier, reliability)."""
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from common.constants import CLASS_NAMES
from common.errors import UserError
from common.evaluation import subgroups
from common.evaluation.scoring import format_subgroup_lines


def test_age_bands():
    assert [subgroups.age_band(a) for a in (0, 19, 19.9, 20, 39, 40, 60, 79, 80, 95, 120)] == \
        ["0-20", "0-20", "0-20", "20-40", "20-40", "40-60", "60-80", "60-80", "80+", "80+", "80+"]
    assert subgroups.age_band(120.5) == subgroups.age_band(414) == subgroups.AGE_LEFT_OUT


def test_read_demographics_both_releases(tmp_path):
    v2020 = subgroups.read_demographics("v2020")
    assert (v2020.sex["00000001_000.png"], v2020.age["00000001_000.png"], v2020.view["00000001_000.png"]) == \
        ("M", 57, "PA")
    old = subgroups.read_demographics("2017")
    assert old.age["00000001_000.png"] == 58  # "058Y" in the 2017 file
    # Months and days (the 2017 file has 27 such ages): 020M is 1.67 years (v2020 says 1), not 20.
    assert old.age["00019045_004.png"] == pytest.approx(20 / 12) and v2020.age["00019045_004.png"] == 1
    assert subgroups.age_band(old.age["00019045_004.png"]) == "0-20"
    assert old.age["00024680_000.png"] == pytest.approx(1 / 365.25)  # "001D"
    # Ages above 120 (16 images, 148-414 "years") are left out of the bands.
    too_old = [name for name, age in old.age.items() if age > subgroups.MAX_AGE]
    assert len(too_old) == 16 and "00005567_000.png" in too_old and old.age["00005567_000.png"] == 412
    assert max(v2020.age.values()) <= subgroups.MAX_AGE
    bad = tmp_path / "entry.csv"
    bad.write_text("Image Index,Finding Labels,Patient ID,Patient Age,Patient Gender,View Position\n"
                   "a.png,No Finding,1,old,M,PA\n")
    with pytest.raises(UserError, match="entry.csv, line 2: Patient Age 'old'"):
        subgroups.read_demographics(bad)


def _demographics(names, sexes, ages, views):
    return subgroups.Demographics("test", dict(zip(names, sexes)), dict(zip(names, ages)), dict(zip(names, views)))


def test_subgroup_aurocs_equal_sklearn_on_each_group():
    rng = np.random.default_rng(1)
    n = 200
    names = [f"{i:08d}_000.png" for i in range(n)]
    patients = np.arange(n) // 2
    targets = (rng.uniform(size=(n, 14)) < 0.4).astype(int)
    probs = np.clip(0.4 * targets + 0.6 * rng.uniform(size=(n, 14)), 0, 1)
    sexes = np.where(patients % 2, "F", "M")
    ages = (patients * 7) % 100
    views = np.where(np.arange(n) % 3 == 0, "AP", "PA")
    result = subgroups.subgroup_aurocs(targets, probs, names, patients, _demographics(names, sexes, ages, views),
                                       n_boot=20)
    for grouping, values in (("sex", sexes), ("view", views)):
        for group, entry in result[grouping].items():
            rows = values == group
            assert entry["n_images"] == rows.sum()
            expected = np.mean([roc_auc_score(targets[rows, c], probs[rows, c]) for c in range(14)])
            assert entry["mean_auroc"] == pytest.approx(expected)
            assert entry["ci_low"] <= entry["mean_auroc"] <= entry["ci_high"]
    band = np.array([subgroups.age_band(a) for a in ages])
    assert {g: e["n_images"] for g, e in result["age"].items()} == {g: int((band == g).sum()) for g in
                                                                     subgroups.AGE_BANDS}
    rows = band == "80+"
    assert result["age"]["80+"]["auroc"]["Mass"] == pytest.approx(roc_auc_score(targets[rows, 4], probs[rows, 4]))
    with pytest.raises(UserError, match="not in test"):
        subgroups.subgroup_aurocs(targets, probs, ["x.png"] * n, patients, _demographics(names, sexes, ages, views))


def test_small_group_has_no_interval():
    names = ["a.png", "b.png", "c.png"]
    targets = np.array([[1] * 14, [0] * 14, [1] * 14])
    probs = np.full((3, 14), 0.5)
    result = subgroups.subgroup_aurocs(targets, probs, names, np.array([1, 1, 2]),
                                       _demographics(names, ["M", "M", "F"], [30, 30, 50], ["PA", "PA", "XX"]),
                                       n_boot=5)
    assert result["sex"]["M"]["mean_auroc"] is None and result["sex"]["M"]["n_patients"] == 1
    assert result["sex"]["M"]["not_estimated"] == "fewer than 2 patients"
    assert result["view"]["other"] == {"n_images": 1, "n_patients": 1}


def test_subgroup_means_follow_the_stated_rule():
    rng = np.random.default_rng(3)
    n = 120
    names = [f"{i:08d}_000.png" for i in range(n)]
    patients = np.arange(n)
    targets = (rng.uniform(size=(n, 14)) < 0.4).astype(int)
    targets[:, 3] = 0
    targets[:4, 3] = 1          # class 3: 4 positives in the whole set, so in no group
    targets[:, 5] = 1
    targets[:3, 5] = 0          # class 5: 3 negatives
    probs = np.clip(0.3 * targets + 0.7 * rng.uniform(size=(n, 14)), 0, 1)
    sexes = np.where(patients < 118, "M", "F")  # F: 2 images of 2 patients, which printed 1.000 [1.000, 1.000]
    ages = np.where(patients < 110, 50.0, 150.0)  # 10 images recorded older than 120
    targets[118:, 0], probs[118:, 0] = [0, 1], [0.1, 0.9]  # a perfect 2-image "AUROC" the rule must not print
    views = np.full(n, "PA")
    result = subgroups.subgroup_aurocs(targets, probs, names, patients, _demographics(names, sexes, ages, views),
                                       n_boot=10)
    male = result["sex"]["M"]
    rows = sexes == "M"
    kept = [c for c in range(14) if c not in (3, 5)]
    assert male["n_classes"] == 12 and male["classes"] == [CLASS_NAMES[c] for c in kept]
    assert male["auroc"]["Nodule"] is None and male["auroc"]["Infiltration"] is None  # classes 5 and 3
    assert male["mean_auroc"] == pytest.approx(np.mean([roc_auc_score(targets[rows, c], probs[rows, c]) for c in kept]))
    female = result["sex"]["F"]
    assert female["mean_auroc"] is None and female["n_images"] == 2
    assert female["not_estimated"] == "no class has 5 positive and 5 negative images"
    assert result["age"][subgroups.AGE_LEFT_OUT] == {"n_images": 10, "n_patients": 10}
    assert result["age"]["40-60"]["n_images"] == 110
    lines = format_subgroup_lines({"subgroups": {"source": "entry.csv", "n_boot": 10, **result}})
    assert any(line.split()[:2] == ["sex", "M"] and "118 images, 118 patients, 12 classes" in line for line in lines)
    assert any(line.split()[:3] == ["sex", "F", "n/a"] and "2 images, 2 patients: no class has 5" in line
               for line in lines)
    assert any("left out: 10 images (10 patients) recorded older than 120 years" in line for line in lines)
    assert "at least 5 positive and 5 negative images" in lines[0]


def test_calibration_known_answers(tmp_path):
    # Class 0 perfectly calibrated in two bins: p = 0.25 (1 of 4 positive) and p = 0.75 (3 of 4).
    # Class 1 always says 0.9 while half are positive: ECE 0.4, Brier mean((0.9 - y)^2) = (0.01 + 0.81) / 2.
    y0 = [0, 0, 0, 1, 1, 1, 1, 0]
    p0 = [0.25] * 4 + [0.75] * 4
    y1 = [0, 1] * 4
    p1 = [0.9] * 8
    targets = np.zeros((8, 14), dtype=int)
    probs = np.full((8, 14), 0.0)
    targets[:, 0], probs[:, 0] = y0, p0
    targets[:, 1], probs[:, 1] = y1, p1
    result = subgroups.calibration(targets, probs, n_bins=10)
    assert result["per_class"]["Atelectasis"]["ece"] == pytest.approx(0.0)
    assert result["per_class"]["Cardiomegaly"]["ece"] == pytest.approx(0.4)
    assert result["per_class"]["Cardiomegaly"]["brier"] == pytest.approx(0.41)
    assert result["per_class"]["Atelectasis"]["prob_true"] == pytest.approx([0.25, 0.75])
    # Class 2: no positives and probabilities 0: perfectly calibrated, Brier 0.
    assert result["per_class"]["Effusion"] == {"ece": 0.0, "brier": 0.0, "prob_pred": [0.0], "prob_true": [0.0]}
    assert result["mean_ece"] == pytest.approx(0.4 / 14)
    path = subgroups.plot_reliability(tmp_path / "reliability.png", result, title="model1")
    assert path.is_file()
    with pytest.raises(ValueError, match="logits"):
        subgroups.calibration(targets, probs + 2)
    assert len(result["per_class"]) == len(CLASS_NAMES)
