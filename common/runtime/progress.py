"""Progress bars for every long loop (training, evaluation, caches, bootstraps)."""
from __future__ import annotations

import sys

from tqdm import tqdm

from common.runtime.distributed import is_main_process


def progress(iterable, desc: str, disable: bool = False, **kwargs):
    """A tqdm bar; redrawn at most every 30 s when stderr is a log file rather than a terminal, and shown by one
    process only under torchrun."""
    interactive = sys.stderr.isatty()
    return tqdm(iterable, desc=desc, dynamic_ncols=True, leave=False, mininterval=0.1 if interactive else 30,
                disable=disable or not is_main_process(), **kwargs)
