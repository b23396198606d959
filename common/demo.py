"""``python -m common.demo``: forwards to :mod:`common.commands.demo` (kept so the short command keeps working)."""
import sys

from common.commands._cli import run_main
from common.commands.demo import main

if __name__ == "__main__":
    sys.exit(run_main(main, sys.argv[1:]))
