"""External predictions: columns by class name, exact image set, scored like this project's models."""
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from common.constants import CLASS_NAMES
from common.errors import UserError
from common.evaluation.external import read_predictions_csv, score_predictions_csv


def _write(path, header, names, probs):
    lines = [",".join(header)] + [",".join([n, *(f"{p:.6f}" for p in row)]) for n, row in zip(names, probs)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_scores_equal_sklearn_with_shuffled_columns_and_rows(tmp_path):
    rng = np.random.default_rng(0)
    names = [f"{i:08d}_000.png" for i in range(60)]
    targets = (rng.uniform(size=(60, 14)) < 0.3).astype(int)
    probs = np.round(np.clip(0.3 * targets + rng.uniform(size=(60, 14)) * 0.7, 0, 1), 6)
    order = rng.permutation(14)  # columns in another order, as torchxrayvision writes them
    header = ["Image Index", *(f"prob_{CLASS_NAMES[c]}" for c in order)]
    rows = rng.permutation(60)
    path = _write(tmp_path / "preds.csv", header, [names[r] for r in rows], probs[rows][:, order])
    report, read = score_predictions_csv(path, names, targets)
    np.testing.assert_allclose(read, probs)
    for c, name in enumerate(CLASS_NAMES):
        assert report["auroc"][name] == pytest.approx(roc_auc_score(targets[:, c], probs[:, c]), abs=1e-12)
    assert report["source"] == str(path)


def test_bare_class_names_and_refusals(tmp_path):
    names = ["a.png", "b.png"]
    probs = np.full((2, 14), 0.5)
    header = ["Image Index", *(c.replace("_", " ") for c in CLASS_NAMES), "Patient Age"]
    path = _write(tmp_path / "bare.csv", header[:-1], names, probs)
    assert read_predictions_csv(path, ["b.png", "a.png"]).shape == (2, 14)
    with pytest.raises(UserError, match=r"1 missing \(first: c.png\), 0 extra"):
        read_predictions_csv(path, ["a.png", "b.png", "c.png"])
    with pytest.raises(UserError, match=r"0 missing, 1 extra \(first: b.png\), 2 in the file"):
        read_predictions_csv(path, ["a.png"])
    no_hernia = _write(tmp_path / "short.csv", ["Image Index", *CLASS_NAMES[:-1]], names, probs[:, :-1])
    with pytest.raises(UserError, match="short.csv has no column for class Hernia"):
        read_predictions_csv(no_hernia, names)
    logits = _write(tmp_path / "logits.csv", ["Image Index", *CLASS_NAMES], names, probs + 2)
    with pytest.raises(UserError, match=r"logits.csv, line 2: .*\[0, 1\]"):
        read_predictions_csv(logits, names)
    doubled = _write(tmp_path / "doubled.csv", ["Image Index", *CLASS_NAMES, "prob_Mass"], names,
                     np.full((2, 15), 0.5))
    with pytest.raises(UserError, match="2 columns for class Mass"):
        read_predictions_csv(doubled, names)
