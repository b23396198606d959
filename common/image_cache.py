"""An image cache built once: every PNG decoded into one uint8 array ``[N, S, S]`` in a memory-mapped ``.npy``.

Build it with ``python -m common.image_cache --data-dir D --out DIR`` (see :func:`main`); read it with
:func:`open_image_cache`, batch by batch with :class:`CachedBatchDataset` and :func:`cached_loader`.

Files in the cache folder, for a size S (several sizes can share a folder):

- ``images-S.npy``     uint8 ``[N, S, S]``, the images in the order of the files table;
- ``files-S.tsv``      one line per image: name, size in bytes, mtime in ns (the per-file fingerprint);
- ``manifest-S.json``  source folder, S, the resize rule, count, the fingerprint (sha256 of the files table), the
                       package version. It is written last: a folder without it is an unfinished build, never used;
- while building: ``images-S.npy.partial`` and ``build-S.json`` (the chunks done), which let an interrupted build
  resume.

The stored image is the evaluation view before its centre crop (:func:`stored_image`): the shorter side resized to
S exactly as ``torchvision.transforms.Resize(S)`` does on the PIL image (bilinear with PIL's antialiasing), then
the centre S x S. For a model evaluated at ``img_size`` with ``eval_resize(img_size) == S`` (224 with S=256, 448
with S=512), the centre crop of the stored image is bit-identical to the PNG path's ``Resize + CenterCrop`` view.
A non-square image loses the ends of its longer side, as its evaluation view does; the build says how many.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import transforms
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from . import __version__
from .atomic import write_text_atomic
from .data import build_split, eval_resize, index_images, load_png
from .progress import progress
from .errors import ArgumentParser, UserError, positive_int, run_main
from .identity import file_records, hash_records

CACHE_FORMAT = 1
DEFAULT_SIZE = 256
SIZES = (256, 512)
CHUNK_SIZE = 64
# How often (seconds) the build flushes the array and records its progress; a kill loses at most this much work.
PROGRESS_EVERY = 2.0
RESIZE_RULE = ("shorter side resized to S as torchvision Resize(S) on PIL (bilinear, antialiased), then centre crop "
               "S x S (a non-square image loses the ends of its longer side, as in the evaluation view)")


# --------------------------------------------------------------------------------------------------------------------
# Fingerprints and file names
# --------------------------------------------------------------------------------------------------------------------
def fingerprint_files(paths) -> str:
    """Fingerprint of files: sha256 over their sorted ``(name, size, mtime_ns)``. A changed file changes it."""
    return hash_records(file_records(paths))


def cache_files(directory, size: int) -> dict[str, Path]:
    """The paths of a cache of size ``size`` in ``directory``."""
    directory = Path(directory)
    return {
        "images": directory / f"images-{size}.npy",
        "partial": directory / f"images-{size}.npy.partial",
        "progress": directory / f"build-{size}.json",
        "files": directory / f"files-{size}.tsv",
        "manifest": directory / f"manifest-{size}.json",
    }


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


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read {path}: {err}") from None


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
        done = {}
        _save_progress(files["progress"], identity, done)
    elif done:
        print(f"resuming the image cache build: {sum(len(chunks[c]) for c in done):,} of {len(names):,} images "
              "already decoded")

    todo = [c for c in range(len(chunks)) if c not in done]
    workers = max(1, min(workers or os.cpu_count() or 1, len(todo) or 1))
    errors = _decode_into(files, identity, chunks, chunk_prints, paths, size, todo, done, workers, after_chunk)
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
        with multiprocessing.Pool(workers) as pool:
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


# --------------------------------------------------------------------------------------------------------------------
# Opening and checking
# --------------------------------------------------------------------------------------------------------------------
class ImageCache:
    """A complete, checked image cache. The memory map opens lazily, and again in each process that uses it, so the
    object can be handed to DataLoader workers (fork or spawn) without sharing an open map.

    ``size`` (S), ``names`` (tuple, in array order), ``fingerprint``, ``manifest`` (dict), ``path`` (the .npy).
    """

    def __init__(self, directory: Path, manifest: dict, records: list[tuple[str, int, int]]):
        self.directory = directory
        self.manifest = manifest
        self.size = int(manifest["size"])
        self.fingerprint = manifest["fingerprint"]
        self.path = directory / manifest["images_file"]
        self.records = records
        self.names = tuple(name for name, _, _ in records)
        self._row_of = {name: row for row, name in enumerate(self.names)}
        self._array = None
        self._pid = None

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return f"ImageCache({self.path}, {len(self):,} images of {self.size}x{self.size})"

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_array"], state["_pid"] = None, None  # each process maps the file itself
        return state

    @property
    def array(self) -> np.ndarray:
        """The read-only memory map ``[N, S, S]`` uint8, opened on first use in this process."""
        if self._array is None or self._pid != os.getpid():
            self._array = np.load(self.path, mmap_mode="r")
            self._pid = os.getpid()
        return self._array

    def index_of(self, name: str) -> int:
        """Row of ``name`` in the array; a name not in the cache is a UserError."""
        try:
            return self._row_of[name]
        except KeyError:
            raise UserError(f"image {name} is not in the image cache {self.path}") from None

    def indices_of(self, names) -> np.ndarray:
        """Rows of ``names`` (int64); missing names are one UserError with the count and the first few."""
        missing = [n for n in names if n not in self._row_of]
        if missing:
            raise UserError(f"{len(missing)} image(s) are not in the image cache {self.path} "
                            f"(first: {', '.join(missing[:3])}); rebuild it for this split")
        return np.fromiter((self._row_of[n] for n in names), dtype=np.int64, count=len(names))

    def read(self, rows) -> np.ndarray:
        """Images of ``rows`` ``[len(rows), S, S]`` in the given order, read with one sorted fancy index of the map."""
        rows = np.asarray(rows, dtype=np.int64)
        order = np.argsort(rows, kind="stable")
        # Ascending rows read the file front to back; the result is put back into the caller's order.
        images = np.empty((len(rows), self.size, self.size), dtype=np.uint8)
        images[order] = self.array[rows[order]]
        return images


def open_image_cache(cache_dir, data_dir=None, names_needed=None, size: int | None = None,
                     index: dict | None = None) -> ImageCache:
    """Open a complete cache and check it; returns an :class:`ImageCache`.

    Refused with a UserError naming what differs: an unfinished build (no manifest), a manifest of another format,
    an array or files table that does not match the manifest, a ``size`` other than the cache's, names of
    ``names_needed`` the cache lacks; and when ``data_dir`` is given, another source folder or images that changed
    since the build (size or mtime of the needed files, or of all cached files when ``names_needed`` is None;
    ``index`` from :func:`common.data.index_images` saves indexing ``data_dir`` again).
    """
    directory = Path(cache_dir).expanduser().resolve()
    if not directory.is_dir():
        raise UserError(f"image cache {directory} does not exist (build it with python -m common.image_cache)")
    if size is None:
        sizes = sorted(int(p.stem.split("-", 1)[1]) for p in directory.glob("manifest-*.json")
                       if p.stem.split("-", 1)[1].isdigit())
        if len(sizes) > 1:
            raise UserError(f"image cache {directory} holds several sizes ({', '.join(map(str, sizes))}); "
                            "choose one with --cache-size")
        if not sizes:
            unfinished = sorted(directory.glob("images-*.npy.partial"))
            if unfinished:
                raise UserError(f"image cache {directory} is unfinished ({unfinished[0].name} has no manifest): "
                                "rerun python -m common.image_cache with the same arguments to finish it")
            raise UserError(f"{directory} is not an image cache (no manifest-*.json); build one with "
                            "python -m common.image_cache")
        size = sizes[0]
    files = cache_files(directory, size)
    if not files["manifest"].exists():
        other = sorted(p.name for p in directory.glob("manifest-*.json"))
        state = "unfinished (no manifest), rerun its build to finish it" if files["partial"].exists() else \
            "absent" + (f"; the folder has {', '.join(other)}" if other else "")
        raise UserError(f"image cache of size {size} in {directory} is {state}")
    manifest = _read_json(files["manifest"])
    if not isinstance(manifest, dict) or manifest.get("format") != CACHE_FORMAT:
        raise UserError(f"{files['manifest']} is not a format-{CACHE_FORMAT} image cache manifest; rebuild the cache")
    if int(manifest.get("size", -1)) != size:
        raise UserError(f"{files['manifest']} says size {manifest.get('size')}, its name says {size}; rebuild it")
    records = _read_files_table(directory / manifest["files_file"])
    if len(records) != manifest["count"]:
        raise UserError(f"image cache {directory}: the files table lists {len(records):,} images, the manifest "
                        f"{manifest['count']:,}; rebuild it")
    if hash_records(records) != manifest["fingerprint"]:
        raise UserError(f"image cache {directory}: the files table does not match the manifest's fingerprint; "
                        "rebuild it")
    images_path = directory / manifest["images_file"]
    try:
        array = np.load(images_path, mmap_mode="r")
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read the image cache array {images_path}: {err}") from None
    if array.shape != (manifest["count"], size, size) or array.dtype != np.uint8:
        raise UserError(f"image cache array {images_path} has shape {array.shape} {array.dtype}, the manifest says "
                        f"({manifest['count']}, {size}, {size}) uint8; rebuild it")
    del array
    cache = ImageCache(directory, manifest, records)
    if names_needed is not None:
        cache.indices_of(list(names_needed))  # every needed image must be cached
    if data_dir is not None:
        check_cache_source(cache, data_dir, names_needed, index)
    return cache


def _read_files_table(path: Path) -> list[tuple[str, int, int]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror or err}") from None
    records = []
    for number, line in enumerate(lines, start=1):
        fields = line.split("\t")
        if len(fields) != 3 or not fields[1].isdigit() or not fields[2].lstrip("-").isdigit():
            raise UserError(f"{path}, line {number}: expected name, size and mtime; rebuild the cache")
        records.append((fields[0], int(fields[1]), int(fields[2])))
    return records


def check_cache_source(cache: ImageCache, data_dir, names_needed=None, index: dict | None = None) -> None:
    """Refuse (UserError) a cache built from another folder, or whose needed images changed since the build."""
    data_dir = Path(data_dir).expanduser().resolve()
    if cache.manifest["source"] != str(data_dir):
        raise UserError(f"image cache {cache.directory} was built from {cache.manifest['source']}, not {data_dir}; "
                        "build a cache for this folder or pass the folder it was built from")
    names = list(cache.names) if names_needed is None else sorted(set(names_needed))
    index = index_images(data_dir) if index is None else index
    gone = [n for n in names if n not in index]
    if gone:
        raise UserError(f"{len(gone)} cached image(s) are no longer under {data_dir} (first: {', '.join(gone[:3])})")
    now = file_records(index[n] for n in names)
    recorded = {name: (size, mtime) for name, size, mtime in cache.records}
    changed = [(name, recorded[name], (size, mtime)) for name, size, mtime in now if recorded[name] != (size, mtime)]
    if changed:
        name, (old_size, old_mtime), (new_size, new_mtime) = changed[0]
        what = f"size {old_size} -> {new_size} bytes" if old_size != new_size else "modification time"
        raise UserError(f"{len(changed)} image(s) under {data_dir} changed since the image cache {cache.directory} "
                        f"was built (fingerprint {cache.fingerprint[:12]} no longer matches; first: {name}, {what}); "
                        "rebuild the cache")


def eval_view_note(cache_size: int, img_size: int) -> str | None:
    """None when the cached eval view of ``img_size`` equals the PNG path's (``eval_resize(img_size) == S``), else
    one line saying what differs (print it where a run opens the cache)."""
    wanted = eval_resize(img_size)
    if wanted == cache_size:
        return None
    how = "upsampled, losing detail" if wanted > cache_size else "resized again"
    return (f"the image cache stores {cache_size}-px images but {img_size}-px models are evaluated on "
            f"{wanted}-px resizes: the cached images are {how}, so the eval view differs slightly from the PNG path's "
            f"(a cache of size {wanted} avoids it)")


# --------------------------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------------------------
class CachedImageSource:
    """The cache as an image source for :class:`common.data.CXR8Dataset`: ``load(name)`` -> PIL ``L`` image
    ``S x S``. With the PNG path's transforms this is the "cached, CPU augmentation" loader (one read per image)."""

    def __init__(self, cache: ImageCache):
        self.cache = cache

    def load(self, name: str) -> Image.Image:
        return Image.fromarray(np.array(self.cache.array[self.cache.index_of(name)]), mode="L")


