"""Several processes with torchrun: the gather of evaluation shards (each image once), and a 2-process gloo run of
folder 1 and folder 6 whose recorded validation AUROC equals a single-process evaluation of the saved weights."""
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from common.constants import CLASS_NAMES
from common.data.cache_build import build_image_cache
from common.data.split_data import SplitData
from common.data.synthetic import generate_synthetic_cxr8
from common.evaluation.logits import predict_logits, sigmoid
from common.evaluation.metrics import mean_auroc, per_class_auroc
from common.models import create_model
from common.runs.checkpoint import load_model_from_checkpoint
from common.runtime.distributed import Distributed, merge_shards, shard_positions

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


def test_shards_cover_every_position_once_without_padding():
    for count in (0, 1, 7, 8, 9):
        shards = [shard_positions(count, rank, 2) for rank in range(2)]
        assert sorted(shards[0] + shards[1]) == list(range(count))
        assert abs(len(shards[0]) - len(shards[1])) <= 1


def test_merge_puts_rows_in_position_order_and_drops_padding_duplicates():
    rng = np.random.default_rng(0)
    logits, targets = rng.normal(size=(9, 14)).astype(np.float32), rng.integers(0, 2, (9, 14)).astype(np.uint8)
    # A fake 2-rank split as DistributedSampler would pad it: rank 1 repeats position 0 to have 5 rows too.
    rank0, rank1 = [0, 2, 4, 6, 8], [1, 3, 5, 7, 0]
    shards = [(logits[rank0], targets[rank0], np.array(rank0)), (logits[rank1], targets[rank1], np.array(rank1))]
    merged_logits, merged_targets = merge_shards(shards, 9)
    np.testing.assert_array_equal(merged_logits, logits)
    np.testing.assert_array_equal(merged_targets, targets)
    with pytest.raises(RuntimeError, match="expected 0..9"):
        merge_shards(shards, 10)  # a position nobody predicted is a bug, never silently skipped


def test_single_process_helpers_are_no_ops():
    single = Distributed()
    assert not single.enabled and single.is_main and single.eval_positions(3) == [0, 1, 2]
    stats = {"loss": 1.0, "images": 4, "seconds": 2.0, "img_per_s": 2.0, "skipped_steps": 0}
    assert single.reduce_epoch_stats(stats) is stats
    model = torch.nn.Linear(2, 2)
    assert single.prepare(model, torch.device("cpu")) is model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    generate_synthetic_cxr8(root / "data", num_patients=30, image_size=48, seed=1)
    names = [line.split()[0] for part in ("train", "val", "test")
             for line in (root / "data" / "labels" / f"{part}_list.txt").read_text().splitlines() if line.strip()]
    build_image_cache(root / "data" / "images", names, root / "cache", size=37, workers=1)  # 37: eval_resize(32)
    # A freshly initialised EEEA-Net-C2 gives every image the same logits up to float noise (its BatchNorm
    # running statistics are the initial ones), and a 1-epoch run on 47 images hardly changes that: its AUROC
    # would compare rounding noise. Start from weights whose BatchNorm statistics were measured on random inputs,
    # so that the images get distinct scores and equal AUROCs mean equal predictions.
    torch.manual_seed(0)
    model = create_model("eeea_c2", num_classes=14, img_size=32)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = None  # a cumulative average over the calibration batches
            module.reset_running_stats()
    with torch.no_grad():
        for _ in range(5):
            model(torch.randn(16, 3, 32, 32))
    torch.save(model.state_dict(), root / "calibrated.pth")
    return root


def torchrun(script, *args, cwd):
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
               str(REPO / script), *map(str, args)]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600, env=env)


def flags(root, *extra):
    return ["--data-dir", root / "data" / "images", "--split", root / "data" / "labels", "--epochs", "1",
            "--batch-size", "16", "--img-size", "32", "--workers", "0", "--device", "cpu",
            "--pretrained", root / "calibrated.pth", *extra]


def single_process_val_auroc(checkpoint_path, root, image_cache=None):
    checkpoint, model = load_model_from_checkpoint(checkpoint_path)
    data = SplitData(root / "data" / "images", str(root / "data" / "labels"), None, 0.1, 0, parts=("val",),
                     workers=0, image_cache=image_cache)
    loader, augment = data.batches("val", "eval", 32, checkpoint["mean"], checkpoint["std"], 5)  # other batches
    logits, targets = predict_logits(model, loader, torch.device("cpu"), None, augment=augment)
    return checkpoint["val_mean_auroc"], mean_auroc(per_class_auroc(targets, sigmoid(logits), CLASS_NAMES))


@pytest.mark.slow
def test_two_gloo_processes_train_write_once_and_validate_every_image_once(tiny, tmp_path):
    out = tmp_path / "out"
    result = torchrun("1-EEEA-Net-C2/train-model.py", *flags(tiny, "--output-dir", out, "--epochs", "2"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("Model saved as model1.pth") >= 1
    assert len(re.findall(r"best validation mean AUROC \S+ at epoch", result.stdout)) == 1  # rank 1 prints nothing
    assert sorted(p.name for p in out.iterdir()) == ["model1-curves.png", "model1-last.pth", "model1-log.csv",
                                                     "model1.pth"]
    assert len((out / "model1-log.csv").read_text().splitlines()) == 3
    recorded, evaluated = single_process_val_auroc(out / "model1.pth", tiny)
    assert recorded == pytest.approx(evaluated, abs=1e-9)

    # --resume under torchrun: make the -last state say one epoch was done, and continue to the second.
    last = torch.load(out / "model1-last.pth", map_location="cpu", weights_only=True)
    last["epoch"] = 1
    torch.save(last, out / "model1-last.pth")
    result = torchrun("1-EEEA-Net-C2/train-model.py", "--output-dir", out, "--resume", "--device", "cpu",
                      "--workers", "0", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("resuming") == 1
    assert len((out / "model1-log.csv").read_text().splitlines()) == 3  # the second epoch's row replaced


@pytest.mark.slow
def test_two_gloo_processes_distil_with_cached_teacher_logits_from_the_image_cache(tiny, tmp_path):
    teachers = tmp_path / "repo"
    teacher = torchrun("1-EEEA-Net-C2/train-model.py",
                       *flags(tiny, "--output-dir", teachers / "1-EEEA-Net-C2", "--image-cache", tiny / "cache"),
                       cwd=tmp_path)
    assert teacher.returncode == 0, teacher.stderr[-3000:]
    student_dir = teachers / "6-Distilling-to-EEEA-Net-C2"
    result = torchrun("6-Distilling-to-EEEA-Net-C2/train-model.py",
                      *flags(tiny, "--output-dir", student_dir, "--image-cache", tiny / "cache", "--teacher", "1",
                             "--teacher-mode", "cached"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(list((student_dir / "teacher-cache").glob("*.pt"))) == 1
    recorded, evaluated = single_process_val_auroc(student_dir / "modeld1.pth", tiny, image_cache=tiny / "cache")
    assert recorded == pytest.approx(evaluated, abs=1e-9)


@pytest.mark.slow
def test_a_bad_input_is_reported_once_and_every_process_exits_2(tiny, tmp_path):
    result = torchrun("1-EEEA-Net-C2/train-model.py", *flags(tiny, "--image-cache", tmp_path / "nowhere"),
                      cwd=tmp_path)
    assert result.returncode != 0
    assert result.stderr.count("error: image cache") == 1, result.stderr[-3000:]
