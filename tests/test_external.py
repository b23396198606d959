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
    doubled = _write(tmp_path / "doubled.csv", ["Image Index", *(f"prob_{c}" for c in CLASS_NAMES), "p_Mass"], names,
                     np.full((2, 15), 0.5))
    with pytest.raises(UserError, match="2 probability columns for class Mass: prob_Mass, p_Mass"):
        read_predictions_csv(doubled, names)


def _labels_and_probs(rows=20, seed=0):
    rng = np.random.default_rng(seed)
    labels = (rng.uniform(size=(rows, 14)) < 0.4).astype(int)
    labels[0], labels[1] = 0, 1  # both values in every class
    probs = np.round(rng.uniform(0.01, 0.99, size=(rows, 14)), 6)
    return [f"{i:08d}_000.png" for i in range(rows)], labels, probs


def test_labels_are_never_read_as_probabilities(tmp_path):
    """Issue 15 §2: test-model.py's old file (p_<Class> beside bare <Class> labels) was read by its labels and scored
    as a perfect model; a file with only labels, or a 0/1 probability column, was read as probabilities."""
    names, labels, probs = _labels_and_probs()
    legacy = tmp_path / "model1-test-predictions.csv"
    header = ["Image Index", "Patient ID", *(f"p_{c}" for c in CLASS_NAMES), *CLASS_NAMES]
    lines = [",".join(header)] + [",".join([n, "1", *(f"{p:.6f}" for p in prob), *map(str, label)])
                                  for n, prob, label in zip(names, probs, labels)]
    legacy.write_text("\n".join(lines) + "\n")
    np.testing.assert_array_equal(read_predictions_csv(legacy, names), probs)
    # prob_<Class> beside bare <Class> labels: the prob_ columns.
    both = _write(tmp_path / "both.csv", ["Image Index", *(f"prob_{c}" for c in CLASS_NAMES), *CLASS_NAMES], names,
                  np.hstack([probs, labels]))
    np.testing.assert_array_equal(read_predictions_csv(both, names), probs)
    # Bare class columns that hold labels: refused, naming the column.
    only_labels = _write(tmp_path / "labels.csv", ["Image Index", *CLASS_NAMES], names, labels)
    with pytest.raises(UserError, match=r"labels.csv: column 'Atelectasis' holds only 0 and 1 over 20 images"):
        read_predictions_csv(only_labels, names)
    # A prob_ column of hard 0/1 decisions: refused too.
    hard = probs.copy()
    hard[:, 4] = labels[:, 4]
    decisions = _write(tmp_path / "hard.csv", ["Image Index", *(f"prob_{c}" for c in CLASS_NAMES)], names, hard)
    with pytest.raises(UserError, match="column 'prob_Mass' holds only 0 and 1"):
        read_predictions_csv(decisions, names)
    # A confident model's 6-decimal column of zeros is not labels (no 1 in it): read.
    confident = probs.copy()
    confident[:, 13] = 0.0
    zeros = _write(tmp_path / "zeros.csv", ["Image Index", *(f"prob_{c}" for c in CLASS_NAMES)], names, confident)
    np.testing.assert_array_equal(read_predictions_csv(zeros, names), confident)


def test_a_csv_with_a_byte_order_mark_is_read(tmp_path):
    """Spreadsheet programs save "CSV UTF-8" with a BOM; it used to be refused as having no 'Image Index' column."""
    names, _, probs = _labels_and_probs(rows=3)
    plain = _write(tmp_path / "plain.csv", ["Image Index", *(f"prob_{c}" for c in CLASS_NAMES)], names, probs)
    marked = tmp_path / "excel.csv"
    marked.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes().replace(b"\n", b"\r\n"))
    np.testing.assert_array_equal(read_predictions_csv(marked, names), probs)


def test_a_checkpoints_own_predictions_file_reproduces_its_report(synthetic, tmp_path, one_thread):
    """Issue 15 §2 round trip: test-model.py's modelK-test-predictions.csv.gz scored with --predictions gives the
    checkpoint's AUROC and F1 at 0.5 exactly (it used to read the label columns: a perfect 1.000), and the
    comparison still reuses the file's logits."""
    import json

    import torch
    from conftest import make_image_dependent

    from common.commands import evaluate
    from common.commands._cli import run_main
    from common.constants import IMAGENET_MEAN, IMAGENET_STD
    from common.data.images import load_png
    from common.data.split_data import DataFlags
    from common.data.transforms import build_transform
    from common.evaluation.scoring import ScoringSettings, evaluate_checkpoint
    from common.models import create_model

    torch.manual_seed(0)
    model = create_model("eeea_c2", img_size=32)
    images = sorted((synthetic / "images").glob("*.png"))[:16]
    transform = build_transform(32, IMAGENET_MEAN, IMAGENET_STD, train=False)
    assert make_image_dependent(model, torch.stack([transform(load_png(p)) for p in images])) > 1e-3
    split = ["--split", str(synthetic), "--label-file", str(synthetic / "Data_Entry_2017_v2020.csv")]
    checkpoint = tmp_path / "model1.pth"
    torch.save({"model": model.state_dict(), "model_name": "eeea_c2", "num_classes": 14, "img_size": 32,
                "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "epoch": 1,
                "val_thresholds": [0.5] * 14,
                "config": {"split": str(synthetic), "label_file": split[3], "data_dir": str(synthetic / "images"),
                           "val_fraction": 0.1, "seed": 0}}, checkpoint)
    flags = ["--workers", "0", "--device", "cpu", "--n-boot", "5", "--subgroup-boot", "2"]
    assert run_main(evaluate.main, ["--checkpoint", str(checkpoint), *flags], model="eeea_c2", index=1) == 0
    own = json.loads((tmp_path / "model1-test.json").read_text())
    predictions = tmp_path / "model1-test-predictions.csv.gz"
    assert run_main(evaluate.main, ["--predictions", str(predictions), *split, "--n-boot", "5", "--subgroup-boot",
                                    "2"], model="eeea_c2", index=1) == 0
    scored = json.loads((tmp_path / "model1-test-predictions-test.json").read_text())
    assert scored["auroc"] == own["auroc"] and scored["mean_auroc"] == own["mean_auroc"]
    assert scored["mean_auroc"] < 0.9  # a random-weight model, not the labels
    for metric in ("f1", "accuracy", "sensitivity", "specificity"):
        assert scored["threshold_0.5"][metric] == own["threshold_0.5"][metric], metric
    # The comparison's reuse reads the logit columns of the same file.
    settings = ScoringSettings(device="cpu", n_boot=5, subgroup_boot=2, data=DataFlags(workers=0))
    reused = evaluate_checkpoint(checkpoint, "eeea_c2", None, settings, reuse_from=[])
    assert reused.reuse is not None, "the checkpoint's own results were not reused"
    assert reused.reuse.note.startswith("reused the test logits of") and "model1-test.json" in reused.reuse.note
    assert reused.report["auroc"] == own["auroc"]