def crop_transform(img_size: int, train: bool, crop_scale=(0.08, 1.0)):
    """The geometric part of :func:`common.data.build_transform` (PIL in, PIL out, same random draws): train
    RandomResizedCrop + horizontal flip, eval Resize(eval_resize) + CenterCrop. With it :class:`CachedBatchDataset`
    delivers uint8 crops ``[B, img_size, img_size]``, 12 times fewer bytes than float 3-channel batches; the training
    process finishes them with :meth:`common.device_augment.DeviceAugment.to_model_input`."""
    if train:
        return transforms.Compose([transforms.RandomResizedCrop(img_size, scale=crop_scale),
                                   transforms.RandomHorizontalFlip()])
    return transforms.Compose([transforms.Resize(eval_resize(img_size)), transforms.CenterCrop(img_size)])


class CachedBatchDataset(torch.utils.data.Dataset):
    """Images of ``names`` from a cache with their ``labels`` ([N, 14]), read a whole batch at a time.

    ``dataset[list_of_positions]`` (what :func:`cached_loader`'s workers call, once per batch) reads the batch with one
    sorted fancy index of the memory map and returns ``{"image", "target", "index"}``; ``target`` float32
    ``[B, 14]``; ``index`` int64 ``[B]``, the positions in ``names``; ``image``, in the requested order:

    - without ``transform``: uint8 ``[B, S, S]``, to augment on the device with
      :class:`common.device_augment.DeviceAugment`;
    - with a ``transform`` that returns PIL images (:func:`crop_transform`): the per-image CPU crops as uint8
      ``[B, H, W]``, to finish with ``DeviceAugment.to_model_input`` on the device;
    - with a ``transform`` that returns tensors (:func:`common.data.build_transform`): those stacked, exactly the PNG
      path's batches.

    ``dataset[int]`` returns one sample the same way (``image`` without the batch dimension).
    """

    def __init__(self, cache: ImageCache, names, labels, transform=None):
        if len(names) != len(labels):
            raise ValueError(f"{len(names)} names but {len(labels)} label rows")
        self.cache = cache
        self.names = list(names)
        self.rows = cache.indices_of(self.names)
        self.targets = torch.as_tensor(np.asarray(labels), dtype=torch.float32)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            batch = self.read_batch([int(index)])
            return {key: value[0] for key, value in batch.items()}
        return self.read_batch(index)

    def __getitems__(self, indices) -> list[dict]:
        """A DataLoader with ``batch_size`` set calls this: one read for the batch, returned as samples to collate."""
        batch = self.read_batch(indices)
        return [{key: value[k] for key, value in batch.items()} for k in range(len(batch["index"]))]

    def read_batch(self, indices) -> dict:
        """The batch of dataset positions ``indices`` (one read of the cache)."""
        positions = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        images = self.cache.read(self.rows[positions.numpy()])
        if self.transform is None:
            image = torch.from_numpy(images)
        else:
            outputs = [self.transform(Image.fromarray(array, mode="L")) for array in images]
            if isinstance(outputs[0], Image.Image):
                image = torch.from_numpy(np.stack([np.asarray(output, dtype=np.uint8) for output in outputs]))
            else:
                image = torch.stack(outputs)
        return {"image": image, "target": self.targets[positions], "index": positions}


