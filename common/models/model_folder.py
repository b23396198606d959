"""A model folder to publish on a model hub, and reading it back (``predict.py --checkpoint DIR``, ``--pretrained DIR``,
``hubconf.py``).

The folder holds:

- ``model.safetensors``: the state dict (no pickle: loading it never runs code). Folders 3-5 use timm's own key
  names, so ``timm.create_model(config["architecture"], pretrained=True,
  pretrained_cfg_overlay={"file": ".../model.safetensors"}, num_classes=14)`` also reads it;
- ``config.json``: timm's layout (``architecture``, ``num_classes``, ``num_features``, ``global_pool``,
  ``label_names``, ``pretrained_cfg`` with ``input_size``, ``interpolation``, ``crop_pct``, ``crop_mode``, ``mean``,
  ``std``, ``first_conv``, ``classifier``, ``license``...) plus a ``dtforcxr8`` section: the registry name and input
  size, the validation-chosen thresholds, the out-of-distribution statistics (:mod:`common.inference.ood`), the
  run identity, the checkpoint it was exported from and the training flags;
- ``README.md``: the model card;
- ``model.onnx``: the ONNX export (with its ``ood_score`` output when there are OOD statistics).

:func:`read_model_folder` returns a dict shaped like one of this project's checkpoints.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from torch import nn

from common.atomic import save_bytes_atomic, write_text_atomic
from common.errors import UserError
from common.inference.ood import check_ood_statistics
from common.inference.onnx import export_onnx
from common.models.registry import model_info

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
CARD_NAME = "README.md"
ONNX_NAME = "model.onnx"
SECTION = "dtforcxr8"
FORMAT_VERSION = 1


def is_model_folder(path) -> bool:
    """A folder with ``config.json`` (the caller then reads it with :func:`read_model_folder`)."""
    return Path(path).is_dir() and (Path(path) / CONFIG_NAME).is_file()


def _resize_short_side(img_size: int) -> int:
    # The evaluation view of common.data.images.eval_resize: shorter side to round(s * 256 / 224), centre crop s.
    return int(round(img_size * 256 / 224))


def _first_conv(model: nn.Module) -> str:
    return next(name for name, module in model.named_modules() if isinstance(module, nn.Conv2d))


def folder_config(model: nn.Module, model_name: str, img_size: int, mean: Sequence[float], std: Sequence[float],
                  class_names: Sequence[str], license_name: str, section: dict) -> dict:
    """``config.json``: timm's keys for the model and its evaluation preprocessing, plus the ``dtforcxr8``
    ``section`` (thresholds, OOD statistics, identity...)."""
    info = model_info(model_name)
    num_classes = int(model.get_classifier().out_features)
    pretrained_cfg = {
        "tag": "dtforcxr8", "custom_load": False, "input_size": [3, int(img_size), int(img_size)],
        "fixed_input_size": bool(info.fixed_input_size), "interpolation": "bilinear",
        "crop_pct": round(int(img_size) / _resize_short_side(int(img_size)), 6), "crop_mode": "center",
        "mean": [float(v) for v in mean], "std": [float(v) for v in std], "num_classes": num_classes,
        "first_conv": _first_conv(model), "classifier": info.head_prefix.rstrip("."), "license": license_name,
        "label_names": list(class_names),
    }
    return {"architecture": info.timm_name or model_name, "num_classes": num_classes,
            "num_features": int(model.num_features), "global_pool": "avg", "label_names": list(class_names),
            "pretrained_cfg": pretrained_cfg,
            SECTION: {"format_version": FORMAT_VERSION, "model_name": model_name, "img_size": int(img_size),
                      "output": "14 independent sigmoid probabilities (the network returns logits)", **section}}


def write_model_folder(folder, model: nn.Module, config: dict, card_text: str) -> Path:
    """Write ``model.safetensors``, ``config.json`` (:func:`folder_config`), ``README.md`` and ``model.onnx``
    into ``folder`` (created), each atomically. Returns the folder."""
    from safetensors.torch import save

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ours = config[SECTION]
    tensors = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    save_bytes_atomic(save(tensors, metadata={"format": "pt", "model_name": ours["model_name"]}),
                      folder / WEIGHTS_NAME)
    write_text_atomic(json.dumps(config, indent=2) + "\n", folder / CONFIG_NAME)
    write_text_atomic(card_text, folder / CARD_NAME)
    cfg = config["pretrained_cfg"]
    export_onnx(model, ours["img_size"], folder / ONNX_NAME, mean=cfg["mean"], std=cfg["std"],
                model_name=ours["model_name"], class_names=config["label_names"], ood=ours.get("ood"))
    return folder


def read_model_folder(folder) -> dict:
    """A model folder as a checkpoint dict: ``model`` (the state dict), ``model_name``, ``num_classes``,
    ``img_size``, ``mean``, ``std``, ``class_names``, ``val_thresholds``, ``ood``, ``identity``, ``config``
    (the training flags), ``epoch``, ``val_mean_auroc`` and ``kind`` ``"model folder"``.

    Raises:
        UserError: no ``config.json`` or ``model.safetensors``, or a config without the ``dtforcxr8`` section.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    for path in (config_path, weights_path):
        if not path.is_file():
            raise UserError(f"{folder} is not a model folder: {path.name} is missing (write one with "
                            "predict.py --export-hub DIR)")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read {config_path}: {err}") from None
    ours = config.get(SECTION) if isinstance(config, dict) else None
    if not isinstance(ours, dict) or "model_name" not in ours:
        raise UserError(f"{config_path} has no {SECTION!r} section with a model_name (not a DTforCXR8 model folder)")
    try:
        state_dict = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as err:
        raise UserError(f"cannot read {weights_path}: {err}") from None
    if ours.get("ood") is not None:
        check_ood_statistics(ours["ood"], str(config_path))
    cfg = config["pretrained_cfg"]
    thresholds = ours.get("thresholds")
    return {"model": state_dict, "model_name": ours["model_name"], "num_classes": int(config["num_classes"]),
            "img_size": int(ours["img_size"]), "mean": list(cfg["mean"]), "std": list(cfg["std"]),
            "class_names": list(config["label_names"]),
            "val_thresholds": None if thresholds is None else [float(thresholds[c]) for c in config["label_names"]],
            "ood": ours.get("ood"), "identity": ours.get("identity"), "config": ours.get("training_flags") or {},
            "epoch": ours.get("epoch"), "val_mean_auroc": ours.get("val_mean_auroc"), "kind": "model folder",
            "folder": str(folder)}

