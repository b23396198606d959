"""Ending worker processes promptly after an error or a stop.

A multi-process DataLoader iterator that is dropped part-way (an exception in the loop, a stop signal) shuts its
workers down by waiting up to 5 s for each one to finish the batch it is decoding, then killing it: 20-30 s on a
loaded machine before the error line even reached the user's prompt. :func:`loader_batches` ends them at once
instead; :func:`end_child_processes` ends whatever workers are left when a command gives up.
"""
from __future__ import annotations

import multiprocessing
import signal
import threading
import time

# How long an ended worker may take to go (SIGTERM, then SIGKILL).
END_WAIT_S = 2.0


def is_multiprocess_loader(iterable) -> bool:
    """A torch DataLoader with worker processes (duck-typed: this module must not import torch)."""
    return getattr(iterable, "num_workers", 0) > 0 and hasattr(iterable, "_get_iterator")


def loader_batches(loader):
    """Iterate ``loader``; if the loop is left before the end (an exception, a stop, a ``break``), its workers are
    ended at once rather than waited for."""
    iterator = iter(loader)
    finished = False
    try:
        yield from iterator
        finished = True
    finally:
        if not finished:
            end_loader_workers(iterator)


def _end(processes) -> None:
    for process in processes:
        if process.is_alive():
            process.terminate()
    deadline = time.monotonic() + END_WAIT_S
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join(1.0)


def end_loader_workers(iterator) -> None:
    """End the worker processes of a torch multi-process DataLoader iterator now, then let it close its queues.

    The workers are first taken out of torch's SIGCHLD check (ended on purpose, they are not failures); the
    iterator's own shutdown then finds them gone and returns at once. Other iterators are left alone.
    """
    workers = getattr(iterator, "_workers", None)
    if not workers or getattr(iterator, "_shutdown", True):
        return
    if getattr(iterator, "_worker_pids_set", False):
        from torch.utils.data._utils import signal_handling
        signal_handling._remove_worker_pids(id(iterator))
        iterator._worker_pids_set = False
    _end(workers)
    iterator._shutdown_workers()


def end_child_processes():
    """End every worker process this process started and has not yet joined (a command giving up after an error or
    a stop). torch's SIGCHLD check is switched off first (the ended workers are not failures to report); returns
    the handler to give :func:`restore_child_check` once the loaders that owned them are gone, or None."""
    children = multiprocessing.active_children()
    if not children:
        return None
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    _end(children)
    return previous


def restore_child_check(previous) -> None:
    """Put torch's SIGCHLD check back (for a caller that goes on in this process, such as a test), after collecting
    the loaders whose workers were ended, so that it does not report them."""
    if previous is None or threading.current_thread() is not threading.main_thread():
        return
    import gc
    gc.collect()
    signal.signal(signal.SIGCHLD, previous)
