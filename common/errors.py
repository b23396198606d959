"""Error reporting for the command-line entry points: one line, exit code 2, no traceback."""
import argparse
import sys
import warnings


class UserError(Exception):
    """A problem with the user's input (a file, a line, a flag value), reported without a traceback.

    The message must be one line and must name the offending file, line or value.
    """


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one line (no usage block) and exit with code 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def run_main(main, argv=None) -> int:
    """Run ``main(argv)`` and turn a :class:`UserError` into ``error: <message>`` on stderr and exit code 2.

    Warnings (for example an AUROC that is n/a) are printed as one ``warning: ...`` line each.
    """
    warnings.formatwarning = _one_line_warning
    try:
        result = main(argv)
    except UserError as err:
        print(f"error: {_one_line(err)}", file=sys.stderr)
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


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite float > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (value > 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    """argparse type: a finite float >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not (value >= 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def unit_fraction(text: str) -> float:
    """argparse type: a float in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text!r}")
    return value
