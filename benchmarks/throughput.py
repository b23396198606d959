"""Training throughput and peak memory of every folder's model, with ratios measured in one run.

    python benchmarks/throughput.py [--device auto] [--img-size 224] [--batch-size 32] [--steps 10]

For each model it times the engine's training step (forward, loss, backward, AdamW, scheduler) on synthetic batches:
in fp32 and, on CUDA, with the engine's mixed precision; it prints img/s, peak GPU memory and the AMP/fp32 speed-up.
It then times one distillation step of the EEEA-Net-C2 student with an online teacher against the same step with
cached teacher logits, and prints that ratio per teacher. Ratios come from one run on one machine, so they are
comparable; absolute numbers are not comparable across machines.
"""
from __future__ import annotations

import sys

import torch

from common.constants import NUM_CLASSES, STUDENT_MODEL
from common.distill import CachedTeachers, DistillationCriterion, OnlineTeachers
from common.engine import (SupervisedCriterion, amp_dtype_for, build_optimizer, build_scheduler, resolve_device,
                           train_one_epoch)
from common.errors import ArgumentParser, positive_int, run_main
from common.losses import LabelLoss, MultiLabelKDLoss
from common.models import create_model, model_folders, model_info


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


def time_training(model, criterion, loader, device, amp_dtype, steps: int) -> dict:
    optimizer = build_optimizer(model, 1e-4, 0.01)
    scheduler = build_scheduler(optimizer, 2, steps, 0)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    channels_last = device.type == "cuda"
    # The first pass warms up kernels and allocators; the second is timed.
    train_one_epoch(model, criterion, loader, optimizer, scheduler, scaler, device, amp_dtype, 1, 2,
                    clip_grad=1.0, channels_last=channels_last)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    stats = train_one_epoch(model, criterion, loader, optimizer, scheduler, scaler, device, amp_dtype, 2, 2,
                            clip_grad=1.0, channels_last=channels_last)
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
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
