"""A split with its image index and loaders (:class:`SplitData`), and the split a checkpoint was trained on."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .data import (CXR8Dataset, PngImageSource, build_split, build_transform, index_images,
                   require_images)
from .errors import UserError


def default_workers() -> int:
    """DataLoader workers: one per CPU core, at most 8."""
    return min(8, os.cpu_count() or 1)


def resolve_data_dir(data_dir: str | None) -> Path:
    """``--data-dir`` or, when it is not given, ``$CXR8_DATA_DIR``; one of them is required."""
    value = data_dir or os.environ.get("CXR8_DATA_DIR")
    if not value:
        raise UserError("no image folder: pass --data-dir (the folder holding the CXR8 PNGs) or set CXR8_DATA_DIR")
    return Path(value).expanduser()


SPLIT_KEYS = ("split", "label_file", "val_fraction", "seed")


def split_mismatch(config: dict, other: dict) -> str | None:
    """The first of :data:`SPLIT_KEYS` on which two run configs differ, or None when they used the same split."""
    return next((key for key in SPLIT_KEYS if config.get(key) != other.get(key)), None)


def trained_with_message(path, key: str, theirs, ours_label: str, ours) -> str:
    """``<path> was trained with --<key> <theirs>, <ours_label> with <ours>``: the start of every refusal of a
    checkpoint made with other flags (the caller adds why that matters)."""
    return f"{path} was trained with --{key.replace('_', '-')} {theirs}, {ours_label} {ours}"


def split_data_for(config: dict, args, parts) -> "SplitData":
    """The split a checkpoint was trained on (its ``config``), with any data flag given in ``args`` taking over."""
    label_file = args.label_file if args.label_file is not None else config.get("label_file")
    val_fraction = args.val_fraction if args.val_fraction is not None else config.get("val_fraction", 0.1)
    return SplitData(args.data_dir or config.get("data_dir"), args.split or config["split"], label_file,
                     val_fraction, config.get("seed", 0), parts=parts, workers=args.workers)


class SplitData:
    """A split, the image index of ``data_dir`` and loader factories for its parts."""

    def __init__(self, data_dir, split: str, label_file, val_fraction: float, seed: int, parts, workers: int,
                 source_factory=PngImageSource):
        self.data_dir = resolve_data_dir(data_dir)
        self.index = index_images(self.data_dir)
        self.split = build_split(split, label_file, val_fraction, seed)
        self.val_fraction, self.seed = val_fraction, seed
        names = [name for part in parts for name in self.split.parts[part].names]
        require_images(self.index, names, self.data_dir, workers=max(2 * workers, 4))
        self.source = source_factory(self.index)
        self.workers = workers

    def dataset(self, part: str, transform) -> CXR8Dataset:
        return CXR8Dataset(self.split.parts[part], self.source, transform)

    def loader(self, part: str, transform, batch_size: int, shuffle: bool, seed: int = 0, drop_last: bool = False):
        """A DataLoader; with ``shuffle`` the order comes from ``seed``, so a resumed epoch sees the same order."""
        dataset = self.dataset(part, transform)
        if len(dataset) == 0:
            raise UserError(f"the {part} part of split {self.split.name} is empty")
        generator = torch.Generator().manual_seed(seed)
        return torch.utils.data.DataLoader(
            dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, drop_last=drop_last,
            num_workers=self.workers, pin_memory=torch.cuda.is_available(),
            persistent_workers=False, prefetch_factor=4 if self.workers > 0 else None,
        )


def eval_transform_for(model_cfg: dict, img_size: int, tencrop: bool = False):
    """The deterministic evaluation view for a model's normalisation."""
    return build_transform(img_size, model_cfg["mean"], model_cfg["std"], train=False, tencrop=tencrop)
