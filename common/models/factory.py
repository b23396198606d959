"""``create_model``: build a registered network, then optionally load published or project weights.

It sits above both the registry and the checkpoint loader, so that neither of those imports the other's user.
"""
from __future__ import annotations

from typing import Optional

from torch import nn

from common.models.pretrained import load_pretrained
from common.models.registry import build_model


def create_model(name: str, num_classes: int = 14, pretrained: Optional[str] = None,
                 img_size: Optional[int] = None) -> nn.Module:
    """Build a registered model with random weights, then optionally load weights.

    Args:
        name: one of :func:`common.models.list_models`.
        num_classes: size of the classification head (14 for ChestX-ray14). The model returns logits.
        pretrained: None (random weights), ``"imagenet"`` (the published ImageNet weights, downloaded into the
            torch hub cache unless already there), or a local checkpoint path in any format that
            :func:`common.models.load_pretrained` accepts. Heads of another class count are left freshly
            initialised and reported.
        img_size: input resolution the model will see; defaults to the native one. It changes the built model
            only for Visformer and AutoFormerV2 (position embeddings / attention windows), which then accept
            exactly this size.

    Raises:
        UserError: unknown name, an input size the model cannot process, or a checkpoint problem.

    Example:
        >>> model = create_model("eeea_c2", num_classes=14)
        >>> model(torch.zeros(1, 3, 224, 224)).shape
        torch.Size([1, 14])
    """
    model = build_model(name, num_classes=num_classes, img_size=img_size)
    if pretrained is not None:
        load_pretrained(model, name, pretrained)
    return model
