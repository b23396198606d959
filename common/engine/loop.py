"""The one training engine of every folder (base training and distillation alike).

:func:`fit` trains any model with any criterion: a criterion is a callable ``criterion(logits, batch) -> loss``
built by the caller. Base training passes :class:`SupervisedCriterion`; distillation passes
:class:`common.engine.distill.DistillationCriterion`: a loss, never a second loop. The engine never sees parsed flags.
"""
from __future__ import annotations

import contextlib
import json
import math
import signal
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from common.atomic import StagedWrites
from common.constants import CLASS_NAMES
from common.engine.losses import LabelLoss
from common.engine.run_log import TrainingLog
from common.errors import Interrupted, UserError
from common.evaluation.logits import predict_logits, sigmoid
from common.evaluation.metrics import choose_thresholds, mean_auroc, per_class_auroc
from common.evaluation.plots import plot_training_curves
from common.runs.checkpoint import CheckpointPaths, save_atomic
from common.runtime.device import batch_to_device, random_state, restore_random_state, seed_everything
from common.runtime.distributed import Distributed
from common.runtime.progress import progress
from common.runtime.signals import StopRequest

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


#: The divergence rule (docs/guide/faults.md §1): a run has blown up when the mean training loss of the steps since
#: the last look (every LOG_EVERY steps and at the end of an epoch) exceeds DIVERGENCE_FACTOR times the loss of the
#: run's first step, and DIVERGENCE_FLOOR. Learning never takes the loss anywhere near 100x its starting level (a
#: 14-class BCE starts near 0.69); --lr 100 took it to 5e9 while every value stayed finite.
DIVERGENCE_FACTOR = 100.0
DIVERGENCE_FLOOR = 10.0


class DivergenceGuard:
    """Stops a run whose training loss has blown up although it is finite (and one that became NaN or inf).

    ``reference`` is the loss of the run's first step (before any update: the model's own level), recorded in every
    ``-last.pth`` so that a resumed run keeps it. :meth:`check` raises :class:`UserError`; nothing of the epoch in
    progress is saved, so the checkpoints on disk keep the last good epoch.
    """

    def __init__(self, reference: float | None = None, lr: float | None = None):
        self.reference = reference
        self.lr = lr

    @property
    def limit(self) -> float:
        return max(DIVERGENCE_FACTOR * self.reference, DIVERGENCE_FLOOR)

    def first_step(self, loss: float, epoch: int) -> None:
        """Record the first step's loss (once per run)."""
        if self.reference is None:
            if not math.isfinite(loss):
                raise UserError(f"the training loss of the first step is {loss} (epoch {epoch}, before any update): "
                                "check the inputs and --pretrained weights")
            self.reference = float(loss)

    def check(self, mean_loss: float, epoch: int, step: int) -> None:
        lower = f"lower --lr (now {self.lr:g})" if self.lr is not None else "lower --lr"
        if not math.isfinite(mean_loss):
            raise UserError(f"the training loss became {mean_loss} at epoch {epoch}, step {step}; {lower} or enable "
                            "--clip-grad")
        if self.reference is not None and mean_loss > self.limit:
            raise UserError(f"training diverged at epoch {epoch}, step {step}: the mean loss of the last steps is "
                            f"{mean_loss:.4g}, more than {DIVERGENCE_FACTOR:g}x the first step's {self.reference:.4g} "
                            f"(the rule of docs/guide/faults.md); {lower}")


@dataclass
class EpochProgress:
    """How far an epoch has got: the steps done and the running sums of its statistics (on the device), the random
    state after the last step, and the seconds spent. Saved in ``-last.pth`` when a run is stopped mid-epoch."""

    steps: int = 0
    loss_sum: torch.Tensor | None = None
    seen: int = 0
    skipped: int = 0
    term_sums: dict = field(default_factory=dict)
    seconds: float = 0.0
    random: dict | None = None
    augment_random: torch.Tensor | None = None

    def saved(self) -> dict:
        """A ``weights_only``-loadable dict (tensors on the CPU)."""
        return {"steps": self.steps, "loss_sum": None if self.loss_sum is None else self.loss_sum.detach().cpu(),
                "seen": self.seen, "skipped": self.skipped,
                "term_sums": {k: torch.as_tensor(v).detach().cpu() for k, v in self.term_sums.items()},
                "seconds": self.seconds, "random": self.random, "augment_random": self.augment_random}

    @classmethod
    def restored(cls, saved: dict, device) -> "EpochProgress":
        return cls(steps=saved["steps"], loss_sum=None if saved["loss_sum"] is None else saved["loss_sum"].to(device),
                   seen=saved["seen"], skipped=saved["skipped"],
                   term_sums={k: v.to(device) for k, v in saved["term_sums"].items()}, seconds=saved["seconds"],
                   random=saved["random"], augment_random=saved["augment_random"])


