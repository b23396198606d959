"""Building the uint8 image cache: decode every PNG once into ``images-S.npy`` (resumable, in worker processes); the
read side is :mod:`common.data.image_cache`.
"""
from __future__ import annotations

import errno
import hashlib
import json
import multiprocessing
import os
import shutil
import signal
import time
from pathlib import Path

import numpy as np
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from common import __version__
from common.atomic import write_text_atomic
from common.data.fingerprint import file_records, hash_records
from common.data.image_cache import (
    CACHE_FORMAT,
    CHUNK_SIZE,
    DEFAULT_SIZE,
    RESIZE_RULE,
    ImageCache,
    _read_json,
    cache_files,
    open_image_cache,
)
from common.data.images import index_images, load_png
from common.errors import Interrupted, UserError, filesystem_errors, os_error_reason
from common.runtime.progress import progress
from common.runtime.signals import ignore_stop_signals_in_worker

# How often (seconds) the build flushes the array and records its progress; a kill loses at most this much work.
PROGRESS_EVERY = 2.0


def stored_image(image: Image.Image, size: int) -> np.ndarray:
    """The cached form of a decoded grey PIL image: shorter side resized to ``size``, centre ``size x size``."""
    resized = TF.resize(image, size, interpolation=InterpolationMode.BILINEAR)
    return np.asarray(TF.center_crop(resized, size), dtype=np.uint8)


# --------------------------------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------------------------------
def _decode_chunk(task):
    """Pool worker: decode one chunk. Returns (chunk id, images, [(path, reason)] of unreadable files, non-square)."""
    chunk, paths, size = task
    images = np.zeros((len(paths), size, size), dtype=np.uint8)
    errors, non_square = [], []
    for row, path in enumerate(paths):
        try:
            image = load_png(Path(path))
        except UserError as err:
            errors.append((path, str(err).split(": ", 1)[-1]))
            continue
        if image.width != image.height:
            non_square.append(Path(path).name)
        images[row] = stored_image(image, size)
    return chunk, images, errors, non_square


def _build_identity(names: list[str], size: int, chunk_size: int, data_dir: Path) -> dict:
    """What an unfinished build must share with this one to be resumed."""
    return {"format": CACHE_FORMAT, "size": size, "chunk_size": chunk_size, "count": len(names),
            "names_sha256": hashlib.sha256("\n".join(names).encode()).hexdigest(), "source": str(data_dir),
            "resize_rule": RESIZE_RULE}


