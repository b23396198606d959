"""Loading published and project checkpoints into the registry's models, strictly.

Every published layout (docs/architectures.md §10) is converted to this project's key names by the model's converter
(:mod:`common.models.converters`, named in its registry entry): explicit, deterministic renames, then loaded with ``strict=True``. The only tolerated difference is the classifier: a checkpoint whose head
has another class count (an ImageNet file loaded into a 14-class model) or no head at all leaves the model's fresh
head in place, and the skipped keys are reported. Anything else that does not match is a :class:`UserError` naming
the file and the first offending keys: ``strict=False`` silently keeping random weights is how the arnoweng
checkpoint gave AUROC 0.5 to its users (docs/architectures.md §14.8).
"""
from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Union
from urllib.error import URLError
from urllib.parse import urlparse

import torch
from torch import nn

from common.errors import UserError
from common.models.converters import ConversionError, StateDict, strip_prefix
from common.models.registry import ModelInfo, model_info
from common.models.serialization import TRUST_FLAG, read_checkpoint_file

# Seconds to wait for a TCP connection to the weights' host before declaring the network unreachable.
NETWORK_TIMEOUT_S = 5.0

# Prefixes left by wrappers: DataParallel/DDP (`module.`) and torch.compile (`_orig_mod.`).
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def load_pretrained(model: nn.Module, model_name: str, source: Union[str, os.PathLike], *, trust: bool = False,
                    checkpoint: Any = None) -> list[str]:
    """Load weights into ``model`` (a :func:`create_model` ``model_name`` network) and report what was done.

    Args:
        model: the model to fill; its current head is kept when the checkpoint's head has another class count.
        model_name: registry name of ``model``.
        source: ``"imagenet"`` (the published ImageNet-1k file, downloaded into the torch hub cache unless
            already there) or the path of a checkpoint in one of these layouts:

            - darmo ``eeea-c2.pt`` / ``ofa595_1k_b1a18d5.pt``, the official OFA ``init`` (``{'state_dict': ...}``),
              ofa 0.1.0 names (``blocks.{i}.conv.*``), and the original repository's ``model1/2.pth`` (darmo after
              ``reset_classifier``: head ``classifier.{weight,bias}``);
            - torchvision ``densenet121-a639ec97.pth`` (``norm.1`` names), arnoweng ``model.pth.tar``
              (``module.densenet121.`` prefix, ``classifier.0.`` head) and the original's ``model3.pth``;
            - danczs ``visformer_small.pth`` (``{'model': ...}``, ``.bn.`` keys) and the original's ``model4.pth``
              (``head.0.``);
            - Cream ``S3-B.pth``, darmo ``autoformerv2_base.pt`` and the original's ``model5.pth`` (converted with
              timm's Swin ``checkpoint_filter_fn``);
            - timm's own files, with or without ``module.`` / ``_orig_mod.`` prefixes;
            - this project's checkpoints (``{'model': ..., 'model_name': ..., 'num_classes': ...}``) and model
              folders (``predict.py --export-hub DIR``: ``model.safetensors`` and ``config.json``).
        trust: unpickle a file that asks for classes outside the published formats' allow-list (runs code from the
            file; ``--trust-checkpoint``). Without it such a file is refused naming the class.
        checkpoint: what :func:`read_weights_file` already read from ``source`` (saves reading it twice).

    A checkpoint head with another class count, or no head, leaves the model's head as it is (reported); any
    other difference is an error. Swin relative-position tables of another window size are resized by timm's
    converter (reported). The word ``"imagenet"`` always means the published weights, never a file of that name.

    Returns:
        Human-readable notes (also printed, one ``=> ...`` line each): conversions applied, head keys skipped.

    Raises:
        UserError: missing or unreadable file, wrong architecture, or any key/shape mismatch outside the head.
    """
    info = model_info(model_name)
    notes: list[str] = []
    path = imagenet_checkpoint_path(model_name) if str(source) == "imagenet" else Path(source)
    if checkpoint is None:
        checkpoint = read_weights_file(path, model_name, trust=trust)
    model_classes = _head_rows(model.state_dict(), info)
    state_dict = _extract_state_dict(checkpoint, path, model_name, model_classes, notes)
    state_dict = _strip_wrapper_prefixes(state_dict, notes)
    try:
        state_dict = info.converter(state_dict, model, notes)
    except ConversionError as err:
        raise UserError(f"checkpoint {path}: {err}") from None
    state_dict = _match_to_model(state_dict, model, info, path, notes)
    # Strict: _match_to_model has produced exactly the model's keys and shapes.
    model.load_state_dict(state_dict, strict=True)
    notes.insert(0, f"loaded {path} into {model_name}")
    for note in notes:
        print(f"=> {note}")
    return notes


