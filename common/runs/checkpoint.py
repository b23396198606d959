"""Checkpoint files: atomic torch.save, loading a checkpoint and its model, and the paths a training run writes."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from common.atomic import write_atomic
from common.errors import UserError
from common.models import create_model
from common.models.serialization import read_checkpoint_file


@dataclass(frozen=True)
class CheckpointPaths:
    """The files of one training run: best and last checkpoints, the log CSV and the curves PNG."""

    best: Path
    last: Path
    log: Path
    curves: Path

    @classmethod
    def for_prefix(cls, output_dir: Path, prefix: str) -> "CheckpointPaths":
        """``<prefix>.pth``, ``<prefix>-last.pth``, ``<prefix>-log.csv`` and ``<prefix>-curves.png`` in ``output_dir``."""
        output_dir = Path(output_dir)
        return cls(best=output_dir / f"{prefix}.pth", last=output_dir / f"{prefix}-last.pth",
                   log=output_dir / f"{prefix}-log.csv", curves=output_dir / f"{prefix}-curves.png")

    @property
    def prefix(self) -> str:
        return self.best.stem


def save_atomic(obj, path: str | os.PathLike) -> None:
    """``torch.save`` ``obj`` to ``path`` atomically (see :func:`common.atomic.write_atomic`); raises
    :class:`UserError` on a file-system failure, leaving the previous file unchanged."""
    write_atomic(path, lambda stream: torch.save(obj, stream), "wb")


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load one of this project's checkpoints (a dict with ``model`` and metadata) on the CPU, or a model folder
    written by ``predict.py --export-hub`` (:func:`common.models.model_folder.read_model_folder`); a file that asks
    to unpickle anything besides tensors and plain values is refused without running it
    (:func:`common.models.serialization.read_checkpoint_file`)."""
    path = Path(path)
    if path.is_dir():
        from common.models.model_folder import read_model_folder
        return read_model_folder(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    _require_torch_archive(path)
    # mmap: callers that only look at the metadata (the comparison's split check) do not read the weights. Tensors
    # and plain values only, with no opt-out: a DTforCXR8 checkpoint never holds anything else.
    checkpoint = read_checkpoint_file(path, mmap=True)
    if not isinstance(checkpoint, dict) or "model" not in checkpoint or "model_name" not in checkpoint:
        raise UserError(f"{path} is not a DTforCXR8 checkpoint (no 'model'/'model_name' entries); a published "
                        "weight file is a starting point for train-model.py --pretrained")
    return checkpoint


# First bytes of the files most often passed by mistake; a torch checkpoint is a zip archive ("PK\x03\x04").
_KNOWN_FORMATS = ((b"\x89PNG\r\n\x1a\n", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"),
                  (b"\x08", "possibly an ONNX model"), (b"{", "a JSON text file"))


def _require_torch_archive(path: Path) -> None:
    """Refuse, naming what it looks like, a file that is not a torch zip archive (before torch reads it)."""
    try:
        with open(path, "rb") as stream:
            head = stream.read(132)
    except OSError as err:
        raise UserError(f"cannot read checkpoint {path}: {err.strerror or err}") from None
    if head.startswith(b"PK\x03\x04"):
        return
    if head.startswith(b"\x80"):
        raise UserError(f"{path} is a checkpoint in torch's legacy format (before torch 1.6); load it with torch and "
                        "save it again with torch.save to use it here")
    looks = next((name for magic, name in _KNOWN_FORMATS if head.startswith(magic)), None)
    if looks is None and head[128:132] == b"DICM":
        looks = "a DICOM image"
    kind = f"; it looks like {looks}" if looks else ""
    raise UserError(f"{path} is not a checkpoint (not a PyTorch checkpoint file, which is a zip archive){kind}")


def load_model_from_checkpoint(path: str | os.PathLike, expected_model: str | None = None):
    """Rebuild a checkpoint's model and load its weights strictly; returns ``(checkpoint, model)``.

    A checkpoint of another architecture than ``expected_model`` (when given), or weights that do not fit the
    recorded class count, is a :class:`UserError` naming the file.
    """
    checkpoint = load_checkpoint(path)
    if expected_model is not None and checkpoint["model_name"] != expected_model:
        raise UserError(f"{path} holds a {checkpoint['model_name']} model, not {expected_model}")
    model = create_model(checkpoint["model_name"], num_classes=checkpoint["num_classes"],
                         img_size=checkpoint["img_size"])
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as err:
        details = " ".join(str(err).split())
        raise UserError(f"{path} does not fit a {checkpoint['num_classes']}-class "
                        f"{checkpoint['model_name']}: {details[:300]}") from None
    return checkpoint, model
