"""The run identity: which patients, pixels and recipe made a result, and the checks every reuse of it makes.

Every checkpoint, teacher cache, test result and comparison row records an identity (:func:`run_identity`):

- the split: its name, the normalised label source (``v2020``, ``2017``, ``inline`` or a CSV path), the validation
  fraction and seed that carved validation;
- the pixels: the data folder, the image count and a fingerprint of every used file (name, size, modification
  time), so that another copy of the images (a resized one, a re-download) is told apart;
- the recipe: every flag that shapes the weights, with the hashes of initial weights and teachers;
- the package version and git commit.

A reuse (resume, test, teacher, student start, comparison) compares what it needs and refuses a mismatch with the
differences named, and checks by patients, never by split names, that no evaluated or selected-on patient was seen
in training (:func:`check_unseen_patients`).
"""
from __future__ import annotations

import os
import subprocess
from functools import lru_cache
from pathlib import Path

import common
from common.data.fingerprint import file_sha256
from common.data.splits import Split, build_split
from common.errors import UserError


def git_commit(directory: str | os.PathLike | None = None) -> str:
    """The git commit of the code, or ``"unknown"`` when not run from a git checkout."""
    where = Path(directory) if directory else Path(__file__).resolve().parent
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return result.stdout.strip() if result.returncode == 0 else "unknown"


def split_identity(split: Split, val_fraction: float, seed: int) -> dict:
    """The patients a run used: split name, normalised label source, validation fraction and seed."""
    return {"split": split.name, "label_source": split.label_source, "val_fraction": val_fraction, "seed": seed}


def weights_identity(source) -> dict | None:
    """Initial weights: None, ``imagenet`` (the published file) or a local file with its hash."""
    if source is None:
        return None
    if str(source) == "imagenet":
        return {"source": "imagenet"}
    if Path(source).is_dir():  # a model folder: its weights file is what the run starts from
        from common.models.model_folder import WEIGHTS_NAME
        return {"source": str(Path(source).resolve()), "sha256": file_sha256(Path(source) / WEIGHTS_NAME),
                "format": "model folder"}
    return {"source": str(Path(source).resolve()), "sha256": file_sha256(source)}


def run_identity(split: dict, data: dict, recipe: dict) -> dict:
    """The whole identity of a result: split, pixels, recipe, package version and git commit."""
    return {"split": split, "data": data, "recipe": recipe, "package_version": common.__version__,
            "git_commit": git_commit()}


def differences(recorded: dict, current: dict, keys, describe=lambda key: f"--{key.replace('_', '-')}") -> list[str]:
    """``["--epochs 10 (recorded) vs 20 (now)", ...]`` for the ``keys`` on which two dicts differ."""
    return [f"{describe(key)} {recorded.get(key)} (recorded) vs {current.get(key)} (now)"
            for key in keys if recorded.get(key) != current.get(key)]


@lru_cache(maxsize=8)
def _split_patients(split: str, label_file, val_fraction: float, seed: int) -> dict[str, frozenset]:
    # One rebuild per distinct recorded split and process: a comparison checks eleven checkpoints of one split.
    built = build_split(split, label_file, val_fraction, seed)
    return {part: frozenset(values.patient_ids.tolist()) for part, values in built.parts.items()}


def seen_patients(checkpoint: dict, path) -> dict[str, frozenset]:
    """The patients a checkpoint was trained on (``train``) and chosen on (``val``), rebuilt from its split."""
    config = checkpoint.get("config", {})
    if "split" not in config:
        raise UserError(f"{path} records no split, so the patients it was trained on are unknown; "
                        "it cannot be checked for leakage")
    try:
        parts = _split_patients(config["split"], config.get("label_file"), config.get("val_fraction", 0.1),
                                config.get("seed", 0))
    except UserError as err:
        raise UserError(f"cannot rebuild the split {path} was trained on: {err}") from None
    return {"train": parts["train"], "val": parts["val"]}


def check_unseen_patients(path, checkpoint: dict, evaluated: dict[str, tuple], role: str) -> dict:
    """Refuse when a patient the checkpoint was trained or selected on is in a part being evaluated or selected on.

    ``evaluated`` maps a description (``"test part of split official"``) to ``(patient_ids, seen_parts)``:
    which of the checkpoint's parts must not share patients with it. A test part must share none with the
    checkpoint's training or validation part (``("train", "val")``); a part the student selects on (its validation
    part) must share none with the teacher's training part (``("train",)``), while sharing the validation part of
    one split is how teacher and student are meant to be chosen. Returns what was checked, for the record.
    """
    seen = seen_patients(checkpoint, path)
    for description, (patient_ids, seen_parts) in evaluated.items():
        patients = set(int(p) for p in patient_ids)
        for seen_part in seen_parts:
            shared = patients & seen[seen_part]
            if shared:
                raise UserError(f"{role} {path} was {'trained' if seen_part == 'train' else 'selected'} on "
                                f"{len(shared):,} of the {len(patients):,} patients of the {description} "
                                f"(its split: {checkpoint['config']['split']}); use the split it was trained on")
    config = checkpoint["config"]
    return {"checkpoint_split": config["split"], "checkpoint_label_file": config.get("label_file"),
            "patients_checked": {k: len(set(map(int, v[0]))) for k, v in evaluated.items()}, "shared": 0}
