"""``python -m common.image_cache``: forwards to :mod:`common.commands.image_cache` (kept so the short command keeps
working).
"""
import sys

from common.commands._cli import run_main
from common.commands.image_cache import main

if __name__ == "__main__":
    sys.exit(run_main(main, sys.argv[1:]))
