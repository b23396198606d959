"""The networks of the project by name: one entry per model holds everything about it.

An entry (:class:`ModelInfo` plus a builder) gives the model's builder, input size and normalisation, its
published-checkpoint converter, its display name and its numbered folder. Adding a model is one
:func:`register_model` call (and one numbered folder of scripts); nothing else in the package names models.

EEEA-Net-C2 and OFA-595 are built by :mod:`common.models.ofa_mobilenetv3`; CheXNet (DenseNet-121), Visformer-small
and AutoFormerV2-base (S3-B) come from timm, which holds numerically identical versions of the published networks
(docs/architectures.md §7-§9, §12). Nothing is downloaded while building.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional

from common.constants import IMAGENET_MEAN, IMAGENET_STD
from common.errors import UserError

if TYPE_CHECKING:  # annotations only: the registry's facts are read without importing torch (fast --help)
    from torch import nn

    from common.models import converters


@dataclass(frozen=True)
class ModelInfo:
    """Facts about one registered network.

    Attributes:
        name: registry name (also used in checkpoints and logs).
        display_name: how reports, tables and charts name the model; also the folder name after ``K-``.
        folder_index: K of the numbered folder ``K-<display_name>`` whose scripts train it (it writes
            ``modelK.pth``).
        converter: ``convert(state_dict, model, notes)`` from the published checkpoint layouts to this project's
            key names (:mod:`common.models.converters`).
        display_class_name: class name the original para-test scripts printed.
        native_size: input resolution the ImageNet weights were trained at.
        mean, std: input normalisation (ImageNet statistics for all five).
        imagenet_url: where the published ImageNet-1k weights live (docs/architectures.md §11).
        original_count_classes: head size the original para-test counted with (14, or 1000 where it forgot to
            replace the head).
        num_features: width of the pre-logits vector the classifier attaches to.
        head_prefix: state-dict prefix of the classifier's parameters in this project's naming.
        min_img_size: smallest square input the network can process.
        img_size_multiple: input sizes must be a multiple of this.
        fixed_input_size: True when the built model accepts only the ``img_size`` it was built for (position
            embeddings / attention windows depend on it); False when any size >= ``min_img_size`` works.
        timm_name: the timm architecture used, or None for the OFA subnets built here.
        cam_layer: ``model -> layer`` whose activations and gradients Grad-CAM combines (the last feature stage).
        cam_channels_last: that layer returns channels-last maps or tokens (Swin), which Grad-CAM must see as
            ``[B, C, H, W]``.
        cam_head: what lies between ``cam_layer`` and the logits, when it is small enough for the Grad-CAM channel
            weights to be written as explicit graph operations (:mod:`common.explain.browser_graph`):
            ``"pool_mix_linear"`` (mean pool, 1x1 convolution + hard-swish, linear: the OFA subnets),
            ``"pool_linear"`` (mean pool, linear: Grad-CAM equals CAM), ``"norm_pool_linear"`` (BatchNorm, mean
            pool, linear); None where no such form is written (the browser page then shows no heatmap).
        prints_comma_total: the original's para-test printed an extra "total, M" summary line (EEEA-Net-C2 only).
    """

    name: str
    display_name: str
    folder_index: int
    converter: converters.Converter
    display_class_name: str
    native_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    imagenet_url: str
    original_count_classes: int
    num_features: int
    head_prefix: str
    min_img_size: int
    img_size_multiple: int
    fixed_input_size: bool
    timm_name: Optional[str]
    cam_layer: Callable[[nn.Module], nn.Module]
    cam_channels_last: bool = False
    cam_head: Optional[str] = None
    prints_comma_total: bool = False

    @property
    def folder_name(self) -> str:
        """The numbered folder of the repository, e.g. ``3-CheXNet``."""
        return f"{self.folder_index}-{self.display_name}"


@dataclass(frozen=True)
class _Entry:
    info: ModelInfo
    build: Callable[[int, int], nn.Module]  # (num_classes, img_size) -> model with random weights


def _build_ofa(config_name: str) -> Callable[[int, int], nn.Module]:
    def build(num_classes: int, img_size: int) -> nn.Module:
        from common.models import ofa_mobilenetv3
        # Convolutions and global pooling only: the built network does not depend on the input size.
        return ofa_mobilenetv3.MobileNetV3(getattr(ofa_mobilenetv3, config_name), num_classes)
    return build


def _build_timm(timm_name: str, pass_img_size: bool) -> Callable[[int, int], nn.Module]:
    def build(num_classes: int, img_size: int) -> nn.Module:
        import timm
        kwargs = {"img_size": img_size} if pass_img_size else {}
        # pretrained=False: timm must never download at build time (weights come from load_pretrained).
        return timm.create_model(timm_name, pretrained=False, num_classes=num_classes, **kwargs)
    return build


def _converter(name: str) -> converters.Converter:
    """A function of :mod:`common.models.converters`, imported when first called (it needs torch)."""
    def convert(state_dict, model, notes):
        return getattr(importlib.import_module("common.models.converters"), name)(state_dict, model, notes)
    convert.__name__ = convert.__qualname__ = name
    return convert


def _info(**kwargs) -> ModelInfo:
    return ModelInfo(mean=IMAGENET_MEAN, std=IMAGENET_STD, **kwargs)


# Minimum sizes were found by building each model and running one forward pass per size (torch 2.14.1,
# timm 1.0.31): the OFA subnets pad every convolution, so any size works; DenseNet-121's last transition
# pooling needs >= 29; Visformer's stem and patch embeddings need an even size >= 32 (odd sizes make the stem
# output disagree with its position embedding); timm's Swin pads to whole windows but its 4x4 patch embedding
# needs >= 4.
_REGISTRY: dict[str, _Entry] = {
    "eeea_c2": _Entry(_info(
        name="eeea_c2", display_name="EEEA-Net-C2", folder_index=1, converter=_converter("convert_ofa"),
        prints_comma_total=True, display_class_name="MobileNetV3", native_size=192,
        imagenet_url="https://github.com/jitdee-ai/darmo/releases/download/0.0.1/eeea-c2.pt",
        original_count_classes=14, num_features=1280, head_prefix="classifier.linear.",
        min_img_size=1, img_size_multiple=1, fixed_input_size=False, timm_name=None,
        cam_layer=lambda model: model.final_expand_layer, cam_head="pool_mix_linear",
    ), _build_ofa("EEEA_C2_CONFIG")),
    "ofa595": _Entry(_info(
        name="ofa595", display_name="OFA-595", folder_index=2, converter=_converter("convert_ofa"),
        display_class_name="MobileNetV3", native_size=236,
        imagenet_url="https://github.com/jitdee-ai/darmo/releases/download/0.0.1/ofa595_1k_b1a18d5.pt",
        original_count_classes=14, num_features=1536, head_prefix="classifier.linear.",
        min_img_size=1, img_size_multiple=1, fixed_input_size=False, timm_name=None,
        cam_layer=lambda model: model.final_expand_layer, cam_head="pool_mix_linear",
    ), _build_ofa("OFA595_CONFIG")),
    "chexnet": _Entry(_info(
        name="chexnet", display_name="CheXNet", folder_index=3, converter=_converter("convert_densenet"),
        display_class_name="DenseNet121", native_size=224,
        imagenet_url="https://download.pytorch.org/models/densenet121-a639ec97.pth",
        original_count_classes=14, num_features=1024, head_prefix="classifier.",
        min_img_size=29, img_size_multiple=1, fixed_input_size=False, timm_name="densenet121",
        cam_layer=lambda model: model.features[-1],  # norm5: BatchNorm + ReLU after dense block 4
        cam_head="pool_linear",
    ), _build_timm("densenet121", pass_img_size=False)),
    "visformer_small": _Entry(_info(
        name="visformer_small", display_name="Visformer-small", folder_index=4,
        converter=_converter("convert_visformer"), display_class_name="Visformer", native_size=224,
        imagenet_url="https://github.com/danczs/Visformer/releases/download/v1.0.0/visformer_small.pth",
        original_count_classes=1000, num_features=768, head_prefix="head.",
        min_img_size=32, img_size_multiple=2, fixed_input_size=True, timm_name="visformer_small",
        cam_layer=lambda model: model.stage3, cam_head="norm_pool_linear",  # stage3 -> BatchNorm -> pool -> head
    ), _build_timm("visformer_small", pass_img_size=True)),
    "autoformerv2_base": _Entry(_info(
        name="autoformerv2_base", display_name="AutoFormerV2-base", folder_index=5,
        converter=_converter("convert_swin"), display_class_name="SSSTransformer", native_size=224,
        imagenet_url="https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-weights/"
                     "s3_b-a1e95db4.pth",
        original_count_classes=1000, num_features=768, head_prefix="head.fc.",
        min_img_size=4, img_size_multiple=1, fixed_input_size=True, timm_name="swin_s3_base_224",
        cam_layer=lambda model: model.layers[-1], cam_channels_last=True,
    ), _build_timm("swin_s3_base_224", pass_img_size=True)),
}


def register_model(info: ModelInfo, build: Callable[[int, int], nn.Module]) -> None:
    """Add a model: ``info`` says everything about it, ``build(num_classes, img_size)`` makes it with random weights.

    Raises:
        ValueError: the name or the folder number is taken already (a programming error, not a user's input).
    """
    if info.name in _REGISTRY:
        raise ValueError(f"model {info.name!r} is registered already")
    taken = {entry.info.folder_index: name for name, entry in _REGISTRY.items()}
    if info.folder_index in taken:
        raise ValueError(f"folder {info.folder_index} belongs to {taken[info.folder_index]!r} already")
    _REGISTRY[info.name] = _Entry(info, build)


def unregister_model(name: str) -> None:
    """Remove a model added with :func:`register_model` (tests register temporary models)."""
    del _REGISTRY[name]


def list_models() -> list[str]:
    """Registered names, in the order of the repository's numbered folders."""
    return sorted(_REGISTRY, key=lambda name: _REGISTRY[name].info.folder_index)


def model_folders() -> dict[int, tuple[str, str]]:
    """Numbered folder K -> (folder name, model name), for every registered model; folder K writes modelK.pth."""
    return {info.folder_index: (info.folder_name, info.name) for info in map(model_info, list_models())}


def model_for_folder(index: int) -> ModelInfo:
    """The :class:`ModelInfo` of the model trained by numbered folder ``index``."""
    for name in list_models():
        if _REGISTRY[name].info.folder_index == index:
            return _REGISTRY[name].info
    raise UserError(f"no model is trained in folder {index}; folders: {', '.join(map(str, model_folders()))}")


def _entry(name: str) -> _Entry:
    if name not in _REGISTRY:
        raise UserError(f"unknown model {name!r}; valid names: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def model_info(name: str) -> ModelInfo:
    """The :class:`ModelInfo` of a registered model; :class:`UserError` for an unknown name."""
    return _entry(name).info


def check_img_size(name: str, img_size: int) -> None:
    """Raise :class:`UserError` when model ``name`` cannot process ``img_size`` x ``img_size`` inputs."""
    info = model_info(name)
    if isinstance(img_size, bool) or not isinstance(img_size, int):
        raise UserError(f"img_size must be an integer, got {img_size!r}")
    if img_size < info.min_img_size or img_size % info.img_size_multiple:
        need = f"a multiple of {info.img_size_multiple} and " if info.img_size_multiple > 1 else ""
        raise UserError(f"img_size {img_size} does not work for {name}: it needs {need}at least "
                        f"{info.min_img_size} pixels")


def build_model(name: str, num_classes: int = 14, img_size: Optional[int] = None) -> nn.Module:
    """Build registered model ``name`` with random weights (nothing is downloaded).

    ``img_size`` defaults to the native size; it changes the built model only where
    :attr:`ModelInfo.fixed_input_size` is true. :func:`common.models.create_model` adds weight loading.

    Raises:
        UserError: unknown name, a bad class count, or an input size the model cannot process.
    """
    entry = _entry(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise UserError(f"num_classes must be a positive integer, got {num_classes!r}")
    size = entry.info.native_size if img_size is None else img_size
    check_img_size(name, size)
    return entry.build(num_classes, size)
