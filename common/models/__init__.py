"""The project's networks by name, and loading of their published checkpoints.

- :func:`create_model` builds ``eeea_c2``, ``ofa595``, ``chexnet``, ``visformer_small`` or ``autoformerv2_base``
  (or any model added with :func:`register_model`) with random weights (never downloading), optionally followed
  by :func:`load_pretrained`.
- :func:`list_models` lists the names; :func:`model_info` returns a :class:`ModelInfo` (display name, numbered
  folder, native size, mean/std, ImageNet URL, checkpoint converter, ...); :func:`model_folders` maps the
  numbered folders to their models.
- :func:`load_pretrained` loads any published checkpoint layout (darmo, OFA, torchvision, arnoweng CheXNet,
  danczs Visformer, Cream AutoFormerV2, timm, the original repository's fine-tunes and this project's own
  checkpoints) strictly, after explicit key conversion.
- :mod:`common.models.profile`: parameter, MAC and latency measurements.

All models return logits and share ``forward_features``, ``forward_head(x, pre_logits=False)``,
``reset_classifier(num_classes)``, ``num_features`` and ``default_cfg``.

The names are resolved on first use (PEP 562), so importing the package does not import torch and timm.
"""
import importlib

_HOMES = {"create_model": "factory", "load_pretrained": "pretrained", **{name: "registry" for name in (
    "ModelInfo", "build_model", "check_img_size", "list_models", "model_folders", "model_for_folder", "model_info",
    "register_model", "unregister_model")}}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted([*globals(), *__all__])
