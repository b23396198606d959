"""The synthetic set's label structures: the plain set unchanged, and the NIH-structured set's co-occurrence (that of
the packaged Data_Entry file), its training-label noise (Wang et al. 2017's text-mining precision and recall) and its
clean validation and test labels (common.data.synthetic_labels)."""
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from common.commands import synthetic as synthetic_command
from common.commands._cli import run_main
from common.constants import CLASS_NAMES, NUM_CLASSES
from common.data import synthetic, synthetic_labels
from common.data.labels import read_data_entry, read_labelled_list
from common.errors import UserError

# sha256 over every file (relative path and bytes) of generate_synthetic_cxr8(num_patients=12, image_size=32,
# seed=5), computed with the generator before label structures existed: the plain set must stay byte-identical.
PLAIN_SET_SHA256 = "34720bee5a5d86163c9074f4057a36c2dac1ca5fbadeef3224d31d1cccc85319"


def _tree_sha256(root):
    digest = hashlib.sha256()
    for folder, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            path = os.path.join(folder, name)
            digest.update(os.path.relpath(path, root).encode() + b"\0")
            with open(path, "rb") as handle:
                digest.update(handle.read())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def file_labels():
    return read_data_entry("v2020").labels.astype(np.int64)


@pytest.fixture(scope="module")
def nih_set(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("nih") / "cxr8"
    return synthetic.generate_synthetic_cxr8(out_dir, num_patients=240, image_size=32, seed=4, label_structure="nih")


def _pair_log_odds(probs, rows):
    """Log odds ratio of every class pair under the distribution ``probs`` over label ``rows`` (NaN if a cell is 0)."""
    rows = rows.astype(np.float64)
    result = np.full((NUM_CLASSES, NUM_CLASSES), np.nan)
    for i in range(NUM_CLASSES):
        for j in range(i + 1, NUM_CLASSES):
            cells = [probs @ (a * b) for a in (rows[:, i], 1 - rows[:, i]) for b in (rows[:, j], 1 - rows[:, j])]
            if min(cells) > 0:
                result[i, j] = np.log(cells[0] * cells[3] / (cells[1] * cells[2]))
    return result


def test_the_plain_set_is_byte_identical_to_before(tmp_path):
    summary = synthetic.generate_synthetic_cxr8(tmp_path / "set", num_patients=12, image_size=32, seed=5)
    assert _tree_sha256(tmp_path / "set") == PLAIN_SET_SHA256
    assert summary["label_structure"] == "plain" and "label_noise" not in summary
    manifest = json.loads((tmp_path / "set" / synthetic.MANIFEST_NAME).read_text())
    assert "label_structure" not in manifest
    assert synthetic.read_manifest(tmp_path / "set")["label_structure"] == "plain"


def test_unknown_label_structure_is_refused(tmp_path):
    with pytest.raises(UserError, match="label_structure"):
        synthetic.generate_synthetic_cxr8(tmp_path / "set", num_patients=12, image_size=32, label_structure="nhi")


def test_nih_distribution_is_the_files_joint_tilted_to_the_marginals(file_labels):
    combinations, probs = synthetic_labels.nih_label_distribution()
    file_rows, counts = np.unique(file_labels, axis=0, return_counts=True)
    np.testing.assert_array_equal(combinations, file_rows)  # only combinations the file has, all of them
    base = counts / counts.sum()
    assert probs.sum() == pytest.approx(1.0, abs=1e-12)
    # Marginals: each class at least NIH_MIN_PREVALENCE (else the file's), "No Finding" at the file's rate.
    wanted = np.maximum(file_labels.mean(axis=0), synthetic_labels.NIH_MIN_PREVALENCE)
    np.testing.assert_allclose(probs @ combinations, wanted, atol=1e-9)
    no_finding = combinations.sum(axis=1) == 0
    assert probs[no_finding].sum() == pytest.approx((file_labels.sum(axis=1) == 0).mean(), abs=1e-9)
    # An exponential tilt: log(p / p_file) is linear in the 14 labels and the No-Finding indicator, so every
    # interaction between findings beyond the per-class rates is the file's.
    features = np.column_stack([combinations, no_finding, np.ones(len(combinations))]).astype(np.float64)
    log_ratio = np.log(probs / base)
    coefficients, *_ = np.linalg.lstsq(features, log_ratio, rcond=None)
    assert np.abs(features @ coefficients - log_ratio).max() < 1e-8


def test_nih_co_occurrence_is_close_to_the_files(file_labels, nih_set):
    combinations, probs = synthetic_labels.nih_label_distribution()
    file_rows, counts = np.unique(file_labels, axis=0, return_counts=True)
    file_lor = _pair_log_odds(counts / counts.sum(), file_rows)
    tilted_lor = _pair_log_odds(probs, combinations)
    both = np.isfinite(file_lor) & np.isfinite(tilted_lor)
    assert both.sum() > 80
    # Pairwise log odds ratios move with the lifted rare classes but keep their pattern and, where the file's are
    # clear (|LOR| > 0.5), their sign. The plain set's independent draws have none of it.
    assert np.corrcoef(file_lor[both], tilted_lor[both])[0, 1] > 0.85
    strong = both & (np.abs(file_lor) > 0.5)
    assert (np.sign(file_lor[strong]) == np.sign(tilted_lor[strong])).mean() > 0.9
    # The written set: every label vector is a combination of the file, and effusion comes with atelectasis about
    # as often as in the file.
    entry = read_data_entry(nih_set["data_entry"]).labels.astype(np.int64)
    known = {tuple(row) for row in file_rows}
    assert all(tuple(row) in known for row in entry)
    effusion, atelectasis = CLASS_NAMES.index("Effusion"), CLASS_NAMES.index("Atelectasis")
    in_file = file_labels[file_labels[:, effusion] == 1, atelectasis].mean()
    in_set = entry[entry[:, effusion] == 1, atelectasis].mean()
    assert in_file == pytest.approx(0.246, abs=0.01)
    assert abs(in_set - in_file) < 0.15


def test_flip_rates_give_the_published_precision_and_recall():
    combinations, probs = synthetic_labels.nih_label_distribution()
    rng = np.random.default_rng(0)
    clean = combinations[rng.choice(len(combinations), size=200_000, p=probs)].astype(np.int64)
    rates = synthetic_labels.flip_rates(clean)
    noisy = synthetic_labels.flip_labels(clean, rates, np.random.default_rng(1))
    for index, name in enumerate(CLASS_NAMES):
        precision, recall = synthetic_labels.TEXT_MINING_QUALITY.get(name, synthetic_labels.TEXT_MINING_TOTAL)
        assert rates[name]["precision"] == precision and rates[name]["recall"] == recall
        kept = (clean[:, index] & noisy[:, index]).sum()
        assert kept / clean[:, index].sum() == pytest.approx(recall, abs=0.015), name
        assert kept / noisy[:, index].sum() == pytest.approx(precision, abs=0.015), name
    # Wang et al. 2017, Table 2: Mass is the worst recalled (0.40), Infiltration the least precise (0.74).
    assert rates["Mass"]["drop_positive"] == pytest.approx(0.60)
    assert rates["Cardiomegaly"]["add_positive"] == 0.0  # precision 1.00: no false positive is added
    with pytest.raises(ValueError):
        synthetic_labels.flip_rates(clean[:, :3])


def test_nih_set_has_noisy_training_labels_and_clean_validation_and_test_labels(nih_set):
    truth = read_data_entry(nih_set["data_entry"])
    for key in ("val_list", "labelled_test_list"):
        names, labels = read_labelled_list(Path(nih_set[key]))
        np.testing.assert_array_equal(labels, truth.lookup(names, key))
    names, noisy = read_labelled_list(Path(nih_set["train_list"]))
    clean = truth.lookup(names, "train")
    assert (noisy != clean).any()
    noise = nih_set["label_noise"]
    for index, name in enumerate(CLASS_NAMES):
        assert noise[name]["clean_positives"] == int(clean[:, index].sum())
        assert noise[name]["noisy_positives"] == int(noisy[:, index].sum())
    # More true positives dropped than false ones added overall (recall is the weaker figure for most classes).
    assert (clean & (1 - noisy)).sum() > ((1 - clean) & noisy).sum()
    manifest = synthetic.read_manifest(nih_set["out_dir"])
    assert manifest["label_structure"] == "nih" and manifest["label_noise"] == json.loads(json.dumps(noise))
    # Every class has positives to score on the test list (rare classes are lifted to 5% of images).
    _, test_labels = read_labelled_list(Path(nih_set["labelled_test_list"]))
    assert test_labels.sum(axis=0).min() >= 1


def test_nih_set_is_deterministic_and_keeps_the_plain_sets_split(tmp_path):
    first = synthetic.generate_synthetic_cxr8(tmp_path / "a", num_patients=12, image_size=32, seed=5,
                                              label_structure="nih")
    second = synthetic.generate_synthetic_cxr8(tmp_path / "b", num_patients=12, image_size=32, seed=5,
                                               label_structure="nih")
    plain = synthetic.generate_synthetic_cxr8(tmp_path / "c", num_patients=12, image_size=32, seed=5)
    assert _tree_sha256(tmp_path / "a") == _tree_sha256(tmp_path / "b")
    # The patient split comes from a stream of its own: the same patients in each part as the plain set's.
    for key in ("train_list", "val_list", "labelled_test_list"):
        patients = [{name[:8] for name in read_labelled_list(Path(summary[key]))[0]} for summary in (first, plain)]
        assert patients[0] == patients[1]
    assert second["label_noise"] == first["label_noise"]


def test_command_line_label_structure(tmp_path, capsys):
    out_dir = str(tmp_path / "cli")
    assert run_main(synthetic_command.main, [out_dir, "--patients", "12", "--image-size", "32",
                                             "--label-structure", "nih"]) == 0
    printed = capsys.readouterr().out
    assert "training list" in printed and "validation, test and Data_Entry labels are clean" in printed
    assert synthetic.read_manifest(out_dir)["label_structure"] == "nih"
    with pytest.raises(SystemExit):
        synthetic_command.main([out_dir, "--label-structure", "noisy"])
