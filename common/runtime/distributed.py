"""Training on several GPUs (or CPU processes) with ``torchrun``: the process group, samplers and gathering.

``torchrun --nproc_per_node=N train-model.py ...`` starts N copies of a command with ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK`` set. :func:`setup_distributed` joins them into one process group (NCCL on CUDA, gloo on the CPU)
and returns a :class:`Distributed` that the engine and the data use:

- the training part is split between the processes by a ``DistributedSampler`` seeded with the run's seed and set
  to the epoch every epoch; the model is wrapped in ``DistributedDataParallel`` for training only;
- the validation and test parts are split without padding (process ``r`` reads positions ``r, r + N, ...``); the
  predictions are gathered with their dataset positions, so every image counts exactly once and the AUROC of an
  N-process run is the single-process one on the same weights (padding duplicates, pytorch#25162);
- only rank 0 writes checkpoints, logs, plots and caches and prints; the others wait at a barrier where they need
  what rank 0 wrote.

Without ``torchrun`` (``WORLD_SIZE`` unset or 1) everything here is a no-op and a command runs as one process.
"""
from __future__ import annotations

import atexit
import datetime
import os
import socket
import sys
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from common.errors import UserError

# Ranks other than 0 wait at a barrier while rank 0 builds a teacher-logit cache (minutes on the full data set);
# the default 30-minute timeout of the process group would end a slow build on a small GPU.
BARRIER_TIMEOUT = datetime.timedelta(hours=4)


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise UserError(f"environment variable {name}={value!r} is not an integer (set by torchrun)") from None


def is_main_process() -> bool:
    """True unless this is a ``torchrun`` worker of rank > 0 (read from ``RANK``; true before any setup)."""
    return os.environ.get("RANK", "0") == "0"


def processes_per_node() -> int:
    """How many processes of this run share this machine's cores (``LOCAL_WORLD_SIZE`` under torchrun, else 1)."""
    return max(1, _env_int("LOCAL_WORLD_SIZE", 1))


@dataclass(frozen=True)
class Distributed:
    """Where this process stands in a run: rank, world size, local rank. The default is a single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    peers: tuple = ()  # (host, pid) of every rank, to name the one that ended when a collective fails

    def peer_failure(self, err: BaseException) -> str | None:
        """``rank 1 of 2 (pid 123 on host) has ended``-style words when ``err`` is a collective that failed because
        another process of the run is gone; None for any other error (one process, or a failure of this one).

        gloo reports a dead peer as a closed or reset connection; NCCL as a DistBackendError. The ranks named are
        those whose process is no longer alive on this host; a peer on another host is named by its host."""
        if not self.enabled:
            return None
        text = str(err)
        backend_error = getattr(dist, "DistBackendError", ())
        if not (isinstance(err, backend_error) or any(sign in text for sign in PEER_GONE)):
            return None
        host = socket.gethostname()
        gone = [rank for rank, (peer_host, pid) in enumerate(self.peers)
                if rank != self.rank and peer_host == host and not _alive(pid)]
        if gone:
            names = ", ".join(f"rank {rank} of {self.world_size} (pid {self.peers[rank][1]})" for rank in gone)
            return f"{names} {'has' if len(gone) == 1 else 'have'} ended"
        remote = sorted({peer_host for peer_host, _ in self.peers if peer_host != host})
        where = f" (on {', '.join(remote)})" if remote else ""
        return f"another process of this {self.world_size}-process run{where} has ended or lost its connection"

    @property
    def enabled(self) -> bool:
        """More than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and prints."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every process (no-op for one process)."""
        if self.enabled:
            dist.barrier()

    def prepare(self, model: nn.Module, device: torch.device, compile_model: bool = False) -> nn.Module:
        """The module to train: ``model`` compiled in place with ``--compile`` and, with several processes, wrapped
        in DistributedDataParallel. ``model`` itself stays unwrapped: evaluation and checkpoints use it, so saved
        state dicts carry neither the ``module.`` nor the ``_orig_mod.`` prefix."""
        if compile_model:
            # nn.Module.compile compiles forward in place, leaving the parameter names unchanged.
            model.compile()
        if not self.enabled:
            return model
        device_ids = [device.index if device.index is not None else self.local_rank] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    def sync_buffers(self, model: nn.Module) -> None:
        """Copy rank 0's buffers (BatchNorm running statistics) to every process before evaluating.

        DDP averages gradients, so the parameters agree, but each process updates its running statistics on its own
        batches; rank 0's are the ones its checkpoint saves, so every shard is evaluated with them."""
        if self.enabled:
            for buffer in model.buffers():
                dist.broadcast(buffer.data, src=0)

    def train_sampler(self, count: int, seed: int, epoch: int) -> torch.utils.data.DistributedSampler:
        """This process's share of a shuffled epoch of ``count`` samples; the order depends on (seed, epoch) only,
        so a resumed epoch sees the same batches."""
        sampler = torch.utils.data.DistributedSampler(range(count), num_replicas=self.world_size, rank=self.rank,
                                                      shuffle=True, seed=seed)
        sampler.set_epoch(epoch)
        return sampler

    def eval_positions(self, count: int) -> list[int]:
        """This process's positions of a part of ``count`` samples for evaluation: no padding, no sample twice."""
        return shard_positions(count, self.rank, self.world_size)

    def gather_predictions(self, logits: np.ndarray, targets: np.ndarray, positions: np.ndarray, total: int):
        """Every process's ``(logits, targets)`` of its shard merged in position order; the same on all ranks."""
        if not self.enabled:
            return merge_shards([(logits, targets, positions)], total)
        shards = [None] * self.world_size
        dist.all_gather_object(shards, (logits, targets, np.asarray(positions)))
        return merge_shards(shards, total)

    def sum_values(self, values: list[float], device: torch.device) -> list[float]:
        """``values`` summed over every process (the values themselves for one process): one small all-reduce, for
        the checks every process must decide alike (the divergence rule, a stop requested by a signal)."""
        if not self.enabled:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def gather_objects(self, value) -> list:
        """Every process's ``value`` in rank order (``[value]`` for one process)."""
        if not self.enabled:
            return [value]
        values = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def reduce_epoch_stats(self, stats: dict) -> dict:
        """The training statistics of an epoch over all processes: the sample-weighted mean loss, the summed images
        and images per second (the slowest process's seconds)."""
        if not self.enabled:
            return stats
        values = torch.tensor([stats["loss"] * stats["images"], stats["images"], stats["seconds"],
                               stats["skipped_steps"]], dtype=torch.float64)
        summed, slowest = values.clone(), values[2:3].clone()
        dist.all_reduce(summed)
        dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
        images = int(summed[1].item())
        seconds = float(slowest.item())
        return {**stats, "loss": float(summed[0].item()) / max(images, 1), "images": images, "seconds": seconds,
                "img_per_s": images / max(seconds, 1e-9), "skipped_steps": int(summed[3].item())}


