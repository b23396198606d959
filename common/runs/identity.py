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
in training or selection (:func:`check_unseen_patients`), against the patients the checkpoint recorded
(:func:`patient_record`: its own and those of every checkpoint it started from or learned from).
"""
from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

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


#: The checkpoint entry that records the patients a model has seen (see :func:`patient_record`).
PATIENTS_KEY = "patients_seen"

#: What a record calls its roles, for messages.
_ROLE_WORDS = {"train": "in training", "val": "in validation"}


@dataclass(frozen=True)
class SeenPatients:
    """The patients a checkpoint has seen: ``train`` (its weights were fitted on them) and ``val`` (it was chosen on
    them), its own and those of every checkpoint it started from or learned from; where they came from."""

    train: frozenset
    val: frozenset
    sources: tuple = ()
    recorded: bool = True  # False: rebuilt from today's split files (a checkpoint made before the record existed)


def patient_record(split: Split, description: str, inherited=()) -> dict:
    """The ``patients_seen`` entry of a checkpoint: sorted int32 tensors of the patient numbers of ``split``'s train
    and val parts, united with every ``inherited`` :class:`SeenPatients` (the checkpoint a run started from, its
    teachers), and a list saying where they came from. Tensors and strings only, so it loads with
    ``weights_only=True``; 30,805 NIH patients are 120 kB.
    """
    import torch
    train = set(split.parts["train"].patient_ids.tolist())
    val = set(split.parts["val"].patient_ids.tolist())
    sources = [description]
    for seen in inherited:
        train |= seen.train
        val |= seen.val
        sources += list(seen.sources)
    return {"train": torch.tensor(sorted(train), dtype=torch.int32),
            "val": torch.tensor(sorted(val), dtype=torch.int32), "sources": list(dict.fromkeys(sources))}


@lru_cache(maxsize=8)
def _split_patients(split: str, label_file, val_fraction: float, seed: int) -> dict[str, frozenset]:
    # One rebuild per distinct recorded split and process: a comparison checks eleven checkpoints of one split.
    built = build_split(split, label_file, val_fraction, seed)
    return {part: frozenset(values.patient_ids.tolist()) for part, values in built.parts.items()}


def seen_patients(checkpoint: dict, path, via: str | None = None) -> SeenPatients:
    """The patients a checkpoint was trained on (``train``) and chosen on (``val``), as it recorded them.

    A checkpoint written before the record existed has its split rebuilt from today's list files, with a printed
    warning: such a rebuild cannot see list files edited after training. ``via`` (``"teacher"``, ``"--pretrained"``)
    prefixes the sources, for a record that passes them on.
    """
    prefix = f"{via} {Path(path).name}: " if via else ""
    record = checkpoint.get(PATIENTS_KEY)
    if record is not None:
        return SeenPatients(frozenset(record["train"].tolist()), frozenset(record["val"].tolist()),
                            tuple(prefix + source for source in record.get("sources", ())))
    config = checkpoint.get("config", {})
    if "split" not in config:
        raise UserError(f"{path} records neither the patients it was trained on nor its split, so it cannot be "
                        "checked for leakage")
    print(f"warning: {path} records no patients (made by an older version); its training and validation patients "
          f"are rebuilt from today's list files of split {config['split']}, which cannot tell if they were edited "
          "since it was trained")
    try:
        parts = _split_patients(config["split"], config.get("label_file"), config.get("val_fraction", 0.1),
                                config.get("seed", 0))
    except UserError as err:
        raise UserError(f"cannot rebuild the split {path} was trained on: {err}") from None
    return SeenPatients(parts["train"], parts["val"], (f"{prefix}split {config['split']} rebuilt from its list files",),
                        recorded=False)


def check_unseen_patients(path, checkpoint: dict, evaluated: dict[str, tuple], role: str,
                          seen: SeenPatients | None = None) -> dict:
    """Refuse when a patient the checkpoint was trained or selected on is in a part being evaluated or selected on.

    ``evaluated`` maps a description (``"test part of split official"``) to ``(patient_ids, seen_parts)``: the
    part's per-image patient numbers and which of the checkpoint's roles must not share patients with it. A test
    part must share none with the checkpoint's training or validation patients (``("train", "val")``); a part a run
    selects on (its validation part) must share none with the training patients (``("train",)``), while sharing the
    validation patients is how teacher and student are meant to be chosen on one split. The patients are those the
    checkpoint recorded (:func:`seen_patients`; ``seen`` when already read), never today's list files. A refusal
    counts the shared patients and their images in each role. Returns what was checked, for the record.
    """
    seen = seen or seen_patients(checkpoint, path)
    for description, (patient_ids, seen_parts) in evaluated.items():
        per_image = np.asarray(patient_ids, dtype=np.int64)
        patients = set(per_image.tolist())
        shared = {part: patients & getattr(seen, part) for part in seen_parts}
        overlap = set().union(*shared.values())
        if not overlap:
            continue
        counts = ", ".join(f"{len(shared[part]):,} patients ({_images_of(per_image, shared[part]):,} images) "
                           f"{_ROLE_WORDS[part]}" for part in seen_parts)
        verb = "trained or selected" if len(seen_parts) > 1 else "trained"
        where = "as recorded in it" if seen.recorded else "rebuilt from today's list files, as it records none"
        raise UserError(f"{role} {path} was {verb} on {len(overlap):,} of the {len(patients):,} patients of the "
                        f"{description} ({_images_of(per_image, overlap):,} of its {per_image.size:,} images): "
                        f"{counts}; {where}: {'; '.join(seen.sources)}; use a split whose patients it never saw")
    return {"checked_against": "patients recorded in the checkpoint" if seen.recorded
            else "patients rebuilt from today's list files (the checkpoint records none)",
            "recorded_patients": {"train": len(seen.train), "val": len(seen.val)}, "sources": list(seen.sources),
            "patients_checked": {k: len(set(map(int, v[0]))) for k, v in evaluated.items()}, "shared": 0}


def _images_of(per_image: np.ndarray, patients: set) -> int:
    return int(np.isin(per_image, list(patients)).sum()) if patients else 0
