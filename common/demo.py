"""``python -m common.demo``: forwards to :mod:`common.commands.demo` (kept so the short command keeps working)."""

from common.commands._cli import run_script

if __name__ == "__main__":
    run_script("common.commands.demo")