# How gloo words a collective whose peer process is gone (its sockets closed by the kernel).
PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "Connection refused",
             "connection closed", "Socket closed")


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie (a dead child torchrun has not collected yet)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stream:
            return stream.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def shard_positions(count: int, rank: int, world_size: int) -> list[int]:
    """Positions ``rank, rank + world_size, ...`` below ``count``: the shards of all ranks cover every position
    exactly once (unlike DistributedSampler, which pads with repeats to equal lengths)."""
    return list(range(rank, count, world_size))


def merge_shards(shards, total: int):
    """Merge ``[(logits [n, C], targets [n, C], positions [n]), ...]`` into arrays of ``total`` rows in position
    order. A position seen twice (padding) is kept once; a missing position is a programming error."""
    logits = np.concatenate([np.asarray(s[0]) for s in shards if len(s[2])] or [np.zeros((0, 0), np.float32)])
    targets = np.concatenate([np.asarray(s[1]) for s in shards if len(s[2])] or [np.zeros((0, 0), np.uint8)])
    positions = np.concatenate([np.asarray(s[2], dtype=np.int64) for s in shards] or [np.zeros(0, np.int64)])
    unique, first = np.unique(positions, return_index=True)
    if len(unique) != total or (total and (unique[0] != 0 or unique[-1] != total - 1)):
        raise RuntimeError(f"gathered predictions cover {len(unique)} distinct positions, expected 0..{total - 1}")
    return logits[first], targets[first]


def setup_distributed(device_name: str = "auto") -> tuple[Distributed, torch.device]:
    """Join the ``torchrun`` process group (once per process) and return this process's place and device.

    Under torchrun each process takes ``cuda:LOCAL_RANK`` when the device is CUDA (``--device auto`` or ``cuda``;
    ``cuda:N`` is refused, since each process must own one GPU) and the backend is NCCL; on the CPU it is gloo.
    Processes other than rank 0 print nothing (their standard output goes to the null device).
    """
    from common.runtime.device import resolve_device

    world_size = _env_int("WORLD_SIZE", 1)
    if world_size <= 1:
        return Distributed(), resolve_device(device_name)
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    device = resolve_device(device_name)
    if device.type == "cuda":
        if device.index is not None:
            raise UserError(f"--device {device_name}: under torchrun each process uses the GPU of its local rank; "
                            "pass --device cuda or auto (choose GPUs with CUDA_VISIBLE_DEVICES)")
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"torchrun started {processes_per_node()} processes on this machine but it has "
                            f"{torch.cuda.device_count()} GPU(s); lower --nproc_per_node")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=BARRIER_TIMEOUT)
        # Left to the interpreter's exit, the group's teardown warns (NCCL) or can hang on a peer that is gone.
        atexit.register(dist.destroy_process_group)
        if rank != 0:
            # One copy of every message: rank 0 speaks for the run (errors are handled in common.commands._cli.run_main).
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - open for the life of the process
            warnings.simplefilter("ignore")  # rank 0 prints the same warnings (about the same gathered data)
    peers = [None] * world_size
    dist.all_gather_object(peers, (socket.gethostname(), os.getpid()))
    return Distributed(rank=rank, world_size=world_size, local_rank=local_rank, peers=tuple(peers)), device
