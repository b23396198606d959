"""The training-seed spread of the comparison."""
import numpy as np
import pytest

from common.errors import UserError
from common.evaluation.seed_spread import seed_run_files, seed_spread


def test_mean_and_sd_across_runs_of_aurocs_and_differences():
    runs = [{"model1": 0.80, "modeld1": 0.82}, {"model1": 0.79, "modeld1": 0.80}, {"model1": 0.81}]
    rows = {row["model"]: row for row in seed_spread(runs, "model1")}
    assert rows["model1"]["runs"] == 3 and rows["model1"]["mean_auroc_mean"] == pytest.approx(0.80)
    assert rows["model1"]["mean_auroc_sd"] == pytest.approx(np.std([0.80, 0.79, 0.81], ddof=1))
    assert rows["modeld1"]["diff_runs"] == 2 and rows["modeld1"]["diff_mean"] == pytest.approx(0.015)
    assert rows["modeld1"]["diff_sd"] == pytest.approx(np.std([0.02, 0.01], ddof=1))


def test_seed_run_folders_are_found_or_refused(tmp_path):
    (tmp_path / "1-EEEA-Net-C2").mkdir()
    (tmp_path / "1-EEEA-Net-C2" / "model1.pth").write_bytes(b"x")
    (tmp_path / "6-Distilling-to-EEEA-Net-C2").mkdir()
    (tmp_path / "6-Distilling-to-EEEA-Net-C2" / "modeld3.pth").write_bytes(b"x")
    assert set(seed_run_files(tmp_path)) == {"model1", "modeld3"}
    with pytest.raises(UserError, match="no model files"):
        seed_run_files(tmp_path / "6-Distilling-to-EEEA-Net-C2")
    with pytest.raises(UserError, match="is not a folder"):
        seed_run_files(tmp_path / "absent")
