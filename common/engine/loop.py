"""The one training engine of every folder (base training and distillation alike).

:func:`fit` trains any model with any criterion: a criterion is a callable ``criterion(logits, batch) -> loss``
built by the caller. Base training passes :class:`SupervisedCriterion`; distillation passes
:class:`common.engine.distill.DistillationCriterion`: a loss, never a second loop. The engine never sees parsed flags.
"""
from __future__ import annotations

import json
import math
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from common.constants import CLASS_NAMES
from common.engine.losses import LabelLoss
from common.engine.run_log import TrainingLog
from common.errors import UserError
from common.evaluation.logits import predict_logits, sigmoid
from common.evaluation.metrics import choose_thresholds, mean_auroc, per_class_auroc
from common.evaluation.plots import plot_training_curves
from common.runs.checkpoint import CheckpointPaths, save_atomic
from common.runtime.device import batch_to_device, seed_everything
from common.runtime.distributed import Distributed
from common.runtime.progress import progress

# Reading the loss (.item()) waits for the GPU; doing it every few steps keeps the device queue full.
LOG_EVERY = 10


def build_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW; norms, biases and position tables get no weight decay."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        (no_decay if parameter.ndim <= 1 or "pos_embed" in name or "bias_table" in name else decay).append(parameter)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr)


