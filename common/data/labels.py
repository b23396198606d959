"""ChestX-ray14 (CXR8) metadata: the Data_Entry label files, image names and patients, and the list-file readers.

Everything the package needs besides the images ships in ``common/resources`` (see its SOURCES.md): the two
Data_Entry files (2017 and v2020), the official NIH split lists and the arnoweng/CheXNet labelled lists.
"""
from __future__ import annotations

import gzip
import io
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from common.constants import CLASS_NAMES, NUM_CLASSES
from common.errors import UserError

LABEL_VERSIONS = ("2017", "v2020")
NAMED_SPLITS = ("official", "arnoweng")
NIH_NAME = re.compile(r"^(\d+)_(\d+)\.png$")


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


# Units of the 2017 Data_Entry's ages ("058Y", "020M", "001D"): divisors to years. The v2020 release writes years.
AGE_UNITS = {"Y": 1.0, "M": 12.0, "D": 365.25}
_AGE = re.compile(r"^(\d+(?:\.\d+)?)\s*([YMD]?)$")


def ages_in_years(values, where: str) -> np.ndarray:
    """Data_Entry ``Patient Age`` strings as float years: ``058Y`` -> 58, ``020M`` -> 1.67, ``001D`` -> 0.003, ``57``
    -> 57. A value in no such form is a :class:`UserError` naming ``where`` and the line (header = line 1)."""
    years = np.empty(len(values), dtype=np.float64)
    for row, value in enumerate(values):
        match = _AGE.match(str(value).strip().upper())
        if match is None:
            raise UserError(f"{where}, line {row + 2}: Patient Age {value!r} is not a number of years, months (M) "
                            "or days (D)")
        years[row] = float(match.group(1)) / AGE_UNITS[match.group(2) or "Y"]
    return years


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
    row_of = {}
    for row, name in enumerate(names):
        if name in row_of:  # lines counted from the header, line 1
            raise UserError(f"{path}, line {row + 2}: image {name} is listed again (first on line "
                            f"{row_of[name] + 2}); each image may appear once")
        row_of[name] = row
    return DataEntry(str(path), version, tuple(names), labels.astype(np.uint8), patients, row_of)


def _refuse_repeat(path: Path, name: str, number: int, first_lines: dict) -> None:
    """An image listed twice is refused, labels alike or not: kept, it would weigh twice in training or scoring."""
    if name in first_lines:
        raise UserError(f"{path}, line {number}: image {name} is listed again (first on line {first_lines[name]}); "
                        "each image may appear once")
    first_lines[name] = number


def read_name_list(path: Path) -> list[str]:
    """Read an official-format list: one image name per line, no labels (a trailing newline is optional).
    A name listed twice is a :class:`UserError` naming both lines."""
    names, first_lines = [], {}
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 1 or not fields[0].lower().endswith(".png"):
            raise UserError(f"{path}, line {number}: expected one image name (*.png), got {line.strip()[:60]!r}")
        _refuse_repeat(path, fields[0], number, first_lines)
        names.append(fields[0])
    if not names:
        raise UserError(f"{path} lists no images")
    return names


def read_labelled_list(path: Path) -> tuple[list[str], np.ndarray]:
    """Read the original's list format: ``name`` then 14 space-separated 0/1 labels in CheXNet class order.
    A name listed twice (with the same labels or not) is a :class:`UserError` naming both lines."""
    names, rows, first_lines = [], [], {}
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
        _refuse_repeat(path, fields[0], number, first_lines)
        names.append(fields[0])
        rows.append([int(value) for value in fields[1:]])
    if not names:
        raise UserError(f"{path} lists no images")
    return names, np.asarray(rows, dtype=np.uint8)
