"""The command-line base of every command: an ``ArgumentParser`` whose errors are one line, ``run_main`` (one line and
exit code 2 for a :class:`~common.errors.UserError`) and the number types of the flags.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import warnings
from typing import NoReturn

from common.errors import FILESYSTEM_ERRNOS, Interrupted, UserError, os_error_message


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one line (no usage block) and exit with code 2."""

    def error(self, message):
        # Under torchrun only rank 0 prints a bad flag; every process exits with 2.
        self.exit(2, f"{self.prog}: error: {message}\n" if os.environ.get("RANK", "0") == "0" else None)


def run_main(main, argv=None, **kwargs) -> int:
    """Run ``main(argv, **kwargs)`` and turn a :class:`UserError` into ``error: <message>`` on stderr and exit code 2.

    Warnings (for example an AUROC that is n/a) are printed as one ``warning: ...`` line each. SIGINT and SIGTERM
    stop the command with one ``stopped: ...`` line and the signal's exit code (130, 143): the message of the
    :class:`~common.errors.Interrupted` that stopped it (a training run says where it stopped and what is saved), or
    a general one (docs/guide/faults.md §2). After an error or a stop, loader and decoding workers still running are
    ended at once, so that the process exits promptly rather than after their current batch.
    """
    from common.runtime.signals import raise_on_stop_signals
    from common.runtime.workers import end_child_processes, restore_child_check
    warnings.formatwarning = _one_line_warning
    speaks = os.environ.get("RANK", "0") == "0"
    child_check = []  # torch's SIGCHLD handler while the ended workers' loaders are let go
    try:
        with raise_on_stop_signals():
            try:
                result = main(argv, **kwargs)
            except UserError as err:
                # Under torchrun every process checks the same inputs and fails alike: rank 0 reports it once, every
                # process exits with 2 (torchrun then ends the others, so none waits forever at a collective).
                _close_open_bars()
                if speaks or getattr(err, "every_rank", False):
                    print(f"error: {_one_line(err)}", file=sys.stderr, flush=True)
                child_check.append(end_child_processes())
                return 2
            except OSError as err:
                if err.errno not in FILESYSTEM_ERRNOS:
                    raise
                # A full disk or an unwritable folder met outside any filesystem_errors() block: still the user's
                # environment, not a bug, so one line rather than a traceback.
                _close_open_bars()
                print(f"error: {os_error_message(err)}", file=sys.stderr, flush=True)
                child_check.append(end_child_processes())
                return 2
            except KeyboardInterrupt as err:  # Interrupted (SIGINT or SIGTERM) or a KeyboardInterrupt by hand
                stop = err if isinstance(err, Interrupted) else Interrupted(signal.SIGINT)
                _close_open_bars()
                if speaks:
                    print(f"stopped: {stop.message or _general_stop_message(stop)}", file=sys.stderr, flush=True)
                child_check.append(end_child_processes())
                return stop.exit_code
    finally:
        if child_check:  # the failed frames, and the loaders in them, are gone now (a caller in this process goes on)
            restore_child_check(child_check[0])
    return 0 if result is None else int(result)


def run_script(command, **kwargs) -> NoReturn:
    """What a script's ``if __name__ == "__main__":`` does: :func:`run_main` on ``sys.argv[1:]``, then exit with its code.

    ``command`` is the command's function, or its place as ``"package.module"`` (its ``main``) or
    ``"package.module:function"``: imported inside :func:`run_main`, so that a SIGINT while the command's modules load
    (pandas alone took 1.8 s on a loaded machine) is one line too, never a ``KeyboardInterrupt`` traceback.

    After an error or a stop the process ends at once (``os._exit`` once the output is flushed): the interpreter's
    teardown of torch and the libraries it loaded took 3-7 s on a loaded 2-core machine, and nothing is left for it
    to do (every file is written and closed, the workers are ended, the output folder's lock is released). A run that
    succeeds exits normally.
    """
    code = run_main(_resolved(command), sys.argv[1:], **kwargs)
    if code != 0:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def _resolved(command):
    if callable(command):
        return command
    module_name, _, function = str(command).partition(":")

    def load_and_run(argv, **kwargs):
        import importlib
        return getattr(importlib.import_module(module_name), function or "main")(argv, **kwargs)

    return load_and_run


def _close_open_bars() -> None:
    """Close (and so clear: they are drawn with ``leave=False``) the progress bars still on the screen, so that the
    error or stop line printed next starts on a line of its own. tqdm is looked up, not imported: a command that
    drew no bar (the torch-free ONNX prediction path among them) loads nothing for this."""
    tqdm_module = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm_module, "tqdm", None), "_instances", ())):
        bar.close()


def _general_stop_message(stop: Interrupted) -> str:
    return (f"{stop.signal_name} arrived before the command finished; every file it wrote is complete (files are "
            "written whole or not at all) and the rest were not written: run it again to finish")


def _one_line(err: UserError) -> str:
    """The message of a UserError; one re-raised from a DataLoader worker carries the worker's traceback text."""
    lines = [line for line in str(err).splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    prefix = f"{UserError.__module__}.{UserError.__name__}: "
    return last[len(prefix):] if last.startswith(prefix) else " ".join(lines)


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"


def _number_type(convert, accept, expectation: str):
    """An argparse ``type`` that converts with ``convert`` and accepts values for which ``accept`` is true."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expectation}, got {text!r}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"expected {expectation}, got {text!r}")
        return value

    parse.__name__ = expectation  # argparse names the type in some messages
    return parse


def _finite(value: float) -> bool:
    return value == value and abs(value) != float("inf")


positive_int = _number_type(int, lambda v: v >= 1, "a positive integer")
non_negative_int = _number_type(int, lambda v: v >= 0, "an integer >= 0")
positive_float = _number_type(float, lambda v: _finite(v) and v > 0, "a positive number")
non_negative_float = _number_type(float, lambda v: _finite(v) and v >= 0, "a number >= 0")
unit_fraction = _number_type(float, lambda v: 0.0 <= v <= 1.0, "a number between 0 and 1")