def build_scheduler(optimizer, epochs: int, steps_per_epoch: int, warmup_epochs: float):
    """Per-step schedule: linear warm-up, then cosine decay to zero at the end of the last epoch."""
    total = max(1, epochs * steps_per_epoch)
    warmup = min(int(round(warmup_epochs * steps_per_epoch)), total - 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class SupervisedCriterion:
    """The base-training criterion: hard labels only."""

    def __init__(self, label_loss: LabelLoss):
        self.label_loss = label_loss
        self.last_terms: dict = {}

    def __call__(self, logits: torch.Tensor, batch: dict) -> torch.Tensor:
        return self.label_loss(logits, batch["target"])


def train_one_epoch(model, criterion, loader, optimizer, scheduler, scaler, device, amp_dtype,
                    epoch: int, epochs: int, clip_grad: float | None = None, channels_last: bool = False,
                    augment=None) -> dict:
    """One pass over ``loader``; returns the sample-weighted mean loss, images per second and seconds.

    ``augment``: None when the loader's batches are model inputs already (PNG path), else a callable that turns
    the device batch into them (:meth:`common.data.split_data.SplitData.batches`)."""
    model.train()
    total_loss = torch.zeros((), device=device)  # summed on the device; read only when logging
    seen = skipped = step = 0
    term_sums: dict = {}  # the criterion's parts (distillation: hard and kd), sample-weighted, on the device
    start = time.perf_counter()
    bar = progress(loader, f"epoch {epoch}/{epochs} train", unit="batch")
    for step, batch in enumerate(bar, start=1):
        batch = batch_to_device(batch, device, channels_last, augment)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(batch["image"])
            loss = criterion(logits, batch)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if clip_grad:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
        scale_before = scaler.get_scale() if scaler.is_enabled() else None
        scaler.step(optimizer)
        scaler.update()
        count = batch["target"].shape[0]
        if scale_before is not None and scaler.get_scale() < scale_before:
            # fp16: the scaler found inf/NaN gradients and skipped this step (it lowers its scale and goes on).
            # The step did not happen, so the schedule does not advance and its overflowed loss is not averaged.
            skipped += 1
        else:
            scheduler.step()
            total_loss += loss.detach().float() * count
            for name, value in getattr(criterion, "last_term_tensors", {}).items():
                term_sums[name] = term_sums.get(name, 0.0) + value.float() * count
            seen += count
        if step % LOG_EVERY == 0 or step == len(loader):
            mean_loss = total_loss.item() / max(seen, 1)
            if not math.isfinite(mean_loss):
                # Nothing of this epoch is saved: the last checkpoint stays the last good state.
                raise UserError(f"the training loss became {mean_loss} at epoch {epoch}, step {step}; "
                                "lower --lr or enable --clip-grad")
            elapsed = time.perf_counter() - start
            postfix = {"loss": f"{mean_loss:.4f}", "img/s": f"{seen / max(elapsed, 1e-9):.1f}",
                       "lr": f"{scheduler.get_last_lr()[0]:.2e}"}
            postfix.update({k: f"{v:.4f}" for k, v in getattr(criterion, "last_terms", {}).items()})
            bar.set_postfix(postfix, refresh=False)
    seconds = time.perf_counter() - start
    if skipped == step:
        raise UserError(f"every step of epoch {epoch} overflowed in fp16 and was skipped; lower --lr or pass --no-amp")
    return {"loss": total_loss.item() / max(seen, 1), "img_per_s": seen / max(seconds, 1e-9), "seconds": seconds,
            "images": seen, "skipped_steps": skipped,
            "terms": {name: float(value) / max(seen, 1) for name, value in term_sums.items()}}


# The distillation terms come last, so that the columns of earlier logs keep their places.
LOG_COLUMNS = ("epoch", "train_loss", "val_mean_auroc", "best_val_mean_auroc", "lr", "img_per_s", "epoch_seconds",
               "train_hard_loss", "train_kd_loss")


@dataclass(frozen=True)
class OptimiserSettings:
    """AdamW with linear warm-up then cosine decay, and optional gradient-norm clipping (0 or None: off)."""

    epochs: int
    lr: float
    weight_decay: float
    warmup_epochs: float
    clip_grad: float | None = None
    seed: int = 0  # every epoch's random draws come from (seed, epoch), whatever ran before it


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch's random draws (augmentation, dropout): a resumed epoch draws what it drew before."""
    return seed * 1000 + epoch


def fit(model: nn.Module, criterion, train_batches: Callable[[int], tuple], val_loader, settings: OptimiserSettings,
        paths: CheckpointPaths, device: torch.device, amp_dtype, metadata: dict, resume_state: dict | None = None,
        channels_last: bool = False, val_augment=None, distributed: Distributed | None = None,
        compile_model: bool = False) -> dict:
    """Train ``model`` with ``criterion``, choosing the checkpoint on validation mean AUROC.

    Args:
        model: on ``device`` already, with its initial weights.
        criterion: ``criterion(logits, batch) -> loss``; its optional ``last_terms`` dict is shown in the bar.
        train_batches: ``epoch -> (DataLoader, augment)`` of the training part: the loader's order and the
            augmentation's draws must depend on the epoch only, so that a resumed epoch sees the same batches;
            ``augment`` runs on the device (image cache) or is None (the PNG path's workers augmented already).
        val_loader: the validation part (deterministic view).
        settings: optimiser and schedule.
        paths: where the best and last checkpoints, the log and the curves go.
        metadata: recorded in every checkpoint (model, classes, split, config, ...).
        resume_state: a ``-last.pth`` dict to continue from (model, optimizer, scheduler, scaler, epoch, log rows);
            no random state is needed, since every epoch seeds its own draws (:func:`epoch_seed`).
        val_augment: the device-side view of the validation batches (image cache), None for the PNG path.
        distributed: this process's place in a torchrun run (default: one process). The model trains wrapped in
            DistributedDataParallel, the validation predictions of all processes are gathered, and only rank 0
            writes files.
        compile_model: compile the training forward pass (``--compile``).

    Writes ``paths.best`` when the validation mean AUROC improves, ``paths.last`` (everything needed to resume),
    a log row and the curves after every epoch. Returns ``{"best", "best_val_mean_auroc", "best_epoch"}``.
    """
    distributed = distributed or Distributed()
    steps_per_epoch = len(train_batches(1)[0])
    optimizer = build_optimizer(model, settings.lr, settings.weight_decay)
    scheduler = build_scheduler(optimizer, settings.epochs, steps_per_epoch, settings.warmup_epochs)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    start_epoch, best_auroc, best_epoch = 1, -1.0, 0
    log = TrainingLog(paths.log, LOG_COLUMNS)
    if resume_state is not None:
        model.load_state_dict(resume_state["model"])
        optimizer.load_state_dict(resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["scheduler"])
        scaler.load_state_dict(resume_state["scaler"])
        start_epoch = resume_state["epoch"] + 1
        best_auroc, best_epoch = resume_state["best_val_mean_auroc"], resume_state["best_epoch"]
        if distributed.is_main:  # the log is rank 0's
            if "log_rows" in resume_state:
                # The rows saved with the weights: the log matches them whichever write a kill interrupted.
                log.restore([row for row in resume_state["log_rows"] if int(row["epoch"]) <= resume_state["epoch"]])
            else:
                log.truncate_to(resume_state["epoch"])
        print(f"resuming {paths.last} at epoch {start_epoch} (best so far {best_auroc:.4f} at epoch {best_epoch})")
    else:
        log.start_over()  # an old log stays as it is until the first new epoch replaces it

    # Wrapped after the resumed weights are in: DDP broadcasts rank 0's weights when it wraps.
    train_model = distributed.prepare(model, device, compile_model)
    print(f"training {metadata['model_name']} on {device} "
          f"({'AMP ' + str(amp_dtype).split('.')[-1] if amp_dtype else 'fp32'}), "
          f"{sum(p.numel() for p in model.parameters()):,} parameters, writing {paths.best}")
    said = set()  # validation warnings (an n/a AUROC, a class without positives) are said once per run
    for epoch in range(start_epoch, settings.epochs + 1):
        seed_everything(epoch_seed(settings.seed, epoch))
        train_loader, train_augment = train_batches(epoch)
        stats = train_one_epoch(train_model, criterion, train_loader, optimizer, scheduler, scaler, device, amp_dtype,
                                epoch, settings.epochs, clip_grad=settings.clip_grad or None,
                                channels_last=channels_last, augment=train_augment)
        stats = distributed.reduce_epoch_stats(stats)
        distributed.sync_buffers(model)
        logits, targets, positions = predict_logits(model, val_loader, device, amp_dtype, desc=f"epoch {epoch} val",
                                                    channels_last=channels_last, augment=val_augment, with_index=True)
        logits, targets = distributed.gather_predictions(logits, targets, positions, len(val_loader.dataset))
        if not np.isfinite(logits).all():
            raise UserError(f"the validation scores became non-finite at epoch {epoch} (the weights diverged); "
                            f"lower --lr (now {settings.lr:g}); {paths.last.name} and the log keep the last good epoch")
        probs = sigmoid(logits)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            aurocs = per_class_auroc(targets, probs, CLASS_NAMES)
            val_auroc = mean_auroc(aurocs)
            improved = np.isfinite(val_auroc) and val_auroc > best_auroc
            thresholds = choose_thresholds(targets, probs, CLASS_NAMES) if improved else None
        for warning in caught:
            if str(warning.message) not in said:
                said.add(str(warning.message))
                print(f"warning: {warning.message} (said once per run)", file=sys.stderr)
        print(f"Epoch {epoch}/{settings.epochs}, Total Loss: {stats['loss']:.4f}, Time: {stats['seconds']:.2f} sec, "
              f"{stats['img_per_s']:.1f} img/s, Val mean AUROC: {val_auroc:.4f}")
        state = {**metadata, "epoch": epoch, "val_mean_auroc": float(val_auroc),
                 "val_auroc": [None if a is None else float(a) for a in aurocs]}
        if improved:
            best_auroc, best_epoch = float(val_auroc), epoch
            if distributed.is_main:  # the other processes hold the same weights; one writes them
                save_atomic({**state, "kind": "best", "model": model.state_dict(),
                             "val_thresholds": [float(t) for t in thresholds]}, paths.best)
            print(f"Model saved as {paths.best.name} (best validation mean AUROC {best_auroc:.4f})")
        if not distributed.is_main:
            continue
        terms = stats.get("terms", {})
        row = {"epoch": str(epoch), "train_loss": f"{stats['loss']:.6f}",
               "train_hard_loss": f"{terms['hard']:.6f}" if "hard" in terms else "",
               "train_kd_loss": f"{terms['kd']:.6f}" if "kd" in terms else "",
               "val_mean_auroc": f"{val_auroc:.6f}", "best_val_mean_auroc": f"{best_auroc:.6f}",
               "lr": f"{scheduler.get_last_lr()[0]:.3e}", "img_per_s": f"{stats['img_per_s']:.2f}",
               "epoch_seconds": f"{stats['seconds']:.2f}"}
        # -last.pth first, carrying the log rows, then the log: after a kill between the two writes the resumed
        # run rebuilds the log from the checkpoint, so weights and log never disagree.
        save_atomic({**state, "kind": "last", "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                     "best_val_mean_auroc": best_auroc, "best_epoch": best_epoch,
                     "log_rows": log.rows() + [row]}, paths.last)
        log.append(row)
        plot_training_curves(paths.log, paths.curves, title=paths.prefix)
    if best_epoch == 0:
        raise UserError("validation mean AUROC was undefined in every epoch (each class has a single label value "
                        "in the validation part); no checkpoint was chosen")
    # The next run of the process (--teacher all) may read what rank 0 has just written.
    distributed.barrier()
    print(f"best validation mean AUROC {best_auroc:.4f} at epoch {best_epoch}: {paths.best}")
    summary = {"best": str(paths.best), "best_val_mean_auroc": best_auroc, "best_epoch": best_epoch}
    print(json.dumps(summary))
    return summary
