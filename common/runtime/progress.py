"""Progress bars for every long loop (training, evaluation, caches, bootstraps)."""
from __future__ import annotations

import sys

from tqdm import tqdm

from common.runtime.distributed import is_main_process
from common.runtime.workers import is_multiprocess_loader, loader_batches


def progress(iterable, desc: str, disable: bool = False, **kwargs):
    """A tqdm bar; redrawn at most every 30 s when stderr is a log file rather than a terminal, and shown by one
    process only under torchrun. A DataLoader with workers is iterated so that leaving the loop early (an error, a
    stop) ends its workers at once (:func:`common.runtime.workers.loader_batches`)."""
    interactive = sys.stderr.isatty()
    if is_multiprocess_loader(iterable):
        kwargs.setdefault("total", len(iterable))
        iterable = loader_batches(iterable)
    return tqdm(iterable, desc=desc, dynamic_ncols=True, leave=False, mininterval=0.1 if interactive else 30,
                disable=disable or not is_main_process(), **kwargs)

