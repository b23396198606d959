"""Shared fixtures: a tiny synthetic CXR8 data set, generated once per test session."""
import os
import subprocess
import sys
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