def imagenet_checkpoint_path(model_name: str) -> Path:
    """Local path of ``model_name``'s published ImageNet weights, downloading them into the torch hub cache.

    A file already in ``<torch hub dir>/checkpoints/`` is used as is. When the host cannot be reached within
    :data:`NETWORK_TIMEOUT_S` seconds, a :class:`UserError` gives the URL to fetch by hand.
    """
    url = model_info(model_name).imagenet_url
    destination = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name
    if destination.is_file():
        return destination
    offline_hint = (f"download {url} on a machine with network access and pass its path with --pretrained PATH "
                    f"(or put it at {destination})")
    parsed = urlparse(url)
    try:
        # Fail at once when offline: torch's downloader has no timeout and can hang for minutes.
        socket.create_connection((parsed.hostname, parsed.port or 443), timeout=NETWORK_TIMEOUT_S).close()
    except OSError as err:
        raise UserError(f"cannot reach {parsed.hostname} to download the ImageNet weights of {model_name} "
                        f"({err}); {offline_hint}") from None
    destination.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(destination), progress=True)
    except (URLError, OSError) as err:
        raise UserError(f"downloading {url} failed ({err}); {offline_hint}") from None
    return destination


def read_weights_file(source: Union[str, os.PathLike], model_name: str | None = None, trust: bool = False) -> Any:
    """What :func:`load_pretrained` reads from ``source`` (``"imagenet"`` or a path), without running code from it.

    Published formats that pickle the training flags or numpy scalars load with an allow-list of exactly those
    classes (:func:`common.models.serialization.read_checkpoint_file`); anything else is refused naming the class,
    unless ``trust`` (``--trust-checkpoint``). Read once by a caller that also needs the file's metadata (the
    patients a project checkpoint recorded) and handed to :func:`load_pretrained` as ``checkpoint``.
    """
    path = imagenet_checkpoint_path(model_name) if str(source) == "imagenet" else Path(source)
    if not path.exists():
        raise UserError(f"checkpoint not found: {path}")
    if path.is_dir():
        # A model folder (predict.py --export-hub): safetensors weights and a config.json, never a pickle. Any
        # other folder is refused by read_model_folder, naming the file it lacks.
        from common.models.model_folder import read_model_folder
        return read_model_folder(path)
    if not path.is_file():
        raise UserError(f"checkpoint is not a file: {path}")
    return read_checkpoint_file(path, published_formats=True, trust=trust, override=TRUST_FLAG)


def _extract_state_dict(checkpoint: Any, path: Path, model_name: str, model_classes: Union[int, None],
                        notes: list[str]) -> StateDict:
    if not isinstance(checkpoint, Mapping):
        raise UserError(f"{path} holds a {type(checkpoint).__name__}, not a state dict or checkpoint dict")
    if "model_name" in checkpoint:
        # This project's own format: refuse another architecture before looking at any key.
        if checkpoint["model_name"] != model_name:
            raise UserError(f"{path} is a {checkpoint['model_name']} checkpoint "
                            f"({checkpoint.get('num_classes', '?')} classes) but the model is {model_name} "
                            f"({model_classes} classes)")
        if "model" not in checkpoint:
            raise UserError(f"{path} has a 'model_name' entry but no 'model' state dict")
        state_dict = _check_tensors(checkpoint["model"], path)
        declared = checkpoint.get("num_classes")
        head = _head_rows(state_dict, model_info(model_name))
        if declared is not None and head is not None and declared != head:
            raise UserError(f"{path} says num_classes={declared} but its {model_name} head has {head} outputs, "
                            f"so it cannot be matched to the {model_classes}-class model")
        return state_dict
    # Unwrap training-checkpoint containers: {'state_dict': ...} (OFA init, arnoweng, timm train) or
    # {'model': ...} (DeiT-style: danczs Visformer, Cream S3-B).
    for wrapper in ("state_dict", "model"):
        if wrapper in checkpoint and isinstance(checkpoint[wrapper], Mapping):
            notes.append(f"took the weights from the checkpoint's {wrapper!r} entry")
            return _check_tensors(checkpoint[wrapper], path)
    return _check_tensors(checkpoint, path)


