"""The project's five networks by name, and loading of their published checkpoints.

- :func:`create_model` builds ``eeea_c2``, ``ofa595``, ``chexnet``, ``visformer_small`` or ``autoformerv2_base``
  with random weights (never downloading), optionally followed by :func:`load_pretrained`.
- :func:`list_models` lists the names; :func:`model_info` returns a :class:`ModelInfo` (native size, mean/std,
  ImageNet URL, ...).
- :func:`load_pretrained` loads any published checkpoint layout (darmo, OFA, torchvision, arnoweng CheXNet,
  danczs Visformer, Cream AutoFormerV2, timm, the original repository's fine-tunes and this project's own
  checkpoints) strictly, after explicit key conversion.

All models return logits and share ``forward_features``, ``forward_head(x, pre_logits=False)``,
``reset_classifier(num_classes)``, ``num_features`` and ``default_cfg``.
"""
from common.models.pretrained import load_pretrained
from common.models.registry import ModelInfo, check_img_size, create_model, list_models, model_info

__all__ = ["ModelInfo", "check_img_size", "create_model", "list_models", "load_pretrained", "model_info"]
