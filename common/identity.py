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

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path

import common

from .checkpoint import git_commit
from .data import Split, build_split
from .errors import UserError


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_records(paths, threads: int = 16) -> list[tuple[str, int, int]]:
    """``(name, size in bytes, mtime in ns)`` of each path, sorted by name; a missing file is a UserError."""
    paths = [Path(p) for p in paths]

    def stat(path: Path):
        try:
            info = path.stat()
        except OSError as err:
            raise UserError(f"cannot read {path}: {err.strerror or err}") from None
        return path.name, int(info.st_size), int(info.st_mtime_ns)

    # Threads: stat calls wait on the file system (slow on network drives), not on the CPU.
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        records = list(pool.map(stat, paths, chunksize=256))
    return sorted(records)


def hash_records(records) -> str:
    """sha256 of sorted ``(name, size, mtime_ns)`` records, as the files table writes them."""
    digest = hashlib.sha256()
    for name, size, mtime in sorted(records):
        digest.update(f"{name}\t{size}\t{mtime}\n".encode())
    return digest.hexdigest()


def data_identity(data_dir: Path, index: dict, names, cache=None) -> dict:
    """The pixels a run read: folder, image count and :func:`hash_records` of the ``names`` it used (one ``stat``
    per file, about a second for 112,120 files; it does not read the pixels).

    With ``cache`` (a :class:`common.image_cache.ImageCache`, checked against ``data_dir`` when opened) the pixels
    come from the cache: the fingerprint is taken from the cache's files table (the same value the files give, as
    the cache was checked to be current) and ``image_cache`` records the cache's size and fingerprint, since its
    resized pixels differ from the PNGs'."""
    names = sorted(set(names))
    if cache is None:
        return {"data_dir": str(data_dir), "images": len(names),
                "files_sha256": hash_records(file_records(index[name] for name in names))}
    recorded = {record[0]: record for record in cache.records}
    return {"data_dir": str(data_dir), "images": len(names),
            "files_sha256": hash_records(recorded[name] for name in names),
            "image_cache": {"directory": str(cache.directory), "size": cache.size, "fingerprint": cache.fingerprint}}


def split_identity(split: Split, val_fraction: float, seed: int) -> dict:
    """The patients a run used: split name, normalised label source, validation fraction and seed."""
    return {"split": split.name, "label_source": split.label_source, "val_fraction": val_fraction, "seed": seed}


def weights_identity(source) -> dict | None:
    """Initial weights: None, ``imagenet`` (the published file) or a local file with its hash."""
    if source is None:
        return None
    if str(source) == "imagenet":
        return {"source": "imagenet"}
    return {"source": str(Path(source).resolve()), "sha256": file_sha256(source)}


def precision_name(amp_dtype) -> str:
    """``fp32``, ``bf16`` or ``fp16``: the precision the forward passes ran in."""
    return {None: "fp32"}.get(amp_dtype) or {"torch.bfloat16": "bf16", "torch.float16": "fp16"}[str(amp_dtype)]


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
