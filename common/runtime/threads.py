"""How many torch intra-op threads and DataLoader workers to use, so that together they share the cores.

torch's intra-op pool defaults to one thread per core and every loader worker is a process of its own; together
they oversubscribe a small machine (on 2 cores, 2 threads plus 2 decoding workers stall each other: OpenMP
barriers wait for descheduled threads). DataLoader workers already run torch with one thread each.
"""
from __future__ import annotations

import os

# What the loader workers do decides how many of them there should be.
KINDS = ("decode", "read", "predict", "predict_onnx")


def choose_threads_and_workers(requested_workers: int | None = None, requested_threads: int | None = None,
                               cores: int | None = None, kind: str = "decode", announce: bool = True
                               ) -> tuple[int, int]:
    """``(intra-op threads, loader workers)`` for ``cores`` cores (default ``os.cpu_count()``).

    The rule, for what is not requested:

    - one core: no workers (the main process loads), one thread;
    - ``kind="decode"`` (PNG path or cached with CPU augmentation: the workers do most of the work): one worker
      per core but one, and the remaining core for the training process's threads;
    - ``kind="read"`` (cached with device augmentation: a worker only copies a batch out of the memory map):
      ``min(2, cores - 1)`` workers, and the other cores are threads of the training process, which now augments;
    - ``kind="predict"`` (``predict.py`` with PyTorch on the CPU: the workers are decoding threads beside the
      model's forward passes): ``max(1, cores // 3)`` workers and the rest threads. Decoding and preprocessing a
      1024 px NIH PNG took 0.4 of EEEA-Net-C2's eager forward pass at 224 px per image on one core
      (benchmarks/predict.py), and the larger networks' share is smaller still;
    - ``kind="predict_onnx"`` (``predict.py --onnx``): ``max(1, cores // 2)`` workers, because onnxruntime runs
      EEEA-Net-C2 3.7 times faster than eager PyTorch, so decoding is the larger half of the work;
    - when only one of the two is requested, the other takes the cores left (at least 1 thread, 0 workers).

    A requested value is kept as given, even if threads + workers exceed the cores (the line says so).
    Prints one line with the choice unless ``announce`` is false. The caller applies the threads with
    ``torch.set_num_threads``.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    cores = max(1, int(cores or os.cpu_count() or 1))
    if requested_workers is not None and requested_workers < 0:
        raise ValueError("requested_workers must be >= 0")
    if requested_threads is not None and requested_threads < 1:
        raise ValueError("requested_threads must be >= 1")
    if requested_workers is not None and requested_threads is not None:
        workers, threads = requested_workers, requested_threads
    elif requested_workers is not None:
        workers = requested_workers
        threads = max(1, cores - workers)
    elif requested_threads is not None:
        threads = requested_threads
        workers = max(0, cores - threads)
    elif cores == 1:
        workers, threads = 0, 1
    else:
        workers = {"decode": cores - 1, "read": min(2, cores - 1), "predict": max(1, cores // 3),
                   "predict_onnx": max(1, cores // 2)}[kind]
        threads = max(1, cores - workers)
    if announce:
        requested = [name for name, value in (("--workers", requested_workers), ("--threads", requested_threads))
                     if value is not None]
        how = f"as requested by {' and '.join(requested)}" if requested else "override with --threads / --workers"
        # The main process counts as one busy process even with 0 workers.
        over = " (more than the cores: expect contention)" if threads + workers > cores else ""
        print(f"threads: {threads} intra-op thread(s) + {workers} loader worker(s) on {cores} core(s){over}; {how}")
    return threads, workers


def apply_thread_choice(workers: int | None, threads: int | None, cached: bool,
                        processes: int = 1) -> tuple[int, int]:
    """Choose threads and workers for a command from its ``--threads`` and ``--workers`` (None: choose), apply the
    threads with ``torch.set_num_threads`` and return ``(threads, workers)``.

    ``cached``: the loader reads batches from the image cache (``kind="read"``), else it decodes PNGs.
    ``processes``: processes of the run on this machine (torchrun), which share its cores equally.
    """
    import torch  # torch is imported by every caller already; kept local so the rule above stays import-light

    cores = available_cores(processes)
    threads, workers = choose_threads_and_workers(workers, threads, cores=cores, kind="read" if cached else "decode")
    torch.set_num_threads(threads)
    return threads, workers


def available_cores(processes: int = 1) -> int:
    """The cores this process may run on (its CPU affinity), shared equally by ``processes`` processes."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // max(1, processes))
