"""Estimated GPU memory of a training step per model, and the largest ``--batch-size`` that fits common GPUs.

    python benchmarks/memory.py [--img-size 224] [--models 1,2,3,4,5] [--gpus 16,24,40,80,141]

Computed on the CPU (no GPU needed) by :func:`common.models.memory.training_memory`: weights, gradients and AdamW
moments, plus the activations autograd keeps for the backward pass, counted from two forward passes (2 and 4
images) in fp32 and under bf16 autocast. These are estimates (CPU autocast's op list, no cuDNN workspace, no
allocator fragmentation; the largest batch keeps 15% of the GPU free for them): on a GPU,
``python benchmarks/throughput.py --device cuda --batch-size B`` measures the real peak. The forward passes of the
two transformers at 224 px take seconds to a minute on a CPU.
"""
from __future__ import annotations

import sys

import torch

from common.commands._cli import ArgumentParser, positive_int, run_main
from common.models import model_folders, model_info
from common.models.memory import training_memory


def main(argv=None) -> int:
    parser = ArgumentParser(prog="python benchmarks/memory.py", description=__doc__.splitlines()[0])
    parser.add_argument("--img-size", type=positive_int, default=224, help="input size (default 224)")
    parser.add_argument("--models", default="1,2,3,4,5", help="folders to estimate (default 1,2,3,4,5)")
    parser.add_argument("--gpus", default="16,24,40,80,141",
                        help="GPU memory sizes in GiB for the largest-batch columns (default 16,24,40,80,141)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # the thread rule of a small shared CPU (common/runtime/threads.py)
    gpus = [float(g) for g in args.gpus.split(",")]
    folders = model_folders()
    header = (f"{'model':<18} {'params':>7} {'optim GiB':>9} {'MiB/img fp32':>12} {'MiB/img bf16':>12} "
              f"{'bs 32 GiB (bf16)':>16} " + " ".join(f"{f'max bs {g:g}G':>11}" for g in gpus))
    print(f"Estimated training memory at {args.img_size} px (computed on the CPU; not a GPU measurement)")
    print(header)
    for index in (int(k) for k in args.models.split(",")):
        name = folders[index][1]
        fp32 = training_memory(name, args.img_size)
        bf16 = training_memory(name, args.img_size, torch.bfloat16)
        print(f"{model_info(name).display_name:<18} {fp32.parameters / 1e6:>6.1f}M "
              f"{fp32.optimiser_bytes / 2**30:>9.2f} {fp32.per_image_bytes / 2**20:>12.1f} "
              f"{bf16.per_image_bytes / 2**20:>12.1f} {bf16.total_bytes(32) / 2**30:>16.1f} "
              + " ".join(f"{bf16.largest_batch(g * 2**30):>11d}" for g in gpus), flush=True)
    print("max bs: the largest --batch-size whose bf16 estimate fits in 85% of the GPU (mixed precision, the "
          "default on CUDA); with --no-amp use the fp32 column")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, sys.argv[1:]))
