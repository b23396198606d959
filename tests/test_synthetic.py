"""Tests of common.data.synthetic: file formats, patient-disjoint splits, determinism, images, overwrite protection."""
import filecmp
import os

import numpy as np
import pytest
from PIL import Image

from common.commands import synthetic as synthetic_command
from common.commands._cli import run_main
from common.constants import CLASS_NAMES, NUM_CLASSES
from common.data import synthetic
from common.errors import UserError

HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
          "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out_dir = str(tmp_path_factory.mktemp("synthetic") / "cxr8")
    return synthetic.generate_synthetic_cxr8(out_dir, num_patients=240, image_size=48, seed=3)


def _read_lines(path):
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    assert text.endswith("\n") and "\r" not in text
    return text.splitlines()


def _data_entry(summary):
    lines = _read_lines(summary["data_entry"])
    assert lines[0] == HEADER
    rows = {}
    for line in lines[1:]:
        fields = line.split(",")
        # The bracketed header names contain commas: 11 fields in the header and in every row (v2020 layout).
        assert len(fields) == 11
        rows[fields[0]] = fields
    return rows


def _labels_of(findings):
    names = findings.split("|")
    if names == ["No Finding"]:
        return np.zeros(NUM_CLASSES, dtype=int)
    assert all(name in CLASS_NAMES for name in names)
    return np.array([int(name in names) for name in CLASS_NAMES])


def test_data_entry_format(dataset):
    rows = _data_entry(dataset)
    assert len(rows) == dataset["num_images"]
    for name, fields in rows.items():
        patient, followup = name[:-4].split("_")
        assert len(patient) == 8 and len(followup) == 3 and name.endswith(".png")
        assert fields[3] == str(int(patient))  # v2020: integer Patient ID
        assert fields[2] == str(int(followup))  # v2020: integer Follow-up #
        assert 0 <= int(fields[4]) <= 95
        assert fields[5] in ("M", "F") and fields[6] in ("PA", "AP")
        assert int(fields[7]) > 0 and int(fields[8]) > 0 and float(fields[9]) > 0
        assert fields[1] == "No Finding" or "No Finding" not in fields[1]
        _labels_of(fields[1])


def test_official_lists_are_names_only_and_patient_disjoint(dataset):
    rows = _data_entry(dataset)
    train_val = _read_lines(dataset["train_val_list"])
    test = _read_lines(dataset["test_list"])
    assert all(" " not in line and line in rows for line in train_val + test)
    assert sorted(train_val + test) == sorted(rows)
    patients_train = {name[:8] for name in train_val}
    patients_test = {name[:8] for name in test}
    assert not patients_train & patients_test
    assert 0.7 < len(patients_train) / 240 < 0.9


def test_labelled_lists_format_agree_with_data_entry_and_are_patient_disjoint(dataset):
    rows = _data_entry(dataset)
    splits = {}
    for key in ("train_list", "val_list", "labelled_test_list"):
        names = []
        for line in _read_lines(dataset[key]):
            fields = line.split(" ")
            assert len(fields) == 1 + NUM_CLASSES
            assert all(value in ("0", "1") for value in fields[1:])
            np.testing.assert_array_equal(np.array(fields[1:], dtype=int), _labels_of(rows[fields[0]][1]))
            names.append(fields[0])
        splits[key] = {name[:8] for name in names}, names
    all_names = sorted(n for _, names in splits.values() for n in names)
    assert all_names == sorted(rows)
    patient_sets = [patients for patients, _ in splits.values()]
    for i in range(3):
        for j in range(i + 1, 3):
            assert not patient_sets[i] & patient_sets[j]
    fractions = [len(p) / 240 for p in patient_sets]
    assert fractions == pytest.approx([0.7, 0.1, 0.2], abs=0.02)


def test_images_are_grayscale_png_of_the_requested_size(dataset):
    names = sorted(os.listdir(dataset["images_dir"]))
    assert len(names) == dataset["num_images"]
    for name in names[:20]:
        with Image.open(os.path.join(dataset["images_dir"], name)) as image:
            assert image.format == "PNG" and image.mode == "L" and image.size == (48, 48)


