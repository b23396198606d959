"""``python -m common.image_cache``: forwards to :mod:`common.commands.image_cache` (kept so the short command keeps
working).
"""

from common.commands._cli import run_script

if __name__ == "__main__":
    run_script("common.commands.image_cache")
