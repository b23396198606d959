"""Atomic file writes: a temporary file in the same folder, fsync, then a rename over the target.

torch-free, so that the ONNX prediction path (``predict.py --onnx``) can write its results on a device without torch.
"""
from __future__ import annotations

import csv
import os
import tempfile
from pathlib import Path

from common.errors import filesystem_errors


def _open_temporary(handle: int, mode: str):
    """The stream the atomic writers write through (a separate function so tests can make it fail)."""
    if "b" in mode:
        return os.fdopen(handle, mode)
    # newline="": text is written exactly as given (the csv module supplies its own line endings).
    return os.fdopen(handle, mode, encoding="utf-8", newline="")


def write_atomic(path: str | os.PathLike, write_fn, mode: str = "wb") -> None:
    """Write ``path`` by calling ``write_fn(stream)`` on a temporary file in the same folder, fsync, then rename.

    A crash or kill while writing leaves the previous file intact (timm's CheckpointSaver does the same); the
    temporary (``.<name>.XXXX.tmp``, the pattern ``run_folder.remove_stale_temporaries`` sweeps) is removed on any
    failure. A full disk, a read-only or unwritable folder, and torch's part-way write failure raise
    :class:`UserError` naming ``path`` and the cause.
    """
    path = Path(path)
    with filesystem_errors(path, previous_kept=path.exists()):
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with _open_temporary(handle, mode) as stream:
                write_fn(stream)
                stream.flush()
                os.fsync(stream.fileno())  # the data is on disk before the rename makes it the file
            os.chmod(temporary, 0o644)  # mkstemp creates 0600; outputs are ordinary, shareable files
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise


def write_text_atomic(text: str, path: str | os.PathLike) -> None:
    """Write a UTF-8 text file atomically (see :func:`write_atomic`)."""
    write_atomic(path, lambda stream: stream.write(text), "w")


def write_csv_atomic(path: str | os.PathLike, fieldnames, rows) -> None:
    """Write a CSV file (header ``fieldnames``, then ``rows`` as dicts) atomically (see :func:`write_atomic`).

    A row with a key outside ``fieldnames`` raises ``ValueError`` (csv.DictWriter's check) before anything is
    renamed; missing keys are written as empty cells.
    """
    rows = list(rows)

    def write(stream):
        writer = csv.DictWriter(stream, fieldnames=list(fieldnames))
        writer.writeheader()
        writer.writerows(rows)

    write_atomic(path, write, "w")


def save_bytes_atomic(data: bytes, path: str | os.PathLike) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`write_atomic`)."""
    write_atomic(path, lambda stream: stream.write(data), "wb")
