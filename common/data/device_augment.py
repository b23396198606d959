"""Augmentation of whole uint8 batches on the training device (CUDA, or the CPU with the same code).

With the image cache (:mod:`common.data.image_cache`) the loader workers deliver uint8 batches ``[B, S, S]``; the training
process moves them to the device and calls a :class:`DeviceAugment` on them. That replaces the per-image PIL
transforms of :func:`common.data.transforms.build_transform`:

- train: a RandomResizedCrop drawn per image with torchvision's parameter rule
  (:func:`random_resized_crop_boxes`), cropped and resized for the whole batch in one
  ``torchvision.ops.roi_align`` call, a horizontal flip per image, conversion to float, the 3-channel copy and the
  normalisation;
- eval: the centre crop of ``img_size`` from the stored image resized to ``eval_resize(img_size)`` (no resize when
  the cache size equals ``eval_resize(img_size)``, e.g. 256 for 224: then the view is bit-identical to the PNG
  path's ``Resize(256) + CenterCrop(224)``).

torchvision.transforms.v2 cannot do this: on a batch tensor it draws one parameter set for the whole batch.

How the train crop differs from the PNG path (measured on the real PNGs of tests/data/images with a 256-px cache,
224 output, in grey levels 0-255; tests/test_device_augment.py checks the bounds):

- The PNG path crops the full-size PNG and resizes it with PIL (bilinear with antialiasing); the cached path crops
  the stored S-px image, so a small crop has the detail of the S-px image, not of the 1024-px original (use
  S=512 to keep more).
- roi_align with ``sampling_ratio=1`` is plain bilinear interpolation, without antialiasing. Inside a border of
  about one source pixel it equals ``torchvision.transforms.functional.resized_crop(..., antialias=False)`` on the
  float image (max difference about 0.003 grey levels). On the border it differs: roi_align interpolates with the
  pixel just outside the box, where resized_crop cuts first and repeats the edge pixel.
- Against PIL's antialiased ``resized_crop`` of the same stored image and box: mean absolute difference about 0.3
  grey levels (mostly PIL's rounding to uint8), 99th percentile about 1.2, at most about 15-25 on sharp edges and
  crop borders, for upsampled and downsampled crops alike. At S=256 a crop is downscaled by at most 256/224 =
  1.14, where antialiasing hardly matters; roi_align's adaptive sampling (``sampling_ratio=-1``, averaging
  several samples per output pixel) was measured further from PIL (mean 0.32, p99 1.4) and is not used. With
  S=512 and 224-px models large crops are downscaled up to 2.3x and alias more than PIL's view.
"""
from __future__ import annotations

import math

import torch
from torchvision.ops import roi_align
from torchvision.transforms import functional as TF

from common.data.images import eval_resize

DEFAULT_RATIO = (3.0 / 4.0, 4.0 / 3.0)
# torchvision's RandomResizedCrop tries this many random boxes before falling back to a centre crop.
CROP_TRIES = 10


