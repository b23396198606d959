"""Splits: the named official and arnoweng splits, labelled list folders, the patient-wise validation carve and the
leakage check between parts.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import GroupShuffleSplit

from common.data.labels import (
    LABEL_VERSIONS,
    DataEntry,
    patient_id_from_name,
    read_data_entry,
    read_labelled_list,
    read_name_list,
    resource_path,
)
from common.errors import UserError


# --------------------------------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------------------------------
@dataclass
class SplitPart:
    """One part (train, val or test) of a split."""

    names: list[str]
    labels: np.ndarray          # [N, 14] uint8
    patient_ids: np.ndarray     # [N] int64

    def __len__(self) -> int:
        return len(self.names)


@dataclass
class Split:
    """A patient-wise train/val/test split and where its labels came from."""

    name: str                   # "official", "arnoweng" or the directory of list files
    labels: str                 # human-readable label source, e.g. "Data_Entry_2017_v2020.csv (v2020)"
    parts: dict[str, SplitPart]
    # One normalised name of where the labels came from: "v2020", "2017", "inline" (labelled lists) or the path of
    # a Data_Entry CSV. `--label-file` left out and `--label-file v2020` give the same labels and the same name.
    label_source: str = ""

    def describe(self) -> str:
        sizes = ", ".join(f"{k} {len(v):,} images / {len(set(v.patient_ids.tolist())):,} patients"
                          for k, v in self.parts.items())
        return f"split {self.name} ({sizes}); labels: {self.labels}"


def _part(names: list[str], labels: np.ndarray) -> SplitPart:
    return SplitPart(list(names), labels, np.asarray([patient_id_from_name(n) for n in names], dtype=np.int64))


def carve_validation(names: list[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Split ``names`` into (train, val) by patient with a seeded ``GroupShuffleSplit``."""
    groups = [patient_id_from_name(n) for n in names]
    splitter = GroupShuffleSplit(n_splits=1, test_size=val_fraction, random_state=seed)
    train_rows, val_rows = next(splitter.split(names, groups=groups))
    return [names[i] for i in sorted(train_rows)], [names[i] for i in sorted(val_rows)]


def _label_description(entry: DataEntry) -> str:
    return f"{Path(entry.source).name} ({entry.version})"


def build_split(split: str, label_file: str | None = None, val_fraction: float = 0.1, seed: int = 0) -> Split:
    """Build a split and check it for patient leakage.

    ``split`` is one of:

    - ``official``: NIH train_val_list / test_list; validation carved from train_val by patient
      (``val_fraction``, ``seed``); labels from ``label_file`` (``v2020`` by default, ``2017`` or a CSV path).
    - ``arnoweng``: arnoweng/CheXNet's labelled train/val/test lists (inline 2017 labels, unless ``label_file``).
    - a directory holding either ``train_list.txt``, ``val_list.txt`` and ``test_list.txt`` in the original's
      labelled format, or official-style ``train_val_list.txt`` and ``test_list.txt`` (labels from ``label_file``).
    """
    if not 0.0 < val_fraction < 1.0:
        raise UserError(f"--val-fraction must be between 0 and 1, got {val_fraction}")
    directory = Path(split)
    if split == "official":
        lists = resource_path("official_split/train_val_list.txt.gz"), resource_path("official_split/test_list.txt.gz")
        return _official_style(split, *lists, label_file or "v2020", val_fraction, seed)
    if split == "arnoweng":
        lists = [resource_path(f"arnoweng_labels/{p}_list.txt.gz") for p in ("train", "val", "test")]
        return _labelled_lists(split, lists, label_file, "inline in the arnoweng lists (2017 labels)")
    if split not in ("", ".") and not directory.exists() and (os.sep in split or split.startswith(".")):
        raise UserError(f"--split {split}: no such folder (a split is official, arnoweng, or a folder of lists)")
    if split in ("", ".") or not directory.is_dir():
        raise UserError(f"unknown split {split!r}: use official, arnoweng, or a directory with train_list.txt, "
                        "val_list.txt and test_list.txt (or train_val_list.txt and test_list.txt)")
    labelled = [directory / f"{p}_list.txt" for p in ("train", "val", "test")]
    if all(p.is_file() for p in labelled):
        return _labelled_lists(str(directory), labelled, label_file, "inline in the list files")
    official = directory / "train_val_list.txt", directory / "test_list.txt"
    if all(p.is_file() for p in official):
        return _official_style(str(directory), *official, label_file or "v2020", val_fraction, seed)
    raise UserError(f"split directory {directory} has neither train_list.txt/val_list.txt/test_list.txt "
                    "nor train_val_list.txt/test_list.txt")


def _official_style(name, train_val_path, test_path, label_file, val_fraction, seed) -> Split:
    entry = read_data_entry(label_file)
    train_val = read_name_list(Path(train_val_path))
    test = read_name_list(Path(test_path))
    train, val = carve_validation(train_val, val_fraction, seed)
    parts = {
        "train": _part(train, entry.lookup(train, f"{Path(train_val_path).name}")),
        "val": _part(val, entry.lookup(val, f"{Path(train_val_path).name}")),
        "test": _part(test, entry.lookup(test, f"{Path(test_path).name}")),
    }
    result = Split(name, _label_description(entry), parts, label_source=_label_source(entry))
    check_no_leakage(result)
    return result


def _label_source(entry: DataEntry) -> str:
    return entry.version if entry.version in LABEL_VERSIONS else str(Path(entry.source).resolve())


def _labelled_lists(name, paths, label_file, inline_description) -> Split:
    parts = {}
    for part_name, path in zip(("train", "val", "test"), paths):
        names, labels = read_labelled_list(Path(path))
        parts[part_name] = _part(names, labels)
    description, source = inline_description, "inline"
    if label_file is not None:
        entry = read_data_entry(label_file)
        for part_name, path in zip(("train", "val", "test"), paths):
            parts[part_name].labels = entry.lookup(parts[part_name].names, Path(path).name)
        description, source = _label_description(entry), _label_source(entry)
    result = Split(name, description, parts, label_source=source)
    check_no_leakage(result)
    return result


def check_no_leakage(split: Split) -> None:
    """Stop with the count if any patient (or image) is in two parts: train and val, train and test, or val and
    test (a validation part equal to the test part would choose the checkpoint and thresholds on the test set)."""
    for first, second in (("train", "val"), ("train", "test"), ("val", "test")):
        earlier, part = split.parts[first], split.parts[second]
        shared = set(earlier.patient_ids.tolist()).intersection(part.patient_ids.tolist())
        if shared:
            images = sum(1 for p in part.patient_ids.tolist() if p in shared)
            raise UserError(f"patient leakage in split {split.name}: {len(shared)} patient(s) "
                            f"({images} {second} image(s)) are in both {first} and {second}")
        overlap = set(earlier.names).intersection(part.names)
        if overlap:
            raise UserError(f"split {split.name}: {len(overlap)} image(s) are in both {first} and {second}")
