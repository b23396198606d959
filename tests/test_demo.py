"""The README's demo command, shrunk: synthetic data, two folders, distillation and the comparison."""
import csv

import pytest

from common.commands import demo
from common.constants import DISTILL_FOLDER


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