def _check_tensors(state_dict: Mapping, path: Path) -> StateDict:
    for key, value in state_dict.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise UserError(f"{path} is not a state dict: entry {key!r} is a {type(value).__name__}")
    if not state_dict:
        raise UserError(f"{path} holds an empty state dict")
    return dict(state_dict)


def _head_rows(state_dict: Mapping[str, torch.Tensor], info: ModelInfo) -> Union[int, None]:
    weight = state_dict.get(info.head_prefix + "weight")
    return None if weight is None else int(weight.shape[0])


def _strip_wrapper_prefixes(state_dict: StateDict, notes: list[str]) -> StateDict:
    # Repeat: a compiled DataParallel model saves `module._orig_mod.` (or the reverse).
    while True:
        stripped = state_dict
        for prefix in _WRAPPER_PREFIXES:
            stripped = strip_prefix(stripped, prefix, notes, "a DataParallel/DDP or torch.compile wrapper")
        if stripped is state_dict:
            return state_dict
        state_dict = stripped


def _first(keys: list[str], limit: int = 3) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def _match_to_model(state_dict: StateDict, model: nn.Module, info: ModelInfo, path: Path,
                    notes: list[str]) -> StateDict:
    """Return ``state_dict`` with exactly the model's keys, applying the head rule; raise on any other mismatch."""
    target = model.state_dict()
    result = dict(state_dict)

    # Checkpoints saved before PyTorch 0.4.1 (arnoweng's) have no BatchNorm counters; start them at 0.
    if not any(k.endswith("num_batches_tracked") for k in state_dict):
        counters = [k for k in target if k.endswith("num_batches_tracked")]
        if counters:
            for key in counters:
                result[key] = torch.zeros_like(target[key])
            notes.append(f"the checkpoint predates BatchNorm's num_batches_tracked; set {len(counters)} counters to 0")

    head_keys = [k for k in target if k.startswith(info.head_prefix)]
    ckpt_head_keys = [k for k in state_dict if k.startswith(info.head_prefix)]
    model_classes = int(target[info.head_prefix + "weight"].shape[0]) if head_keys else 0
    if head_keys and not ckpt_head_keys:
        notes.append(f"the checkpoint has no classifier; kept the model's freshly initialised "
                     f"{model_classes}-class head")
        result.update({k: target[k] for k in head_keys})
    elif head_keys and sorted(ckpt_head_keys) == sorted(head_keys):
        shapes_differ = [k for k in head_keys if state_dict[k].shape != target[k].shape]
        # Only the class count (dim 0) may differ; another input width means another architecture.
        if shapes_differ and all(state_dict[k].shape[1:] == target[k].shape[1:] for k in head_keys):
            ckpt_classes = int(state_dict[info.head_prefix + "weight"].shape[0])
            notes.append(
                f"skipped the checkpoint's {ckpt_classes}-class head "
                f"({', '.join(f'{k} {list(state_dict[k].shape)}' for k in head_keys)}); "
                f"the model keeps its freshly initialised {model_classes}-class head")
            result.update({k: target[k] for k in head_keys})

    missing = [k for k in target if k not in result]
    unexpected = [k for k in result if k not in target]
    mismatched = [k for k in target if k in result and result[k].shape != target[k].shape]
    problems = []
    if missing:
        problems.append(f"missing keys: {_first(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_first(unexpected)}")
    if mismatched:
        shown = [f"{k} (checkpoint {list(result[k].shape)}, model {list(target[k].shape)})" for k in mismatched]
        problems.append(f"shape mismatch: {_first(shown)}")
        if any("pos_embed" in k for k in mismatched):
            problems.append("the model was built for another input size than the checkpoint (img_size)")
    if problems:
        raise UserError(f"checkpoint {path} does not fit {info.name} after key conversion: " + "; ".join(problems))
    return {k: result[k] for k in target}
