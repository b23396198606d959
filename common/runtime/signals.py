"""SIGINT and SIGTERM: a stop that ends in one line and the signal's exit code, never a traceback.

A cluster preempts a job with SIGTERM (and SIGKILL after a grace period, often 30 s), torchrun sends SIGTERM to the
processes left when one of them fails, and Ctrl-C is SIGINT. Two ways to take them (docs/guide/faults.md §2):

- :func:`raise_on_stop_signals`, installed by ``run_main`` around every command: either signal raises
  :class:`~common.errors.Interrupted` where the program is (as Python does for SIGINT with ``KeyboardInterrupt``, of
  which it is a subclass). The atomic writers remove their temporary on it, so a file is written whole or not at all.
- :class:`StopRequest`, used by the training loop: the first signal is only recorded; the loop looks at it between
  steps, saves where it is and stops there. A second signal raises at once (a user pressing Ctrl-C twice).

Processes forked from the command (DataLoader and decoding workers) inherit these handlers; in them both signals
are ignored, so that the command, not its workers, decides how to stop (Ctrl-C reaches the whole process group).
Workers end with their parent: torch's loader workers watch it, and the decoding pool is ended by the command.
"""
from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager

from common.errors import Interrupted

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _in_main_thread() -> bool:
    # Python runs signal handlers in the main thread only, and only there may they be installed.
    return threading.current_thread() is threading.main_thread()


def _install(handler) -> dict:
    """Install ``handler`` for the stop signals; returns the previous handlers (to give to :func:`_restore`).

    A signal the process was started with ignored stays ignored (a shell starts background jobs with SIGINT
    ignored; ``nohup``-style launchers do the same): whoever started it chose that."""
    previous = {number: signal.getsignal(number) for number in STOP_SIGNALS}
    for number in STOP_SIGNALS:
        if previous[number] is not signal.SIG_IGN:
            signal.signal(number, handler)
    return previous


def _restore(previous: dict) -> None:
    for number, handler in previous.items():
        # None: a handler installed outside Python; the default is the nearest equivalent.
        signal.signal(number, signal.SIG_DFL if handler is None else handler)


def _forked_child(owner_pid: int) -> bool:
    """True in a process forked after the handler was installed (it inherited the handler, not the decision)."""
    return os.getpid() != owner_pid


@contextmanager
def raise_on_stop_signals():
    """Inside the block SIGINT and SIGTERM raise :class:`Interrupted` (in the main thread; elsewhere a no-op)."""
    if not _in_main_thread():
        yield
        return
    owner = os.getpid()

    def handler(number, frame):
        if _forked_child(owner):
            return
        raise Interrupted(number)

    previous = _install(handler)
    try:
        yield
    finally:
        _restore(previous)


class StopRequest:
    """While active (``with StopRequest() as stop:``), the first SIGINT or SIGTERM is only recorded in
    :attr:`signal_number`; the caller looks at :attr:`requested` where it can stop cleanly. A second signal, or one
    that arrives inside :meth:`raising`, raises :class:`Interrupted` at once. Outside the main thread it never fires.
    """

    def __init__(self):
        self.signal_number: int | None = None
        self._raising = 0
        self._previous: dict | None = None
        self._owner = os.getpid()

    @property
    def requested(self) -> bool:
        """A stop signal has arrived."""
        return self.signal_number is not None

    def __enter__(self) -> "StopRequest":
        if _in_main_thread():
            self._owner = os.getpid()
            self._previous = _install(self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            _restore(self._previous)
            self._previous = None

    def _handle(self, number, frame) -> None:
        if _forked_child(self._owner):
            return
        if self.signal_number is not None or self._raising:
            self.signal_number = self.signal_number or number
            raise Interrupted(number)
        self.signal_number = number

    @contextmanager
    def raising(self):
        """Inside the block a signal raises :class:`Interrupted` at once (for long waits that lose nothing when cut
        short, such as a validation pass); one that had already arrived raises on entry."""
        if self.signal_number is not None:
            raise Interrupted(self.signal_number)
        self._raising += 1
        try:
            yield
        finally:
            self._raising -= 1


def ignore_stop_signals_in_worker() -> None:
    """Initializer of worker pools: Ctrl-C (SIGINT, sent to the whole process group) is left to the parent, which
    ends the pool; SIGTERM ends the worker silently, as ``Pool.terminate`` expects."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
