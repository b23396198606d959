"""Loader throughput on real PNGs: the PNG loader against the image cache, with ratios measured in one run.

    python benchmarks/loader.py [--data-dir D] [--images 300] [--batch-size 64] [--size 256] [--min-seconds 3]

Without ``--data-dir`` the real NIH PNGs of tests/data/images are repeated (as symbolic links with distinct names)
to ``--images`` files. For 1, 2 and all cores (the process and its loader workers pinned to that many cores with
``sched_setaffinity``; one loader worker per core; the training process's torch threads from
``choose_threads_and_workers``) it measures images per second of:

- the PNG loader: ``CXR8Dataset`` + ``PngImageSource`` + the training transforms (decode, RandomResizedCrop, flip,
  tensor, normalise), a plain DataLoader, as training uses today;
- the cache build (``build_image_cache``: decode, resize, write), once per core count into a fresh folder;
- the cached loader with CPU augmentation: one memory-map read per batch, then the same per-image PIL crops and
  flips as the PNG path (``crop_transform``); the workers deliver uint8 crops, which the training process turns
  into normalised 3-channel floats on the device (``DeviceAugment.to_model_input``, its cost printed beside). Also
  measured: the variant whose workers apply the PNG path's full transforms and deliver float batches;
- the cached loader with device augmentation: the workers deliver uint8 batches (one read per batch); the
  augmentation (``DeviceAugment``) runs in the training process on the device. Its cost per batch is printed
  beside, and also the rate when the training process augments every delivered batch (on a machine without a GPU
  both run on the same CPU cores, which is the worst case for this loader).

Each rate is also given as a ratio to the PNG loader at the same core count. The loaders run whole epochs for at
least ``--min-seconds``, including their worker start-up. Ratios come from one run on one machine and are
comparable; absolute numbers are not comparable across machines.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common.commands._cli import ArgumentParser, positive_int, run_main
from common.constants import NUM_CLASSES
from common.data.cache_build import build_image_cache
from common.data.datasets import CachedBatchDataset, CXR8Dataset, PngImageSource, cached_loader, crop_transform
from common.data.device_augment import DeviceAugment
from common.data.images import eval_resize, index_images
from common.data.splits import SplitPart
from common.data.transforms import build_transform
from common.errors import UserError
from common.runtime.device import resolve_device
from common.runtime.threads import choose_threads_and_workers

REPO = Path(__file__).resolve().parents[1]
REAL_IMAGES = REPO / "tests" / "data" / "images"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def get_args_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="benchmarks/loader.py", description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=None,
                        help="folder of PNGs to read (default: tests/data/images repeated to --images files)")
    parser.add_argument("--images", type=positive_int, default=300, help="number of images (default 300)")
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--size", type=positive_int, default=256, help="cache size S (default 256)")
    parser.add_argument("--img-size", type=positive_int, default=224, help="model input size (default 224)")
    parser.add_argument("--min-seconds", type=float, default=3.0, help="least time per loader measurement")
    parser.add_argument("--device", default="auto", help="where device augmentation runs: auto, cpu, cuda")
    return parser


def repeated_images(folder: Path, count: int) -> list[str]:
    """``count`` NIH-style names in ``folder``, links to the real PNGs in turn."""
    sources = sorted(REAL_IMAGES.glob("*.png"))
    if not sources:
        raise UserError(f"no PNGs in {REAL_IMAGES}; pass --data-dir")
    names = []
    for k in range(count):
        name = f"{90000000 + k:08d}_000.png"
        (folder / name).symlink_to(sources[k % len(sources)])
        names.append(name)
    return names


def core_counts() -> list[int]:
    available = len(os.sched_getaffinity(0))
    return sorted({count for count in (1, 2, available) if count <= available})


def rate(loader, min_seconds: float, on_batch=None) -> float:
    """Images per second over whole epochs lasting at least ``min_seconds`` (worker start-up included)."""
    images = 0
    start = time.perf_counter()
    while True:
        for batch in loader:
            if on_batch is not None:
                on_batch(batch)
            images += len(batch["index"])
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return images / elapsed


def augment_cost(augment: DeviceAugment, batch: torch.Tensor, device: torch.device, repeats: int = 10) -> float:
    """Seconds per batch of the train augmentation on ``device`` (the batch already there)."""
    batch = batch.to(device)
    generator = torch.Generator().manual_seed(0)
    augment(batch, generator)  # warm-up (kernel selection, allocator)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        augment(batch, generator)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def finish_cost(augment: DeviceAugment, crops: torch.Tensor, device: torch.device, repeats: int = 10) -> float:
    """Seconds per batch of turning uint8 CPU crops into the model's normalised input on ``device``."""
    crops = crops.to(device)
    augment.to_model_input(crops)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        augment.to_model_input(crops)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def main(argv=None) -> None:
    args = get_args_parser().parse_args(argv)
    if not hasattr(os, "sched_setaffinity"):
        raise UserError("this benchmark pins processes to cores with os.sched_setaffinity, which this system lacks")
    if eval_resize(args.img_size) != args.size:
        print(f"note: --size {args.size} is not eval_resize({args.img_size}) = {eval_resize(args.img_size)}")
    device = resolve_device(args.device)
    allowed = sorted(os.sched_getaffinity(0))
    workdir = tempfile.TemporaryDirectory(prefix="loader-bench-")
    try:
        if args.data_dir:
            data_dir = Path(args.data_dir).expanduser().resolve()
            names = sorted(index_images(data_dir))[:args.images]
        else:
            data_dir = Path(workdir.name) / "images"
            data_dir.mkdir()
            names = repeated_images(data_dir, args.images)
        index = index_images(data_dir)
        labels = np.zeros((len(names), NUM_CLASSES), dtype=np.uint8)
        part = SplitPart(names, labels, np.arange(len(names)))
        train_transform = build_transform(args.img_size, MEAN, STD, train=True)
        augment = DeviceAugment(args.img_size, MEAN, STD, train=True)
        print(f"{len(names)} images from {data_dir}, batch {args.batch_size}, cache {args.size} px, model input "
              f"{args.img_size} px; device augmentation on {device}"
              + ("" if device.type == "cuda" else " (no GPU: it runs on the CPU, sharing the cores with the loader)"))
        results = {}
        for cores in core_counts():
            os.sched_setaffinity(0, allowed[:cores])  # inherited by the loader and pool processes started below
            # The training process's threads by the project's rule (the loaders below use one worker per core).
            threads, _ = choose_threads_and_workers(cores=cores, kind="read", announce=False)
            torch.set_num_threads(threads)
            results[cores] = measure(cores, args, data_dir, index, part, labels, train_transform, augment, device,
                                     Path(workdir.name) / f"cache-{cores}")
            print(f"  {cores} core(s) done: " + ", ".join(f"{k} {v:,.1f}" for k, v in results[cores].items()))
    finally:
        os.sched_setaffinity(0, allowed)
        workdir.cleanup()
    report(results, args, device)


