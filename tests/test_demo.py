"""The README's demo command, shrunk: synthetic data, two folders, distillation and the comparison."""
import csv

import pytest

from common.commands import demo
from common.constants import DISTILL_FOLDER
from common.data.synthetic import read_manifest


@pytest.mark.slow
def test_demo_runs_end_to_end_at_tiny_scale(tmp_path, capsys):
    out = tmp_path / "demo-run"
    assert demo.main(["--output-dir", str(out), "--patients", "30", "--img-size", "32", "--epoch-scale", "0.2",
                      "--folders", "1,2", "--seeds", "2"]) == 0
    printed = capsys.readouterr().out
    assert "The average AUROC is" in printed and "demo finished" in printed
    assert list((out / "image-cache").glob("manifest-*.json"))  # every command read the demo's image cache
    assert (out / "1-EEEA-Net-C2" / "model1.pth").is_file() and (out / "2-OFA-595" / "model2.pth").is_file()
    student_dir = out / DISTILL_FOLDER
    with open(student_dir / "comparison.csv") as stream:
        status = {row["model"]: row["status"] for row in csv.DictReader(stream)}
    assert status["modeld1"] == status["modeld2"] == status["modeld-ensemble"] == "ok"
    assert status["model3"] == "missing"
    assert (student_dir / "comparison-auroc.png").stat().st_size > 10_000
    # --seeds 2: the baseline and the students once more with seed 1, and the spread across the two runs.
    assert (out / "seed-1" / "1-EEEA-Net-C2" / "model1.pth").is_file()
    assert (out / "seed-1" / DISTILL_FOLDER / "modeld2.pth").is_file()
    assert "Across 2 training runs with different seeds" in (student_dir / "comparison.md").read_text()
    # The last line says whether distillation helped on this sample.
    assert "on this sample" in printed.strip().splitlines()[-1]


def _comparison(rows, spread=()):
    return {"models": [{"model": "model1", "label": "EEEA-Net-C2"},
                       *({"model": row["student"], "label": f"EEEA-Net-C2 <- {row['student']}"} for row in rows)],
            "bootstrap": [{"against": "model1", "status": "ok", **row} for row in rows],
            "seed_spread": list(spread)}


def test_distillation_verdict_says_plainly_whichever_way_it_goes():
    hurt = _comparison([{"student": "modeld3", "diff": -0.02, "ci_low": -0.03, "ci_high": -0.01},
                        {"student": "modeld2", "diff": -0.01, "ci_low": -0.02, "ci_high": 0.004}])
    lines = demo.distillation_verdict(hurt)
    assert lines[1] == "  EEEA-Net-C2 <- modeld3: -0.0200 [-0.0300, -0.0100]"
    assert lines[-1].startswith("distillation did not help on this sample: 1 of 2 students below the baseline")
    assert "--seeds 3 measures the seed spread" in lines[-1]
    helped = _comparison([{"student": "modeld3", "diff": 0.02, "ci_low": 0.01, "ci_high": 0.03}],
                         [{"model": "modeld3", "diff_runs": 3, "diff_mean": 0.015, "diff_sd": 0.004}])
    lines = demo.distillation_verdict(helped)
    assert lines[1].endswith("; over 3 seeds +0.0150 ± 0.0040")
    assert lines[-1].startswith("distillation helped on this sample: 1 of 1 students above the baseline")
    assert lines[-1].endswith("; over 3 training seeds 1 of 1 students are above the baseline by more than their "
                              "seed sd, 0 below by more, 0 within it")
    unclear = _comparison([{"student": "modeld3", "diff": 0.001, "ci_low": -0.01, "ci_high": 0.012}])
    assert demo.distillation_verdict(unclear)[-1].startswith("distillation made no clear difference")
    assert demo.distillation_verdict({"models": [], "bootstrap": []}) == [
        "distillation: no student and baseline pair to compare"]


def test_demo_regenerates_its_sample_when_the_label_structure_changes(tmp_path):
    data_dir = tmp_path / "data"
    parser = demo.get_args_parser()
    demo._synthetic_sample(data_dir, parser.parse_args(["--patients", "12", "--label-structure", "plain"]))
    first = (data_dir / "labels" / "train_list.txt").stat().st_mtime_ns
    demo._synthetic_sample(data_dir, parser.parse_args(["--patients", "12", "--label-structure", "plain"]))
    assert (data_dir / "labels" / "train_list.txt").stat().st_mtime_ns == first  # the same sample is kept
    demo._synthetic_sample(data_dir, parser.parse_args(["--patients", "12", "--label-structure", "nih"]))
    assert read_manifest(data_dir)["label_structure"] == "nih"
