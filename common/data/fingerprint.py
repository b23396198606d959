"""File fingerprints: SHA-256 of a file, (name, size, mtime) records and their hash, and the identity of a data folder
as run records store it.
"""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common.errors import UserError


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_records(paths, threads: int = 16) -> list[tuple[str, int, int]]:
    """``(name, size in bytes, mtime in ns)`` of each path, sorted by name; a missing file is a UserError."""
    paths = [Path(p) for p in paths]

    def stat(path: Path):
        try:
            info = path.stat()
        except OSError as err:
            raise UserError(f"cannot read {path}: {err.strerror or err}") from None
        return path.name, int(info.st_size), int(info.st_mtime_ns)

    # Threads: stat calls wait on the file system (slow on network drives), not on the CPU.
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        records = list(pool.map(stat, paths, chunksize=256))
    return sorted(records)


def hash_records(records) -> str:
    """sha256 of sorted ``(name, size, mtime_ns)`` records, as the files table writes them."""
    digest = hashlib.sha256()
    for name, size, mtime in sorted(records):
        digest.update(f"{name}\t{size}\t{mtime}\n".encode())
    return digest.hexdigest()


def data_identity(data_dir: Path, index: dict, names, cache=None) -> dict:
    """The pixels a run read: folder, image count and :func:`hash_records` of the ``names`` it used (one ``stat``
    per file, about a second for 112,120 files; it does not read the pixels).

    With ``cache`` (a :class:`common.data.image_cache.ImageCache`, checked against ``data_dir`` when opened) the pixels
    come from the cache: the fingerprint is taken from the cache's files table (the same value the files give, as
    the cache was checked to be current) and ``image_cache`` records the cache's size and fingerprint, since its
    resized pixels differ from the PNGs'."""
    names = sorted(set(names))
    if cache is None:
        return {"data_dir": str(data_dir), "images": len(names),
                "files_sha256": hash_records(file_records(index[name] for name in names))}
    recorded = {record[0]: record for record in cache.records}
    return {"data_dir": str(data_dir), "images": len(names),
            "files_sha256": hash_records(recorded[name] for name in names),
            "image_cache": {"directory": str(cache.directory), "size": cache.size, "fingerprint": cache.fingerprint}}
