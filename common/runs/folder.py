"""The output folder of a run: checked writable up front, locked against a second run, swept of a killed run's
temporaries, and file-system failures turned into one-line :class:`~common.errors.UserError` messages.

Order of use in a training run (before any data is read)::

    folder = prepare_output_dir(args.output_dir)
    with OutputLock(folder, prefix):
        remove_stale_temporaries(folder, prefix)
        ...  # read data, train; every write goes through checkpoint.save_atomic / write_*_atomic
"""
from __future__ import annotations

import fcntl
import json
import os
import shlex
import socket
import stat
import sys
import tempfile
import time
from datetime import datetime
from glob import escape as glob_escape
from pathlib import Path

from common.errors import _WRITE_ERRNOS, UserError, filesystem_errors, os_error_reason


def prepare_output_dir(path: str | os.PathLike) -> Path:
    """Create the output folder if missing and prove it writable; returns it as a :class:`Path`.

    Call this before any data is read, so that a bad ``--output-dir`` fails in a second, not after indexing.
    Raises :class:`UserError` naming ``path`` when it (or a parent) is a file, cannot be created, or cannot be
    written (probed by creating and removing a temporary file, which also catches read-only mounts and ACLs
    that permission bits do not show).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"output folder {path} is a file, not a folder; choose another --output-dir")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        if err.errno not in _WRITE_ERRNOS:
            raise
        raise UserError(f"cannot create output folder {path}: {os_error_reason(err)}") from err
    try:
        handle, probe = tempfile.mkstemp(prefix=".write-probe.", suffix=".tmp", dir=path)
        os.close(handle)
        os.unlink(probe)
    except OSError as err:
        if err.errno not in _WRITE_ERRNOS:
            raise
        raise UserError(f"output folder {path} is not writable: {os_error_reason(err)}") from err
    return path


class OutputLock:
    """An exclusive lock on one run's files in ``folder``: ``fcntl.flock`` on ``<folder>/.<name>.lock``.

    Use as a context manager around the whole run. The lock file records the holder's pid, host, start time and
    command; a second run with the same ``name`` in the same folder raises :class:`UserError` naming them. The
    kernel drops a flock when its last descriptor closes, so a run killed with SIGKILL does not block the next
    one. DataLoader workers started with ``fork`` inherit the descriptor and keep the lock until they notice
    their parent died (torch checks every 5 s), so when the recorded holder is a dead process on this host the
    next run waits up to ``stale_wait_s`` seconds for them before refusing.
    flock works on local file systems and on NFSv4 (Linux emulates it with byte-range locks there).
    """

    def __init__(self, folder: str | os.PathLike, name: str, stale_wait_s: float = 30.0):
        self.folder = Path(folder)
        self.path = self.folder / f".{name}.lock"
        self.stale_wait_s = stale_wait_s
        self._fd: int | None = None

    def __enter__(self) -> "OutputLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the lock or raise :class:`UserError` naming the run that holds it."""
        if self._fd is not None:
            raise RuntimeError(f"{self.path} is already held by this OutputLock")
        deadline = None
        while True:
            fd = self._open_locked()
            if isinstance(fd, int):
                break
            holder = fd
            if not _is_dead_local_process(holder):
                raise UserError(f"output folder {self.folder} is in use by {_describe(holder)}; wait for that run "
                                f"to end or choose another --output-dir (lock file {self.path})")
            deadline = deadline or time.monotonic() + self.stale_wait_s
            if time.monotonic() > deadline:
                raise UserError(f"output folder {self.folder} is still locked although its holder "
                                f"{_describe(holder)} has ended; one of its child processes is still running "
                                f"(lock file {self.path})")
            time.sleep(0.2)
        self._fd = fd
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": datetime.now().astimezone().isoformat(timespec="seconds"),
                "command": shlex.join(sys.argv)}
        try:
            with filesystem_errors(self.path):
                os.ftruncate(fd, 0)
                os.pwrite(fd, json.dumps(info).encode(), 0)
        except BaseException:
            self.release()  # __exit__ does not run when __enter__ raises
            raise

    def _open_locked(self) -> int | dict:
        """The locked descriptor, or the holder's details when another process holds the lock."""
        while True:
            with filesystem_errors(self.path, action="create lock file"):
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                return holder
            except OSError as err:
                os.close(fd)
                raise UserError(f"cannot lock {self.path}: {os_error_reason(err)}") from err
            # The previous holder unlinks the file on release; if that happened between our open and flock we hold
            # a lock on a deleted inode that nobody else can see, so start again on the current file.
            try:
                current = os.stat(self.path)
            except FileNotFoundError:
                current = None
            mine = os.fstat(fd)
            if current is not None and (current.st_ino, current.st_dev) == (mine.st_ino, mine.st_dev):
                return fd
            os.close(fd)

    def release(self) -> None:
        """Remove the lock file and drop the lock (unlink first, while still holding it; see _open_locked)."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)
            self._fd = None


def _read_holder(fd: int) -> dict:
    data = os.pread(fd, 65536, 0)
    if not data:
        return {}  # the holder has the lock but has not written its details yet
    try:
        holder = json.loads(data)
    except ValueError:
        return {"unreadable": data[:80].decode("utf-8", "replace")}
    return holder if isinstance(holder, dict) else {"unreadable": str(holder)[:80]}


def _describe(holder: dict) -> str:
    if "pid" not in holder:
        return "another run (its details are not written yet)" if not holder else \
            f"another run (lock file content unreadable: {holder.get('unreadable')!r})"
    return (f"pid {holder['pid']} on {holder.get('host', '?')} (started {holder.get('started', '?')}, "
            f"command {holder.get('command', '?')})")


def _is_dead_local_process(holder: dict) -> bool:
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, owned by another user
    return False


def remove_stale_temporaries(folder: str | os.PathLike, prefix: str) -> tuple[int, int]:
    """Delete ``.<prefix>.*.tmp`` and ``.<prefix>-*.tmp`` files that a killed run left in ``folder``.

    These are the atomic writers' temporaries (``mkstemp(prefix=".<file name>.", suffix=".tmp")``) for
    ``<prefix>.pth``, ``<prefix>-last.pth``, ``<prefix>-log.csv`` and ``<prefix>-curves.png``. Only call this while
    holding :class:`OutputLock` for ``prefix``: a live run's temporary is otherwise indistinguishable from an
    orphan. Prints one line with the count and bytes freed when anything was removed; returns
    ``(count, bytes)``. A file that cannot be removed raises :class:`UserError`.
    """
    folder = Path(folder)
    stem = glob_escape(prefix)
    found = sorted(set(folder.glob(f".{stem}.*.tmp")) | set(folder.glob(f".{stem}-*.tmp")))
    count = freed = 0
    for path in found:
        info = path.lstat()
        if not stat.S_ISREG(info.st_mode):
            continue  # not something our writers create; leave it to its owner
        with filesystem_errors(path, action="remove stale temporary file"):
            path.unlink(missing_ok=True)
        count += 1
        freed += info.st_size
    if count:
        print(f"removed {count} temporary file(s) ({_size(freed)}) left by an interrupted run in {folder}")
    return count, freed


def _size(n: int) -> str:
    for unit in ("bytes", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")
