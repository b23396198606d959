"""Reading checkpoint files without running code from them (docs/guide/trust.md, "A checkpoint file cannot run code").

A pickle can name any importable function and have it called while it is read (``__reduce__``), so a ``.pth`` file
from elsewhere is a program. Every checkpoint this package reads goes through :func:`read_checkpoint_file`:

- ``torch.load(..., weights_only=True)``: tensors, numbers, strings and containers of them, nothing else. This
  project's checkpoints, teacher caches and training states hold only these.
- ``published_formats=True`` (initial weights, ``--pretrained`` / ``--student-init``) adds an allow-list of exactly
  the classes the published training checkpoints pickle besides tensors (:data:`PUBLISHED_FORMAT_CLASSES`): the
  ``argparse.Namespace`` of the training flags (timm, DeiT-style and arnoweng-style training scripts save ``args``)
  and numpy scalars with their dtypes (a best metric saved as ``np.float64``). None of them runs code when built.
- Anything else is refused with the name of what the file asked for. ``trust=True`` (the ``--trust-checkpoint``
  flag of the training scripts) is the only way to unpickle such a file, and it is said so when used.
"""
from __future__ import annotations

import argparse
import io
import os
import pickle
import pickletools
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.errors import UserError

try:  # numpy 2 moved the scalar reconstructor; files written under numpy 1 still name numpy.core.multiarray.scalar
    from numpy._core.multiarray import scalar as _numpy_scalar
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import scalar as _numpy_scalar

#: The numpy scalar types whose dtype objects a published checkpoint may carry (a metric, an epoch count).
_NUMPY_SCALAR_TYPES = (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64,
                       np.float16, np.float32, np.float64)

#: The classes the published formats need besides tensors (docs/architectures.md §14.12), each under the name a pickle
#: spells it with: the training flags and numpy scalars (the reconstructor under its numpy 1 and numpy 2 names, the
#: dtype and the dtype classes numpy >= 1.25 builds them as).
PUBLISHED_FORMAT_CLASSES = (
    argparse.Namespace,
    (_numpy_scalar, "numpy._core.multiarray.scalar"),
    (_numpy_scalar, "numpy.core.multiarray.scalar"),
    np.dtype,
    *(type(np.dtype(kind)) for kind in _NUMPY_SCALAR_TYPES),
)

TRUST_FLAG = "--trust-checkpoint"


def allowed_class_names() -> list[str]:
    """The dotted names of :data:`PUBLISHED_FORMAT_CLASSES`, as a refusal lists them."""
    names = []
    for entry in PUBLISHED_FORMAT_CLASSES:
        name = entry[1] if isinstance(entry, tuple) else f"{entry.__module__}.{entry.__qualname__}"
        names.append(name)
    return names


def read_checkpoint_file(path: str | os.PathLike, *, published_formats: bool = False, trust: bool = False,
                         override: str | None = None, mmap: bool = False, what: str = "checkpoint") -> Any:
    """``torch.load`` of ``path`` on the CPU that never runs code from the file unless ``trust`` is set.

    Args:
        path: the file (its existence is checked by the caller, which knows which flag named it).
        published_formats: also allow :data:`PUBLISHED_FORMAT_CLASSES` (initial weights in a published format).
        trust: unpickle whatever the file holds (``weights_only=False``): runs code from the file; the caller's
            explicit opt-in only, announced on stdout.
        override: the flag that sets ``trust``, named in the refusal; None where no flag may (this project's own
            checkpoints never need one).
        mmap: map the tensors instead of reading them (zip-format files only).
        what: what the file is, for messages ("checkpoint", "teacher cache").

    Raises:
        UserError: the file asks for anything else (one line naming it and ``override``), or cannot be read.
    """
    path = Path(path)
    if trust:
        print(f"=> {TRUST_FLAG}: unpickling {path} with weights_only=False, which runs any code the file holds")
        return _load(path, what, weights_only=False, mmap=mmap and zipfile.is_zipfile(path))
    allowed = list(PUBLISHED_FORMAT_CLASSES) if published_formats else []
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipfile.is_zipfile(path))
    except pickle.UnpicklingError as err:
        if "Weights only load failed" not in str(err):
            raise UserError(f"cannot read {what} {path}: {_first_line(err)}") from None
        asked = _requested_name(path, str(err), allowed)
        if asked is None:  # no global asked for: damaged or not a pickle at all (garbage bytes, a PNG)
            detail = next((line.split("error:", 1)[1].strip() for line in str(err).splitlines() if "error:" in line),
                          "")
            raise UserError(f"cannot read {what} {path}: not a torch checkpoint ({detail or 'unreadable pickle'})"
                            ) from None
    except Exception as err:  # torch.load raises many types (zip, runtime, key, EOF); all mean "not readable".
        raise UserError(f"cannot read {what} {path}: {type(err).__name__}: {_first_line(err)}") from None
    besides = ("tensors, plain values or the published formats' argparse.Namespace and numpy scalars"
               if published_formats else "tensors and plain values (all a DTforCXR8 file ever holds)")
    advice = (f"; if you trust where it came from, {override} loads it anyway (that runs code from the file)"
              if override else "")
    raise UserError(f"{what} {path} asks for {asked}, not {besides}; unpickling it could run code from the file, so "
                    f"it was not loaded{advice}")


def _load(path: Path, what: str, **options) -> Any:
    try:
        return torch.load(path, map_location="cpu", **options)
    except Exception as err:  # as above: any failure of torch.load means the file cannot be read
        raise UserError(f"cannot read {what} {path}: {type(err).__name__}: {_first_line(err)}") from None


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [""])[0][:200]


def _requested_name(path: Path, message: str, allowed) -> str | None:
    """What the refused file asked for, found without unpickling it: torch's message names the global it stopped
    at; otherwise the pickle's opcodes are scanned for the globals it imports. None: it asked for none."""
    match = re.search(r"GLOBAL ([\w.]+)", message) or re.search(r"got <class '([\w.]+)'>", message)
    if match:
        return match.group(1)
    allowed_names = set(allowed_class_names()) if allowed else set()
    found = [name for name in _pickle_globals(path) if name not in allowed_names]
    return found[0] + (f" (and {len(found) - 1} more)" if len(found) > 1 else "") if found else None


def _pickle_globals(path: Path) -> list[str]:
    """The ``module.name`` globals a pickle (raw, legacy torch or zip-format) imports, in order, read with
    :mod:`pickletools` (which decodes opcodes and executes nothing)."""
    try:
        if zipfile.is_zipfile(path):
            return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
        data = path.read_bytes()
    except (OSError, RuntimeError, ValueError):
        return []
    names, strings = [], []
    stream = io.BytesIO(data)
    try:
        # A legacy torch file is several pickles in a row (magic number, versions, the object, storage keys).
        while stream.tell() < len(data):
            for opcode, argument, _ in pickletools.genops(stream):
                if opcode.name == "GLOBAL":
                    names.append(str(argument).replace(" ", "."))
                elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                    names.append(f"{strings[-2]}.{strings[-1]}")
                elif isinstance(argument, str) and "UNICODE" in opcode.name:
                    strings.append(argument)
    except (ValueError, EOFError):  # raw tensor bytes after the pickles, or damage: what was found stands
        pass
    return list(dict.fromkeys(names))
