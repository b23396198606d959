"""The faults of a training run, one test each, in-process on tiny synthetic runs: one line, exit 2, files kept."""
import hashlib
from pathlib import Path

import pytest
import torch
from conftest import TINY

from common.commands import evaluate as evaluation
from common.commands import train as training
from common.commands._cli import run_main
from common.models import create_model
from common.runs.checkpoint import save_atomic
from common.runs.folder import OutputLock

# Each test trains a tiny model (seconds apiece on a quiet CPU); the whole suite in CI runs them.
pytestmark = pytest.mark.slow


def flags(synthetic, out):
    return ["--data-dir", str(synthetic / "images"), "--split", str(synthetic / "labels"), *TINY,
            "--output-dir", str(out)]


def hashes(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())
            if p.is_file() and not p.name.startswith(".")}


def error_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.fixture(scope="module")
def finished(synthetic, tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "run"
    assert run_main(training.main, flags(synthetic, out), model="eeea_c2", index=1) == 0
    return out


def test_divergence_stops_at_once_and_overwrite_keeps_the_old_files(finished, synthetic, capsys):
    before = hashes(finished)
    argv = flags(synthetic, finished) + ["--overwrite", "--lr", "1e4", "--clip-grad", "0"]
    assert run_main(training.main, argv, model="eeea_c2", index=1) == 2
    line = error_line(capsys)
    assert "non-finite" in line or "training loss became" in line or "training diverged" in line, line
    # --overwrite promised to keep the old files until a new epoch replaces them; the log included.
    assert hashes(finished) == before


def test_test_model_refuses_another_class_count(finished, tmp_path, capsys):
    state = torch.load(finished / "model1.pth", map_location="cpu", weights_only=True)
    ten = create_model("eeea_c2", num_classes=10, img_size=32)
    state.update({"model": ten.state_dict(), "num_classes": 10})
    save_atomic(state, tmp_path / "ten.pth")
    argv = ["--checkpoint", str(tmp_path / "ten.pth"), "--workers", "0", "--device", "cpu"]
    assert run_main(evaluation.main, argv, model="eeea_c2", index=1) == 2
    assert "has 10 classes, not the 14" in error_line(capsys)


def test_a_run_killed_before_its_first_checkpoint_restarts_with_resume(synthetic, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    orphan = out / ".model1-last.pth.k3j2l1.tmp"
    orphan.write_bytes(b"\0" * 1000)  # what a kill during a checkpoint write leaves
    assert run_main(training.main, flags(synthetic, out) + ["--resume"], model="eeea_c2", index=1) == 0
    printed = capsys.readouterr().out
    assert "no model1-last.pth yet, so model1 starts from the beginning" in printed
    assert "removed 1 temporary file" in printed and not orphan.exists()
    assert (out / "model1.pth").is_file()


def test_a_second_run_in_the_same_folder_is_refused(synthetic, tmp_path, capsys):
    out = tmp_path / "run"
    with OutputLock(out.parent / "run", "model1") if out.mkdir() is None else None:
        assert run_main(training.main, flags(synthetic, out), model="eeea_c2", index=1) == 2
        line = error_line(capsys)
        assert "is in use by pid" in line and str(out) in line
    assert not (out / "model1.pth").exists()
    # Released: the folder is free again.
    assert run_main(training.main, flags(synthetic, out) + ["--epochs", "1"], model="eeea_c2", index=1) == 0
