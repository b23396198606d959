"""Shared fixtures: a tiny synthetic CXR8 data set and tiny trained runs, each made once per test session, and the
one flag list of the tests' tiny runs."""
import errno
import hashlib
import os
import shutil
import stat
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch

from common.data.synthetic import generate_synthetic_cxr8

REPO = Path(__file__).resolve().parents[1]

# Input size of the session's trained runs: EEEA-Net-C2's last feature map is 2 x 2 at 64 px (1 x 1 at 32), so that
# Grad-CAM and the localisation tables have something to show.
TRAINED_IMG_SIZE = 64


def tiny_training_flags(epochs: int = 2, img_size: int = 32) -> list[str]:
    """The flags of every tiny training run in the tests: seconds on one thread of a shared CPU.

    One intra-op thread (``--threads 1``): with ``--workers 0`` the thread rule would take both cores of a 2-core
    machine, and on a busy one 2 threads were 4-25x slower than 1 (common/runtime/threads.py).
    """
    return ["--epochs", str(epochs), "--batch-size", "16", "--img-size", str(img_size), "--workers", "0",
            "--threads", "1", "--device", "cpu", "--lr", "1e-3", "--warmup-epochs", "0"]


TINY = tiny_training_flags()
# The loader and device flags of an in-process test-model.py or comparison run.
LOADER = ["--workers", "0", "--threads", "1", "--device", "cpu"]
# Few bootstrap resamples: the intervals' code runs, in a fraction of the default 1000 (+ 200 per subgroup).
FAST_BOOT = ["--n-boot", "20", "--subgroup-boot", "10"]


def official_split_flags(synthetic: Path) -> list[str]:
    """The official-style split of the synthetic set (names-only lists; its test list holds every synthetic box)."""
    return ["--split", str(synthetic), "--label-file", str(synthetic / "Data_Entry_2017_v2020.csv")]


def trained_run_flags(synthetic: Path) -> list[str]:
    """Data and recipe of the session's trained runs (:func:`trained_model1`): a run with these flags has the same
    recipe as theirs (a student, a resumed run, a comparison row)."""
    return ["--data-dir", str(synthetic / "images"), *official_split_flags(synthetic),
            *tiny_training_flags(img_size=TRAINED_IMG_SIZE)]


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory):
    """A small synthetic data set: ``root/images``, ``root/labels/{train,val,test}_list.txt``, Data_Entry, lists."""
    root = tmp_path_factory.mktemp("synthetic")
    generate_synthetic_cxr8(root, num_patients=40, image_size=64, seed=1)
    return root


def _file_hashes(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _set_writable(root: Path, writable: bool) -> None:
    write = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH
    for path in [root, *root.rglob("*")]:
        mode = path.stat().st_mode
        path.chmod(mode | stat.S_IWUSR if writable else mode & ~write)


def _master_run(synthetic, tmp_path_factory, index: int, model_name: str, folder: str):
    """Train one tiny run into a master folder, make it read-only, and check at the end of the session that no test
    wrote into it (root ignores file modes, so the check is what catches it there)."""
    from common.commands import train as training
    from common.commands._cli import run_main
    root = tmp_path_factory.mktemp(f"master-{folder}")
    flags = trained_run_flags(synthetic) + ["--output-dir", str(root / folder)]
    assert run_main(training.main, flags, model=model_name, index=index) == 0
    before = _file_hashes(root)
    _set_writable(root, False)
    yield root
    _set_writable(root, True)
    assert _file_hashes(root) == before, f"a test wrote into the master runs in {root}: use copy_runs"


@pytest.fixture(scope="session")
def trained_model1(synthetic, tmp_path_factory):
    """Read-only master: ``1-EEEA-Net-C2/model1.pth`` (+ -last, log, curves), EEEA-Net-C2 trained once per session
    with :func:`trained_run_flags`. A module that writes anything (tests, students, resumes) takes a copy."""
    yield from _master_run(synthetic, tmp_path_factory, 1, "eeea_c2", "1-EEEA-Net-C2")


@pytest.fixture(scope="session")
def trained_model2(synthetic, tmp_path_factory):
    """Read-only master: ``2-OFA-595/model2.pth``, trained like :func:`trained_model1` (a second teacher)."""
    yield from _master_run(synthetic, tmp_path_factory, 2, "ofa595", "2-OFA-595")


def copy_runs(tmp_path_factory, *masters: Path) -> Path:
    """A writable root laid out like the repository holding a copy of every numbered folder of ``masters``."""
    root = tmp_path_factory.mktemp("runs")
    for master in masters:
        for folder in master.iterdir():
            shutil.copytree(folder, root / folder.name)
    _set_writable(root, True)
    return root


def run_script(script: str, *args, cwd=None, timeout=600):
    """Run a numbered folder's script as a user would; returns the CompletedProcess."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "2"}
    return subprocess.run([sys.executable, str(REPO / script), *map(str, args)], cwd=cwd or REPO,
                          capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module (2 shared cores: OpenMP barriers can stall a 30 ms forward pass for
    seconds); the previous setting is restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def make_image_dependent(model, batch) -> float:
    """Make a random-weight network's outputs depend on the image, so that agreement means something.

    Freshly built, EEEA-Net-C2 and OFA-595 give the same probabilities for every image (zero-initialised BatchNorm
    biases and unit running variances let the signal vanish: the logit spread over the real PNGs is ~1e-10), which
    would make an ONNX-vs-PyTorch check compare constants. Zero parameters get small random values and BatchNorm
    statistics are set from the batch itself. Returns the largest spread (std over the images) of a class's
    probability.
    """
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.abs().max() == 0:
                parameter.normal_(0, 0.1)
        norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # a cumulative average: one pass sets the statistics of this batch
        model.train()
        model(batch)
        model.eval()
        return torch.sigmoid(model(batch)).std(dim=0).max().item()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_decompression_bomb(path: Path, side: int = 20000) -> Path:
    """A valid 1-bit grey PNG of side x side pixels (20000: 400 million, past twice Pillow's MAX_IMAGE_PIXELS), all
    black, a few kB on disk."""
    row = bytes(1 + (side + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", data)
                     + _png_chunk(b"IEND", b""))
    return path


class FailingStream:
    """A file stream that raises ENOSPC, as a full disk does, on the write that empties its countdown ``left``
    (a one-item list, so that several streams can share one)."""

    def __init__(self, stream, left: list):
        self._stream, self._left = stream, left

    def write(self, data):
        self._left[0] -= 1
        if self._left[0] == 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self._stream.write(data)

    def __getattr__(self, name):
        return getattr(self._stream, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._stream.close()


def full_disk_at(monkeypatch, nth, *, across_files=False):
    """Make the atomic writers' ``nth`` write fail with ENOSPC, as a full disk does: the ``nth`` of each temporary
    file, or with ``across_files`` the ``nth`` of all of them together."""
    import common.atomic as atomic
    real, shared = atomic._open_temporary, [nth]
    monkeypatch.setattr(atomic, "_open_temporary", lambda handle, mode: FailingStream(
        real(handle, mode), shared if across_files else [nth]))
