"""The per-epoch training log CSV, rewritten atomically on every change so a kill never leaves half a row."""
from __future__ import annotations

import csv
import os
from pathlib import Path

from common.atomic import StagedWrites, write_csv, write_csv_atomic
from common.errors import UserError, filesystem_errors


class TrainingLog:
    """``<prefix>-log.csv``: one row per completed epoch, columns ``columns`` (the first must be ``epoch``).

    Every change rewrites the whole file atomically (temporary + fsync + rename; a log has tens of rows), so the
    file on disk is always a complete CSV. Before :meth:`append` the log must be told where it starts:

    * fresh run, including ``--overwrite``: :meth:`start_over`. The old file is *not* deleted; it stays as it is
      until the first new epoch's :meth:`append` replaces it, as the --overwrite message promises.
    * resume: :meth:`restore` with the rows saved in the ``-last.pth`` checkpoint (preferred: the log then always
      matches the weights, whichever of the two writes a kill interrupted), or :meth:`truncate_to` the
      checkpoint's epoch for checkpoints that carry no rows (drops rows of epochs the checkpoint never reached).

    Values are stored as strings, as the csv module reads them back.
    """

    def __init__(self, path: str | os.PathLike, columns):
        self.path = Path(path)
        self.columns = tuple(columns)
        if not self.columns or self.columns[0] != "epoch":
            raise ValueError(f"the first log column must be 'epoch', got {self.columns!r}")
        self._rows: list[dict] | None = None  # None: not started; rows() then shows the file

    def read(self) -> list[dict]:
        """The rows in the file now ([] when there is none). A file with other columns or a damaged row raises
        :class:`UserError` naming the file and line."""
        if not self.path.exists():
            return []
        with filesystem_errors(self.path, action="read"), open(self.path, newline="", encoding="utf-8") as stream:
            reader = csv.DictReader(stream)
            if tuple(reader.fieldnames or ()) != self.columns:
                raise UserError(f"{self.path} is not a training log with columns {','.join(self.columns)} "
                                f"(its header is {','.join(reader.fieldnames or ()) or 'empty'})")
            rows = []
            for row in reader:
                if None in row or None in row.values() or not row["epoch"].isdigit():
                    raise UserError(f"{self.path}, line {reader.line_num}: damaged row "
                                    f"(expected {len(self.columns)} values starting with an epoch number)")
                rows.append(row)
        return rows

    def rows(self) -> list[dict]:
        """The rows the log holds: after start_over/restore/truncate_to/append the in-memory rows (what the file
        holds or, right after start_over, will hold), before that the file's rows. Returns copies."""
        rows = self.read() if self._rows is None else self._rows
        return [dict(row) for row in rows]

    def start_over(self) -> None:
        """Begin an empty log for a fresh run; the existing file is left alone until the first :meth:`append`."""
        self._rows = []

    def restore(self, rows) -> None:
        """Make the log exactly ``rows`` (e.g. from a ``-last.pth`` checkpoint) and write it atomically."""
        self._rows = []
        for row in rows:
            self._rows.append(self._checked(row))
        self._write()

    def truncate_to(self, epoch: int) -> int:
        """Keep the file's rows with ``epoch <= epoch`` (resume from a checkpoint of that epoch), rewrite atomically;
        returns how many rows were kept."""
        self._rows = [row for row in self.read() if int(row["epoch"]) <= epoch]
        self._write()
        return len(self._rows)

    def append(self, row: dict, staged: StagedWrites | None = None) -> None:
        """Add one completed epoch's row and rewrite the file atomically (through ``staged``, when given, so that it
        is replaced together with the epoch's checkpoints). The row must have exactly the log's columns and a larger
        epoch than the last row (``ValueError`` otherwise: a caller bug)."""
        if self._rows is None:
            raise RuntimeError("TrainingLog.append before start_over(), restore() or truncate_to(): "
                               "the log does not know whether this run continues the file or replaces it")
        row = self._checked(row)
        if self._rows and int(row["epoch"]) <= int(self._rows[-1]["epoch"]):
            raise ValueError(f"log row for epoch {row['epoch']} after epoch {self._rows[-1]['epoch']}")
        self._rows.append(row)
        self._write(staged)

    def _checked(self, row: dict) -> dict:
        if set(row) != set(self.columns):
            raise ValueError(f"log row keys {sorted(row)} differ from the columns {list(self.columns)}")
        if not str(row["epoch"]).isdigit():
            raise ValueError(f"log row epoch {row['epoch']!r} is not a non-negative integer")
        return {column: str(row[column]) for column in self.columns}

    def _write(self, staged: StagedWrites | None = None) -> None:
        if staged is None:
            write_csv_atomic(self.path, self.columns, self._rows)
        else:
            staged.write(self.path, lambda stream: write_csv(stream, self.columns, self._rows), "w")
