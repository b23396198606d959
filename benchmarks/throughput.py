"""Training throughput and peak memory of every folder's model, with ratios measured in one run.

    python benchmarks/throughput.py [--device auto] [--img-size 224] [--batch-size 32] [--steps 10] [--png]

For each model it times the engine's training step (forward, loss, backward, AdamW, scheduler) on synthetic batches:
in fp32 and, on CUDA, with the engine's mixed precision; it prints img/s, peak GPU memory and the AMP/fp32 speed-up.
It then times one distillation step of the EEEA-Net-C2 student with an online teacher against the same step with
cached teacher logits, and prints that ratio per teacher.

The loader table: each model's training step fed by the image cache (a batch read of the memory map in the loader
workers, DeviceAugment on the device) against the same step on synthetic in-memory batches, whose ratio shows
whether the loader still limits (1.00x: it does not); with ``--png`` (the default on CUDA) also fed by the PNG loader
(decode and augment per image in the workers). The images are the real NIH PNGs of tests/data/images repeated to
``--images`` files (``--data-dir``: your own). Then the KD epoch of the student with cached teacher logits against
its plain epoch (the target is at most 1.15x the time).

Ratios come from one run on one machine, so they are comparable; absolute numbers are not comparable across
machines.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

# benchmarks/ is not a package; run as a script, this folder is on sys.path.
from loader import repeated_images

from common.commands._cli import ArgumentParser, positive_int, run_main
from common.constants import NUM_CLASSES, STUDENT_MODEL
from common.data.cache_build import build_image_cache
from common.data.datasets import CachedBatchDataset, CXR8Dataset, PngImageSource, cached_loader
from common.data.device_augment import DeviceAugment
from common.data.images import eval_resize, index_images
from common.data.split_data import SeededAugment
from common.data.transforms import build_transform
from common.engine.distill import CachedTeachers, DistillationCriterion, OnlineTeachers
from common.engine.loop import SupervisedCriterion, build_optimizer, build_scheduler, train_one_epoch
from common.engine.losses import LabelLoss, MultiLabelKDLoss
from common.errors import UserError
from common.models import create_model, model_folders, model_info
from common.runtime.device import amp_dtype_for, resolve_device
from common.runtime.threads import choose_threads_and_workers


class SyntheticBatches(torch.utils.data.Dataset):
    """Random images and labels in the engine's batch format, generated on the fly (no decoding cost)."""

    def __init__(self, count: int, img_size: int):
        self.count, self.img_size = count, img_size

    def __len__(self):
        return self.count

    def __getitem__(self, index):
        generator = torch.Generator().manual_seed(index)
        return {"image": torch.randn(3, self.img_size, self.img_size, generator=generator),
                "target": (torch.rand(NUM_CLASSES, generator=generator) < 0.1).float(), "index": index}


class FrozenTeacher:
    """What OnlineTeachers needs from a teacher: a frozen model, its input size and normalisation."""

    def __init__(self, model, img_size, mean, std):
        self.model, self.img_size, self.mean, self.std = model.eval().requires_grad_(False), img_size, mean, std


