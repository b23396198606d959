"""``python -m common.synthetic``: forwards to :mod:`common.commands.synthetic` (kept so the short command keeps
working).
"""
import sys

from common.commands._cli import run_main
from common.commands.synthetic import main

if __name__ == "__main__":
    sys.exit(run_main(main, sys.argv[1:]))