def measure(cores, args, data_dir, index, part, labels, train_transform, augment, device, cache_dir) -> dict:
    """The rates (images/s) and the augmentation cost (ms per batch) at one core count."""
    png_loader = torch.utils.data.DataLoader(
        CXR8Dataset(part, PngImageSource(index), train_transform), batch_size=args.batch_size, shuffle=True,
        generator=torch.Generator().manual_seed(0), num_workers=cores, persistent_workers=True, prefetch_factor=4)
    out = {"png": rate(png_loader, args.min_seconds)}
    del png_loader

    start = time.perf_counter()
    cache = build_image_cache(data_dir, part.names, cache_dir, size=args.size, workers=cores)
    out["build"] = len(part.names) / (time.perf_counter() - start)

    crops = CachedBatchDataset(cache, part.names, labels, transform=crop_transform(args.img_size, train=True))
    out["cached_cpu"] = rate(cached_loader(crops, args.batch_size, shuffle=True, workers=cores,
                                           persistent_workers=True), args.min_seconds)
    crop_batch = crops[list(range(min(args.batch_size, len(crops))))]["image"]
    out["finish_ms"] = 1000 * finish_cost(augment, crop_batch, device) * args.batch_size / len(crop_batch)
    floats = CachedBatchDataset(cache, part.names, labels, transform=train_transform)
    out["cached_cpu_float"] = rate(cached_loader(floats, args.batch_size, shuffle=True, workers=cores,
                                                 persistent_workers=True), args.min_seconds)
    raw = CachedBatchDataset(cache, part.names, labels)
    out["cached_device"] = rate(cached_loader(raw, args.batch_size, shuffle=True, workers=cores,
                                              persistent_workers=True), args.min_seconds)
    sample = raw[list(range(min(args.batch_size, len(raw))))]["image"]
    out["aug_ms"] = 1000 * augment_cost(augment, sample, device) * args.batch_size / len(sample)

    generator = torch.Generator().manual_seed(0)

    def train_side(batch):
        images = augment(batch["image"].to(device, non_blocking=True), generator)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return images

    out["cached_device_augmented"] = rate(cached_loader(raw, args.batch_size, shuffle=True, workers=cores,
                                                        persistent_workers=True), args.min_seconds, train_side)
    return out


def report(results: dict, args, device) -> None:
    rows = [
        ("png", "PNG loader (decode + CPU augmentation)"),
        ("build", "cache build (decode, resize, write)"),
        ("cached_cpu", "cached loader, CPU augmentation (uint8 crops delivered)"),
        ("cached_cpu_float", "  the same, float batches from the workers"),
        ("cached_device", "cached loader, device augmentation (uint8 delivered)"),
        ("cached_device_augmented", f"  the same, augmented in the training process ({device.type})"),
    ]
    columns = list(results)
    width = 54
    print()
    print(f"{'images/s (ratio to the PNG loader)':<{width}}" + "".join(f"{f'{c} core(s)':>22}" for c in columns))
    for key, label in rows:
        cells = "".join(f"{results[c][key]:>12,.0f} {results[c][key] / results[c]['png']:>7.1f}x" for c in columns)
        print(f"{label:<{width}}{cells}")
    finish = "".join(f"{results[c]['finish_ms']:>13.1f} ms/batch" for c in columns)
    print(f"{f'uint8 crops to model input, batch of {args.batch_size} ({device.type})':<{width}}{finish}")
    aug = "".join(f"{results[c]['aug_ms']:>13.1f} ms/batch" for c in columns)
    print(f"{f'device augmentation, batch of {args.batch_size} ({device.type})':<{width}}{aug}")
    if device.type != "cuda":
        print("(no GPU: the device augmentation ran on the CPU; on a GPU it costs a small fraction of this)")
    best = columns[-1]
    ratios = results[best]
    print()
    print(f"at {best} core(s):")
    print(f"  cached loader, device augmentation / PNG loader: "
          f"{ratios['cached_device'] / ratios['png']:.0f}x (target >= 100x)")
    print(f"  cached loader, CPU augmentation / PNG loader:    "
          f"{ratios['cached_cpu'] / ratios['png']:.1f}x (target >= 15x)")
    print(f"  cache build / PNG loader:                        {ratios['build'] / ratios['png']:.2f}x "
          "(paid once)")


if __name__ == "__main__":
    sys.exit(run_main(main))