def test_label_prevalence_is_plausible(dataset):
    positives = np.array([dataset["positives"][name] for name in CLASS_NAMES]) / dataset["num_images"]
    assert 0.35 <= dataset["no_finding"] / dataset["num_images"] <= 0.6
    assert positives.min() >= 0.04 and positives.max() <= 0.3
    # Some images carry several findings, and patients have follow-ups.
    labels = np.stack([_labels_of(fields[1]) for fields in _data_entry(dataset).values()])
    assert (labels.sum(axis=1) >= 2).sum() > 0.1 * len(labels)
    assert dataset["num_images"] > 1.8 * dataset["num_patients"]


def test_finding_patterns_are_mirror_symmetric_and_distinct():
    # What identifies a label must survive a horizontal flip: every pattern equals its mirror image exactly.
    rng = np.random.default_rng(0)
    patterns = []
    for index in range(NUM_CLASSES):
        canvas = synthetic._Canvas(64, 0.19, 0.47, 0.14, 0.29)
        image = np.zeros((64, 64), dtype=np.float32)
        labels = np.zeros(NUM_CLASSES, dtype=int)
        labels[index] = 1
        synthetic._draw_findings(canvas, image, labels, rng)
        assert np.abs(image).sum() > 20, CLASS_NAMES[index]
        np.testing.assert_array_equal(image, image[:, ::-1], err_msg=CLASS_NAMES[index])
        patterns.append(image)
    for i in range(NUM_CLASSES):
        for j in range(i + 1, NUM_CLASSES):
            assert not np.array_equal(patterns[i], patterns[j])


def test_same_seed_gives_identical_files_and_other_seed_differs(tmp_path):
    first = synthetic.generate_synthetic_cxr8(str(tmp_path / "a"), num_patients=12, image_size=32, seed=5)
    second = synthetic.generate_synthetic_cxr8(str(tmp_path / "b"), num_patients=12, image_size=32, seed=5)
    other = synthetic.generate_synthetic_cxr8(str(tmp_path / "c"), num_patients=12, image_size=32, seed=6)
    for key in ("data_entry", "train_val_list", "test_list", "train_list", "val_list", "labelled_test_list"):
        assert filecmp.cmp(first[key], second[key], shallow=False), key
    names = sorted(os.listdir(first["images_dir"]))
    assert names == sorted(os.listdir(second["images_dir"]))
    for name in names:
        assert filecmp.cmp(os.path.join(first["images_dir"], name), os.path.join(second["images_dir"], name),
                           shallow=False)
    assert not filecmp.cmp(first["data_entry"], other["data_entry"], shallow=False)


def test_refuses_to_overwrite_a_foreign_directory(tmp_path):
    user_file = tmp_path / "notes.txt"
    user_file.write_text("keep me")
    with pytest.raises(UserError, match="refusing"):
        synthetic.generate_synthetic_cxr8(str(tmp_path), num_patients=12, image_size=32)
    assert user_file.read_text() == "keep me"
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(UserError):
        synthetic.generate_synthetic_cxr8(str(a_file), num_patients=12, image_size=32)


def test_regenerates_over_a_previous_synthetic_set(tmp_path):
    out_dir = str(tmp_path / "set")
    big = synthetic.generate_synthetic_cxr8(out_dir, num_patients=20, image_size=32, seed=1)
    small = synthetic.generate_synthetic_cxr8(out_dir, num_patients=10, image_size=32, seed=1)
    assert big["num_images"] > small["num_images"]
    # Stale images of the larger set are gone.
    assert len(os.listdir(small["images_dir"])) == small["num_images"]


def test_main_command_line(tmp_path, capsys):
    out_dir = str(tmp_path / "cli")
    assert run_main(synthetic_command.main, [out_dir, "--patients", "12", "--image-size", "32", "--seed", "2"]) == 0
    assert "Wrote" in capsys.readouterr().out
    assert os.path.isfile(os.path.join(out_dir, synthetic.DATA_ENTRY_NAME))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "x.txt").write_text("x")
    assert run_main(synthetic_command.main, [str(foreign), "--patients", "12"]) == 2
    assert "error:" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        synthetic_command.main([out_dir, "--patients", "0"])
