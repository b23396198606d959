"""Distillation as a criterion: the teachers, their logit cache, and :class:`DistillationCriterion`.

Distillation is a criterion, built by folder 6's command (:mod:`common.commands.distill`) from the data of the run
and handed to the engine's ``fit`` like the BCE criterion of base training. Teacher logits come either from the teachers run on the student's own augmented batch (``online``) or from a cache computed
once on the deterministic eval view of every training image (``cached``).
"""
from __future__ import annotations

import hashlib
import json
import signal
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from common.constants import NUM_CLASSES
from common.data.fingerprint import file_sha256
from common.data.images import eval_resize
from common.data.split_data import SplitData
from common.engine.losses import MultiLabelKDLoss
from common.errors import Interrupted, UserError, filesystem_errors
from common.runs.checkpoint import load_model_from_checkpoint, save_atomic
from common.runs.folder import remove_stale_temporaries
from common.runtime.device import precision_name
from common.runtime.distributed import Distributed
from common.runtime.progress import progress

SAVE_EVERY_BATCHES = 50  # how often an interrupted cache build can resume from


class Teacher:
    """A frozen teacher: eval mode, no gradients, with its own input size and normalisation."""

    def __init__(self, path: Path, index: int | None):
        print("=> loading teacher_checkpoint")
        self.checkpoint, self.model = load_model_from_checkpoint(path)
        print(f"=> loaded teacher_checkpoint {path} ({self.checkpoint['model_name']})")
        if self.checkpoint["num_classes"] != NUM_CLASSES:
            raise UserError(f"teacher {path} has {self.checkpoint['num_classes']} classes, not {NUM_CLASSES}")
        self.path, self.index = Path(path), index
        self.sha256 = file_sha256(self.path)
        self.img_size = self.checkpoint["img_size"]
        self.mean, self.std = tuple(self.checkpoint["mean"]), tuple(self.checkpoint["std"])
        self.model.eval()
        self.model.requires_grad_(False)

    def describe(self) -> dict:
        return {"index": self.index, "path": str(self.path), "sha256": self.sha256,
                "model_name": self.checkpoint["model_name"], "val_mean_auroc": self.checkpoint.get("val_mean_auroc")}


class OnlineTeachers:
    """Teacher logits [K, B, C] on the student's own augmented batch, re-normalised and resized per teacher."""

    def __init__(self, teachers: list[Teacher], student_mean, student_std, device):
        self.teachers = teachers
        # Per teacher, once: an affine map from student-normalised to teacher-normalised pixels (None: identical).
        self.renormalise = [self._affine(student_mean, student_std, t.mean, t.std, device) for t in teachers]
        for teacher in teachers:
            teacher.model.to(device)

    @staticmethod
    def _affine(student_mean, student_std, teacher_mean, teacher_std, device):
        if tuple(student_mean) == tuple(teacher_mean) and tuple(student_std) == tuple(teacher_std):
            return None
        as_tensor = lambda values: torch.tensor(values, device=device).view(1, 3, 1, 1)  # noqa: E731
        scale = as_tensor(student_std) / as_tensor(teacher_std)
        return scale, (as_tensor(student_mean) - as_tensor(teacher_mean)) / as_tensor(teacher_std)

    def view_for(self, index: int, images: torch.Tensor) -> torch.Tensor:
        """The student batch as teacher ``index`` expects it (its size and its mean/std)."""
        teacher, affine = self.teachers[index], self.renormalise[index]
        if affine is not None:
            images = images * affine[0] + affine[1]
        if images.shape[-1] != teacher.img_size or images.shape[-2] != teacher.img_size:
            images = F.interpolate(images, size=(teacher.img_size, teacher.img_size), mode="bilinear",
                                   align_corners=False, antialias=True)
        return images

    @torch.no_grad()
    def __call__(self, batch: dict) -> torch.Tensor:
        return torch.stack([t.model(self.view_for(i, batch["image"])).float() for i, t in enumerate(self.teachers)])


