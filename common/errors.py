"""Error reporting for the command-line entry points: one line, exit code 2, no traceback."""
from __future__ import annotations

import errno
import os
import re
import signal
from contextlib import contextmanager

#: errno values of the file system refusing a read or write (full, over quota, read-only, no permission, the wrong
#: kind of path). Only these are reported as one line; any other OSError is a bug and keeps its traceback.
FILESYSTEM_ERRNOS = frozenset(getattr(errno, name) for name in (
    "ENOSPC", "EDQUOT", "EFBIG", "EACCES", "EPERM", "EROFS", "EEXIST", "ENOTDIR", "EISDIR", "ENAMETOOLONG",
    "ELOOP", "EIO", "ENOTEMPTY", "EXDEV") if hasattr(errno, name))


class UserError(Exception):
    """A problem with the user's input (a file, a line, a flag value), reported without a traceback.

    The message must be one line and must name the offending file, line or value. ``every_rank``: under torchrun
    every process prints it (a fault one process met alone, such as a peer that died), not only rank 0.
    """

    def __init__(self, message: str = "", *, every_rank: bool = False):
        super().__init__(message)
        self.every_rank = every_rank


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped the command: a ``KeyboardInterrupt``, so that no ``except Exception`` swallows it
    and code that already stops cleanly on Ctrl-C does so on SIGTERM too. ``message`` says where it stopped, what is
    on disk and how to go on; ``run_main`` prints it as one line and exits with the signal's code, 128 + the signal
    number (130 for SIGINT, 143 for SIGTERM).
    """

    def __init__(self, signal_number: int, message: str | None = None):
        super().__init__(signal_number, message)
        self.signal_number = signal_number
        self.message = message

    @property
    def signal_name(self) -> str:
        """``SIGINT``, ``SIGTERM``, ... (``signal N`` for a number the signal module does not name)."""
        try:
            return signal.Signals(self.signal_number).name
        except ValueError:
            return f"signal {self.signal_number}"

    @property
    def exit_code(self) -> int:
        """128 + the signal number: what a shell reports for a process ended by that signal."""
        return 128 + self.signal_number

    def __str__(self) -> str:
        return self.message or f"stopped by {self.signal_name}"


def os_error_reason(err: OSError) -> str:
    """The cause of ``err`` in words with its number, e.g. ``no space left on device (Errno 28)``."""
    text = (err.strerror or os.strerror(err.errno)) if err.errno else str(err)
    text = text[:1].lower() + text[1:]
    return f"{text} (Errno {err.errno})" if err.errno else text


def os_error_message(err: OSError) -> str:
    """One line naming the file(s) of ``err`` and its cause, e.g. ``/x/a.csv: permission denied (Errno 13)``."""
    names = [str(name) for name in (err.filename, err.filename2) if name is not None]
    where = " -> ".join(names) if names else "file system"
    return f"{where}: {os_error_reason(err)}"


# Inside a block that is known to be writing a given file, a vanished folder (ENOENT) is the user's doing too
# (the output folder was deleted under a running run); run_main does not treat ENOENT that way globally.
_WRITE_ERRNOS = FILESYSTEM_ERRNOS | {errno.ENOENT}

# The two ways torch.save reports a write that failed part-way (its C++ writer hides the OSError's errno).
_TORCH_WRITE_FAILURE = re.compile(r"unexpected pos \d+ vs \d+|PytorchStreamWriter failed[^\n]*")


@contextmanager
def filesystem_errors(what: str | os.PathLike, *, action: str = "write", previous_kept: bool | None = None):
    """Turn a file-system failure inside the block into a one-line :class:`UserError` naming ``what``.

    Converted: an ``OSError`` whose errno is a file-system refusal (ENOSPC, EDQUOT, EACCES, EROFS, EEXIST,
    ENOTDIR, ENOENT, ... see ``errors.FILESYSTEM_ERRNOS``), and torch's ``RuntimeError`` from a write that failed
    part-way (``unexpected pos N vs M`` / ``PytorchStreamWriter failed``); its hidden OSError, when torch kept it
    as ``__context__``, supplies the cause. Anything else propagates unchanged (it is a bug, not the disk).
    ``previous_kept`` (for the atomic writers) adds "the previous file is unchanged" when true and "no partial
    file was left" when false.
    Usable as a decorator too.
    """
    try:
        yield
    except OSError as err:
        if err.errno not in _WRITE_ERRNOS:
            raise
        raise UserError(_write_failure(what, action, os_error_reason(err), previous_kept)) from err
    except RuntimeError as err:
        found = _TORCH_WRITE_FAILURE.search(str(err))
        if found is None:
            raise
        cause = _os_error_behind(err)
        reason = (os_error_reason(cause) if cause is not None
                  else f"the write stopped part-way (torch: {found.group(0)}), most often because the disk is full")
        raise UserError(_write_failure(what, action, reason, previous_kept)) from err


def _write_failure(what, action: str, reason: str, previous_kept: bool | None) -> str:
    if previous_kept is None:
        return f"cannot {action} {what}: {reason}"
    outcome = "the previous file is unchanged" if previous_kept else "no partial file was left"
    return f"cannot {action} {what}: {reason}; {outcome}"


def _os_error_behind(err: BaseException) -> OSError | None:
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno is not None:
            return err
        err = err.__cause__ or err.__context__
    return None
