"""The setup step of a training run, shared by ``train-model.py`` in folders 1-5 and in folder 6.

:func:`setup_training` turns parsed flags into what :func:`common.engine.loop.fit` needs (device, data, model with its
initial weights, checkpoint paths, the state to resume); the caller then builds its criterion and calls
:meth:`TrainingRun.fit`. Base training and distillation differ only in the criterion they pass.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch

from common.commands._flags import recorded_config, restore_resumed_flags
from common.constants import CLASS_NAMES, NUM_CLASSES
from common.data.split_data import DataFlags, SplitData
from common.engine.loop import OptimiserSettings, fit
from common.errors import Interrupted, UserError
from common.evaluation.scoring import ScoringSettings
from common.models import ModelInfo, create_model, load_pretrained, model_info
from common.models.pretrained import read_weights_file
from common.runs.checkpoint import CheckpointPaths, load_checkpoint
from common.runs.folder import OutputLock, prepare_output_dir, remove_stale_temporaries
from common.runs.identity import (
    SeenPatients,
    check_unseen_patients,
    differences,
    git_commit,
    patient_record,
    run_identity,
    seen_patients,
    split_identity,
    weights_identity,
)
from common.runtime.device import amp_dtype_for, precision_name, seed_everything
from common.runtime.distributed import Distributed, is_main_process, processes_per_node, setup_distributed
from common.runtime.threads import apply_thread_choice


# A training part this large is the real data set (its smallest, arnoweng's, trains on 78,468 images), not a synthetic
# or resized sample of it: there, random initial weights give a much weaker model than ImageNet ones.
REAL_SIZE_TRAINING_IMAGES = 10_000


def random_init_note(model_name: str, training_images: int, init_source: str | None) -> str | None:
    """The one line said when a real-size run starts from random weights, or None."""
    if init_source or training_images < REAL_SIZE_TRAINING_IMAGES:
        return None
    return (f"note: {model_info(model_name).display_name} starts from random weights (no --pretrained) on "
            f"{training_images:,} training images; on the real data set that gives a much weaker model than "
            "ImageNet weights: pass --pretrained imagenet (or a published file) unless random weights are what "
            "you study")


def data_flags(args) -> DataFlags:
    """The data flags of a command that reads a checkpoint's split (None: the checkpoint's recorded value)."""
    return DataFlags(data_dir=args.data_dir, split=args.split, label_file=args.label_file,
                     val_fraction=args.val_fraction, image_cache=getattr(args, "image_cache", None),
                     workers=getattr(args, "workers", None), threads=getattr(args, "threads", None),
                     cache_size=getattr(args, "cache_size", None))


def scoring_settings(args, **changes) -> ScoringSettings:
    """The evaluation flags of ``test-model.py`` (and the comparison) as :class:`ScoringSettings`."""
    settings = ScoringSettings(device=args.device, amp=not args.no_amp, tencrop=args.tencrop,
                               batch_size=args.batch_size, n_boot=args.n_boot, subgroup_boot=args.subgroup_boot,
                               demographics=args.demographics, data=data_flags(args))
    return dataclasses.replace(settings, **changes)


def training_data(args) -> SplitData:
    """The split and image index a training run reads (train and val parts), from ``--image-cache`` when given;
    chooses the threads and loader workers (``--threads``, ``--workers``)."""
    args.threads, args.workers = apply_thread_choice(getattr(args, "workers", None), getattr(args, "threads", None),
                                                     cached=bool(getattr(args, "image_cache", None)),
                                                     processes=processes_per_node())
    return SplitData(args.data_dir, args.split, args.label_file, args.val_fraction, args.seed,
                     parts=("train", "val"), workers=args.workers, image_cache=getattr(args, "image_cache", None),
                     cache_size=getattr(args, "cache_size", None), img_size=args.img_size)


def resume_state_for(args, paths: CheckpointPaths, model_name: str) -> dict | None:
    """The ``-last.pth`` state ``--resume`` names, checked against this run; None when not resuming.

    ``--resume`` without a file and no ``-last.pth`` yet starts the run from the beginning: a run killed in its
    first epoch, or a ``--teacher all`` student whose run never started, has nothing to resume but can go on.
    """
    if args.resume is None:
        if not args.overwrite and (paths.best.exists() or paths.last.exists()):
            existing = paths.best if paths.best.exists() else paths.last
            raise UserError(f"{existing} already exists: pass --resume to continue that run or --overwrite to start "
                            "again (the existing files are kept until a new epoch replaces them)")
        return None
    resume_path = paths.last if args.resume == "auto" else Path(args.resume)
    if not resume_path.is_file():
        if args.resume == "auto":
            print(f"--resume: no {resume_path.name} yet, so {paths.prefix} starts from the beginning")
            return None
        raise UserError(f"--resume: {resume_path} does not exist (nothing to resume)")
    state = load_checkpoint(resume_path)
    if state.get("model_name") != model_name or "optimizer" not in state:
        raise UserError(f"--resume: {resume_path} is not a {model_name} *-last.pth training state")
    recorded_prefix = state.get("prefix", Path(resume_path).name.removesuffix("-last.pth"))
    if recorded_prefix != paths.prefix:
        raise UserError(f"--resume: {resume_path} is the state of {recorded_prefix}, not of {paths.prefix}; "
                        f"each run resumes from its own {paths.prefix}-last.pth")
    restore_resumed_flags(args, state["config"], resume_path)
    state["path"] = str(resume_path)
    return state


@dataclass
class TrainingRun:
    """Everything a training run needs before its criterion: made by :func:`setup_training`."""

    model_name: str
    info: ModelInfo
    paths: CheckpointPaths
    device: torch.device
    amp_dtype: torch.dtype | None
    data: SplitData | None
    model: torch.nn.Module | None
    resume_state: dict | None
    finished: dict | None = None  # the summary, when the resumed run had already finished every epoch
    lock: OutputLock | None = None  # held on the output folder from setup to the end of fit
    channels_last: bool = field(default=False)
    identity: dict | None = None  # split, pixels and recipe (run_identity); distillation adds to its recipe
    distributed: Distributed = field(default_factory=Distributed)  # this process's place in a torchrun run
    # The patients the run's starting point and teachers have seen: recorded in its checkpoints with its own.
    inherited_patients: list[SeenPatients] = field(default_factory=list)

    def fit(self, criterion, args, extra_metadata: dict | None = None) -> dict:
        """Train with ``criterion`` and the schedule of ``args``; see :func:`common.engine.loop.fit`."""
        info, data = self.info, self.data
        val_loader, val_augment = data.batches("val", "eval", args.img_size, info.mean, info.std,
                                               args.eval_batch_size or 2 * args.batch_size,
                                               distributed=self.distributed)
        train_size = len(data.split.parts["train"])

        def train_batches(epoch: int):
            return data.batches("train", "train", args.img_size, info.mean, info.std, args.batch_size,
                                crop_scale=args.crop_scale, seed=args.seed, epoch=epoch,
                                drop_last=train_size > args.batch_size, distributed=self.distributed)

        metadata = {
            "model_name": self.model_name, "num_classes": NUM_CLASSES, "class_names": list(CLASS_NAMES),
            "img_size": args.img_size, "mean": list(info.mean), "std": list(info.std),
            "split": data.split.name, "split_description": data.split.describe(), "label_file": data.split.labels,
            "git_commit": git_commit(), "config": recorded_config(args), "prefix": self.paths.prefix,
            "identity": self.identity, **(extra_metadata or {}),
            "patients_seen": patient_record(data.split, f"{self.paths.prefix}: trained on the train part and selected "
                                                        f"on the val part of split {data.split.name}",
                                            self.inherited_patients),
        }
        settings = OptimiserSettings(epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay,
                                     warmup_epochs=args.warmup_epochs, clip_grad=args.clip_grad, seed=args.seed)
        try:
            return fit(self.model, criterion, train_batches, val_loader, settings, self.paths, self.device,
                       self.amp_dtype, metadata, resume_state=self.resume_state, channels_last=self.channels_last,
                       val_augment=val_augment, distributed=self.distributed,
                       compile_model=getattr(args, "compile", False))
        finally:
            self.release()

    def release(self) -> None:
        """Let another run use the output folder (the lock also ends with the process)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None