def _augment_generator(augment):
    """The generator a device-side train augmentation draws its crops from (None: it draws from the global state)."""
    generator = getattr(augment, "generator", None)
    return generator if isinstance(generator, torch.Generator) else None


def train_one_epoch(model, criterion, loader, optimizer, scheduler, scaler, device, amp_dtype,
                    epoch: int, epochs: int, clip_grad: float | None = None, channels_last: bool = False,
                    augment=None, *, guard: DivergenceGuard | None = None, stop: StopRequest | None = None,
                    resume: EpochProgress | None = None, distributed: Distributed | None = None) -> dict:
    """One pass over ``loader``; returns the sample-weighted mean loss, images per second and seconds.

    ``augment``: None when the loader's batches are model inputs already (PNG path), else a callable that turns
    the device batch into them (:meth:`common.data.split_data.SplitData.batches`). ``guard`` applies the divergence
    rule (default: a new one). ``stop``: when its signal arrives, the epoch ends after the current step and the
    result has ``stopped`` set with the :class:`EpochProgress` so far (under torchrun every process stops after the
    same step, agreed every LOG_EVERY steps). ``resume``: an :class:`EpochProgress` saved by a stopped run: the
    batches it had trained are read again without training (so that every worker's random draws are where they
    were), then the random state is put back and the epoch goes on from the next step.
    """
    distributed = distributed or Distributed()
    guard = guard or DivergenceGuard()
    model.train()
    state = resume or EpochProgress()
    total_loss = state.loss_sum if state.loss_sum is not None else torch.zeros((), device=device)
    term_sums = dict(state.term_sums)
    seen, skipped, done = state.seen, state.skipped, state.steps
    checked_loss, checked_seen = (total_loss.item() if done else 0.0), seen
    total_steps = len(loader)
    start = time.perf_counter() - state.seconds
    stopped = False
    if done >= total_steps:  # stopped during its validation: every step is trained already
        return _epoch_stats(epoch, state, total_steps)
    bar = progress(loader, f"epoch {epoch}/{epochs} train", unit="batch")
    batches = iter(bar)
    if done:
        for _ in range(done):
            next(batches)  # read, not trained: the workers' augmentation draws advance as they did
        restore_random_state(state.random)
        generator = _augment_generator(augment)
        if generator is not None and state.augment_random is not None:
            generator.set_state(state.augment_random)
    for step in range(done + 1, total_steps + 1):
        if stop is not None and stop.requested and not distributed.enabled:
            stopped = True
            break
        batch = batch_to_device(next(batches), device, channels_last, augment)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(batch["image"])
            loss = criterion(logits, batch)
        if guard.reference is None:
            guard.first_step(float(distributed.sum_values([loss.detach().float().item()], device)[0])
                             / distributed.world_size, epoch)
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
        done = step
        if step % LOG_EVERY == 0 or step == total_steps:
            summed = total_loss.item()
            wanted = stop is not None and stop.requested
            window_loss, window_seen, stops = distributed.sum_values(
                [summed - checked_loss, seen - checked_seen, float(wanted)], device)
            checked_loss, checked_seen = summed, seen
            if window_seen:
                guard.check(window_loss / window_seen, epoch, step)
            elapsed = time.perf_counter() - start
            postfix = {"loss": f"{summed / max(seen, 1):.4f}", "img/s": f"{seen / max(elapsed, 1e-9):.1f}",
                       "lr": f"{scheduler.get_last_lr()[0]:.2e}"}
            postfix.update({k: f"{v:.4f}" for k, v in getattr(criterion, "last_terms", {}).items()})
            bar.set_postfix(postfix, refresh=False)
            if stops and step < total_steps:
                stopped = True
                break
    bar.close()
    generator = _augment_generator(augment)
    so_far = EpochProgress(steps=done, loss_sum=total_loss, seen=seen, skipped=skipped, term_sums=term_sums,
                           seconds=time.perf_counter() - start, random=random_state() if stopped else None,
                           augment_random=None if generator is None or not stopped else generator.get_state())
    if stopped:
        return {"stopped": so_far}
    return _epoch_stats(epoch, so_far, total_steps)


