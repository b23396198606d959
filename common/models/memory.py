"""Estimates of the GPU memory a training step needs, computed on any machine (no GPU needed).

A training step holds the weights, their gradients and AdamW's two moments (4 + 4 + 8 bytes per parameter in fp32),
and, between the forward and the backward pass, every tensor autograd saved for the backward pass. That second part
grows with the batch; it is counted here exactly for the device the forward runs on, by recording the tensors
autograd saves (``torch.autograd.graph.saved_tensors_hooks``) and adding up the distinct storages that are not
parameters. Under mixed precision the count is taken under CPU autocast, whose bf16 op list is close to, not equal
to, CUDA's; cuDNN workspaces, the allocator's fragmentation and the CUDA context are not in it. The figures are
therefore estimates: ``benchmarks/throughput.py --device cuda`` measures the real peak on a GPU.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: torch is imported by the functions that use it
    import torch
    from torch import nn

# Bytes per parameter of a training step with AdamW in fp32: weight, gradient, first and second moment.
OPTIMISER_BYTES_PER_PARAMETER = 4 + 4 + 4 + 4


def saved_tensor_bytes(model: nn.Module, images: torch.Tensor, amp_dtype: torch.dtype | None = None) -> int:
    """Bytes of the distinct non-parameter storages autograd saves during ``model(images)`` (train mode), the
    activation memory a backward pass needs. ``amp_dtype``: run the forward under CPU autocast with this dtype."""
    import contextlib

    import torch

    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    autocast = (torch.autocast("cpu", dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext())
    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), autocast:
        output = model(images)
    del output  # the graph (and the saved tensors) go with it
    return sum(storages.values())


@dataclass(frozen=True)
class TrainingMemory:
    """A training step's memory for one model and input size, in bytes."""

    model_name: str
    img_size: int
    precision: str
    parameters: int
    optimiser_bytes: int  # weights, gradients, AdamW moments
    fixed_activation_bytes: int  # saved tensors that do not grow with the batch (e.g. bf16 copies of weights)
    per_image_bytes: int  # saved tensors per image of the batch

    def total_bytes(self, batch_size: int) -> int:
        """Estimated bytes of a training step with ``batch_size`` images."""
        return self.optimiser_bytes + self.fixed_activation_bytes + batch_size * self.per_image_bytes

    def largest_batch(self, memory_bytes: float, headroom: float = 0.85) -> int:
        """The largest batch whose estimate fits in ``headroom`` x ``memory_bytes`` (the rest: CUDA context,
        workspaces, fragmentation); 0 when not even one image fits."""
        free = headroom * memory_bytes - self.optimiser_bytes - self.fixed_activation_bytes
        return max(0, int(free // self.per_image_bytes))


def training_memory(model_name: str, img_size: int | None = None, amp_dtype: torch.dtype | None = None,
                    num_classes: int = 14) -> TrainingMemory:
    """Estimate :class:`TrainingMemory` of ``model_name`` at ``img_size`` (default: 224, the training default) from
    two forward passes on the CPU (batches of 2 and 4 images, since BatchNorm after a global pooling needs two in
    train mode: half their difference is the per-image part)."""
    import torch

    from common.models.factory import create_model

    img_size = img_size or 224
    torch.manual_seed(0)
    model = create_model(model_name, num_classes=num_classes, img_size=img_size)
    counts = [saved_tensor_bytes(model, torch.randn(batch, 3, img_size, img_size), amp_dtype) for batch in (2, 4)]
    per_image = (counts[1] - counts[0]) // 2
    parameters = sum(p.numel() for p in model.parameters())
    return TrainingMemory(model_name=model_name, img_size=img_size,
                          precision="fp32" if amp_dtype is None else str(amp_dtype).removeprefix("torch."),
                          parameters=parameters, optimiser_bytes=parameters * OPTIMISER_BYTES_PER_PARAMETER,
                          fixed_activation_bytes=max(0, counts[0] - 2 * per_image), per_image_bytes=per_image)
