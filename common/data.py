"""ChestX-ray14 (CXR8) data: metadata files, splits, the image index, image decoding, transforms and datasets.

Everything the package needs besides the images ships in ``common/resources`` (see its SOURCES.md): the two
Data_Entry files (2017 and v2020), the official NIH split lists and the arnoweng/CheXNet labelled lists.
"""
from __future__ import annotations

import gzip
import io
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from sklearn.model_selection import GroupShuffleSplit
from torchvision import transforms

from .constants import CLASS_NAMES, NUM_CLASSES
from .errors import UserError
from .images import load_png, to_grayscale  # noqa: F401  (torch-free for the ONNX predictor; re-exported)

LABEL_VERSIONS = ("2017", "v2020")
NAMED_SPLITS = ("official", "arnoweng")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NIH_NAME = re.compile(r"^(\d+)_(\d+)\.png$")
# How deep below --data-dir images are searched: images/<name>, images_0XX/images/<name>.
MAX_INDEX_DEPTH = 3


# --------------------------------------------------------------------------------------------------------------------
# Packaged files
# --------------------------------------------------------------------------------------------------------------------
def resource_path(relative: str) -> Path:
    """Path of a file shipped in ``common/resources``."""
    return Path(str(resources.files("common") / "resources" / relative))


def read_text(path: Path) -> str:
    """Read a text file, gunzipping ``*.gz``; a missing or unreadable file is a :class:`UserError`."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror or err}") from None
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise UserError(f"cannot decompress {path}: {err}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"{path} is not a UTF-8 text file ({err.reason} at byte {err.start})") from None


def patient_id_from_name(name: str) -> int:
    """The patient id encoded in an NIH file name (``00000001_000.png`` -> 1); it equals Data_Entry's Patient ID."""
    match = NIH_NAME.match(name)
    if match is None:
        raise UserError(f"image name {name!r} is not in the NIH form <patient>_<follow-up>.png, "
                        "so its patient cannot be known for the patient-wise split check")
    return int(match.group(1))


# --------------------------------------------------------------------------------------------------------------------
# Metadata (Data_Entry) and list files
# --------------------------------------------------------------------------------------------------------------------
def labels_from_findings(findings: str, where: str) -> np.ndarray:
    """Turn a ``|``-joined ``Finding Labels`` value into a 14-vector by exact name match ("No Finding" -> zeros)."""
    vector = np.zeros(NUM_CLASSES, dtype=np.uint8)
    if findings == "No Finding":
        return vector
    for finding in findings.split("|"):
        try:
            vector[CLASS_NAMES.index(finding)] = 1
        except ValueError:
            raise UserError(f"{where}: unknown finding {finding!r} (expected one of {', '.join(CLASS_NAMES)} "
                            "or 'No Finding')") from None
    return vector


@dataclass(frozen=True)
class DataEntry:
    """Labels of every image from a Data_Entry file, indexed by image name."""

    source: str                 # file the labels came from
    version: str                # "2017", "v2020" or "custom"
    names: tuple[str, ...]
    labels: np.ndarray          # [N, 14] uint8
    patient_ids: np.ndarray     # [N] int64
    row_of: dict = field(repr=False)

    def lookup(self, names: list[str], context: str) -> np.ndarray:
        """Labels of ``names``; names missing from the file are one error with the count and the first few."""
        missing = [n for n in names if n not in self.row_of]
        if missing:
            raise UserError(f"{len(missing)} image(s) of {context} are not in {self.source} "
                            f"(first: {', '.join(missing[:3])})")
        return self.labels[[self.row_of[n] for n in names]]