def setup_training(args, model_name: str, prefix: str, output_dir: Path, init_source: str | None = None,
                   data: SplitData | None = None, init_flag: str = "--pretrained",
                   announce_random_init: bool = True) -> TrainingRun:
    """Device, data, model (with ``init_source`` weights unless resuming), paths and resume state of a run.

    Before any data is read, the output folder is checked writable and locked for this run (``<prefix>``), and
    temporaries a killed run left there are removed. ``data`` reuses an already indexed split (several runs on the
    same images). When the state to resume has finished every epoch already, the returned run has ``finished`` set
    and nothing else to do. ``init_flag`` names the flag that gave ``init_source`` in messages.
    ``announce_random_init``: say :func:`random_init_note` when it applies (a command that sets up several runs
    says it once).
    """
    lock = None
    if is_main_process():  # under torchrun rank 0 owns the folder; the other processes write nothing there
        output_dir = prepare_output_dir(output_dir)
        lock = OutputLock(output_dir, prefix)
        lock.acquire()
    try:
        run = _setup_locked(args, model_name, prefix, output_dir, init_source, data, sweep=lock is not None,
                            init_flag=init_flag, announce_random_init=announce_random_init)
    except Interrupted as stop:
        if lock is not None:
            lock.release()
        raise Interrupted(stop.signal_number, stop.message or (
            f"{stop.signal_name} while {prefix} was starting (before its first step): nothing of this run was saved"
            + _earlier_files(Path(output_dir), prefix) + "; rerun the same command")) from None
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    run.lock = lock
    if run.finished:
        run.release()
    return run


def _earlier_files(output_dir: Path, prefix: str) -> str:
    """``; the files already there (...) are unchanged`` for a folder holding files of an earlier run or state."""
    paths = CheckpointPaths.for_prefix(output_dir, prefix)
    present = [p.name for p in (paths.best, paths.last, paths.log, paths.curves) if p.exists()]
    return f"; the files already there ({', '.join(present)}) are unchanged" if present else ""


