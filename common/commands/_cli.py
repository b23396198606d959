"""The command-line base of every command: an ``ArgumentParser`` whose errors are one line, ``run_main`` (one line and
exit code 2 for a :class:`~common.errors.UserError`) and the number types of the flags.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings

from common.errors import FILESYSTEM_ERRNOS, UserError, os_error_message


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one line (no usage block) and exit with code 2."""

    def error(self, message):
        # Under torchrun only rank 0 prints a bad flag; every process exits with 2.
        self.exit(2, f"{self.prog}: error: {message}\n" if os.environ.get("RANK", "0") == "0" else None)


def run_main(main, argv=None, **kwargs) -> int:
    """Run ``main(argv, **kwargs)`` and turn a :class:`UserError` into ``error: <message>`` on stderr and exit code 2.

    Warnings (for example an AUROC that is n/a) are printed as one ``warning: ...`` line each.
    """
    warnings.formatwarning = _one_line_warning
    try:
        result = main(argv, **kwargs)
    except UserError as err:
        # Under torchrun every process checks the same inputs and fails alike: rank 0 reports it once, every
        # process exits with 2 (torchrun then ends the others, so none waits forever at a collective).
        if os.environ.get("RANK", "0") == "0":
            print(f"error: {_one_line(err)}", file=sys.stderr)
        return 2
    except OSError as err:
        if err.errno not in FILESYSTEM_ERRNOS:
            raise
        # A full disk or an unwritable folder met outside any filesystem_errors() block: still the user's
        # environment, not a bug, so one line rather than a traceback.
        print(f"error: {os_error_message(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: the last completed epoch is saved in the *-last.pth checkpoint; "
              "rerun with --resume to continue", file=sys.stderr)
        return 130
    return 0 if result is None else int(result)


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