def cached_loader(dataset: CachedBatchDataset, batch_size: int, shuffle: bool, seed: int = 0, drop_last: bool = False,
                  workers: int = 0, persistent_workers: bool = False) -> torch.utils.data.DataLoader:
    """A DataLoader whose workers each produce whole batches (a BatchSampler as the sampler, ``batch_size=None``).

    With ``shuffle`` the order comes from ``seed`` exactly as in :meth:`common.pipeline.SplitData.loader`
    (same generator use), so the cached and the PNG loader visit the images in the same order.
    """
    generator = torch.Generator().manual_seed(seed)
    sampler = (torch.utils.data.RandomSampler(dataset, generator=generator) if shuffle
               else torch.utils.data.SequentialSampler(dataset))
    batches = torch.utils.data.BatchSampler(sampler, batch_size, drop_last)
    return torch.utils.data.DataLoader(
        dataset, sampler=batches, batch_size=None, generator=generator, num_workers=workers,
        pin_memory=torch.cuda.is_available(), persistent_workers=persistent_workers and workers > 0,
        prefetch_factor=4 if workers > 0 else None,
    )


# --------------------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------------------
def get_args_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m common.image_cache",
                            description="Decode the CXR8 PNGs once into a memory-mapped uint8 image cache that "
                                        "training, evaluation, distillation and comparison read with --image-cache.")
    parser.add_argument("--data-dir", default=None, help="folder holding the PNGs (default: $CXR8_DATA_DIR)")
    parser.add_argument("--out", required=True, help="cache folder (created; several sizes can share it)")
    parser.add_argument("--size", type=positive_int, default=DEFAULT_SIZE,
                        help="stored side S in pixels: 256 (default; the eval view of 224-px models) or 512 "
                             "(448-px models); 7.3 GB / 29 GB for the whole data set")
    parser.add_argument("--workers", type=positive_int, default=None, help="decoding processes (default: all cores)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--split", default="official",
                       help="cache the images of this split: official (default), arnoweng or a list folder")
    which.add_argument("--all", action="store_true", help="cache every PNG under --data-dir")
    parser.add_argument("--label-file", default=None, help="labels of the split (2017, v2020 or a Data_Entry CSV)")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="as for training (does not change the images)")
    parser.add_argument("--seed", type=int, default=0, help="as for training (does not change the images)")
    return parser


def main(argv=None) -> None:
    args = get_args_parser().parse_args(argv)
    data_dir = args.data_dir or os.environ.get("CXR8_DATA_DIR")
    if not data_dir:
        raise UserError("no image folder: pass --data-dir (the folder holding the CXR8 PNGs) or set CXR8_DATA_DIR")
    if args.size not in SIZES:
        print(f"note: --size {args.size} is neither 256 nor 512; the cached eval view equals the PNG one only for "
              f"models whose eval resize is {args.size}")
    if args.all:
        names = sorted(index_images(data_dir))
        print(f"caching all {len(names):,} PNGs under {data_dir}")
    else:
        split = build_split(args.split, args.label_file, args.val_fraction, args.seed)
        names = sorted({name for part in split.parts.values() for name in part.names})
        print(f"caching the {len(names):,} images of {split.describe()}")
    start = time.perf_counter()
    cache = build_image_cache(data_dir, names, args.out, size=args.size, workers=args.workers)
    print(f"done in {time.perf_counter() - start:.1f} s: {cache}")


if __name__ == "__main__":
    sys.exit(run_main(main))
