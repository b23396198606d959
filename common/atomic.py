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
    write_atomic(path, lambda stream: write_csv(stream, fieldnames, rows), "w")


def write_csv(stream, fieldnames, rows) -> None:
    """Write a header ``fieldnames`` and ``rows`` (dicts) to an open text stream, as :func:`write_csv_atomic` does."""
    writer = csv.DictWriter(stream, fieldnames=list(fieldnames))
    writer.writeheader()
    writer.writerows(rows)


def save_bytes_atomic(data: bytes, path: str | os.PathLike) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`write_atomic`)."""
    write_atomic(path, lambda stream: stream.write(data), "wb")


class StagedWrites:
    """Several files replaced together: each is written to a temporary beside it (fsynced) as it is added, and only
    :meth:`commit` renames them all over their targets (and removes the files named by :meth:`remove`).

    A failed write (a full disk) raises :class:`UserError` from :meth:`write` with every temporary so far removed and
    no target touched, so the folder keeps the previous set whole; so does leaving the ``with`` block by any
    exception before :meth:`commit`. The temporaries are named like :func:`write_atomic`'s (``.<name>.XXXX.tmp``),
    which ``run_folder.remove_stale_temporaries`` sweeps after a kill.
    """

    def __init__(self):
        self._staged: list[tuple[Path, Path]] = []  # (temporary, target), in the order they were written
        self._removals: list[Path] = []

    def __enter__(self) -> "StagedWrites":
        return self

    def __exit__(self, *exc) -> None:
        self.discard()

    def write(self, path: str | os.PathLike, write_fn, mode: str = "wb") -> Path:
        """Write ``path``'s next content with ``write_fn(stream)`` to a temporary; returns the temporary's path."""
        path = Path(path)
        try:
            with filesystem_errors(path, previous_kept=path.exists()):
                path.parent.mkdir(parents=True, exist_ok=True)
                handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
                self._staged.append((Path(temporary), path))
                with _open_temporary(handle, mode) as stream:
                    write_fn(stream)
                    stream.flush()
                    os.fsync(stream.fileno())
                os.chmod(temporary, 0o644)
        except BaseException:
            self.discard()
            raise
        return Path(temporary)

    def remove(self, path: str | os.PathLike) -> None:
        """Remove ``path`` (if it exists) when the set is committed."""
        self._removals.append(Path(path))

    def commit(self) -> None:
        """Rename every temporary over its target, in the order written, then make the removals."""
        for temporary, target in self._staged:
            with filesystem_errors(target, action="replace"):
                os.replace(temporary, target)
        self._staged = []
        for path in self._removals:
            with filesystem_errors(path, action="remove"):
                path.unlink(missing_ok=True)
        self._removals = []

    def discard(self) -> None:
        """Remove the temporaries not yet committed; no target is touched."""
        for temporary, _ in self._staged:
            temporary.unlink(missing_ok=True)
        self._staged = []
        self._removals = []