def _epoch_stats(epoch: int, done: EpochProgress, total_steps: int) -> dict:
    """The statistics of a finished epoch from its :class:`EpochProgress` (kept as ``progress``)."""
    if done.skipped == total_steps:
        raise UserError(f"every step of epoch {epoch} overflowed in fp16 and was skipped; lower --lr or pass --no-amp")
    seen = max(done.seen, 1)
    return {"loss": done.loss_sum.item() / seen, "img_per_s": done.seen / max(done.seconds, 1e-9),
            "seconds": done.seconds, "images": done.seen, "skipped_steps": done.skipped,
            "terms": {name: float(value) / seen for name, value in done.term_sums.items()}, "progress": done}


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
        resume_state: a ``-last.pth`` dict to continue from (model, optimizer, scheduler, scaler, epoch, log rows,
            and for a run stopped mid-epoch its ``partial_epoch``); every epoch seeds its own draws
            (:func:`epoch_seed`), and a stopped epoch carries the random state of the step it stopped after.
        val_augment: the device-side view of the validation batches (image cache), None for the PNG path.
        distributed: this process's place in a torchrun run (default: one process). The model trains wrapped in
            DistributedDataParallel, the validation predictions of all processes are gathered, and only rank 0
            writes files.
        compile_model: compile the training forward pass (``--compile``).

    After every epoch its files (``paths.best`` when the validation mean AUROC improves, ``paths.last`` with
    everything needed to resume, the log) are replaced together (:class:`common.atomic.StagedWrites`): a write that
    fails leaves the folder as it was, and the message says what it holds; then the curves are drawn. SIGINT or
    SIGTERM stops the run after the current step with its state saved in ``paths.last`` (docs/guide/faults.md §2),
    and the divergence rule (:class:`DivergenceGuard`) stops a run that has blown up. Returns ``{"best",
    "best_val_mean_auroc", "best_epoch"}``.
    """
    distributed = distributed or Distributed()
    steps_per_epoch = len(train_batches(1)[0])
    optimizer = build_optimizer(model, settings.lr, settings.weight_decay)
    scheduler = build_scheduler(optimizer, settings.epochs, steps_per_epoch, settings.warmup_epochs)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    start_epoch, best_auroc, best_epoch = 1, -1.0, 0
    log = TrainingLog(paths.log, LOG_COLUMNS)
    guard = DivergenceGuard(lr=settings.lr)
    partial = None
    previous_run: list[Path] = []  # files of an earlier run in the folder that this fresh run replaces
    last_values = {"val_mean_auroc": None, "val_auroc": None}  # the last completed epoch's validation
    if resume_state is not None:
        model.load_state_dict(resume_state["model"])
        optimizer.load_state_dict(resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["scheduler"])
        scaler.load_state_dict(resume_state["scaler"])
        start_epoch = resume_state["epoch"] + 1
        best_auroc, best_epoch = resume_state["best_val_mean_auroc"], resume_state["best_epoch"]
        guard.reference = resume_state.get("first_step_loss")
        last_values = {key: resume_state.get(key) for key in last_values}
        partial = _partial_epoch(resume_state, start_epoch, steps_per_epoch, distributed, device)
        if distributed.is_main:  # the log is rank 0's
            if "log_rows" in resume_state:
                # The rows saved with the weights: the log matches them whichever write a kill interrupted.
                log.restore([row for row in resume_state["log_rows"] if int(row["epoch"]) <= resume_state["epoch"]])
            else:
                log.truncate_to(resume_state["epoch"])
        where = f"epoch {start_epoch}" + (f", step {partial.steps + 1} of {steps_per_epoch}" if partial else "")
        print(f"resuming {paths.last} at {where} (best so far {best_auroc:.4f} at epoch {best_epoch})")
    else:
        log.start_over()  # an old log stays as it is until the first new epoch replaces it
        previous_run = [path for path in (paths.best, paths.last, paths.log, paths.curves) if path.exists()]

    # Wrapped after the resumed weights are in: DDP broadcasts rank 0's weights when it wraps.
    train_model = distributed.prepare(model, device, compile_model)
    print(f"training {metadata['model_name']} on {device} "
          f"({'AMP ' + str(amp_dtype).split('.')[-1] if amp_dtype else 'fp32'}), "
          f"{sum(p.numel() for p in model.parameters()):,} parameters, writing {paths.best}")
    said = set()  # validation warnings (an n/a AUROC, a class without positives) are said once per run
    completed = start_epoch - 1  # the last epoch whose files are on disk

    def on_disk() -> str:
        return _on_disk(paths, completed, best_epoch, previous_run if completed < start_epoch else [])

    def training_state(epoch_done: int, values: dict) -> dict:
        return {**metadata, "epoch": epoch_done, **values, "kind": "last", "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "best_val_mean_auroc": best_auroc, "best_epoch": best_epoch,
                "first_step_loss": guard.reference}

    def stop_mid_epoch(epoch: int, progress_so_far: EpochProgress, signal_number: int | None, during: str):
        """Save the state after the last step done in ``epoch`` and stop (every process calls this)."""
        name = _signal_name(signal_number)
        if progress_so_far.steps == 0:  # nothing done in this epoch: what is on disk is the state to resume
            go_on = "rerun the same command with --resume to continue" if completed else "rerun the same command"
            return Interrupted(signal_number or signal.SIGTERM,
                               f"{name} before epoch {epoch} began: {on_disk()}; {go_on}")
        entries = distributed.gather_objects(progress_so_far.saved())
        if completed == 0 and previous_run:
            # --overwrite promised to keep the earlier run until a new epoch replaces it: no half epoch does.
            return Interrupted(signal_number or signal.SIGTERM,
                               f"{name} {during}: {on_disk()}; rerun with --overwrite to start again")
        saved = (f"the epoch's training is saved in {paths.last}, to be validated when resumed"
                 if progress_so_far.steps >= steps_per_epoch else f"the state after that step is saved in {paths.last}")
        if distributed.is_main:
            state = {**training_state(completed, last_values), "log_rows": log.rows(),
                     "partial_epoch": {"epoch": epoch, "steps": progress_so_far.steps,
                                       "steps_per_epoch": steps_per_epoch, "world_size": distributed.world_size,
                                       "ranks": entries}}
            try:
                save_atomic(state, paths.last)
            except UserError as err:
                saved = f"its state could not be saved ({err}); {on_disk()}"
        distributed.barrier()
        best = f", the best so far (epoch {best_epoch}) is {paths.best.name}" if best_epoch else ""
        epochs = f"epochs 1-{completed}" if completed > 1 else "epoch 1"
        before = f" ({epochs} complete{best})" if completed and not saved.startswith("its state") else ""
        return Interrupted(signal_number or signal.SIGTERM,
                           f"{name} {during}: {saved}{before}; rerun the same command with --resume to "
                           "continue from there")

    epoch = start_epoch
    try:
        with StopRequest() as stop:
            for epoch in range(start_epoch, settings.epochs + 1):
                seed_everything(epoch_seed(settings.seed, epoch))
                train_loader, train_augment = train_batches(epoch)
                stats = train_one_epoch(train_model, criterion, train_loader, optimizer, scheduler, scaler, device,
                                        amp_dtype, epoch, settings.epochs, clip_grad=settings.clip_grad or None,
                                        channels_last=channels_last, augment=train_augment, guard=guard, stop=stop,
                                        resume=partial if epoch == start_epoch else None, distributed=distributed)
                if "stopped" in stats:
                    steps = stats["stopped"].steps
                    raise stop_mid_epoch(epoch, stats["stopped"], stop.signal_number,
                                         f"at epoch {epoch}, step {steps} of {steps_per_epoch}")
                epoch_progress = stats["progress"]
                stats = distributed.reduce_epoch_stats(stats)
                distributed.sync_buffers(model)
                try:
                    # One process: a signal cuts the validation short (the epoch's training is saved below).
                    # Several: every process finishes it, and they agree to stop after the epoch's files.
                    with stop.raising() if not distributed.enabled else contextlib.nullcontext():
                        logits, targets, positions = predict_logits(
                            model, val_loader, device, amp_dtype, desc=f"epoch {epoch} val",
                            channels_last=channels_last, augment=val_augment, with_index=True)
                except Interrupted as err:
                    epoch_progress.random = random_state()
                    raise stop_mid_epoch(epoch, epoch_progress, err.signal_number,
                                         f"during the validation of epoch {epoch}") from None
                logits, targets = distributed.gather_predictions(logits, targets, positions, len(val_loader.dataset))
                if not np.isfinite(logits).all():
                    raise UserError(f"the validation scores became non-finite at epoch {epoch} (the weights "
                                    f"diverged); lower --lr (now {settings.lr:g}); {on_disk()}")
                probs = sigmoid(logits)
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    aurocs = per_class_auroc(targets, probs, CLASS_NAMES)
                    val_auroc = mean_auroc(aurocs)
                    improved = np.isfinite(val_auroc) and val_auroc > best_auroc
                    thresholds = choose_thresholds(targets, probs, CLASS_NAMES) if improved else None
                for warning in caught:
                    if str(warning.message) not in said and distributed.is_main:  # rank 0 speaks for the run
                        said.add(str(warning.message))
                        print(f"warning: {warning.message} (said once per run)", file=sys.stderr)
                print(f"Epoch {epoch}/{settings.epochs}, Total Loss: {stats['loss']:.4f}, "
                      f"Time: {stats['seconds']:.2f} sec, {stats['img_per_s']:.1f} img/s, "
                      f"Val mean AUROC: {val_auroc:.4f}")
                values = {"val_mean_auroc": float(val_auroc),
                          "val_auroc": [None if a is None else float(a) for a in aurocs]}
                previous_best = (best_auroc, best_epoch)
                if improved:
                    best_auroc, best_epoch = float(val_auroc), epoch
                if distributed.is_main:
                    try:
                        _save_epoch(paths, log, epoch, stats, values, scheduler, best_auroc, improved,
                                    {**metadata, "epoch": epoch, **values, "kind": "best", "model": model.state_dict(),
                                     "val_thresholds": None if thresholds is None else [float(t) for t in thresholds]},
                                    training_state(epoch, values), fresh=completed == 0 and bool(previous_run))
                    except UserError as err:
                        best_auroc, best_epoch = previous_best
                        raise UserError(f"{err}; nothing of epoch {epoch} was written: {on_disk()}") from None
                completed, last_values = epoch, values
                if improved:
                    print(f"Model saved as {paths.best.name} (best validation mean AUROC {best_auroc:.4f})")
                if distributed.is_main:
                    try:
                        plot_training_curves(paths.log, paths.curves, title=paths.prefix)
                    except UserError as err:
                        raise UserError(f"{err}; epoch {epoch} is saved ({paths.last.name}, {paths.log.name}), only "
                                        f"{paths.curves.name} is missing or older: rerun with --resume to go on "
                                        "and draw it again") from None
                wanted = distributed.sum_values([float(stop.requested)], device)[0]
                if wanted and epoch < settings.epochs:
                    raise Interrupted(stop.signal_number or signal.SIGTERM,
                                      f"{_signal_name(stop.signal_number)} after epoch {epoch} of "
                                      f"{settings.epochs}: {on_disk()}; rerun the same command with --resume to "
                                      f"continue from epoch {epoch + 1}")
    except Interrupted as err:
        if err.message is not None:
            raise
        raise Interrupted(err.signal_number, f"{err.signal_name} in epoch {epoch} (a second signal, or "
                                             f"one during a save): {on_disk()}; rerun the same command with "
                                             "--resume to continue") from None
    except RuntimeError as err:
        failed = distributed.peer_failure(err)
        if failed is None:
            raise
        raise UserError(f"{failed} during epoch {epoch}; this process (rank {distributed.rank}) stops too: "
                        f"{on_disk()}; rerun the same torchrun command with --resume to continue",
                        every_rank=True) from err
    if best_epoch == 0:
        raise UserError("validation mean AUROC was undefined in every epoch (each class has a single label value "
                        "in the validation part); no checkpoint was chosen")
    # The next run of the process (--teacher all) may read what rank 0 has just written.
    distributed.barrier()
    print(f"best validation mean AUROC {best_auroc:.4f} at epoch {best_epoch}: {paths.best}")
    summary = {"best": str(paths.best), "best_val_mean_auroc": best_auroc, "best_epoch": best_epoch}
    print(json.dumps(summary))
    return summary


def _signal_name(signal_number: int | None) -> str:
    return Interrupted(signal_number).signal_name if signal_number else "a stop request of another process"


def _save_epoch(paths: CheckpointPaths, log: TrainingLog, epoch: int, stats: dict, values: dict, scheduler,
                best_auroc: float, improved: bool, best_state: dict, last_state: dict, fresh: bool) -> None:
    """Replace the epoch's files together: the best checkpoint (when improved), ``-last.pth`` (carrying the log
    rows, so that a resumed run rebuilds the log whichever rename a kill interrupted) and the log. In the first epoch
    of a run that replaces an earlier one, that run's best checkpoint and curves go too, so that the folder never
    holds two runs."""
    terms = stats.get("terms", {})
    row = {"epoch": str(epoch), "train_loss": f"{stats['loss']:.6f}",
           "train_hard_loss": f"{terms['hard']:.6f}" if "hard" in terms else "",
           "train_kd_loss": f"{terms['kd']:.6f}" if "kd" in terms else "",
           "val_mean_auroc": f"{values['val_mean_auroc']:.6f}", "best_val_mean_auroc": f"{best_auroc:.6f}",
           "lr": f"{scheduler.get_last_lr()[0]:.3e}", "img_per_s": f"{stats['img_per_s']:.2f}",
           "epoch_seconds": f"{stats['seconds']:.2f}"}
    with StagedWrites() as staged:
        if improved:
            staged.write(paths.best, lambda stream: torch.save(best_state, stream))
        elif fresh:
            staged.remove(paths.best)
        if fresh:
            staged.remove(paths.curves)
        staged.write(paths.last, lambda stream: torch.save({**last_state, "log_rows": log.rows() + [row]}, stream))
        log.append(row, staged=staged)
        staged.commit()


def _on_disk(paths: CheckpointPaths, completed: int, best_epoch: int, previous_run: list) -> str:
    """What the folder holds of a run whose last epoch on disk is ``completed``, in words."""
    if completed:
        best = f", the best so far (epoch {best_epoch}) is {paths.best.name}" if best_epoch else ""
        return f"{paths.last} holds epoch {completed} complete{best}"
    if previous_run:
        return (f"nothing of this run was saved and the earlier run's files in {paths.last.parent} "
                f"({', '.join(p.name for p in previous_run)}) are unchanged")
    return "nothing of this run was saved yet"


def _partial_epoch(resume_state: dict, epoch: int, steps_per_epoch: int, distributed: Distributed,
                   device) -> EpochProgress | None:
    """This process's :class:`EpochProgress` of a run stopped mid-epoch (None when it stopped between epochs)."""
    partial = resume_state.get("partial_epoch")
    if not partial or partial["epoch"] != epoch:
        return None
    where = resume_state.get("path", "the -last.pth checkpoint")
    if partial["steps_per_epoch"] != steps_per_epoch or partial["world_size"] != distributed.world_size:
        raise UserError(f"--resume: {where} was stopped at step {partial['steps']} of {partial['steps_per_epoch']} "
                        f"of epoch {epoch} with {partial['world_size']} process(es); this run has "
                        f"{steps_per_epoch} steps per epoch with {distributed.world_size}: resume it with the same "
                        "number of processes (torchrun --nproc_per_node) and the same data")
    return EpochProgress.restored(partial["ranks"][distributed.rank], device)
