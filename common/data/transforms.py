"""torchvision transforms of the PNG path: grey to tensor, the train and evaluation views, ten-crop."""
from __future__ import annotations

import torch
from PIL import Image
from torchvision import transforms

from common.data.images import eval_resize


# --------------------------------------------------------------------------------------------------------------------
# Transforms and datasets
# --------------------------------------------------------------------------------------------------------------------
class GrayToTensor:
    """PIL ``L`` image -> float tensor [3, H, W] in [0, 1]: the grey channel replicated, as ImageNet models expect."""

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return transforms.functional.to_tensor(image).expand(3, -1, -1).contiguous()


class StackCrops:
    """The 10 PIL crops of ``TenCrop`` -> one normalised tensor [10, 3, H, W]."""

    def __init__(self, normalize):
        self.normalize = normalize
        self.to_tensor = GrayToTensor()

    def __call__(self, crops) -> torch.Tensor:
        return torch.stack([self.normalize(self.to_tensor(crop)) for crop in crops])


def build_transform(img_size: int, mean, std, train: bool, tencrop: bool = False,
                    crop_scale: tuple[float, float] = (0.08, 1.0)):
    """Train: RandomResizedCrop + horizontal flip. Eval: resize 256 + centre crop 224 (or TenCrop, stacked)."""
    normalize = transforms.Normalize(mean, std)
    if train:
        return transforms.Compose([
            transforms.RandomResizedCrop(img_size, scale=crop_scale),
            transforms.RandomHorizontalFlip(),
            GrayToTensor(), normalize,
        ])
    if tencrop:
        return transforms.Compose([
            transforms.Resize(eval_resize(img_size)), transforms.TenCrop(img_size), StackCrops(normalize),
        ])
    return transforms.Compose([
        transforms.Resize(eval_resize(img_size)), transforms.CenterCrop(img_size), GrayToTensor(), normalize,
    ])
