"""A split with its image index and loaders (:class:`SplitData`), and the split a checkpoint was trained on."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from common.data.datasets import CachedBatchDataset, CachedImageSource, CXR8Dataset, PngImageSource, cached_loader
from common.data.device_augment import DeviceAugment
from common.data.fingerprint import data_identity
from common.data.image_cache import eval_view_note, open_image_cache
from common.data.images import eval_resize, index_images, require_images
from common.data.splits import SplitPart, build_split
from common.data.transforms import build_transform
from common.errors import UserError
from common.runtime.distributed import Distributed, processes_per_node
from common.runtime.threads import apply_thread_choice

VIEWS = ("train", "eval", "tencrop")


def resolve_data_dir(data_dir: str | None) -> Path:
    """``--data-dir`` or, when it is not given, ``$CXR8_DATA_DIR``; one of them is required."""
    value = data_dir or os.environ.get("CXR8_DATA_DIR")
    if not value:
        raise UserError("no image folder: pass --data-dir (the folder holding the CXR8 PNGs) or set CXR8_DATA_DIR")
    return Path(value).expanduser()


@dataclass(frozen=True)
class DataFlags:
    """The data flags of a command that reads a checkpoint's split; None takes the checkpoint's recorded value
    (``workers``/``threads``: None lets the thread rule choose)."""

    data_dir: str | None = None
    split: str | None = None
    label_file: str | None = None
    val_fraction: float | None = None
    image_cache: str | None = None
    workers: int | None = None
    threads: int | None = None
    cache_size: int | None = None  # --cache-size: which size of the image cache folder (None: the model's)


def split_data_for(config: dict, flags: DataFlags, parts) -> "SplitData":
    """The split a checkpoint was trained on (its ``config``), with any data flag given in ``flags`` taking over;
    chooses the threads and loader workers (:func:`~common.runtime.threads.apply_thread_choice`)."""
    label_file = flags.label_file if flags.label_file is not None else config.get("label_file")
    val_fraction = flags.val_fraction if flags.val_fraction is not None else config.get("val_fraction", 0.1)
    _, workers = apply_thread_choice(flags.workers, flags.threads, cached=bool(flags.image_cache),
                                     processes=processes_per_node())
    return SplitData(flags.data_dir or config.get("data_dir"), flags.split or config["split"], label_file,
                     val_fraction, config.get("seed", 0), parts=parts, workers=workers, image_cache=flags.image_cache,
                     cache_size=flags.cache_size, img_size=config.get("img_size"))


class SplitData:
    """A split, the image index of ``data_dir`` and loader factories for its parts.

    With ``image_cache`` (a folder built by ``python -m common.image_cache``) the pixels come from the cache,
    checked against ``data_dir`` (same source folder, needed images unchanged since the build): loaders read a
    whole batch with one read of its memory map, and :meth:`batches` leaves the augmentation to the device. A folder
    holding several sizes gives ``cache_size``, or else the size models of ``img_size`` are evaluated at.
    """

    def __init__(self, data_dir, split: str, label_file, val_fraction: float, seed: int, parts, workers: int,
                 source_factory=PngImageSource, image_cache=None, cache_size: int | None = None,
                 img_size: int | None = None):
        self.data_dir = resolve_data_dir(data_dir)
        self.index = index_images(self.data_dir)
        self._identities: dict[tuple, dict] = {}  # data_identity per set of names (see identity())
        self.split = build_split(split, label_file, val_fraction, seed)
        self.val_fraction, self.seed = val_fraction, seed
        names = [name for part in parts for name in self.split.parts[part].names]
        self.cache = None
        if image_cache is not None:
            # The cache check stats the needed files (unchanged since the build); no PNG is opened.
            self.cache = open_image_cache(image_cache, data_dir=self.data_dir, names_needed=names, index=self.index,
                                          size=cache_size, prefer=eval_resize(img_size) if img_size else None)
            print(f"reading images from {self.cache}")
            self.source = CachedImageSource(self.cache)
        else:
            require_images(self.index, names, self.data_dir, workers=max(2 * workers, 4))
            self.source = source_factory(self.index)
        self.workers = workers

    def identity(self, names) -> dict:
        """The pixels read for ``names`` (:func:`common.data.fingerprint.data_identity`); with a cache, its fingerprint.

        Computed once per set of names: a run and each of its teacher caches ask for the same training part, and
        every ask would ``stat`` its files again."""
        key = tuple(sorted(set(names)))
        if key not in self._identities:
            self._identities[key] = data_identity(self.data_dir, self.index, key, cache=self.cache)
        return dict(self._identities[key])

    def dataset(self, part: str, transform, rows=None):
        """The part (or its ``rows``, positions in the part) as a dataset of ``{"image", "target", "index"}`` items
        with ``transform`` applied per image."""
        values = self.split.parts[part]
        if rows is not None:
            rows = np.asarray(rows, dtype=np.int64)
            values = SplitPart([values.names[i] for i in rows], values.labels[rows], values.patient_ids[rows])
        if self.cache is not None:
            return CachedBatchDataset(self.cache, values.names, values.labels, transform)
        return CXR8Dataset(values, self.source, transform)

    def loader(self, part: str, transform, batch_size: int, shuffle: bool, seed: int = 0, drop_last: bool = False,
               rows=None):
        """A DataLoader; with ``shuffle`` the order comes from ``seed``, so a resumed epoch sees the same order.

        With a cache, the workers read a batch at a time and apply ``transform`` to its images."""
        dataset = self.dataset(part, transform, rows)
        if len(dataset) == 0:
            raise UserError(f"the {part} part of split {self.split.name} is empty")
        if self.cache is not None:
            return cached_loader(dataset, batch_size, shuffle, seed=seed, drop_last=drop_last, workers=self.workers)
        generator = torch.Generator().manual_seed(seed)
        return torch.utils.data.DataLoader(
            dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, drop_last=drop_last,
            num_workers=self.workers, pin_memory=torch.cuda.is_available(),
            persistent_workers=False, prefetch_factor=4 if self.workers > 0 else None,
        )

    def batches(self, part: str, view: str, img_size: int, mean, std, batch_size: int, *, crop_scale: float = 0.08,
                seed: int = 0, epoch: int = 1, drop_last: bool = False, distributed: Distributed | None = None,
                rows=None):
        """``(loader, augment)`` for a ``view`` of a part: ``train`` (shuffled, augmented), ``eval`` (centre crop) or
        ``tencrop``; the one place that decides where each step of a view runs.

        PNG path: the workers decode and apply the transforms of :func:`common.data.transforms.build_transform`; ``augment``
        is None. Cache: the workers deliver uint8 ``[B, S, S]`` batches and ``augment`` (a callable on the batch
        after it is moved to the device) is :class:`common.data.device_augment.DeviceAugment` of the view; train draws
        its crops from a generator seeded by ``(seed, epoch, rank)``. Ten-crop with the cache runs the PNG path's
        transform on the cached images in the workers (``augment`` None).

        ``distributed``: with several processes the train part is split by a DistributedSampler (``seed``, set to
        ``epoch``) and the other views by :meth:`common.runtime.distributed.Distributed.eval_positions` (no padding). The
        single-process train order is the one :meth:`loader` gives with ``seed * 1000 + epoch``. ``rows``: only these
        positions of the part (the sample the OOD statistics are fitted on).
        """
        if view not in VIEWS:
            raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
        distributed = distributed or Distributed()
        device_side = self.cache is not None and view != "tencrop"
        if device_side:
            transform = None
            augment = DeviceAugment(img_size, mean, std, scale=(crop_scale, 1.0), train=view == "train")
            if view == "train":
                generator = torch.Generator().manual_seed(
                    int(np.random.SeedSequence([seed, epoch, distributed.rank]).generate_state(1)[0]))
                augment = SeededAugment(augment, generator)
            else:
                note = eval_view_note(self.cache.size, img_size)
                if note:
                    print(f"note: {note}")
        else:
            transform = build_transform(img_size, mean, std, train=view == "train", tencrop=view == "tencrop",
                                        crop_scale=(crop_scale, 1.0))
            augment = None
        if not distributed.enabled:
            loader = self.loader(part, transform, batch_size, shuffle=view == "train",
                                 seed=seed * 1000 + epoch if view == "train" else 0, drop_last=drop_last, rows=rows)
            return loader, augment
        dataset = self.dataset(part, transform, rows)
        if len(dataset) == 0:
            raise UserError(f"the {part} part of split {self.split.name} is empty")
        if view == "train":
            sampler = distributed.train_sampler(len(dataset), seed, epoch)
        else:
            sampler = distributed.eval_positions(len(dataset))
            drop_last = False
        common = {"num_workers": self.workers, "pin_memory": torch.cuda.is_available(),
                  "prefetch_factor": 4 if self.workers > 0 else None}
        if self.cache is not None:
            # One item per batch: the workers read whole batches (see common.data.datasets.cached_loader).
            batches = torch.utils.data.BatchSampler(sampler, batch_size, drop_last)
            return torch.utils.data.DataLoader(dataset, sampler=batches, batch_size=None, **common), augment
        return torch.utils.data.DataLoader(dataset, sampler=sampler, batch_size=batch_size, drop_last=drop_last,
                                           **common), augment


class SeededAugment:
    """A train-mode :class:`~common.data.device_augment.DeviceAugment` bound to its generator: ``augment(images)``."""

    def __init__(self, augment: DeviceAugment, generator: torch.Generator):
        self.augment, self.generator = augment, generator

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.augment(images, self.generator)


def eval_transform_for(model_cfg: dict, img_size: int, tencrop: bool = False):
    """The deterministic evaluation view for a model's normalisation."""
    return build_transform(img_size, model_cfg["mean"], model_cfg["std"], train=False, tencrop=tencrop)
