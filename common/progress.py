"""Progress bars for every long loop (training, evaluation, caches, bootstraps)."""
from __future__ import annotations

import sys

from tqdm import tqdm


def progress(iterable, desc: str, **kwargs):
    """A tqdm bar; redrawn at most every 30 s when stderr is a log file rather than a terminal."""
    interactive = sys.stderr.isatty()
    return tqdm(iterable, desc=desc, dynamic_ncols=True, leave=False, mininterval=0.1 if interactive else 30,
                **kwargs)