def _setup_locked(args, model_name, prefix, output_dir, init_source, data, sweep: bool,
                  init_flag: str = "--pretrained", announce_random_init: bool = True) -> TrainingRun:
    if sweep:
        remove_stale_temporaries(output_dir, prefix)
    paths = CheckpointPaths.for_prefix(output_dir, prefix)
    resume_state = resume_state_for(args, paths, model_name)
    info = model_info(model_name)
    if resume_state is not None and resume_state["epoch"] >= args.epochs:
        print(f"{resume_state['path']} already finished {resume_state['epoch']} of {args.epochs} epochs; "
              "nothing to do")
        finished = {"best": paths.best, "best_val_mean_auroc": resume_state["best_val_mean_auroc"]}
        return TrainingRun(model_name, info, paths, torch.device("cpu"), None, None, None, resume_state, finished)

    # Read before the images are indexed: a refused or unreadable file stops the run at once.
    start = (read_weights_file(init_source, model_name, trust=getattr(args, "trust_checkpoint", False))
             if init_source and resume_state is None else None)
    seed_everything(args.seed)
    distributed, device = setup_distributed(args.device)
    amp_dtype = amp_dtype_for(device, not args.no_amp)
    data = data or training_data(args)
    print(data.split.describe())
    note = random_init_note(model_name, len(data.split.parts["train"]), init_source)
    if note and resume_state is None and announce_random_init and is_main_process():
        print(note)
    identity = run_identity(
        split_identity(data.split, args.val_fraction, args.seed),
        data.identity(data.split.parts["train"].names + data.split.parts["val"].names),
        training_recipe(args, amp_dtype, init_source if resume_state is None else None))
    if resume_state is not None:
        check_same_run(resume_state, identity)
        # The initial weights were loaded by the run being continued: keep its record of them.
        identity["recipe"]["initial_weights"] = resume_state["identity"]["recipe"].get("initial_weights")
    inherited = start_patients(data.split, resume_state, start, init_source, init_flag)

    model = create_model(model_name, num_classes=NUM_CLASSES, img_size=args.img_size)
    if init_source and resume_state is None:
        load_pretrained(model, model_name, init_source, checkpoint=start)
    channels_last = device.type == "cuda"
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return TrainingRun(model_name, info, paths, device, amp_dtype, data, model, resume_state,
                       channels_last=channels_last, identity=identity, distributed=distributed,
                       inherited_patients=inherited)


def selected_or_tested(split) -> dict:
    """The parts of a run's split that a checkpoint it builds on must not have seen: the val part it selects on
    (none of the checkpoint's training patients) and the test part it will be scored on (none of its training or
    validation patients); see :func:`common.runs.identity.check_unseen_patients`."""
    return {f"val part of split {split.name}": (split.parts["val"].patient_ids, ("train",)),
            f"test part of split {split.name}": (split.parts["test"].patient_ids, ("train", "val"))}


def start_patients(split, resume_state: dict | None, start, init_source, init_flag: str) -> list[SeenPatients]:
    """The patients a run inherits, checked against ``split``: a resumed state's record, or that of the project
    checkpoint the run starts from (``--pretrained`` / ``--student-init``). Published weights record none."""
    if resume_state is not None:
        seen = seen_patients(resume_state, resume_state["path"])
        check_unseen_patients(resume_state["path"], resume_state, selected_or_tested(split), "--resume", seen=seen)
        return [seen]
    if isinstance(start, dict) and "model_name" in start and "model" in start:  # this project's checkpoint
        seen = seen_patients(start, init_source, via=init_flag)
        check_unseen_patients(init_source, start, selected_or_tested(split), init_flag, seen=seen)
        return [seen]
    return []


def training_recipe(args, amp_dtype, init_source) -> dict:
    """Every flag that shapes the weights, the precision, and the hash of the initial weights."""
    recipe = {key: getattr(args, key) for key in ("epochs", "batch_size", "lr", "weight_decay", "warmup_epochs",
                                                  "clip_grad", "crop_scale", "img_size", "pos_weight", "seed")}
    recipe.update({"precision": precision_name(amp_dtype), "initial_weights": weights_identity(init_source)})
    return recipe


def check_same_run(resume_state: dict, identity: dict) -> None:
    """A resumed run must read the same patients and pixels as the run it continues (its flags are restored
    already, see :func:`common.commands._flags.restore_resumed_flags`)."""
    recorded = resume_state.get("identity")
    if recorded is None:
        raise UserError(f"--resume: {resume_state['path']} records no run identity (made by an older version); "
                        "start again with --overwrite")
    found = (differences(recorded["split"], identity["split"], ("split", "label_source", "val_fraction", "seed"))
             + differences(recorded["data"], identity["data"], ("data_dir", "images", "files_sha256", "image_cache"),
                           describe=lambda key: {"files_sha256": "image files (name, size, time)"}.get(key, key))
             + differences(recorded["recipe"], identity["recipe"], ("precision",)))
    if found:
        raise UserError(f"--resume: {resume_state['path']} was made from other data: {'; '.join(found)}")
