"""A checkpoint file cannot run code (issue 15 §3): every flag that loads one refuses a pickle that asks for more
than tensors, plain values and (for initial weights) the published formats' allow-list; in-process, no training."""
import argparse
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_training_flags

from common.commands import compare, distill
from common.commands import evaluate as evaluation
from common.commands import predict as predict_command
from common.commands import train as training
from common.commands._cli import run_main
from common.errors import UserError
from common.models import create_model, load_pretrained
from common.models.serialization import read_checkpoint_file

REPO = Path(__file__).resolve().parents[1]
GREY = REPO / "tests" / "data" / "images" / "00000001_000.png"
TINY = tiny_training_flags(epochs=1)


class WritesMarker:
    """Unpickling this runs Python code: it writes the marker file (what a malicious checkpoint would do)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)


@pytest.fixture
def malicious(tmp_path):
    """A checkpoint-shaped file (``model``, ``model_name``) whose unpickling writes ``marker``: (file, marker)."""
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "model_name": "eeea_c2", "num_classes": 14, "payload": WritesMarker(marker)},
               path)
    return path, marker


def one_line_refusal(capsys, path, *fragments):
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and error.startswith("error: "), error
    for fragment in (str(path), "asks for exec", "could run code from the file", *fragments):
        assert fragment in error, error
    return error


def test_the_malicious_file_really_runs_code_when_trusted(malicious, tmp_path, synthetic, capsys):
    # The control: with the explicit opt-in the payload runs (then the file is no state dict: one line, exit 2).
    path, marker = malicious
    argv = ["--data-dir", str(synthetic / "images"), "--split", str(synthetic / "labels"), *TINY,
            "--output-dir", str(tmp_path / "out"), "--pretrained", str(path), "--trust-checkpoint"]
    assert run_main(training.main, argv, model="eeea_c2", index=1) == 2
    assert marker.read_text() == "ran"
    captured = capsys.readouterr()
    assert "--trust-checkpoint: unpickling" in captured.out and len(captured.err.strip().splitlines()) == 1


def test_every_flag_that_loads_a_checkpoint_refuses_it(malicious, tmp_path, synthetic, capsys):
    path, marker = malicious
    data = ["--data-dir", str(synthetic / "images"), "--split", str(synthetic / "labels")]
    model1 = tmp_path / "teachers" / "1-EEEA-Net-C2" / "model1.pth"
    model1.parent.mkdir(parents=True)
    model1.write_bytes(path.read_bytes())  # the comparison reads model1.pth of the teachers' root
    cases = [
        ("--pretrained", training.main, data + TINY + ["--output-dir", str(tmp_path / "1"), "--pretrained", str(path)],
         {"model": "eeea_c2", "index": 1}, ("--trust-checkpoint loads it anyway",)),
        ("--resume", training.main, data + TINY + ["--output-dir", str(tmp_path / "1"), "--resume", str(path)],
         {"model": "eeea_c2", "index": 1}, ()),
        ("--student-init", distill.main, data + TINY + ["--output-dir", str(tmp_path / "6"), "--teacher", "1",
                                                       "--teacher-checkpoint", str(GREY), "--student-init", str(path)],
         {}, ("--trust-checkpoint loads it anyway",)),
        ("--teacher-checkpoint", distill.main, data + TINY + ["--output-dir", str(tmp_path / "6"), "--teacher", "1",
                                                             "--teacher-checkpoint", str(path)], {}, ()),
        ("--checkpoint", evaluation.main, ["--checkpoint", str(path), "--workers", "0"],
         {"model": "eeea_c2", "index": 1}, ()),
        ("comparison", compare.main, ["--teachers-root", str(tmp_path / "teachers"), "--output-dir",
                                      str(tmp_path / "6"), "--workers", "0"], {}, ()),
        ("predict.py --checkpoint", predict_command.main, [str(GREY), "--checkpoint", str(path), "--output",
                                                           str(tmp_path / "p.csv")],
         {"model": "eeea_c2", "index": 1, "folder": REPO / "1-EEEA-Net-C2"}, ()),
    ]
    for flag, command, argv, keywords, fragments in cases:
        code = run_main(lambda args: command(args, **keywords), argv)
        assert code == 2, flag
        refusal = one_line_refusal(capsys, model1 if flag == "comparison" else path, *fragments)
        assert not marker.exists(), f"{flag} ran code from the file"
        if not fragments:  # a flag that only takes this project's checkpoints has no override to offer
            assert "--trust-checkpoint" not in refusal, refusal


def test_published_formats_load_with_the_allow_list_only(tmp_path):
    # timm / DeiT / arnoweng-style training checkpoints: the flags as argparse.Namespace, numpy scalars (numpy 2
    # names; numpy 1 files name numpy.core.multiarray.scalar, covered by the same allow-list entry).
    model = create_model("eeea_c2", num_classes=14, img_size=32)
    checkpoint = {"state_dict": model.state_dict(), "args": argparse.Namespace(lr=1e-3), "epoch": np.int64(7),
                  "best_metric": np.float64(0.84)}
    path = tmp_path / "train-checkpoint.pth.tar"
    torch.save(checkpoint, path)
    with pytest.raises(UserError, match="asks for argparse.Namespace, not tensors and plain values"):
        read_checkpoint_file(path)  # not a DTforCXR8 file: the allow-list is for initial weights only
    notes = load_pretrained(create_model("eeea_c2", num_classes=14, img_size=32), "eeea_c2", path)
    assert not any("weights_only=False" in note for note in notes)
    legacy = tmp_path / "legacy.pth.tar"  # the pre-1.6 format arnoweng's 2017 file is in
    torch.save(checkpoint, legacy, _use_new_zipfile_serialization=False)
    assert read_checkpoint_file(legacy, published_formats=True)["best_metric"] == 0.84


def test_a_numpy_array_is_not_on_the_allow_list(tmp_path):
    path = tmp_path / "array.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "mean": np.zeros(3)}, path)
    with pytest.raises(UserError, match=r"asks for numpy\._core\.multiarray\._reconstruct.*--trust-checkpoint"):
        load_pretrained(create_model("eeea_c2", num_classes=14, img_size=32), "eeea_c2", path)


def test_a_teacher_cache_that_asks_for_code_is_not_run(malicious):
    # The teacher cache reader treats such a file as damaged (it is rebuilt, with a warning): no code runs.
    from common.engine.distill import read_teacher_cache
    path, marker = malicious
    state, damage = read_teacher_cache(path)
    assert state is None and "Weights only load failed" in damage
    assert not marker.exists()