def random_resized_crop_boxes(batch_size: int, height: int, width: int, scale=(0.08, 1.0), ratio=DEFAULT_RATIO,
                              generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw one RandomResizedCrop box per image with torchvision's rule, vectorised over the batch.

    The rule of ``torchvision.transforms.RandomResizedCrop.get_params``: up to 10 tries of an area share uniform in
    ``scale`` and a log aspect ratio uniform in ``log(ratio)``, with ``w = round(sqrt(area * r))`` and
    ``h = round(sqrt(area / r))``; the first try that fits the image is placed uniformly at random; when none fits,
    the centre crop of the whole image clamped to the ratio range. All random numbers come from ``generator`` (a
    CPU ``torch.Generator``), never from the global RNG.

    Returns a CPU int64 tensor ``[batch_size, 4]`` of ``(top, left, height, width)``, torchvision's order.
    """
    if generator is None:
        raise ValueError("random_resized_crop_boxes needs an explicit torch.Generator (the global RNG is not used)")
    if not 0 < scale[0] <= scale[1] or not 0 < ratio[0] <= ratio[1]:
        raise ValueError(f"scale {scale} and ratio {ratio} must be increasing positive ranges")
    area = float(height * width)
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    shares = torch.empty(batch_size, CROP_TRIES, dtype=torch.float64).uniform_(scale[0], scale[1], generator=generator)
    log_ratios = torch.empty(batch_size, CROP_TRIES, dtype=torch.float64).uniform_(log_low, log_high,
                                                                                    generator=generator)
    aspect = torch.exp(log_ratios)
    target_area = area * shares
    # torch.round and Python's round both round half to even, so the sizes match torchvision's int(round(...)).
    widths = torch.round(torch.sqrt(target_area * aspect)).long()
    heights = torch.round(torch.sqrt(target_area / aspect)).long()
    fits = (widths > 0) & (widths <= width) & (heights > 0) & (heights <= height)
    accepted = fits.any(dim=1)
    first = fits.long().argmax(dim=1)  # index of the first fitting try (0 where none fits; replaced below)
    rows = torch.arange(batch_size)
    box_w, box_h = widths[rows, first], heights[rows, first]

    # torchvision's fallback: the whole image, clamped to the ratio range, centred.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fallback_w, fallback_h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        fallback_w, fallback_h = int(round(height * ratio[1])), height
    else:
        fallback_w, fallback_h = width, height
    box_w = torch.where(accepted, box_w, torch.full_like(box_w, fallback_w))
    box_h = torch.where(accepted, box_h, torch.full_like(box_h, fallback_h))

    # randint(0, n + 1) as floor(u * (n + 1)): uniform over the same positions.
    position = torch.rand(batch_size, 2, dtype=torch.float64, generator=generator)
    top = torch.floor(position[:, 0] * (height - box_h + 1)).long().clamp_(max=height - box_h)
    left = torch.floor(position[:, 1] * (width - box_w + 1)).long().clamp_(max=width - box_w)
    top = torch.where(accepted, top, (height - box_h) // 2)
    left = torch.where(accepted, left, (width - box_w) // 2)
    return torch.stack([top, left, box_h, box_w], dim=1)


def center_crop_offsets(height: int, width: int, size: int) -> tuple[int, int]:
    """Top and left of torchvision's ``CenterCrop(size)`` (``int(round((H - size) / 2))``, half to even)."""
    return int(round((height - size) / 2.0)), int(round((width - size) / 2.0))


class DeviceAugment:
    """The train or eval view of a uint8 batch, computed on the batch's device.

    ``augment(images, generator)`` takes uint8 ``[B, H, W]`` or ``[B, 1, H, W]`` on any device and returns float32
    ``[B, 3, img_size, img_size]``, normalised with ``mean``/``std`` (the grey channel copied to 3 channels, as
    :class:`common.data.transforms.GrayToTensor` does). Train mode draws its crops and flips from ``generator`` (a CPU
    ``torch.Generator`` the caller seeds, for example once per epoch); eval mode is deterministic and needs none.
    """

    def __init__(self, img_size: int, mean, std, scale=(0.08, 1.0), ratio=DEFAULT_RATIO, train: bool = True,
                 sampling_ratio: int = 1):
        if len(mean) != 3 or len(std) != 3:
            raise ValueError("mean and std must have 3 values (the model's RGB normalisation)")
        self.img_size = int(img_size)
        self.scale = tuple(float(v) for v in scale)
        self.ratio = tuple(float(v) for v in ratio)
        self.train = train
        # 1: one bilinear sample per output pixel (see the module docstring for the measured alternatives).
        self.sampling_ratio = sampling_ratio
        std_tensor = torch.tensor(std, dtype=torch.float32)
        # (x / 255 - mean) / std as one multiply-add per channel.
        self._multiplier = (1.0 / (255.0 * std_tensor)).view(1, 3, 1, 1)
        self._offset = (-torch.tensor(mean, dtype=torch.float32) / std_tensor).view(1, 3, 1, 1)

    def __repr__(self) -> str:
        mode = f"train, scale={self.scale}, ratio={self.ratio}" if self.train else "eval"
        return f"DeviceAugment({self.img_size}, {mode})"

    def draw(self, batch_size: int, height: int, width: int, generator: torch.Generator):
        """The random parameters of one train batch: boxes ``[B, 4]`` (top, left, h, w) and flips ``[B]`` (bool)."""
        boxes = random_resized_crop_boxes(batch_size, height, width, self.scale, self.ratio, generator)
        flips = torch.rand(batch_size, generator=generator) < 0.5
        return boxes, flips

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        images = _as_batch(images)
        if not self.train:
            return self.eval_view(images)
        if generator is None:
            raise ValueError("DeviceAugment in train mode needs a torch.Generator (seed it once per epoch)")
        boxes, flips = self.draw(images.shape[0], images.shape[2], images.shape[3], generator)
        return self.apply(images, boxes, flips)

    def apply(self, images: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
        """Crop ``boxes`` (top, left, h, w) out of each image, resize to ``img_size``, flip where ``flips``."""
        images = _as_batch(images)
        device = images.device
        batch = images.shape[0]
        boxes = boxes.to(torch.float32)
        top, left, height, width = boxes.unbind(dim=1)
        # roi_align boxes are (image index, x1, y1, x2, y2) in pixel-edge coordinates: pixel i spans [i, i + 1],
        # so a crop of pixels left .. left + w - 1 is the interval [left, left + w]; aligned=True samples the
        # pixel centres the way interpolate(align_corners=False) does.
        rois = torch.stack([torch.arange(batch, dtype=torch.float32), left, top, left + width, top + height], dim=1)
        crops = roi_align(images.float(), rois.to(device, non_blocking=True), (self.img_size, self.img_size),
                          spatial_scale=1.0, sampling_ratio=self.sampling_ratio, aligned=True)
        flips = flips.to(device, non_blocking=True).view(batch, 1, 1, 1)
        crops = torch.where(flips, crops.flip(-1), crops)
        return self.to_model_input(crops)

    def eval_view(self, images: torch.Tensor) -> torch.Tensor:
        """Resize to ``eval_resize(img_size)`` (shorter side; skipped when already that size), centre crop."""
        images = _as_batch(images)
        target = eval_resize(self.img_size)
        height, width = images.shape[2], images.shape[3]
        if min(height, width) != target:
            # Not bit-identical to the PNG path: this resizes the stored image, not the original PNG. A cache
            # whose size is eval_resize(img_size) avoids it.
            images = TF.resize(images.float(), [target], antialias=True)
            height, width = images.shape[2], images.shape[3]
        top, left = center_crop_offsets(height, width, self.img_size)
        return self.to_model_input(images[:, :, top:top + self.img_size, left:left + self.img_size])

    def to_model_input(self, grey: torch.Tensor) -> torch.Tensor:
        """Grey batch (uint8 or float in 0..255, ``[B, H, W]`` or ``[B, 1, H, W]``) -> normalised float32
        ``[B, 3, H, W]``, what GrayToTensor + Normalize give per image. Also the last step for batches that were
        already cropped on the CPU (``common.data.datasets.crop_transform``)."""
        grey = _as_batch(grey).float()
        multiplier = self._multiplier.to(grey.device, non_blocking=True)
        offset = self._offset.to(grey.device, non_blocking=True)
        return (grey * multiplier + offset).contiguous()


def _as_batch(images: torch.Tensor) -> torch.Tensor:
    """``[B, H, W]`` or ``[B, 1, H, W]`` -> ``[B, 1, H, W]``; anything else is a programming error."""
    if images.ndim == 3:
        return images.unsqueeze(1)
    if images.ndim == 4 and images.shape[1] == 1:
        return images
    raise ValueError(f"expected a grey batch [B, H, W] or [B, 1, H, W], got shape {tuple(images.shape)}")