def time_training(model, criterion, loader, device, amp_dtype, steps: int, augment_for_pass=None) -> dict:
    optimizer = build_optimizer(model, 1e-4, 0.01)
    scheduler = build_scheduler(optimizer, 2, steps, 0)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    channels_last = device.type == "cuda"
    # The first pass warms up kernels and allocators; the second is timed.
    augment_for_pass = augment_for_pass or (lambda epoch: None)
    train_one_epoch(model, criterion, loader, optimizer, scheduler, scaler, device, amp_dtype, 1, 2,
                    clip_grad=1.0, channels_last=channels_last, augment=augment_for_pass(1))
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    stats = train_one_epoch(model, criterion, loader, optimizer, scheduler, scaler, device, amp_dtype, 2, 2,
                            clip_grad=1.0, channels_last=channels_last, augment=augment_for_pass(2))
    if device.type == "cuda":
        torch.cuda.synchronize()
        stats["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return stats


def main(argv=None):
    parser = ArgumentParser(prog="benchmarks/throughput.py", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--img-size", type=positive_int, default=224)
    parser.add_argument("--batch-size", type=positive_int, default=32)
    parser.add_argument("--steps", type=positive_int, default=10, help="timed steps per measurement")
    parser.add_argument("--models", default="1,2,3,4,5", help="folders to measure (default 1,2,3,4,5)")
    parser.add_argument("--images", type=positive_int, default=None,
                        help="images for the loader table (default: batch size x steps)")
    parser.add_argument("--data-dir", default=None,
                        help="PNG folder for the loader table (default: tests/data/images repeated to --images)")
    parser.add_argument("--png", action="store_true", default=None,
                        help="also time the PNG loader (default: on CUDA only; it is slow on a small CPU)")
    parser.add_argument("--skip-loaders", action="store_true", help="leave out the loader and KD-epoch tables")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    amp = amp_dtype_for(device, True)
    folders = [int(k) for k in args.models.split(",")]
    loader = torch.utils.data.DataLoader(SyntheticBatches(args.batch_size * args.steps, args.img_size),
                                         batch_size=args.batch_size, num_workers=0, pin_memory=device.type == "cuda")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device {name}; input {args.img_size}; batch {args.batch_size}; {args.steps} timed steps; "
          f"torch {torch.__version__}")
    print(f"{'folder':<22} {'fp32 img/s':>11} {'AMP img/s':>10} {'AMP/fp32':>9} {'peak GiB (AMP)':>15}")
    for index in folders:
        folder, model_name = model_folders()[index]
        row = {}
        for label, dtype in (("fp32", None), ("amp", amp)):
            if label == "amp" and dtype is None:
                continue
            torch.manual_seed(0)
            model = create_model(model_name, img_size=args.img_size).to(device)
            stats = time_training(model, SupervisedCriterion(LabelLoss()), loader, device, dtype, args.steps)
            row[label] = stats
            del model
        amp_text = (f"{row['amp']['img_per_s']:>10.1f} {row['amp']['img_per_s'] / row['fp32']['img_per_s']:>8.2f}x "
                    f"{row['amp'].get('peak_gib', float('nan')):>15.2f}") if "amp" in row else \
            f"{'-':>10} {'-':>9} {'-':>15}"
        print(f"{folder:<22} {row['fp32']['img_per_s']:>11.1f} {amp_text}", flush=True)

    print(f"\ndistillation step of the {STUDENT_MODEL} student: online teacher vs cached teacher logits "
          f"({'AMP' if amp else 'fp32'})")
    info = model_info(STUDENT_MODEL)
    for index in folders:
        folder, model_name = model_folders()[index]
        teacher_info = model_info(model_name)
        teacher = FrozenTeacher(create_model(model_name, img_size=args.img_size).to(device), args.img_size,
                                teacher_info.mean, teacher_info.std)
        timings = {}
        for mode in ("online", "cached"):
            torch.manual_seed(0)
            student = create_model(STUDENT_MODEL, img_size=args.img_size).to(device)
            if mode == "online":
                source = OnlineTeachers([teacher], info.mean, info.std, device)
            else:
                logits = torch.randn(len(loader.dataset), NUM_CLASSES).half()
                source = CachedTeachers([logits], device)
            criterion = DistillationCriterion(MultiLabelKDLoss(), source)
            timings[mode] = time_training(student, criterion, loader, device, amp, args.steps)["img_per_s"]
        print(f"  teacher {folder:<22} online {timings['online']:8.1f} img/s, cached {timings['cached']:8.1f} "
              f"img/s: cached/online {timings['cached'] / timings['online']:.2f}x", flush=True)
    if not args.skip_loaders:
        loader_tables(args, device, amp, folders)
    return 0


class LoaderImages:
    """The benchmark's images: PNGs in a folder, their cache at the eval size of ``img_size``, random labels."""

    def __init__(self, args, work: Path):
        count = args.images or args.batch_size * args.steps
        if args.data_dir:
            index = index_images(args.data_dir)
            names = sorted(index)[:count]
            if len(names) < args.batch_size:
                raise UserError(f"--data-dir {args.data_dir} has {len(names)} PNGs, fewer than one batch")
            folder = Path(args.data_dir)
        else:
            folder = work / "png"
            folder.mkdir()
            names = repeated_images(folder, count)
            index = index_images(folder)
        self.names, self.index = names, index
        self.labels = (np.random.default_rng(0).random((len(names), NUM_CLASSES)) < 0.1).astype(np.uint8)
        self.cache = build_image_cache(folder, names, work / "cache", size=eval_resize(args.img_size))


def loader_tables(args, device, amp, folders) -> None:
    """The cached loader (and the PNG loader) against in-memory batches per model, then the KD epoch ratio."""
    png = device.type == "cuda" if args.png is None else args.png
    with tempfile.TemporaryDirectory(prefix="throughput-") as work:
        images = LoaderImages(args, Path(work))
        # The same thread rule as the commands: reading workers for the cache, decoding workers for PNGs.
        threads, read_workers = choose_threads_and_workers(kind="read")
        torch.set_num_threads(threads)
        _, decode_workers = choose_threads_and_workers(kind="decode", announce=False)
        synthetic = torch.utils.data.DataLoader(SyntheticBatches(len(images.names), args.img_size),
                                                batch_size=args.batch_size, num_workers=0,
                                                pin_memory=device.type == "cuda")
        print(f"\nloaders: {len(images.names)} images, cache {images.cache.size} px, batch {args.batch_size}, "
              f"{'AMP' if amp else 'fp32'}; cached/synthetic 1.00x means the loader does not limit the step")
        header = f"{'folder':<22} {'synthetic img/s':>15} {'cache img/s':>12} {'cache/synth':>12}"
        header += f" {'PNG img/s':>10} {'cache/PNG':>10}" if png else ""
        print(header + f" {'peak GiB':>9}")
        for index in folders:
            folder, model_name = model_folders()[index]
            info = model_info(model_name)
            rates = {"synthetic": timed(model_name, args, device, amp, synthetic)}
            dataset = CachedBatchDataset(images.cache, images.names, images.labels)
            loader = cached_loader(dataset, args.batch_size, shuffle=True, seed=0, drop_last=True,
                                   workers=read_workers)
            train_view = DeviceAugment(args.img_size, info.mean, info.std, scale=(0.08, 1.0), train=True)
            rates["cache"] = timed(model_name, args, device, amp, loader, lambda epoch: SeededAugment(
                train_view, torch.Generator().manual_seed(epoch)))
            line = (f"{folder:<22} {rates['synthetic']['img_per_s']:>15.1f} {rates['cache']['img_per_s']:>12.1f} "
                    f"{rates['cache']['img_per_s'] / rates['synthetic']['img_per_s']:>11.2f}x")
            if png:
                part = CXR8Dataset(_Part(images.names, images.labels), PngImageSource(images.index),
                                   build_transform(args.img_size, info.mean, info.std, train=True))
                png_loader = torch.utils.data.DataLoader(
                    part, batch_size=args.batch_size, shuffle=True, drop_last=True, num_workers=decode_workers,
                    pin_memory=device.type == "cuda", prefetch_factor=4 if decode_workers else None)
                rates["png"] = timed(model_name, args, device, amp, png_loader)
                line += (f" {rates['png']['img_per_s']:>10.1f} "
                         f"{rates['cache']['img_per_s'] / rates['png']['img_per_s']:>9.2f}x")
            peak = max(r.get("peak_gib", float("nan")) for r in rates.values())
            print(line + f" {peak:>9.2f}", flush=True)
        kd_epoch_ratio(args, device, amp, images, read_workers)


def kd_epoch_ratio(args, device, amp, images: LoaderImages, workers: int) -> None:
    """One student epoch from the cache with cached teacher logits (KD loss) against the plain (BCE) epoch."""
    info = model_info(STUDENT_MODEL)
    dataset = CachedBatchDataset(images.cache, images.names, images.labels)
    loader = cached_loader(dataset, args.batch_size, shuffle=True, seed=0, drop_last=True, workers=workers)
    train_view = DeviceAugment(args.img_size, info.mean, info.std, train=True)
    teacher_logits = torch.randn(len(images.names), NUM_CLASSES).half()
    criteria = {"plain": SupervisedCriterion(LabelLoss()),
                "kd_cached": DistillationCriterion(MultiLabelKDLoss(), CachedTeachers([teacher_logits], device))}
    seconds = {}
    for name, criterion in criteria.items():
        torch.manual_seed(0)
        model = create_model(STUDENT_MODEL, img_size=args.img_size).to(device)
        stats = time_training(model, criterion, loader, device, amp, args.steps,
                              lambda epoch: SeededAugment(train_view, torch.Generator().manual_seed(epoch)))
        seconds[name] = stats["seconds"] / max(stats["images"], 1)
    ratio = seconds["kd_cached"] / seconds["plain"]
    print(f"\nKD epoch of the {STUDENT_MODEL} student from the cache: cached teacher logits "
          f"{1 / seconds['kd_cached']:.1f} img/s, plain epoch {1 / seconds['plain']:.1f} img/s: "
          f"KD/plain time {ratio:.2f}x (target <= 1.15x: {'met' if ratio <= 1.15 else 'NOT met'})")


class _Part:
    """What CXR8Dataset reads of a split part: names and labels."""

    def __init__(self, names, labels):
        self.names, self.labels = names, labels

    def __len__(self):
        return len(self.names)


def timed(model_name, args, device, amp, loader, augment_for_pass=None) -> dict:
    torch.manual_seed(0)
    model = create_model(model_name, img_size=args.img_size).to(device)
    return time_training(model, SupervisedCriterion(LabelLoss()), loader, device, amp, args.steps, augment_for_pass)


if __name__ == "__main__":
    sys.exit(run_main(main))
