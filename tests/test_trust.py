"""Every reuse of a result checks the patients, pixels and recipe it was made with (in-process, tiny runs)."""
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FAST_BOOT, LOADER, TRAINED_IMG_SIZE, copy_runs, trained_run_flags

from common.commands import compare, distill
from common.commands import evaluate as evaluation
from common.commands import train as training
from common.commands._cli import run_main
from common.data.split_data import SplitData
from common.data.splits import build_split
from common.engine.distill import Teacher, cache_key
from common.errors import UserError
from common.evaluation.logits import predict_logits

# A run with model1's own recipe and data on another split folder: what a student or a cross-split test would type.
def flags_on_split(synthetic, split: Path) -> list[str]:
    flags = trained_run_flags(synthetic)
    at = flags.index("--split")
    return flags[:at] + ["--split", str(split)] + flags[at + 4:]  # without the official split's --label-file


def hashes(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_line_error(capsys, *fragments) -> str:
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and error.startswith("error: "), error
    for fragment in fragments:
        assert fragment in error, error
    return error


def write_split(folder: Path, train, val, test, source: Path):
    """A labelled split directory whose parts are taken from the list files in ``source`` (lists of file names)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = {}
    for part in ("train", "val", "test"):
        for line in (source / f"{part}_list.txt").read_text().splitlines():
            lines[line.split()[0]] = line
    for part, names in (("train", train), ("val", val), ("test", test)):
        (folder / f"{part}_list.txt").write_text("\n".join(lines[n] for n in names) + "\n")
    return folder


def part_names(split_dir: Path, part: str) -> list[str]:
    return [line.split()[0] for line in (split_dir / f"{part}_list.txt").read_text().splitlines()]


def model1_split(synthetic):
    """The split model1 was trained on: the official-style split of the synthetic set, seed 0."""
    return build_split(str(synthetic), str(synthetic / "Data_Entry_2017_v2020.csv"), 0.1, 0)


def model1_parts(synthetic) -> tuple[list[str], list[str], list[str]]:
    """The train, validation and test names of the split model1 was trained on."""
    split = model1_split(synthetic)
    return tuple(list(split.parts[part].names) for part in ("train", "val", "test"))


@pytest.fixture(scope="module")
def trained(trained_model1, tmp_path_factory):
    """A copy of the session's model1 (EEEA-Net-C2, 2 epochs on the official-style synthetic split): tests here
    write results, students and resumed states beside it."""
    return copy_runs(tmp_path_factory, trained_model1)


def test_checkpoint_records_the_run_identity(trained, synthetic):
    state = torch.load(trained / "1-EEEA-Net-C2" / "model1.pth", map_location="cpu", weights_only=True)
    identity = state["identity"]
    assert identity["split"] == {"split": str(synthetic),
                                 "label_source": str(synthetic / "Data_Entry_2017_v2020.csv"),
                                 "val_fraction": 0.1, "seed": 0}
    assert identity["data"]["data_dir"] == str(synthetic / "images") and len(identity["data"]["files_sha256"]) == 64
    assert identity["recipe"]["epochs"] == 2 and identity["recipe"]["precision"] == "fp32"
    assert identity["package_version"] and identity["git_commit"]


def test_cross_split_with_shared_patients_is_refused_and_disjoint_one_recorded(trained, synthetic, tmp_path, capsys):
    labels = synthetic / "labels"
    train, val, test = model1_parts(synthetic)
    leaky = write_split(tmp_path / "leaky", test, val, train[: len(train) // 2], labels)
    before = hashes(trained / "1-EEEA-Net-C2")
    checkpoint = trained / "1-EEEA-Net-C2" / "model1.pth"
    argv = ["--checkpoint", str(checkpoint), "--split", str(leaky), *LOADER, *FAST_BOOT]
    assert run_main(evaluation.main, argv, model="eeea_c2", index=1) == 2
    images = len(train) // 2  # every test image is a training image; validation counted too (none here)
    one_line_error(capsys, "was trained or selected on", "patients of the test part", str(leaky),
                   f"({images} of its {images} images)", f"({images} images) in training, 0 patients (0 images) in "
                   "validation", "as recorded in it")
    assert hashes(trained / "1-EEEA-Net-C2") == before

    # Same test patients, other train/val lists: disjoint from what the checkpoint saw, so it is allowed.
    disjoint = write_split(tmp_path / "disjoint", val, train, test, labels)
    # --overwrite: the module's checkpoint is tested with other options by other tests (docs/guide/faults.md §5).
    argv = ["--checkpoint", str(checkpoint), "--split", str(disjoint), *LOADER, *FAST_BOOT, "--overwrite"]
    assert run_main(evaluation.main, argv, model="eeea_c2", index=1) == 0
    report = json.loads((trained / "1-EEEA-Net-C2" / "model1-test.json").read_text())
    assert report["leakage_check"]["cross_split"] is True and report["leakage_check"]["shared"] == 0
    assert report["identity"]["split"]["split"] == str(disjoint)
    assert report["mean_auroc_ci95"]["low"] <= report["mean_auroc"] <= report["mean_auroc_ci95"]["high"]


def test_validation_equal_to_test_is_refused(synthetic, tmp_path):
    labels = synthetic / "labels"
    train, _, test = model1_parts(synthetic)
    same = write_split(tmp_path / "same", train, test, test, labels)
    with pytest.raises(UserError, match="are in both val and test"):
        build_split(str(same))


@pytest.mark.parametrize("flag, value", [("--seed", "1"), ("--val-fraction", "0.2"), ("--epochs", "20"),
                                         ("--batch-size", "8"), ("--warmup-epochs", "1")])
def test_resume_with_another_recipe_is_refused(trained, synthetic, flag, value, capsys):
    out = trained / "1-EEEA-Net-C2"
    before = hashes(out)
    argv = trained_run_flags(synthetic) + ["--output-dir", str(out), "--resume", flag, value]
    argv = [a for i, a in enumerate(argv) if not (argv[i - 1:i] == [flag] or a == flag)] + [flag, value] \
        if argv.count(flag) > 1 else argv
    assert run_main(training.main, argv, model="eeea_c2", index=1) == 2
    one_line_error(capsys, "--resume", f"{flag} {value}", "(recorded)")
    assert hashes(out) == before


def test_resume_takes_the_flags_from_the_checkpoint(trained, synthetic, capsys):
    out = trained / "1-EEEA-Net-C2"
    # Nothing typed but the folder: the run's own flags come from model1-last.pth, and it had finished.
    assert run_main(training.main, ["--output-dir", str(out), "--resume", *LOADER], model="eeea_c2", index=1) == 0
    assert "already finished 2 of 2 epochs" in capsys.readouterr().out


def test_resume_on_other_pixels_is_refused(trained, synthetic, tmp_path, capsys):
    copy = tmp_path / "images"
    shutil.copytree(synthetic / "images", copy)
    victim = sorted(copy.glob("*.png"))[0]
    victim.write_bytes(victim.read_bytes() + b"\0")  # one file changed: another copy of the data
    out = trained / "1-EEEA-Net-C2"
    state = torch.load(out / "model1-last.pth", map_location="cpu", weights_only=True)
    state["epoch"] = 1  # pretend it was interrupted so that resuming does real work
    torch.save(state, tmp_path / "model1-last.pth")
    argv = ["--data-dir", str(copy), "--output-dir", str(tmp_path), "--resume", *LOADER]
    assert run_main(training.main, argv, model="eeea_c2", index=1) == 2
    one_line_error(capsys, "--data-dir")


@pytest.mark.slow
def test_distillation_resume_from_another_run_is_refused(trained, synthetic, capsys):
    folder6 = trained / "6-Distilling-to-EEEA-Net-C2"
    base = trained_run_flags(synthetic) + ["--output-dir", str(folder6), "--teacher-mode", "online"]
    assert run_main(distill.main, base + ["--teacher", "1"]) == 0
    capsys.readouterr()
    before = hashes(folder6)
    other_file = folder6 / "modeld1-last.pth"
    argv = base + ["--teacher", "1", "--resume", str(other_file), "--temperature", "4"]
    assert run_main(distill.main, argv) == 2
    one_line_error(capsys, "--temperature 4.0 (now) vs 2.0 (recorded)")
    shutil.copy(other_file, folder6 / "stolen-last.pth")
    assert run_main(distill.main, base + ["--teacher", "1", "--resume", str(folder6 / "stolen-last.pth"),
                                          "--teacher-checkpoint", str(trained / "1-EEEA-Net-C2" / "model1.pth")]) == 0
    (folder6 / "stolen-last.pth").unlink()
    capsys.readouterr()
    assert run_main(distill.main, base + ["--teacher", "all", "--resume", str(other_file)]) == 2
    one_line_error(capsys, "each student resumes from its own")
    assert hashes(folder6) == before


def test_teacher_cache_key_holds_pixels_and_precision(trained, synthetic, tmp_path):
    teacher = Teacher(trained / "1-EEEA-Net-C2" / "model1.pth", 1)
    data = SplitData(synthetic / "images", str(synthetic / "labels"), None, 0.1, 0, parts=("train",), workers=0)
    copy = tmp_path / "images"
    shutil.copytree(synthetic / "images", copy)
    resized = sorted(copy.glob("*.png"))[0]
    resized.write_bytes(resized.read_bytes() + b"\0")
    other = SplitData(copy, str(synthetic / "labels"), None, 0.1, 0, parts=("train",), workers=0)
    cpu = torch.device("cpu")
    assert cache_key(teacher, data, cpu, None)["files_sha256"] != cache_key(teacher, other, cpu, None)["files_sha256"]
    assert cache_key(teacher, data, cpu, None) != cache_key(teacher, data, cpu, torch.bfloat16)


def test_student_init_and_teacher_are_checked_by_patients(trained, synthetic, tmp_path, capsys):
    labels = synthetic / "labels"
    train, val, test = model1_parts(synthetic)
    swapped = write_split(tmp_path / "swapped", test, val, train, labels)  # test = model1's training patients
    argv = flags_on_split(synthetic, swapped) + ["--output-dir", str(tmp_path / "6"), "--teacher", "1",
                                                 "--teachers-root", str(trained)]
    assert run_main(distill.main, argv) == 2
    one_line_error(capsys, "teacher", "was trained or selected on", "patients of the test part")
    argv = flags_on_split(synthetic, swapped) + ["--output-dir", str(tmp_path / "6"), "--teacher", "1",
                                                 "--teacher-checkpoint", str(tmp_path / "none.pth")]
    assert run_main(distill.main, argv) == 2
    capsys.readouterr()


@pytest.mark.slow
def test_tencrop_thresholds_come_from_tencrop_validation(trained, synthetic, capsys):
    checkpoint = trained / "1-EEEA-Net-C2" / "model1.pth"
    argv = ["--checkpoint", str(checkpoint), *LOADER, "--tencrop", *FAST_BOOT, "--overwrite"]
    assert run_main(evaluation.main, argv, model="eeea_c2", index=1) == 0
    assert "transfer imperfectly" in capsys.readouterr().out
    report = json.loads((trained / "1-EEEA-Net-C2" / "model1-test.json").read_text())
    used = [report["threshold_val_max_f1"]["thresholds"][c] for c in report["classes"]]
    # The same thresholds, chosen here by hand on ten-crop probabilities of the validation part.
    teacher = Teacher(checkpoint, 1)
    data = SplitData(synthetic / "images", str(synthetic), str(synthetic / "Data_Entry_2017_v2020.csv"), 0.1, 0,
                     parts=("val",), workers=0)
    from common.data.transforms import build_transform
    from common.evaluation.logits import sigmoid
    from common.evaluation.metrics import choose_thresholds
    assert teacher.img_size == TRAINED_IMG_SIZE
    view = build_transform(teacher.img_size, teacher.mean, teacher.std, train=False, tencrop=True)
    logits, targets = predict_logits(teacher.model, data.loader("val", view, 3, shuffle=False), torch.device("cpu"),
                                     None)
    assert report["threshold_view"].startswith("ten-crop")
    assert used == pytest.approx(choose_thresholds(targets, sigmoid(logits)).tolist(), abs=1e-12)


def test_bf16_evaluation_keeps_float32_logits():
    torch.manual_seed(0)
    from common.models import create_model
    model = create_model("eeea_c2", img_size=64).eval()
    images, targets = torch.randn(256, 3, 64, 64), (torch.rand(256, 14) < 0.3).float()
    loader = [{"image": images[i:i + 64], "target": targets[i:i + 64]} for i in range(0, 256, 64)]
    bf16, _ = predict_logits(model, loader, torch.device("cpu"), torch.bfloat16)
    assert bf16.dtype == np.float32
    # The head runs in float32: every logit stays distinct, where logits rounded to bf16 would collapse into ties.
    rounded = torch.from_numpy(bf16).bfloat16().float().numpy()
    for column in range(14):
        assert len(np.unique(bf16[:, column])) == 256 > len(np.unique(rounded[:, column]))


def test_a_student_resumes_only_from_its_own_state(trained, synthetic, tmp_path, capsys):
    folder6 = tmp_path / "6"
    folder6.mkdir()
    state = torch.load(trained / "1-EEEA-Net-C2" / "model1-last.pth", map_location="cpu", weights_only=True)
    state["prefix"] = "modeld1"
    torch.save(state, folder6 / "modeld1-last.pth")
    argv = trained_run_flags(synthetic) + ["--output-dir", str(folder6), "--teacher", "2", "--teacher-checkpoint",
                                           str(trained / "1-EEEA-Net-C2" / "model1.pth"),
                                           "--resume", str(folder6 / "modeld1-last.pth")]
    assert run_main(distill.main, argv) == 2
    one_line_error(capsys, "is the state of modeld1, not of modeld2")
    assert not (folder6 / "modeld2.pth").exists()


def test_student_init_trained_on_test_patients_is_refused(trained, synthetic, tmp_path, capsys):
    labels = synthetic / "labels"
    train, val, test = model1_parts(synthetic)
    swapped = write_split(tmp_path / "swapped", test, val, train, labels)
    model1 = trained / "1-EEEA-Net-C2" / "model1.pth"
    argv = flags_on_split(synthetic, swapped) + ["--output-dir", str(tmp_path / "6"), "--teacher", "1",
                                                 "--teacher-checkpoint", str(model1), "--student-init", str(model1)]
    assert run_main(distill.main, argv) == 2
    # The student's start is checked first (before the teachers are loaded); both are model1.
    one_line_error(capsys, "--student-init", "was trained or selected on", "test part")
    from common.runs.checkpoint import load_checkpoint
    from common.runs.identity import check_unseen_patients
    split = build_split(str(swapped))
    with pytest.raises(UserError, match="--student-init .* was trained or selected on .* patients of the test part"):
        check_unseen_patients(model1, load_checkpoint(model1),
                              {"test part": (split.parts["test"].patient_ids, ("train", "val"))}, "--student-init")


def test_comparison_refuses_a_model_trained_on_other_image_files(trained, synthetic, tmp_path):
    copy = tmp_path / "images"
    shutil.copytree(synthetic / "images", copy)
    for path in sorted(copy.glob("*.png")):
        path.write_bytes(path.read_bytes() + b"\0")  # a re-encoded copy: same names, other files
    data = SplitData(synthetic / "images", str(synthetic / "labels"), None, 0.1, 0, parts=("test",), workers=0)
    present = [{"key": "model1", "path": trained / "1-EEEA-Net-C2" / "model1.pth"},
               {"key": "modeld1", "path": tmp_path / "modeld1.pth"}]
    configs = {"model1": {"data_dir": str(synthetic / "images")}, "modeld1": {"data_dir": str(copy)}}
    args = type("Args", (), {"data_dir": None})()
    with pytest.raises(UserError, match="their test images differ"):
        compare.check_same_pixels(present, configs, data, args, ("test",))
    configs["modeld1"]["data_dir"] = str(synthetic / "images")
    compare.check_same_pixels(present, configs, data, args, ("test",))


# ---- the patients a checkpoint recorded (issue 15 §1) -------------------------------------------------------------

def moved_training_patients(split_dir: Path, count: int) -> list[str]:
    """Move the images of ``count`` training patients from ``train_list.txt`` into ``test_list.txt`` (an edit made
    after training); returns the moved image names."""
    lines = (split_dir / "train_list.txt").read_text().splitlines()
    patients = sorted({line.split("_")[0] for line in lines})[:count]
    moved = [line for line in lines if line.split("_")[0] in patients]
    (split_dir / "train_list.txt").write_text("\n".join(line for line in lines if line not in moved) + "\n")
    with (split_dir / "test_list.txt").open("a") as stream:
        stream.write("\n".join(moved) + "\n")
    return [line.split()[0] for line in moved]


def test_checkpoint_records_its_patients_compactly(trained, synthetic):
    state = torch.load(trained / "1-EEEA-Net-C2" / "model1.pth", map_location="cpu", weights_only=True)
    record = state["patients_seen"]
    split = model1_split(synthetic)
    assert record["train"].dtype == torch.int32 and record["val"].dtype == torch.int32
    assert record["train"].tolist() == sorted(set(split.parts["train"].patient_ids.tolist()))
    assert record["val"].tolist() == sorted(set(split.parts["val"].patient_ids.tolist()))
    assert record["sources"] == [f"model1: trained on the train part and selected on the val part of split "
                                 f"{synthetic}"]


def test_list_files_edited_after_training_are_caught_by_the_record(trained, synthetic, tmp_path, capsys):
    # Train on a folder of lists, then edit them: move 3 training patients into the test list. Simulated on a copy
    # of model1 whose recorded split is that folder, holding model1's own parts (the record is what model1 really
    # trained on).
    lists = write_split(tmp_path / "lists", *model1_parts(synthetic), synthetic / "labels")
    state = torch.load(trained / "1-EEEA-Net-C2" / "model1.pth", map_location="cpu", weights_only=True)
    state["config"]["split"], state["config"]["label_file"] = str(lists), None
    folder = tmp_path / "model"
    folder.mkdir()
    torch.save(state, folder / "model1.pth")
    moved = moved_training_patients(lists, 3)
    patients = len({name.split("_")[0] for name in moved})
    argv = ["--checkpoint", str(folder / "model1.pth"), *LOADER, *FAST_BOOT]
    assert run_main(evaluation.main, argv, model="eeea_c2", index=1) == 2  # its own (edited) split: no shortcut
    one_line_error(capsys, f"was trained or selected on {patients} of the", f"{patients} patients ({len(moved)} images) "
                   "in training", "as recorded in it")
    # A folder whose test part is exactly the moved images, its train/val parts disjoint from them.
    exact = write_split(tmp_path / "exact", part_names(lists, "train"), part_names(lists, "val"), moved, lists)
    assert run_main(evaluation.main, argv + ["--split", str(exact)], model="eeea_c2", index=1) == 2
    one_line_error(capsys, f"{patients} of the {patients} patients of the test part", f"({len(moved)} of its "
                   f"{len(moved)} images)")
    assert sorted(p.name for p in folder.iterdir()) == ["model1.pth"]  # nothing written


def test_refusal_counts_validation_patients_too(trained, synthetic, tmp_path, capsys):
    labels = synthetic / "labels"
    split = model1_split(synthetic)
    train, val, test = (split.parts[p] for p in ("train", "val", "test"))
    first = int(train.patient_ids[0])
    train_images = [n for n, p in zip(train.names, train.patient_ids) if p == first]
    # Test part: one of model1's training patients and all of its validation patients; train and val parts: the
    # original test patients, halved by patient.
    cut = int(np.median(test.patient_ids))
    mixed = write_split(tmp_path / "mixed", [n for n, p in zip(test.names, test.patient_ids) if p < cut],
                        [n for n, p in zip(test.names, test.patient_ids) if p >= cut], train_images + val.names, labels)
    val_patients = len(set(val.patient_ids.tolist()))
    alone = tmp_path / "model" / "model1.pth"  # a copy without the results other tests wrote beside model1
    alone.parent.mkdir()
    shutil.copy(trained / "1-EEEA-Net-C2" / "model1.pth", alone)
    argv = ["--checkpoint", str(alone), "--split", str(mixed), *LOADER, *FAST_BOOT]
    assert run_main(evaluation.main, argv, model="eeea_c2", index=1) == 2
    one_line_error(capsys, f"was trained or selected on {1 + val_patients} of the {1 + val_patients} patients",
                   f"1 patients ({len(train_images)} images) in training",
                   f"{val_patients} patients ({len(val)} images) in validation")


def test_pretrained_project_checkpoint_is_checked_by_patients(trained, synthetic, tmp_path, capsys):
    labels = synthetic / "labels"
    train, val, test = model1_parts(synthetic)
    swapped = write_split(tmp_path / "swapped", test, val, train, labels)  # test = model1's training patients
    model1 = trained / "1-EEEA-Net-C2" / "model1.pth"
    argv = flags_on_split(synthetic, swapped) + ["--output-dir", str(tmp_path / "out"), "--pretrained", str(model1)]
    assert run_main(training.main, argv, model="eeea_c2", index=1) == 2
    one_line_error(capsys, "--pretrained", "was trained or selected on", "test part")
    assert not (tmp_path / "out" / "model1.pth").exists()
    # Folder 6: --pretrained as the student's start is checked as --student-init is.
    argv = flags_on_split(synthetic, swapped) + ["--output-dir", str(tmp_path / "6"), "--teacher", "1",
                                                 "--teacher-checkpoint", str(model1), "--pretrained", str(model1)]
    assert run_main(distill.main, argv) == 2
    one_line_error(capsys, "--pretrained", "was trained or selected on", "test part")


@pytest.mark.slow
def test_the_record_travels_to_a_model_started_from_a_checkpoint(trained, synthetic, tmp_path, capsys):
    labels = synthetic / "labels"
    train, val, test = model1_parts(synthetic)
    split = model1_split(synthetic)
    patients = split.parts["train"].patient_ids
    cut = int(patients[len(patients) // 2])
    first = [n for n, p in zip(train, patients) if p < cut]
    second = [n for n, p in zip(train, patients) if p >= cut]
    # B: half of model1's training patients, its validation and test parts: model1 is a fair start.
    b_split = write_split(tmp_path / "b", first, val, test, labels)
    out = tmp_path / "b-run"
    argv = flags_on_split(synthetic, b_split) + ["--epochs", "1", "--output-dir", str(out), "--pretrained",
                                                 str(trained / "1-EEEA-Net-C2" / "model1.pth")]
    assert run_main(training.main, argv, model="eeea_c2", index=1) == 0
    capsys.readouterr()
    record = torch.load(out / "model1.pth", map_location="cpu", weights_only=True)["patients_seen"]
    assert set(record["train"].tolist()) == set(patients.tolist())  # its own half and model1's other half
    assert any(source.startswith("--pretrained model1.pth: model1:") for source in record["sources"])
    # C: tested on model1's other half, which this run never trained on but its start did.
    c_split = write_split(tmp_path / "c", test, val, second, labels)
    argv = ["--checkpoint", str(out / "model1.pth"), "--split", str(c_split), *LOADER, *FAST_BOOT]
    assert run_main(evaluation.main, argv, model="eeea_c2", index=1) == 2
    one_line_error(capsys, "was trained or selected on", f"({len(second)} of its {len(second)} images)",
                   "--pretrained model1.pth")


def test_a_checkpoint_without_a_record_falls_back_with_a_warning(trained, synthetic, tmp_path, capsys):
    state = torch.load(trained / "1-EEEA-Net-C2" / "model1.pth", map_location="cpu", weights_only=True)
    del state["patients_seen"]
    folder = tmp_path / "old"
    folder.mkdir()
    torch.save(state, folder / "model1.pth")
    argv = ["--checkpoint", str(folder / "model1.pth"), *LOADER, *FAST_BOOT]
    assert run_main(evaluation.main, argv, model="eeea_c2", index=1) == 0
    assert "records no patients (made by an older version)" in capsys.readouterr().out
    report = json.loads((folder / "model1-test.json").read_text())
    assert report["leakage_check"]["checked_against"].startswith("patients rebuilt from today's list files")
    assert report["leakage_check"]["same_split"] is True and report["leakage_check"]["shared"] == 0
