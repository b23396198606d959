"""Device policy, at the bottom of the house: which device a run uses, its AMP dtype and precision name, seeding, and
moving a batch onto the device.
"""
from __future__ import annotations

import random

import numpy as np
import torch

from common.errors import UserError


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` is CUDA when available, else CPU; ``cpu``, ``cuda`` and ``cuda:N`` are checked."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r} is not a device (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine")
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device {name!r}: only cpu and cuda are supported")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick the fastest kernels
    return device


def amp_dtype_for(device: torch.device, enabled: bool = True):
    """Mixed-precision dtype: bf16 on CUDA where supported, else fp16 (with a scaler); None (fp32) on CPU."""
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def batch_to_device(batch: dict, device: torch.device, channels_last: bool, augment=None) -> dict:
    images = batch["image"].to(device, non_blocking=True)
    if augment is not None:
        # Image-cache batches arrive as uint8 [B, S, S]: cropped, flipped and normalised here, on the device.
        images = augment(images)
    if channels_last and images.ndim == 4:
        images = images.contiguous(memory_format=torch.channels_last)
    return {**batch, "image": images, "target": batch["target"].to(device, non_blocking=True)}


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def random_state() -> dict:
    """Every global random generator a training step draws from (python, numpy, torch CPU and CUDA), as values a
    ``weights_only`` checkpoint can hold: saved with a run stopped mid-epoch, so that it resumes with the same draws."""
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state = {"python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_random_state(state: dict) -> None:
    """Put back what :func:`random_state` saved."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    saved = state["numpy"]
    np.random.set_state((saved["kind"], saved["keys"].numpy().astype(np.uint32), saved["position"],
                         saved["has_gauss"], saved["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def precision_name(amp_dtype) -> str:
    """``fp32``, ``bf16`` or ``fp16``: the precision the forward passes ran in."""
    return {None: "fp32"}.get(amp_dtype) or {"torch.bfloat16": "bf16", "torch.float16": "fp16"}[str(amp_dtype)]