def build_image_cache(data_dir, names, out_dir, size: int = DEFAULT_SIZE, workers: int | None = None,
                      chunk_size: int = CHUNK_SIZE, after_chunk=None) -> "ImageCache":
    """Decode every image of ``names`` under ``data_dir`` once into a cache in ``out_dir``; returns it opened.

    Decoding runs in a pool of ``workers`` processes (default: all cores) over chunks of ``chunk_size`` images with
    a progress bar. The array is filled in a temporary file whose finished chunks are recorded every few seconds,
    so an interrupted build resumes where it stopped (a chunk whose files changed since is decoded again). Every
    unreadable or truncated PNG is collected and reported in one UserError at the end (nothing is marked done for
    their chunks). Only a complete build gets its manifest, written last. An up-to-date cache is left as it is.
    ``after_chunk(done_chunks)`` is called after each recorded chunk (tests interrupt the build with it).
    """
    data_dir = Path(data_dir).expanduser().resolve()
    if size < 8:
        raise UserError(f"--size must be at least 8 pixels, got {size}")
    names = sorted(set(names))
    if not names:
        raise UserError("no images to cache (the image list is empty)")
    index = index_images(data_dir)
    missing = [n for n in names if n not in index]
    if missing:
        raise UserError(f"{len(missing)} of {len(names)} listed image(s) are not under {data_dir} "
                        f"(first: {', '.join(missing[:3])})")
    out_dir = Path(out_dir).expanduser().resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    files = cache_files(out_dir, size)
    paths = [index[n] for n in names]
    records = file_records(paths)
    fingerprint = hash_records(records)

    if files["manifest"].exists():
        manifest = _read_json(files["manifest"])
        if (manifest.get("fingerprint") == fingerprint and manifest.get("source") == str(data_dir)
                and manifest.get("format") == CACHE_FORMAT and files["images"].exists()):
            print(f"image cache {files['images']} is up to date ({len(names):,} images, {size} px)")
            return open_image_cache(out_dir, size=size)
        # Withdraw the old manifest first: from here on the folder holds an unfinished cache, never used.
        files["manifest"].unlink()
        print(f"rebuilding image cache {files['images']}: the images or their list changed since it was built")

    identity = _build_identity(names, size, chunk_size, data_dir)
    chunks = [list(range(start, min(start + chunk_size, len(names)))) for start in range(0, len(names), chunk_size)]
    chunk_prints = [hash_records([records[i] for i in rows]) for rows in chunks]
    done = _resumable_chunks(files, identity, chunk_prints, len(names), size)
    if done is None:
        np.lib.format.open_memmap(files["partial"], mode="w+", dtype=np.uint8, shape=(len(names), size, size))
        reserve_space(files["partial"], remove_on_failure=True)
        done = {}
        _save_progress(files["progress"], identity, done)
    else:
        reserve_space(files["partial"], remove_on_failure=False)  # a build started by an older version: sparse
        if done:
            print(f"resuming the image cache build: {sum(len(chunks[c]) for c in done):,} of {len(names):,} images "
                  "already decoded")

    todo = [c for c in range(len(chunks)) if c not in done]
    workers = max(1, min(workers or os.cpu_count() or 1, len(todo) or 1))
    try:
        errors = _decode_into(files, identity, chunks, chunk_prints, paths, size, todo, done, workers, after_chunk)
    except KeyboardInterrupt as err:  # SIGINT or SIGTERM: _decode_into has recorded the chunks it finished
        stop = err if isinstance(err, Interrupted) else Interrupted(signal.SIGINT)
        kept = sum(len(chunks[c]) for c in done)
        raise Interrupted(stop.signal_number, f"{stop.signal_name} during the image cache build: {kept:,} of "
                          f"{len(names):,} images are decoded and kept in {files['partial']}; rerun the same "
                          "command to finish it") from None
    if errors:
        shown = "; ".join(f"{path}: {reason}" for path, reason in errors[:3])
        raise UserError(f"{len(errors)} of {len(names)} image(s) cannot be decoded (first: {shown}); replace or "
                        f"remove them and rerun: the other images are kept in {files['partial']}")
    count_non_square = sum(len(entry[1]) for entry in done.values())

    os.replace(files["partial"], files["images"])
    write_text_atomic("".join(f"{n}\t{s}\t{m}\n" for n, s, m in records), files["files"])
    manifest = {
        "kind": "DTforCXR8 image cache", "format": CACHE_FORMAT, "source": str(data_dir), "size": size,
        "count": len(names), "dtype": "uint8", "shape": [len(names), size, size], "resize_rule": RESIZE_RULE,
        "non_square": count_non_square, "fingerprint": fingerprint,
        "fingerprint_rule": "sha256 of the files table (name, size in bytes, mtime in ns per image, sorted by name)",
        "images_file": files["images"].name, "files_file": files["files"].name, "package_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_text_atomic(json.dumps(manifest, indent=1) + "\n", files["manifest"])  # last: the cache is now complete
    files["progress"].unlink(missing_ok=True)
    if count_non_square:
        print(f"{count_non_square:,} of {len(names):,} images are not square: their shorter side was resized to "
              f"{size} and the longer side centre-cropped to {size}, as the evaluation view does")
    print(f"image cache {files['images']}: {len(names):,} images of {size}x{size} "
          f"({files['images'].stat().st_size / 2**30:.2f} GiB)")
    return open_image_cache(out_dir, size=size)


def reserve_space(path: Path, remove_on_failure: bool) -> None:
    """Allocate the whole array file ``path`` now, before anything is decoded into it.

    A new ``.npy`` memory map is a sparse file: on a full disk the first write into a page without a block raises
    SIGBUS in the process (exit 135, "Bus error"), not an ``OSError``. ``os.posix_fallocate`` reserves every block
    up front, so a full disk is one :class:`UserError` naming the file, the space it needs and the space free.
    ``remove_on_failure``: delete the (empty) file then, so that it does not keep what it had been given.
    """
    needed = path.stat().st_size
    try:
        with filesystem_errors(path, action="open"):
            handle = os.open(path, os.O_RDWR)
        try:
            os.posix_fallocate(handle, 0, needed)
        finally:
            os.close(handle)
    except OSError as err:
        if err.errno in (errno.EOPNOTSUPP, errno.EINVAL):
            return  # a file system without fallocate: nothing to reserve with; the build goes on as before
        if remove_on_failure:
            path.unlink(missing_ok=True)
        usage = shutil.disk_usage(path.parent)
        kept = "nothing was decoded" if remove_on_failure else f"the images already decoded stay in {path}"
        raise UserError(f"cannot reserve {_size(needed)} for the image cache {path}: {os_error_reason(err)}, "
                        f"{_size(usage.free)} free on its file system; {kept}: free some space or choose another "
                        "--out") from None


def _size(count: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} bytes"


def _resumable_chunks(files, identity, chunk_prints, count, size) -> dict | None:
    """Chunks of an unfinished build that can be kept ({chunk: [fingerprint, non-square names]}), or None to start
    afresh."""
    if not files["partial"].exists() or not files["progress"].exists():
        return None
    state = _read_json(files["progress"])
    if state.get("identity") != identity:
        print(f"discarding the unfinished image cache build in {files['partial'].parent}: it was for another "
              "image list, size or source folder")
        return None
    try:
        array = np.load(files["partial"], mmap_mode="r")
    except (OSError, ValueError) as err:
        print(f"discarding the unfinished image cache build {files['partial']}: {err}")
        return None
    if array.shape != (count, size, size) or array.dtype != np.uint8:
        print(f"discarding the unfinished image cache build {files['partial']}: its array has the wrong shape")
        return None
    # A chunk is kept only if none of its files changed since it was decoded.
    return {int(c): entry for c, entry in state.get("done", {}).items()
            if int(c) < len(chunk_prints) and chunk_prints[int(c)] == entry[0]}


def _save_progress(path: Path, identity: dict, done: dict) -> None:
    write_text_atomic(json.dumps({"identity": identity, "done": {str(c): e for c, e in sorted(done.items())}}), path)


def _decode_into(files, identity, chunks, chunk_prints, paths, size, todo, done, workers, after_chunk) -> list:
    """Decode the chunks ``todo`` in a process pool into the partial array, recording finished chunks in ``done``;
    returns the unreadable files as sorted (path, reason) pairs."""
    errors = []
    if not todo:
        return errors
    array = np.lib.format.open_memmap(files["partial"], mode="r+")
    pending: dict[int, list] = {}   # written to the memory map, not yet flushed and recorded
    last_save = time.monotonic()

    def record():
        array.flush()  # the data first, then the record that says it is there
        done.update(pending)
        pending.clear()
        _save_progress(files["progress"], identity, done)

    tasks = [(c, [str(paths[i]) for i in chunks[c]], size) for c in todo]
    total = sum(len(chunks[c]) for c in todo)
    try:
        # The workers leave Ctrl-C to this process (which ends the pool) and die quietly on SIGTERM.
        with multiprocessing.Pool(workers, initializer=ignore_stop_signals_in_worker) as pool:
            results = pool.imap_unordered(_decode_chunk, tasks)
            with progress(None, f"caching {size}px images ({workers} workers)", unit="img", total=total) as bar:
                for chunk, images, chunk_errors, non_square in results:
                    rows = chunks[chunk]
                    array[rows[0]:rows[-1] + 1] = images
                    if chunk_errors:
                        errors.extend(chunk_errors)  # not recorded as done: decoded again by the next run
                    else:
                        pending[chunk] = [chunk_prints[chunk], non_square]
                    bar.update(len(rows))
                    if time.monotonic() - last_save >= PROGRESS_EVERY:
                        record()
                        last_save = time.monotonic()
                    if after_chunk is not None:
                        after_chunk(len(done) + len(pending))
    finally:
        # Also on an interruption: what was decoded is kept for the next run.
        record()
        del array
    return sorted(errors)
