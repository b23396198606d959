"""Cells of the folder-6 comparison table (common.commands.compare)."""
from types import SimpleNamespace

from common.commands import compare


def test_comparison_rows_flag_models_that_predict_no_positive(tmp_path):
    def report(no_positive):
        block = {"macro": {"f1": 0.0 if no_positive else 0.3, "accuracy": 0.9},
                 "no_positive_classes": ["Hernia", "Mass"] if no_positive else []}
        return {"mean_auroc": 0.8, "threshold_0.5": block, "threshold_val_max_f1": {**block, "no_positive_classes": []}}

    entry = {"key": "modeld3", "role": "student", "teacher": 3, "label": "student", "path": tmp_path / "m.pth"}
    row = compare._row(entry, SimpleNamespace(report=report(True)))
    assert row["no_positive@0.5"] == 2 and row["no_positive_classes@0.5"] == "Hernia|Mass"
    assert row["no_positive@val"] == 0
    f1, accuracy = compare._degenerate_cells(row, "0.5")
    assert f1 == "0.0000 (no positive predicted for 2/14 classes)"
    assert accuracy == "0.9000 (no positive predicted for 2/14 classes)"
    assert compare._degenerate_cells(row, "val") == ("0.0000", "0.9000")
    healthy = compare._row(entry, SimpleNamespace(report=report(False)))
    assert compare._degenerate_cells(healthy, "0.5") == ("0.3000", "0.9000")