class CachedTeachers:
    """Teacher logits [K, B, C] looked up by dataset index in caches computed once per teacher."""

    def __init__(self, logits: list[torch.Tensor], device):
        self.logits = torch.stack(logits).to(device)  # [K, N, C], fp16

    def __call__(self, batch: dict) -> torch.Tensor:
        index = batch["index"].to(self.logits.device)
        return self.logits[:, index].float()


def cache_key(teacher: Teacher, data: SplitData, device, amp_dtype) -> dict:
    """What a cached logit file depends on: the teacher's file, the images' names and pixels (file fingerprint),
    the view, and the device and precision the logits are computed with. Any change gives a new key and a
    rebuilt cache."""
    part = data.split.parts["train"]
    names_digest = hashlib.sha256("\n".join(part.names).encode()).hexdigest()
    pixels = data.identity(part.names)
    return {"teacher_sha256": teacher.sha256, "split": data.split.name, "labels": data.split.labels,
            "images_sha256": names_digest, "n_images": len(part), "num_classes": NUM_CLASSES,
            "data_dir": pixels["data_dir"], "files_sha256": pixels["files_sha256"],
            "device": torch.device(device).type, "precision": precision_name(amp_dtype),
            "view": f"resize {eval_resize(teacher.img_size)} + centre crop {teacher.img_size}"
                    + (f" of the {data.cache.size}-px image cache {data.cache.fingerprint}" if data.cache else ""),
            "mean": list(teacher.mean), "std": list(teacher.std)}


def build_or_load_cache(teacher: Teacher, data: SplitData, cache_dir: Path, batch_size: int, device,
                        amp_dtype, distributed: Distributed | None = None) -> torch.Tensor:
    """fp16 teacher logits [N, C] for the training part, computed once, resumable, rebuilt when stale.

    With the image cache the teacher sees its eval view computed on the device from the cached images. Under
    torchrun rank 0 builds (or checks) the file while the others wait, then they read it."""
    distributed = distributed or Distributed()
    if not distributed.is_main:
        distributed.barrier()
        key = cache_key(teacher, data, device, amp_dtype)
        path = cache_dir / _cache_name(teacher, key)
        state, damage = read_teacher_cache(path)
        if state is None:
            raise UserError(f"teacher cache {path}, just written by rank 0, cannot be read by rank "
                            f"{distributed.rank}: {damage}", every_rank=True)
        if state.get("key") != key or state["filled"] != key["n_images"]:
            raise UserError(f"teacher cache {path} written by rank 0 does not match this process's view of the data")
        return state["logits"]
    logits = _build_or_load_cache(teacher, data, cache_dir, batch_size, device, amp_dtype)
    distributed.barrier()
    return logits


def read_teacher_cache(path: Path) -> tuple[dict | None, str | None]:
    """``(state, None)`` for a readable teacher cache file, ``(None, what is wrong)`` for a damaged one (truncated,
    not a torch file, or without the entries a cache has); a file that cannot be opened at all is a UserError."""
    try:
        with filesystem_errors(path, action="read"):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except UserError:
        raise
    except Exception as err:  # torch.load's many failure types (zip, pickle, EOF, runtime) all mean "damaged"
        first = (str(err).splitlines() or [type(err).__name__])[0]
        return None, first.split(". ")[0][:160]  # torch's zip reader goes on with advice about its internals
    if not isinstance(state, dict) or not {"key", "filled", "logits"} <= set(state) \
            or not isinstance(state["logits"], torch.Tensor) or not isinstance(state["filled"], int):
        return None, "it lacks the key, filled and logits entries of a teacher cache"
    return state, None


def _cache_name(teacher: Teacher, key: dict) -> str:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return f"teacher{teacher.index or ''}-{teacher.checkpoint['model_name']}-{digest}.pt"


