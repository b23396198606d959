"""The scripts as subprocesses: tiny train -> kill -> resume -> test for every model, and each bad input."""
import json
import signal
import subprocess
import sys

import pytest
import torch
from conftest import REPO, run_script, tiny_training_flags

from common.models import model_folders

# Every test here runs the scripts as subprocesses (a fresh interpreter each: seconds apiece).
pytestmark = pytest.mark.slow

TINY = tiny_training_flags(epochs=3)  # three epochs: killed after the first, resumed at the second


def data_flags(synthetic):
    return ["--data-dir", synthetic / "images", "--split", synthetic / "labels"]


# Runs a folder's training command in a child process that SIGKILLs itself right after its first epoch's
# checkpoint and curves are written: a real kill at a deterministic moment.
KILL_AFTER_FIRST_EPOCH = """
import os, signal, sys
import common.engine.loop as engine
from common.commands._cli import run_main
from common.commands.train import main
draw_curves = engine.plot_training_curves
def draw_then_die(*args, **kwargs):
    draw_curves(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)
engine.plot_training_curves = draw_then_die
sys.exit(run_main(main, sys.argv[3:], model=sys.argv[1], index=int(sys.argv[2])))
"""


@pytest.mark.parametrize("index", sorted(model_folders()))
def test_train_kill_resume_test(index, synthetic, tmp_path):
    folder, model_name = model_folders()[index]
    out = tmp_path / folder
    command = [sys.executable, "-c", KILL_AFTER_FIRST_EPOCH, model_name, str(index),
               *map(str, data_flags(synthetic)), *TINY, "--output-dir", str(out)]
    killed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    last = out / f"model{index}-last.pth"
    assert torch.load(last, map_location="cpu", weights_only=True)["epoch"] == 1

    resumed = run_script(f"{folder}/train-model.py", *data_flags(synthetic), *TINY, "--output-dir", out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {last} at epoch 2" in resumed.stdout
    state = torch.load(last, map_location="cpu", weights_only=True)
    assert state["epoch"] == 3 and state["model_name"] == model_name
    log_epochs = [line.split(",")[0] for line in (out / f"model{index}-log.csv").read_text().splitlines()[1:]]
    assert log_epochs == ["1", "2", "3"]
    best = torch.load(out / f"model{index}.pth", map_location="cpu", weights_only=True)
    assert best["kind"] == "best" and best["val_mean_auroc"] == pytest.approx(max(
        float(r.split(",")[2]) for r in (out / f"model{index}-log.csv").read_text().splitlines()[1:]), abs=1e-6)
    assert best["split"] == str(synthetic / "labels") and "inline" in best["label_file"]
    assert len(best["git_commit"]) >= 7 and best["class_names"][0] == "Atelectasis"

    tested = run_script(f"{folder}/test-model.py", "--workers", 0,
                        "--checkpoint", out / f"model{index}.pth", cwd=REPO / folder)
    assert tested.returncode == 0, tested.stderr
    assert "The average AUROC is" in tested.stdout and "The AUROC of Atelectasis is" in tested.stdout
    report = json.loads((out / f"model{index}-test.json").read_text())
    assert report["model_name"] == model_name and report["part"] == "test"
    assert (out / f"model{index}-test.csv").read_text().startswith("class,positives,auroc")


def test_scripts_run_from_any_directory(tmp_path):
    for cwd in (REPO, REPO / "3-CheXNet", tmp_path):
        result = run_script("3-CheXNet/train-model.py", "--help", cwd=cwd)
        assert result.returncode == 0 and "--data-dir" in result.stdout


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert str(fragment) in lines[0], lines[0]


def test_bad_inputs_give_one_line_and_exit_2(synthetic, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    keep = out / "model3.pth"
    keep.write_bytes(b"an earlier result that must survive")
    base = ["--output-dir", out, "--workers", 0, "--device", "cpu", "--img-size", 32]

    missing_dir = tmp_path / "no-such-folder"
    assert_one_line_error(run_script("3-CheXNet/train-model.py", "--data-dir", missing_dir, "--split",
                                     synthetic / "labels", *base, "--overwrite"), missing_dir)
    assert_one_line_error(run_script("3-CheXNet/train-model.py", "--data-dir", synthetic / "images",
                                     "--split", "nonsense", *base, "--overwrite"), "unknown split 'nonsense'")

    bad_lists = tmp_path / "bad-lists"
    bad_lists.mkdir()
    for part in ("train", "val", "test"):
        (bad_lists / f"{part}_list.txt").write_text((synthetic / "labels" / f"{part}_list.txt").read_text())
    lines = (bad_lists / "val_list.txt").read_text().splitlines()
    lines[2] = lines[2].rsplit(" ", 1)[0]
    (bad_lists / "val_list.txt").write_text("\n".join(lines) + "\n")
    assert_one_line_error(run_script("3-CheXNet/train-model.py", "--data-dir", synthetic / "images",
                                     "--split", bad_lists, *base, "--overwrite"), "val_list.txt, line 3", "13 label")
    lines[2] = lines[2] + " 7"
    (bad_lists / "val_list.txt").write_text("\n".join(lines) + "\n")
    assert_one_line_error(run_script("3-CheXNet/train-model.py", "--data-dir", synthetic / "images",
                                     "--split", bad_lists, *base, "--overwrite"), "line 3", "'7'")

    (bad_lists / "val_list.txt").write_text((synthetic / "labels" / "val_list.txt").read_text())
    images = tmp_path / "some-broken-images"
    images.mkdir()
    for path in sorted((synthetic / "images").glob("*.png")):
        (images / path.name).write_bytes(path.read_bytes())
    victim = images / (bad_lists / "train_list.txt").read_text().splitlines()[5].split()[0]
    victim.write_bytes(b"broken")
    assert_one_line_error(run_script("3-CheXNet/train-model.py", "--data-dir", images, "--split", bad_lists,
                                     *base, "--overwrite"), "1 image(s)", "unreadable", victim.name)
    train_names = [line.split()[0] for line in (bad_lists / "train_list.txt").read_text().splitlines()[:5]]
    for name in train_names:
        (images / name).unlink()
    assert_one_line_error(run_script("3-CheXNet/train-model.py", "--data-dir", images, "--split", bad_lists,
                                     *base, "--overwrite"), "5 of", "listed image(s) are not under", images, train_names[0])
    result = run_script("3-CheXNet/train-model.py", "--data-dir", synthetic / "images", "--split",
                        synthetic / "labels", *base, "--epochs", "-3")
    assert_one_line_error(result, "--epochs", "-3")
    assert_one_line_error(run_script("3-CheXNet/train-model.py", "--lr", "fast"), "--lr", "fast")
    assert_one_line_error(run_script("3-CheXNet/train-model.py", "--data-dir", synthetic / "images", "--split",
                                     synthetic / "labels", *base), "already exists", "--resume")
    assert keep.read_bytes() == b"an earlier result that must survive"


def test_wrong_checkpoints_are_refused(synthetic, tmp_path):
    from common.models import create_model
    from common.runs.checkpoint import save_atomic
    eeea = create_model("eeea_c2", num_classes=14)
    wrong_arch = tmp_path / "model1.pth"
    save_atomic({"model": eeea.state_dict(), "model_name": "eeea_c2", "num_classes": 14, "img_size": 32,
                 "mean": [0.5] * 3, "std": [0.5] * 3, "config": {"split": str(synthetic / "labels")}}, wrong_arch)
    result = run_script("3-CheXNet/test-model.py", "--checkpoint", wrong_arch, "--data-dir", synthetic / "images")
    assert_one_line_error(result, wrong_arch, "eeea_c2", "chexnet")
    five = create_model("eeea_c2", num_classes=5)
    wrong_classes = tmp_path / "five.pth"
    save_atomic({"model": five.state_dict(), "model_name": "eeea_c2", "num_classes": 14, "img_size": 32,
                 "mean": [0.5] * 3, "std": [0.5] * 3, "config": {"split": str(synthetic / "labels")}}, wrong_classes)
    result = run_script("1-EEEA-Net-C2/test-model.py", "--checkpoint", wrong_classes, "--data-dir",
                        synthetic / "images")
    assert_one_line_error(result, wrong_classes)
    missing = tmp_path / "absent.pth"
    assert_one_line_error(run_script("1-EEEA-Net-C2/test-model.py", "--checkpoint", missing), missing)


@pytest.mark.parametrize("script, params, flops", [
    ("1-EEEA-Net-C2/para-test-eeeac2.py", "4732838", "311335744.0"),
    ("3-CheXNet/para-test-chexnet.py", "6968206", "2895997440.0"),
])
def test_para_test_scripts_print_the_reference_numbers(script, params, flops):
    result = run_script(script, "--repeats", "1", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert f"The total number of parameters: {params}" in result.stdout
    assert f"Total FLOPs: {flops}" in result.stdout