def read_data_entry_table(label_file: str | os.PathLike = "v2020",
                          columns=("Image Index", "Finding Labels", "Patient ID")) -> tuple[Path, str, pd.DataFrame]:
    """A Data_Entry file as a table of strings: ``(path, version, frame)``.

    ``label_file`` is ``"2017"`` or ``"v2020"`` for the packaged copies, or a path to a Data_Entry CSV (``.gz`` ok).
    Values are kept as written (zero-padded ids, 2017's ``058Y`` ages); a missing file, a CSV that does not parse or
    a missing one of ``columns`` is a :class:`UserError` naming the file.
    """
    if str(label_file) in LABEL_VERSIONS:
        version = str(label_file)
        path = resource_path("Data_Entry_2017.csv.gz" if version == "2017" else "Data_Entry_2017_v2020.csv.gz")
    else:
        path = Path(label_file)
        if not path.is_file():
            raise UserError(f"label file {path} does not exist (use --label-file 2017, v2020 or a Data_Entry CSV)")
        version = "custom"
    try:
        # dtype=str keeps zero-padded ids and 2017's "058Y" ages as written; both releases parse the same way.
        frame = pd.read_csv(io.StringIO(read_text(path)), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise UserError(f"cannot parse {path} as CSV: {str(err).splitlines()[0]}") from None
    frame.columns = [c.strip() for c in frame.columns]
    for column in columns:
        if column not in frame.columns:
            raise UserError(f"{path} has no {column!r} column; is it a Data_Entry_2017 file?")
    return path, version, frame


def read_data_entry(label_file: str | os.PathLike = "v2020") -> DataEntry:
    """Read Data_Entry_2017.csv (CRLF, trailing comma, ``058Y`` ages, padded ids) or the v2020 release (LF, integers).

    ``label_file`` is ``"2017"`` or ``"v2020"`` for the packaged copies, or a path to a Data_Entry CSV (``.gz`` ok).
    """
    path, version, frame = read_data_entry_table(label_file)
    names = frame["Image Index"].str.strip().tolist()
    labels = np.stack([labels_from_findings(f.strip(), f"{path}, line {i + 2}")
                       for i, f in enumerate(frame["Finding Labels"])]) if names else np.zeros((0, NUM_CLASSES))
    try:
        patients = frame["Patient ID"].str.strip().astype(np.int64).to_numpy()
    except ValueError:
        raise UserError(f"{path}: a 'Patient ID' value is not an integer") from None
    row_of = {name: row for row, name in enumerate(names)}
    if len(row_of) != len(names):
        raise UserError(f"{path} lists an image more than once")
    return DataEntry(str(path), version, tuple(names), labels.astype(np.uint8), patients, row_of)


def read_name_list(path: Path) -> list[str]:
    """Read an official-format list: one image name per line, no labels (a trailing newline is optional)."""
    names = []
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 1 or not fields[0].lower().endswith(".png"):
            raise UserError(f"{path}, line {number}: expected one image name (*.png), got {line.strip()[:60]!r}")
        names.append(fields[0])
    if not names:
        raise UserError(f"{path} lists no images")
    return names


def read_labelled_list(path: Path) -> tuple[list[str], np.ndarray]:
    """Read the original's list format: ``name`` then 14 space-separated 0/1 labels in CheXNet class order."""
    names, rows = [], []
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != NUM_CLASSES + 1:
            raise UserError(f"{path}, line {number}: expected an image name and {NUM_CLASSES} labels, "
                            f"found {len(fields) - 1} label(s)")
        if any(value not in ("0", "1") for value in fields[1:]):
            bad = next(value for value in fields[1:] if value not in ("0", "1"))
            raise UserError(f"{path}, line {number}: label value {bad!r} is not 0 or 1")
        names.append(fields[0])
        rows.append([int(value) for value in fields[1:]])
    if not names:
        raise UserError(f"{path} lists no images")
    return names, np.asarray(rows, dtype=np.uint8)


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


# --------------------------------------------------------------------------------------------------------------------
# Images: index, decoding, sources
# --------------------------------------------------------------------------------------------------------------------
def index_images(data_dir: str | os.PathLike) -> dict[str, Path]:
    """Map every ``*.png`` name under ``data_dir`` (up to 3 folders deep) to its path.

    This finds the flat NIH ``images/`` folder, Kaggle's ``images_0XX/images/`` and ``images_0XX/`` folders and
    resized copies alike. A name found twice (for example a full-size and a resized copy side by side) is an error,
    because either choice could be the wrong one.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise UserError(f"data directory {root} does not exist (pass --data-dir, the folder holding the PNGs)")
    found: dict[str, Path] = {}
    duplicates: list[str] = []
    pending = [(root, 0)]
    while pending:
        folder, depth = pending.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError as err:
            raise UserError(f"cannot list {folder}: {err.strerror or err}") from None
        for entry in entries:
            if entry.is_dir() and depth < MAX_INDEX_DEPTH and not entry.name.startswith("."):
                pending.append((Path(entry.path), depth + 1))
            elif entry.name.lower().endswith(".png") and entry.is_file():
                if entry.name in found:
                    duplicates.append(f"{found[entry.name]} and {entry.path}")
                found[entry.name] = Path(entry.path)
    if duplicates:
        raise UserError(f"{len(duplicates)} image name(s) occur twice under {root} (first: {duplicates[0]}); "
                        "point --data-dir at one copy")
    return found


def _looks_like_png(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(8) == PNG_SIGNATURE
    except OSError:
        return False


def require_images(index: dict[str, Path], names: list[str], data_dir, workers: int = 8) -> None:
    """Check that every name is indexed and starts like a PNG; one error gives the count and the first few names."""
    missing = [n for n in names if n not in index]
    if missing:
        raise UserError(f"{len(missing)} of {len(names)} listed image(s) are not under {data_dir} "
                        f"(first: {', '.join(missing[:3])})")
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        ok = list(pool.map(_looks_like_png, (index[n] for n in names), chunksize=256))
    unreadable = [n for n, good in zip(names, ok) if not good]
    if unreadable:
        raise UserError(f"{len(unreadable)} image(s) under {data_dir} are unreadable or not PNG files "
                        f"(first: {', '.join(str(index[n]) for n in unreadable[:3])})")


class PngImageSource:
    """Reads images from the PNG files of an index. Replaceable by any object with ``load(name) -> PIL 'L' image``."""

    def __init__(self, index: dict[str, Path]):
        self.index = index

    def load(self, name: str) -> Image.Image:
        return load_png(self.index[name])


# --------------------------------------------------------------------------------------------------------------------
# Transforms and datasets
# --------------------------------------------------------------------------------------------------------------------
class GrayToTensor:
    """PIL ``L`` image -> float tensor [3, H, W] in [0, 1]: the grey channel replicated, as ImageNet models expect."""

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return transforms.functional.to_tensor(image).expand(3, -1, -1).contiguous()


class StackCrops:
    """The 10 PIL crops of ``TenCrop`` -> one normalised tensor [10, 3, H, W]."""

    def __init__(self, normalize):
        self.normalize = normalize
        self.to_tensor = GrayToTensor()

    def __call__(self, crops) -> torch.Tensor:
        return torch.stack([self.normalize(self.to_tensor(crop)) for crop in crops])


def eval_resize(img_size: int) -> int:
    """Resize-before-crop size: 256 for 224, as CheXNet's protocol, scaled for other sizes."""
    return int(round(img_size * 256 / 224))


def build_transform(img_size: int, mean, std, train: bool, tencrop: bool = False,
                    crop_scale: tuple[float, float] = (0.08, 1.0)):
    """Train: RandomResizedCrop + horizontal flip. Eval: resize 256 + centre crop 224 (or TenCrop, stacked)."""
    normalize = transforms.Normalize(mean, std)
    if train:
        return transforms.Compose([
            transforms.RandomResizedCrop(img_size, scale=crop_scale),
            transforms.RandomHorizontalFlip(),
            GrayToTensor(), normalize,
        ])
    if tencrop:
        return transforms.Compose([
            transforms.Resize(eval_resize(img_size)), transforms.TenCrop(img_size), StackCrops(normalize),
        ])
    return transforms.Compose([
        transforms.Resize(eval_resize(img_size)), transforms.CenterCrop(img_size), GrayToTensor(), normalize,
    ])


class CXR8Dataset(torch.utils.data.Dataset):
    """Images of one split part with their 14 labels; items are ``{"image", "target", "index"}``."""

    def __init__(self, part: SplitPart, source, transform):
        self.part = part
        self.source = source
        self.transform = transform

    def __len__(self) -> int:
        return len(self.part)

    def __getitem__(self, index: int) -> dict:
        image = self.source.load(self.part.names[index])
        return {
            "image": self.transform(image),
            "target": torch.from_numpy(self.part.labels[index].astype(np.float32)),
            "index": index,
        }
