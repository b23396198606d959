"""The recipe study's design and table (tools/distillation_study.py, docs/guide/distillation-study.md); the study
itself is a tool that trains for hours on a CPU, not a test."""
import csv
import sys
from dataclasses import asdict
from pathlib import Path

from conftest import REPO

sys.path.insert(0, str(REPO / "tools"))
import distillation_study as study  # noqa: E402


def test_every_variant_changes_one_factor_of_the_base_recipe():
    base = asdict(study.BASE)
    factors = {"alpha": "alpha", "temperature": "temperature", "epochs": "epochs", "teacher mode": "teacher_mode",
               "student init": "init"}
    assert study.VARIANTS[0] == ("base", study.BASE)
    for factor, recipe in study.VARIANTS[1:]:
        changed = [key for key, value in asdict(recipe).items() if value != base[key]]
        assert changed == [factors[factor]], (factor, recipe)
    names = [recipe.name() for _, recipe in study.VARIANTS]
    assert len(set(names)) == len(names)
    assert {factor for factor, _ in study.VARIANTS} == {"base", *factors}


def test_a_student_from_the_baselines_weights_is_compared_with_the_same_start_without_a_teacher(tmp_path):
    from_baseline = next(recipe for factor, recipe in study.VARIANTS if factor == "student init")
    control = study.control_recipe(from_baseline)
    assert control.alpha == 1.0 and control.init == "baseline" and control.epochs == from_baseline.epochs
    assert study.control_recipe(study.BASE) is None
    path, description = study.baseline_file(tmp_path, from_baseline)
    assert path == study.student_file(tmp_path, control) and "no teacher" in description
    path, _ = study.baseline_file(tmp_path, study.BASE)
    assert path.name == "model1.pth" and f"baseline-e{study.BASE.epochs}" in str(path)
    # Every recipe's student is trained once, the control included.
    recipes = study.student_recipes(study.VARIANTS)
    assert control in recipes and len(recipes) == len(study.VARIANTS) + 1


def test_the_table_gives_the_spread_the_interval_and_the_degenerate_f1(tmp_path):
    settings = study.Settings(tmp_path, patients=150, img_size=32, epoch_scale=1.0, n_boot=200)
    row = {"set": "nih", "factor": "alpha", "recipe": "α 0.9, T 2, 6 ep, cached", "recipe_name": "a0.9-T2-e6-cached",
           "baseline": "EEEA-Net-C2, 6 ep", "seeds": 3, "test_diff_mean": 0.029, "test_diff_sd": 0.0338,
           "seed0_diff": 0.0178, "seed0_ci_low": -0.0298, "seed0_ci_high": 0.0519, "seed0_p": 0.4,
           "val_diff_mean": 0.0215, "student_test_auroc": 0.828, "baseline_test_auroc": 0.799,
           "teacher_test_auroc": 0.914, "student_f1@0.5_seed0": 0.0, "student_no_positive_classes_seed0": 14,
           "baseline_f1@0.5_seed0": 0.12, "baseline_no_positive_classes_seed0": 0}
    study.write_table(settings, [row], "python tools/distillation_study.py --out x")
    text = (tmp_path / "study.md").read_text()
    line = next(line for line in text.splitlines() if line.startswith("| nih | alpha"))
    assert "+0.0290 ± 0.0338 (3 seeds)" in line and "+0.0178 [-0.0298, +0.0519]" in line
    assert "0.000 (no positive for 14/14) / 0.120 |" in line
    assert "`python tools/distillation_study.py --out x`" in text and "not a claim about the real data" in text
    with open(tmp_path / "study.csv", newline="") as stream:
        assert next(csv.DictReader(stream))["test_diff_mean"] == "0.029"


def test_the_guide_holds_the_table_the_tool_wrote():
    guide = (REPO / "docs" / "guide" / "distillation-study.md").read_text()
    with open(REPO / "docs" / "guide" / "distillation-study.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == 2 * len(study.VARIANTS)
    for row in rows:
        assert f"| {row['set']} | {row['factor']} | {row['recipe']} |" in guide
        assert f"{float(row['test_diff_mean']):+.4f} ± {float(row['test_diff_sd']):.4f}" in guide
    assert "tools/distillation_study.py" in guide and Path(study.__file__).name == "distillation_study.py"
