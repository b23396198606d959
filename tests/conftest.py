"""Shared fixtures: a tiny synthetic CXR8 data set, generated once per test session."""
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch

from common.data.synthetic import generate_synthetic_cxr8

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory):
    """A small synthetic data set: ``root/images``, ``root/labels/{train,val,test}_list.txt``, Data_Entry, lists."""
    root = tmp_path_factory.mktemp("synthetic")
    generate_synthetic_cxr8(root, num_patients=40, image_size=64, seed=1)
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
