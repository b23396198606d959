"""Once-for-All MobileNetV3 subnets: EEEA-Net-C2 (the student) and OFA-595 (a teacher).

Both networks are subnets of the OFA MobileNetV3 search space (Cai et al., ICLR 2020): one module tree,
parameterised by per-block kernel sizes and expand ratios, per-stage depths and a width multiplier, covers both
(docs/architectures.md §4-§6).

Module names follow ofa 0.0.4 exactly (``first_conv.{conv,bn}``,
``blocks.{i}.mobile_inverted_conv.{inverted_bottleneck,depth_conv,point_linear}.{conv,bn}``,
``...depth_conv.se.fc.{reduce,expand}``, ``final_expand_layer.{conv,bn}``, ``feature_mix_layer.conv``,
``classifier.linear``), so darmo's ``eeea-c2.pt`` / ``ofa595_1k_b1a18d5.pt`` and the official OFA ``init`` load
without any key mapping. The forward pass reproduces ofa/darmo operation by operation (same pooling order), so
outputs match darmo 0.1.15 bit for bit for the same weights, except that the logits are always ``[B, C]``
(darmo's ``torch.squeeze`` returns ``[C]`` for a batch of one).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from common.constants import IMAGENET_MEAN, IMAGENET_STD

# The OFA MobileNetV3 search space at width 1.0 (ofa.elastic_nn.networks.OFAMobileNetV3): stem width, then the
# output width of stage 0 (one fixed k3/e1 block) and of stages 1-5, the final expand and feature-mix widths.
_BASE_STEM_WIDTH = 16
_BASE_STAGE_WIDTHS = (16, 24, 40, 80, 112, 160)
_BASE_FINAL_EXPAND_WIDTH = 960
_BASE_FEATURE_MIX_WIDTH = 1280
_STAGE_STRIDES = (1, 2, 2, 2, 1, 2)
_STAGE_ACTIVATIONS = ("relu", "relu", "relu", "h_swish", "h_swish", "h_swish")
_STAGE_USE_SE = (False, False, True, False, True, True)
_STAGE0_KERNEL_SIZE = 3
_STAGE0_EXPAND_RATIO = 1
_SE_REDUCTION = 4


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round ``value`` to a multiple of ``divisor`` the way OFA does (never below ``divisor``, never < 90%)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    # Rounding down must not remove more than 10% of the channels.
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


@dataclass(frozen=True)
class OFASubnetConfig:
    """One subnet of the OFA MobileNetV3 space.

    Attributes:
        name: registry name of the subnet.
        width_mult: width multiplier applied to every base width (then made divisible by 8).
        kernel_sizes: depthwise kernel size of every block after stage 0, in order (one entry per present block,
            like darmo's ``.subnet`` files, not OFA's 20 fixed slots).
        expand_ratios: expand ratio of every block after stage 0, in the same order.
        depths: number of blocks in stages 1-5.
        native_size: input resolution the subnet was searched and published at.
        dropout: dropout rate applied before the classifier's linear layer (active in train mode only).
    """

    name: str
    width_mult: float
    kernel_sizes: tuple[int, ...]
    expand_ratios: tuple[int, ...]
    depths: tuple[int, ...]
    native_size: int
    dropout: float

    def __post_init__(self):
        if len(self.depths) != len(_BASE_STAGE_WIDTHS) - 1:
            raise ValueError(f"{self.name}: expected {len(_BASE_STAGE_WIDTHS) - 1} stage depths, got {self.depths}")
        if not len(self.kernel_sizes) == len(self.expand_ratios) == sum(self.depths):
            raise ValueError(
                f"{self.name}: kernel_sizes ({len(self.kernel_sizes)}) and expand_ratios ({len(self.expand_ratios)}) "
                f"need one entry per block, sum(depths) = {sum(self.depths)}")


# darmo/config/eeea_c2.subnet (docs/architectures.md §5); the classifier of its net.config has dropout_rate 0.
EEEA_C2_CONFIG = OFASubnetConfig(
    name="eeea_c2",
    width_mult=1.0,
    kernel_sizes=(3, 5, 3, 7, 3, 7, 5, 7, 5, 3, 7, 5, 3, 3, 5, 3, 5, 7),
    expand_ratios=(3, 4, 3, 4, 3, 3, 6, 6, 3, 3, 6, 4, 3, 3, 6, 6, 6, 3),
    depths=(3, 3, 4, 4, 4),
    native_size=192,
    dropout=0.0,
)

# ofa_specialized("flops@595M_top1@80.0_finetune@75") (docs/architectures.md §6). The official net.config has
# Dropout(0.2) before the classifier; darmo drops it, we keep it.
OFA595_CONFIG = OFASubnetConfig(
    name="ofa595",
    width_mult=1.2,
    kernel_sizes=(3, 5, 3, 5, 5, 3, 5, 7, 5, 3, 5, 3, 5, 7, 3, 3, 3, 5, 3),
    expand_ratios=(3, 4, 3, 4, 4, 6, 3, 6, 6, 3, 4, 6, 6, 6, 4, 6, 6, 6, 3),
    depths=(3, 4, 4, 4, 4),
    native_size=236,
    dropout=0.2,
)


def _activation(kind: str) -> nn.Module:
    if kind == "relu":
        return nn.ReLU(inplace=True)
    if kind == "h_swish":
        return nn.Hardswish(inplace=True)
    raise ValueError(f"unknown activation {kind!r}")


def _conv_bn_act(in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, groups: int = 1,
                 act: Optional[str] = None, use_bn: bool = True) -> nn.Sequential:
    """Conv (no bias) -> [BN] -> [activation], with ofa's child names ``conv``/``bn``/``act``."""
    layers = OrderedDict(conv=nn.Conv2d(in_ch, out_ch, kernel_size, stride, kernel_size // 2,
                                        groups=groups, bias=False))
    if use_bn:
        # momentum 0.1 / eps 1e-5 is the `bn` entry of both net.config files (= PyTorch defaults).
        layers["bn"] = nn.BatchNorm2d(out_ch, momentum=0.1, eps=1e-5)
    if act is not None:
        layers["act"] = _activation(act)
    return nn.Sequential(layers)


