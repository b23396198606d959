"""The one training and evaluation engine of every folder (base training and distillation alike).

A criterion is any callable ``criterion(logits, batch) -> loss``; distillation is such a criterion
(:class:`common.distill.DistillationCriterion`), never a second loop.
"""
from __future__ import annotations

import math
import sys
import time

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .errors import UserError
from .losses import LabelLoss

# Reading the loss (.item()) waits for the GPU; doing it every few steps keeps the device queue full.
LOG_EVERY = 10


def progress(iterable, desc: str, **kwargs):
    """A tqdm bar; redrawn at most every 30 s when stderr is a log file rather than a terminal."""
    interactive = sys.stderr.isatty()
    return tqdm(iterable, desc=desc, dynamic_ncols=True, leave=False, mininterval=0.1 if interactive else 30,
                **kwargs)


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


def build_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW; norms, biases and position tables get no weight decay."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        (no_decay if parameter.ndim <= 1 or "pos_embed" in name or "bias_table" in name else decay).append(parameter)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr)


def build_scheduler(optimizer, epochs: int, steps_per_epoch: int, warmup_epochs: float):
    """Per-step schedule: linear warm-up, then cosine decay to zero at the end of the last epoch."""
    total = max(1, epochs * steps_per_epoch)
    warmup = min(int(round(warmup_epochs * steps_per_epoch)), total - 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class SupervisedCriterion:
    """The base-training criterion: hard labels only."""

    def __init__(self, label_loss: LabelLoss):
        self.label_loss = label_loss
        self.last_terms: dict = {}

    def __call__(self, logits: torch.Tensor, batch: dict) -> torch.Tensor:
        return self.label_loss(logits, batch["target"])


def _to_device(batch: dict, device: torch.device, channels_last: bool) -> dict:
    images = batch["image"].to(device, non_blocking=True)
    if channels_last and images.ndim == 4:
        images = images.contiguous(memory_format=torch.channels_last)
    return {**batch, "image": images, "target": batch["target"].to(device, non_blocking=True)}


def train_one_epoch(model, criterion, loader, optimizer, scheduler, scaler, device, amp_dtype,
                    epoch: int, epochs: int, clip_grad: float | None = None, channels_last: bool = False) -> dict:
    """One pass over ``loader``; returns the sample-weighted mean loss, images per second and seconds."""
    model.train()
    total_loss = torch.zeros((), device=device)  # summed on the device; read only when logging
    seen = 0
    start = time.perf_counter()
    bar = progress(loader, f"epoch {epoch}/{epochs} train", unit="batch")
    for step, batch in enumerate(bar, start=1):
        batch = _to_device(batch, device, channels_last)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(batch["image"])
            loss = criterion(logits, batch)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if clip_grad:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        count = batch["target"].shape[0]
        total_loss += loss.detach().float() * count
        seen += count
        if step % LOG_EVERY == 0 or step == len(loader):
            mean_loss = total_loss.item() / seen
            if not math.isfinite(mean_loss):
                # Nothing of this epoch is saved: the last checkpoint stays the last good state.
                raise UserError(f"the training loss became {mean_loss} at epoch {epoch}, step {step}; "
                                "lower --lr or enable --clip-grad")
            elapsed = time.perf_counter() - start
            postfix = {"loss": f"{mean_loss:.4f}", "img/s": f"{seen / max(elapsed, 1e-9):.1f}",
                       "lr": f"{scheduler.get_last_lr()[0]:.2e}"}
            postfix.update({k: f"{v:.4f}" for k, v in getattr(criterion, "last_terms", {}).items()})
            bar.set_postfix(postfix, refresh=False)
    seconds = time.perf_counter() - start
    return {"loss": total_loss.item() / max(seen, 1), "img_per_s": seen / max(seconds, 1e-9), "seconds": seconds,
            "images": seen}


@torch.no_grad()
def predict_logits(model, loader, device, amp_dtype, desc: str = "eval", channels_last: bool = False):
    """Run ``model`` over ``loader`` in eval mode.

    Returns ``(logits, targets)`` as float32/uint8 arrays. Ten-crop batches ``[B, 10, 3, H, W]`` give the logit of the
    mean crop probability, so that ``sigmoid`` of the result is the crop-averaged probability.
    """
    model.eval()
    all_logits, all_targets = [], []
    for batch in progress(loader, desc, unit="batch"):
        batch = _to_device(batch, device, channels_last)
        images = batch["image"]
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            if images.ndim == 5:
                size, crops = images.shape[:2]
                logits = model(images.flatten(0, 1)).float().view(size, crops, -1)
                probs = torch.sigmoid(logits).mean(1)
                logits = torch.logit(probs.double(), eps=1e-12).float()
            else:
                logits = model(images).float()
        all_logits.append(logits.cpu())
        all_targets.append(batch["target"].cpu())
    if not all_logits:
        return np.zeros((0, 0), np.float32), np.zeros((0, 0), np.uint8)
    return torch.cat(all_logits).numpy(), torch.cat(all_targets).numpy().astype(np.uint8)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Probabilities from logits, in float64 (the one place the sigmoid is applied for metrics)."""
    return 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
