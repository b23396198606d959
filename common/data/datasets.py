"""Datasets and image sources: the PNG dataset (``CXR8Dataset``) and the image cache's batch dataset and loader."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import transforms

from common.data.image_cache import ImageCache
from common.data.images import eval_resize, load_png
from common.data.splits import SplitPart


class PngImageSource:
    """Reads images from the PNG files of an index. Replaceable by any object with ``load(name) -> PIL 'L' image``."""

    def __init__(self, index: dict[str, Path]):
        self.index = index

    def load(self, name: str) -> Image.Image:
        return load_png(self.index[name])


class CXR8Dataset(torch.utils.data.Dataset):
    """Images of one split part with their 14 labels; items are ``{"image", "target", "index"}``."""

    def __init__(self, part: SplitPart, source, transform):
        self.part = part
        self.source = source
        self.transform = transform

    def __len__(self) -> int:
        return len(self.part)

    def __getitem__(self, index: int) -> dict:
        image = self.source.load(self.part.names[index])
        return {
            "image": self.transform(image),
            "target": torch.from_numpy(self.part.labels[index].astype(np.float32)),
            "index": index,
        }


# --------------------------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------------------------
class CachedImageSource:
    """The cache as an image source for :class:`common.data.datasets.CXR8Dataset`: ``load(name)`` -> PIL ``L`` image
    ``S x S``. With the PNG path's transforms this is the "cached, CPU augmentation" loader (one read per image)."""

    def __init__(self, cache: ImageCache):
        self.cache = cache

    def load(self, name: str) -> Image.Image:
        return Image.fromarray(np.array(self.cache.array[self.cache.index_of(name)]), mode="L")


def crop_transform(img_size: int, train: bool, crop_scale=(0.08, 1.0)):
    """The geometric part of :func:`common.data.transforms.build_transform` (PIL in, PIL out, same random draws): train
    RandomResizedCrop + horizontal flip, eval Resize(eval_resize) + CenterCrop. With it :class:`CachedBatchDataset`
    delivers uint8 crops ``[B, img_size, img_size]``, 12 times fewer bytes than float 3-channel batches; the training
    process finishes them with :meth:`common.data.device_augment.DeviceAugment.to_model_input`."""
    if train:
        return transforms.Compose([transforms.RandomResizedCrop(img_size, scale=crop_scale),
                                   transforms.RandomHorizontalFlip()])
    return transforms.Compose([transforms.Resize(eval_resize(img_size)), transforms.CenterCrop(img_size)])


class CachedBatchDataset(torch.utils.data.Dataset):
    """Images of ``names`` from a cache with their ``labels`` ([N, 14]), read a whole batch at a time.

    ``dataset[list_of_positions]`` (what :func:`cached_loader`'s workers call, once per batch) reads the batch with one
    sorted fancy index of the memory map and returns ``{"image", "target", "index"}``; ``target`` float32
    ``[B, 14]``; ``index`` int64 ``[B]``, the positions in ``names``; ``image``, in the requested order:

    - without ``transform``: uint8 ``[B, S, S]``, to augment on the device with
      :class:`common.data.device_augment.DeviceAugment`;
    - with a ``transform`` that returns PIL images (:func:`crop_transform`): the per-image CPU crops as uint8
      ``[B, H, W]``, to finish with ``DeviceAugment.to_model_input`` on the device;
    - with a ``transform`` that returns tensors (:func:`common.data.transforms.build_transform`): those stacked, exactly the PNG
      path's batches.

    ``dataset[int]`` returns one sample the same way (``image`` without the batch dimension).
    """

    def __init__(self, cache: ImageCache, names, labels, transform=None):
        if len(names) != len(labels):
            raise ValueError(f"{len(names)} names but {len(labels)} label rows")
        self.cache = cache
        self.names = list(names)
        self.rows = cache.indices_of(self.names)
        self.targets = torch.as_tensor(np.asarray(labels), dtype=torch.float32)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            batch = self.read_batch([int(index)])
            return {key: value[0] for key, value in batch.items()}
        return self.read_batch(index)

    def __getitems__(self, indices) -> list[dict]:
        """A DataLoader with ``batch_size`` set calls this: one read for the batch, returned as samples to collate."""
        batch = self.read_batch(indices)
        return [{key: value[k] for key, value in batch.items()} for k in range(len(batch["index"]))]

    def read_batch(self, indices) -> dict:
        """The batch of dataset positions ``indices`` (one read of the cache)."""
        positions = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        images = self.cache.read(self.rows[positions.numpy()])
        if self.transform is None:
            image = torch.from_numpy(images)
        else:
            outputs = [self.transform(Image.fromarray(array, mode="L")) for array in images]
            if isinstance(outputs[0], Image.Image):
                image = torch.from_numpy(np.stack([np.asarray(output, dtype=np.uint8) for output in outputs]))
            else:
                image = torch.stack(outputs)
        return {"image": image, "target": self.targets[positions], "index": positions}


def cached_loader(dataset: CachedBatchDataset, batch_size: int, shuffle: bool, seed: int = 0, drop_last: bool = False,
                  workers: int = 0, persistent_workers: bool = False) -> torch.utils.data.DataLoader:
    """A DataLoader whose workers each produce whole batches (a BatchSampler as the sampler, ``batch_size=None``).

    With ``shuffle`` the order comes from ``seed`` exactly as in :meth:`common.pipeline.SplitData.loader`
    (same generator use), so the cached and the PNG loader visit the images in the same order.
    """
    generator = torch.Generator().manual_seed(seed)
    sampler = (torch.utils.data.RandomSampler(dataset, generator=generator) if shuffle
               else torch.utils.data.SequentialSampler(dataset))
    batches = torch.utils.data.BatchSampler(sampler, batch_size, drop_last)
    return torch.utils.data.DataLoader(
        dataset, sampler=batches, batch_size=None, generator=generator, num_workers=workers,
        pin_memory=torch.cuda.is_available(), persistent_workers=persistent_workers and workers > 0,
        prefetch_factor=4 if workers > 0 else None,
    )