class SqueezeExcite(nn.Module):
    """OFA's SE module: mean pool -> 1x1 conv (bias) -> ReLU -> 1x1 conv (bias) -> h-sigmoid -> rescale."""

    def __init__(self, channels: int):
        super().__init__()
        reduced = make_divisible(channels // _SE_REDUCTION, 8)
        self.fc = nn.Sequential(OrderedDict(
            reduce=nn.Conv2d(channels, reduced, 1, bias=True),
            relu=nn.ReLU(inplace=True),
            expand=nn.Conv2d(reduced, channels, 1, bias=True),
            h_sigmoid=nn.Hardsigmoid(inplace=True),
        ))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Pool W then H, as ofa does, so that float results are identical to darmo's.
        return x * self.fc(x.mean(3, keepdim=True).mean(2, keepdim=True))


class MBInvertedConv(nn.Module):
    """Inverted bottleneck: [1x1 expand] -> kxk depthwise [-> SE] -> 1x1 linear projection."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int, expand_ratio: int,
                 act: str, use_se: bool):
        super().__init__()
        mid = make_divisible(round(in_ch * expand_ratio), 8)
        # ofa has no expand conv at all when the ratio is 1 (the key is absent from the checkpoints).
        self.inverted_bottleneck = (
            _conv_bn_act(in_ch, mid, 1, act=act) if expand_ratio != 1 else None)
        self.depth_conv = _conv_bn_act(mid, mid, kernel_size, stride, groups=mid, act=act)
        if use_se:
            self.depth_conv.add_module("se", SqueezeExcite(mid))
        self.point_linear = _conv_bn_act(mid, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inverted_bottleneck is not None:
            x = self.inverted_bottleneck(x)
        return self.point_linear(self.depth_conv(x))


class MobileInvertedResidualBlock(nn.Module):
    """An :class:`MBInvertedConv` plus an identity shortcut when stride is 1 and widths match (no parameters)."""

    def __init__(self, conv: MBInvertedConv, residual: bool):
        super().__init__()
        self.mobile_inverted_conv = conv
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.mobile_inverted_conv(x)
        return out + x if self.residual else out


class LinearClassifier(nn.Module):
    """OFA's ``LinearLayer`` head: optional dropout, then ``linear`` (key ``classifier.linear.*``)."""

    def __init__(self, in_features: int, num_classes: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        # num_classes == 0 gives a headless model (timm convention), which forward_head then returns pre-logits.
        self.linear = nn.Linear(in_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.dropout(x))


class MobileNetV3(nn.Module):
    """An OFA MobileNetV3 subnet built from an :class:`OFASubnetConfig`, returning logits ``[B, num_classes]``.

    The class name matches darmo's (``model._get_name() == "MobileNetV3"``) and the original's para-test output.

    Interface shared with the timm models of the registry:

    - ``forward_features(x)``: feature map after ``final_expand_layer`` (``[B, 960 * width, H/32, W/32]``);
    - ``forward_head(x, pre_logits=False)``: global mean pool -> ``feature_mix_layer`` -> flatten -> classifier;
      with ``pre_logits=True`` it returns the ``[B, num_features]`` vector the classifier sees;
    - ``num_features``: width of that vector (1280 for EEEA-Net-C2, 1536 for OFA-595);
    - ``reset_classifier(num_classes)``: new head, keeping ofa's ``classifier.linear.*`` key names and the dropout;
    - ``default_cfg``: ``input_size`` (native resolution), ``mean``, ``std``, ``num_classes``.
    """

    def __init__(self, config: OFASubnetConfig, num_classes: int = 1000):
        super().__init__()
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        self.config = config
        self.num_classes = num_classes
        self.drop_rate = config.dropout
        widths = [make_divisible(w * config.width_mult, 8) for w in _BASE_STAGE_WIDTHS]
        stem_width = make_divisible(_BASE_STEM_WIDTH * config.width_mult, 8)
        final_expand_width = make_divisible(_BASE_FINAL_EXPAND_WIDTH * config.width_mult, 8)
        self.num_features = make_divisible(_BASE_FEATURE_MIX_WIDTH * config.width_mult, 8)

        self.first_conv = _conv_bn_act(3, stem_width, 3, stride=2, act="h_swish")

        # (stage, kernel, expand) for every block: the fixed stage-0 block, then the config's compact lists.
        block_specs = [(0, _STAGE0_KERNEL_SIZE, _STAGE0_EXPAND_RATIO)]
        stage_of_block = [stage for stage, depth in enumerate(config.depths, start=1) for _ in range(depth)]
        block_specs += list(zip(stage_of_block, config.kernel_sizes, config.expand_ratios))
        blocks = []
        in_ch = stem_width
        previous_stage = None
        for stage, kernel_size, expand_ratio in block_specs:
            # Only the first block of a stage downsamples.
            stride = _STAGE_STRIDES[stage] if stage != previous_stage else 1
            out_ch = widths[stage]
            conv = MBInvertedConv(in_ch, out_ch, kernel_size, stride, expand_ratio,
                                  _STAGE_ACTIVATIONS[stage], _STAGE_USE_SE[stage])
            blocks.append(MobileInvertedResidualBlock(conv, residual=stride == 1 and in_ch == out_ch))
            in_ch, previous_stage = out_ch, stage
        self.blocks = nn.ModuleList(blocks)

        self.final_expand_layer = _conv_bn_act(in_ch, final_expand_width, 1, act="h_swish")
        self.feature_mix_layer = _conv_bn_act(final_expand_width, self.num_features, 1, act="h_swish", use_bn=False)
        self.classifier = LinearClassifier(self.num_features, num_classes, config.dropout)
        self.default_cfg = {
            "input_size": (3, config.native_size, config.native_size),
            "mean": IMAGENET_MEAN,
            "std": IMAGENET_STD,
            "num_classes": num_classes,
        }
        self.apply(_init_weights)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Stem, inverted-residual blocks and final 1x1 expansion: a ``[B, C, H/32, W/32]`` feature map."""
        x = self.first_conv(x)
        for block in self.blocks:
            x = block(x)
        return self.final_expand_layer(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool the feature map, mix features and classify; ``pre_logits=True`` stops before the classifier."""
        # W then H, as ofa does (bit-identical outputs); flatten(1), never squeeze, keeps [B, C] for B == 1.
        x = x.mean(3, keepdim=True).mean(2, keepdim=True)
        x = self.feature_mix_layer(x).flatten(1)
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, num_classes]`` (no sigmoid: the loss and the metrics apply it)."""
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        """The classifier's linear layer."""
        return self.classifier.linear

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head by a freshly initialised ``num_classes``-way one (same dropout, same key names)."""
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        self.num_classes = num_classes
        reference = self.first_conv.conv.weight  # the new head follows the model's device and dtype
        self.classifier = LinearClassifier(self.num_features, num_classes, self.drop_rate)
        self.classifier.apply(_init_weights)
        self.classifier.to(device=reference.device, dtype=reference.dtype)
        self.classifier.train(self.training)
        self.default_cfg = dict(self.default_cfg, num_classes=num_classes)


def _init_weights(module: nn.Module) -> None:
    # ofa's init_model(..., "he_fout"), the initialisation these networks were trained from: conv weights
    # N(0, sqrt(2 / (k*k*out))), BN to identity, linear U(-1/sqrt(in), 1/sqrt(in)) with zero bias.
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Linear):
        bound = 1.0 / module.weight.size(1) ** 0.5
        nn.init.uniform_(module.weight, -bound, bound)
        nn.init.zeros_(module.bias)


def eeea_c2(num_classes: int = 1000) -> MobileNetV3:
    """EEEA-Net-C2 (width 1.0, native 192x192, no dropout), random weights."""
    return MobileNetV3(EEEA_C2_CONFIG, num_classes)


def ofa595(num_classes: int = 1000) -> MobileNetV3:
    """OFA-595 (width 1.2, native 236x236, Dropout(0.2) before the classifier), random weights."""
    return MobileNetV3(OFA595_CONFIG, num_classes)
