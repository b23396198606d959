"""Model outputs on a loader: ``predict_logits`` (one view, ten-crop, the fp32 head under AMP) and a numerically safe
``sigmoid``.
"""
from __future__ import annotations

import numpy as np
import torch

from common.runtime.device import batch_to_device
from common.runtime.progress import progress


@torch.no_grad()
def predict_logits(model, loader, device, amp_dtype, desc: str = "eval", channels_last: bool = False,
                   augment=None, with_index: bool = False):
    """Run ``model`` over ``loader`` in eval mode (``augment`` as in :func:`train_one_epoch`).

    Returns ``(logits, targets)`` as float32/uint8 arrays, and with ``with_index`` also the dataset positions
    (int64) of the rows, to gather the shards of several processes. Ten-crop batches ``[B, 10, 3, H, W]`` give the logit of the
    mean crop probability, so that ``sigmoid`` of the result is the crop-averaged probability.
    """
    model.eval()
    all_logits, all_targets, all_index = [], [], []
    for batch in progress(loader, desc, unit="batch"):
        batch = batch_to_device(batch, device, channels_last, augment)
        images = batch["image"]
        if images.ndim == 5:
            size, crops = images.shape[:2]
            logits = _fp32_head_logits(model, images.flatten(0, 1), device, amp_dtype).view(size, crops, -1)
            probs = torch.sigmoid(logits.double()).mean(1)
            logits = torch.logit(probs, eps=1e-12).float()
        else:
            logits = _fp32_head_logits(model, images, device, amp_dtype)
        all_logits.append(logits.cpu())
        all_targets.append(batch["target"].cpu())
        if with_index:
            all_index.append(torch.as_tensor(batch["index"]).cpu())
    if not all_logits:
        empty = np.zeros((0, 0), np.float32), np.zeros((0, 0), np.uint8)
        return (*empty, np.zeros(0, np.int64)) if with_index else empty
    result = torch.cat(all_logits).numpy(), torch.cat(all_targets).numpy().astype(np.uint8)
    return (*result, torch.cat(all_index).numpy().astype(np.int64)) if with_index else result


def _fp32_head_logits(model, images, device, amp_dtype) -> torch.Tensor:
    """Logits with the body under autocast and the classifier head in float32.

    A bf16 head rounds every logit to 8 significant bits: 25,596 test logits collapse to a few hundred distinct
    values per class, and the ties move a rare class's AUROC by up to 4e-4. The head is cheap in float32.
    """
    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        features = model.forward_features(images)
    with torch.autocast(device.type, enabled=False):
        return model.forward_head(features.float()).float()


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Probabilities from logits, in float64 (the one place the sigmoid is applied for metrics)."""
    return 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
