"""The read side of the image cache: every PNG decoded once into one uint8 array ``[N, S, S]`` in a memory-mapped
``.npy``.

Build it with ``python -m common.image_cache --data-dir D --out DIR`` (:mod:`common.data.cache_build`); read it
with :func:`open_image_cache`, batch by batch with :class:`~common.data.datasets.CachedBatchDataset` and
:func:`~common.data.datasets.cached_loader`.

Files in the cache folder, for a size S (several sizes can share a folder):

- ``images-S.npy``     uint8 ``[N, S, S]``, the images in the order of the files table;
- ``files-S.tsv``      one line per image: name, size in bytes, mtime in ns (the per-file fingerprint);
- ``manifest-S.json``  source folder, S, the resize rule, count, the fingerprint (sha256 of the files table), the
                       package version. It is written last: a folder without it is an unfinished build, never used;
- while building: ``images-S.npy.partial`` and ``build-S.json`` (the chunks done), which let an interrupted build
  resume.

The stored image is the evaluation view before its centre crop (:func:`~common.data.cache_build.stored_image`): the shorter side resized to
S exactly as ``torchvision.transforms.Resize(S)`` does on the PIL image (bilinear with PIL's antialiasing), then
the centre S x S. For a model evaluated at ``img_size`` with ``eval_resize(img_size) == S`` (224 with S=256, 448
with S=512), the centre crop of the stored image is bit-identical to the PNG path's ``Resize + CenterCrop`` view.
A non-square image loses the ends of its longer side, as its evaluation view does; the build says how many.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from common.data.fingerprint import file_records, hash_records
from common.data.images import eval_resize, index_images
from common.errors import UserError

CACHE_FORMAT = 1
DEFAULT_SIZE = 256
SIZES = (256, 512)
CHUNK_SIZE = 64
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


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read {path}: {err}") from None


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
                     index: dict | None = None, prefer: int | None = None) -> ImageCache:
    """Open a complete cache and check it; returns an :class:`ImageCache`.

    ``size`` chooses among the sizes a folder holds (``--cache-size``); without it the folder's only size is used,
    or, when it holds several, ``prefer`` (the size the model needs: ``eval_resize(img_size)``, 256 for 224-px
    models, 512 for 448-px ones) when it is one of them.

    Refused with a UserError naming what differs: an unfinished build (no manifest), a manifest of another format,
    an array or files table that does not match the manifest, a ``size`` other than the cache's, names of
    ``names_needed`` the cache lacks; and when ``data_dir`` is given, another source folder or images that changed
    since the build (size or mtime of the needed files, or of all cached files when ``names_needed`` is None;
    ``index`` from :func:`common.data.images.index_images` saves indexing ``data_dir`` again).
    """
    directory = Path(cache_dir).expanduser().resolve()
    if not directory.is_dir():
        raise UserError(f"image cache {directory} does not exist (build it with python -m common.image_cache)")
    if size is None:
        sizes = sorted(int(p.stem.split("-", 1)[1]) for p in directory.glob("manifest-*.json")
                       if p.stem.split("-", 1)[1].isdigit())
        if len(sizes) > 1 and prefer in sizes:
            sizes = [prefer]
        elif len(sizes) > 1:
            wanted = f" and none is the {prefer}-px size this model is evaluated at" if prefer else ""
            raise UserError(f"image cache {directory} holds several sizes ({', '.join(map(str, sizes))}){wanted}; "
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
