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

All models return logits and share ``forward_features``, ``forward_head(x, pre_logits=False)``,
``reset_classifier(num_classes)``, ``num_features`` and ``default_cfg``.
"""
from common.models.factory import create_model
from common.models.pretrained import load_pretrained
from common.models.registry import (
                                    ModelInfo,
                                    build_model,
                                    check_img_size,
                                    list_models,
                                    model_folders,
                                    model_for_folder,
                                    model_info,
                                    register_model,
                                    unregister_model,
)

__all__ = ["ModelInfo", "build_model", "check_img_size", "create_model", "list_models", "load_pretrained",
           "model_folders", "model_for_folder", "model_info", "register_model", "unregister_model"]
