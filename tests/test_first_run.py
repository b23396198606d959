"""What a newcomer's first real run is told: random initial weights are named once, and the demo runs on the device
it is given."""
import pytest
import torch
from conftest import copy_runs, tiny_training_flags, trained_run_flags

from common.commands import _setup, demo, distill
from common.commands import train as training
from common.commands._cli import run_main
from common.errors import UserError


def test_the_note_names_real_size_runs_from_random_weights_only():
    note = _setup.random_init_note("chexnet", 78_234, None)
    assert note.startswith("note: CheXNet starts from random weights (no --pretrained) on 78,234 training images")
    assert "--pretrained imagenet" in note and len(note.splitlines()) == 1
    assert _setup.random_init_note("chexnet", 78_234, "imagenet") is None
    assert _setup.random_init_note("chexnet", 78_234, "/weights/densenet121.pth") is None
    assert _setup.random_init_note("chexnet", 200, None) is None  # a synthetic or sample set


def test_a_run_from_random_weights_says_so_once(synthetic, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(_setup, "REAL_SIZE_TRAINING_IMAGES", 1)  # the synthetic set stands for the real one
    argv = ["--data-dir", str(synthetic / "images"), "--split", str(synthetic / "labels"),
            *tiny_training_flags(epochs=1), "--output-dir", str(tmp_path / "1-EEEA-Net-C2")]
    assert run_main(training.main, argv, model="eeea_c2", index=1) == 0
    assert capsys.readouterr().out.count("note: EEEA-Net-C2 starts from random weights") == 1


@pytest.mark.slow
def test_distilling_every_teacher_from_random_weights_says_so_once(synthetic, trained_model1, trained_model2,
                                                                   tmp_path_factory, monkeypatch, capsys):
    monkeypatch.setattr(_setup, "REAL_SIZE_TRAINING_IMAGES", 1)
    root = copy_runs(tmp_path_factory, trained_model1, trained_model2)
    argv = trained_run_flags(synthetic) + ["--output-dir", str(root / "6-Distilling-to-EEEA-Net-C2"),
                                           "--teacher-mode", "cached", "--teacher", "all"]
    assert run_main(distill.main, argv) == 0
    printed = capsys.readouterr().out
    assert printed.count("=== distilling teacher") == 2
    assert printed.count("note: EEEA-Net-C2 starts from random weights") == 1


def test_the_demo_passes_its_device_to_every_command(tmp_path, monkeypatch):
    seen = []

    class Stop(Exception):
        pass

    def first_command(argv, **kwargs):
        seen.append(argv)
        raise Stop

    monkeypatch.setattr(training, "main", first_command)
    with pytest.raises(Stop):
        demo.main(["--output-dir", str(tmp_path / "demo"), "--patients", "12", "--img-size", "32", "--device", "auto"])
    assert seen and seen[0][seen[0].index("--device") + 1] == "auto"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_demo_device_this_machine_lacks_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(UserError, match="CUDA is not available"):
        demo.main(["--output-dir", str(tmp_path / "demo"), "--device", "cuda"])
    assert not (tmp_path / "demo").exists()