def _build_or_load_cache(teacher: Teacher, data: SplitData, cache_dir: Path, batch_size: int, device,
                         amp_dtype) -> torch.Tensor:
    key = cache_key(teacher, data, device, amp_dtype)
    path = cache_dir / _cache_name(teacher, key)
    state = None
    if path.is_file():
        state, damage = read_teacher_cache(path)
        if state is None:
            print(f"warning: teacher cache {path} is damaged ({damage}); rebuilding it", file=sys.stderr)
        elif state.get("key") != key or tuple(state["logits"].shape) != (key["n_images"], NUM_CLASSES):
            print(f"teacher cache {path} does not match this teacher/split/image files/precision; rebuilding it")
            state = None
        elif state["filled"] == key["n_images"]:
            print(f"using teacher cache {path}")
            return state["logits"]
        else:
            print(f"resuming teacher cache {path} at image {state['filled']:,} of {key['n_images']:,}")
    for stale in cache_dir.glob(f"teacher{teacher.index or ''}-{teacher.checkpoint['model_name']}-*.pt"):
        if stale != path:
            print(f"removing stale teacher cache {stale}")
            stale.unlink()
    remove_stale_temporaries(cache_dir, path.name)  # a kill during a save leaves one behind
    if state is None:
        state = {"key": key, "filled": 0, "logits": torch.zeros(key["n_images"], NUM_CLASSES, dtype=torch.float16)}
    loader, augment = data.batches("train", "eval", teacher.img_size, teacher.mean, teacher.std, batch_size)
    # Only the images not yet in the file: the positions from `filled` on, in order. The loaders get their own
    # generator: building the cache must not draw from the global random state, so that a run which finds the cache
    # built trains exactly like the run which built it.
    remaining = range(state["filled"], len(loader.dataset))
    if data.cache is not None:
        loader = torch.utils.data.DataLoader(
            loader.dataset, sampler=torch.utils.data.BatchSampler(remaining, batch_size, False), batch_size=None,
            num_workers=data.workers, pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(0))
    else:
        loader = torch.utils.data.DataLoader(torch.utils.data.Subset(loader.dataset, remaining), batch_size=batch_size,
                                             shuffle=False, num_workers=data.workers, pin_memory=device.type == "cuda",
                                             generator=torch.Generator().manual_seed(0))
    teacher.model.to(device)
    with torch.no_grad():
        bar = progress(loader, f"teacher cache {path.name}", unit="batch", initial=state["filled"] // batch_size,
                       total=state["filled"] // batch_size + len(loader))
        try:
            for step, batch in enumerate(bar, start=1):
                images = batch["image"].to(device, non_blocking=True)
                if augment is not None:
                    images = augment(images)  # the eval view of the cached uint8 batch, made on the device
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    logits = teacher.model(images).float()
                count = logits.shape[0]
                state["logits"][state["filled"]:state["filled"] + count] = logits.cpu().half()
                state["filled"] += count
                if step % SAVE_EVERY_BATCHES == 0:
                    save_atomic(state, path)
        except KeyboardInterrupt as err:  # SIGINT or SIGTERM: keep what is done, say so
            stop = err if isinstance(err, Interrupted) else Interrupted(signal.SIGINT)
            if state["filled"]:
                save_atomic(state, path)
            raise Interrupted(stop.signal_number, f"{stop.signal_name} while building the teacher cache {path}: "
                              f"{state['filled']:,} of {key['n_images']:,} images are saved in it, and nothing of "
                              "the student was trained; rerun the same command to finish the cache and train") \
                from None
    save_atomic(state, path)
    print(f"teacher cache written: {path}")
    return state["logits"]


class DistillationCriterion:
    """``criterion(logits, batch)``: α·BCE(labels) + (1−α)·T²·Bernoulli-KL(teachers ‖ student), per class."""

    def __init__(self, kd_loss: MultiLabelKDLoss, teacher_logits):
        self.kd_loss = kd_loss
        self.teacher_logits = teacher_logits

    @property
    def last_terms(self) -> dict:
        return getattr(self.kd_loss, "last_terms", {})

    @property
    def last_term_tensors(self) -> dict:
        return getattr(self.kd_loss, "last_term_tensors", {})

    def __call__(self, logits: torch.Tensor, batch: dict) -> torch.Tensor:
        return self.kd_loss(logits.float(), batch["target"], self.teacher_logits(batch))
