"""Key converters from the published checkpoint layouts to this project's key names, one per architecture.

Each converter is ``convert(state_dict, model, notes) -> state_dict``: explicit, deterministic renames (every rename
applied is appended to ``notes``). A model's converter is part of its registry entry (:mod:`common.models.registry`),
so this module knows no model names and imports nothing of the registry.
"""
from __future__ import annotations

import re
from typing import Callable

import torch
from torch import nn

StateDict = dict[str, torch.Tensor]
Converter = Callable[[StateDict, nn.Module, list], StateDict]


class ConversionError(Exception):
    """A key conversion cannot apply to this checkpoint (turned into a UserError naming the file by the loader)."""


def strip_prefix(state_dict: StateDict, prefix: str, notes: list[str], why: str) -> StateDict:
    """Drop ``prefix`` from every key when all keys carry it (and note why); otherwise return ``state_dict``."""
    if state_dict and all(key.startswith(prefix) for key in state_dict):
        notes.append(f"stripped the {prefix!r} prefix ({why})")
        return {key[len(prefix):]: value for key, value in state_dict.items()}
    return state_dict


def identity(state_dict: StateDict, model: nn.Module, notes: list[str]) -> StateDict:
    """The converter of a model whose only checkpoint layout is this project's own."""
    return state_dict


def rename_keys(state_dict: StateDict, rename: Callable[[str], str], notes: list[str], what: str) -> StateDict:
    renamed = {rename(key): value for key, value in state_dict.items()}
    if len(renamed) != len(state_dict):
        raise ConversionError(f"two keys get the same name after the rename {what}")
    changed = sum(new != old for new, old in zip(renamed, state_dict))
    if changed:
        notes.append(f"renamed {changed} keys: {what}")
    return renamed


def convert_ofa(state_dict: StateDict, model: nn.Module, notes: list[str]) -> StateDict:
    # ofa 0.1.0 calls the inverted-residual layer `conv`; ofa 0.0.4 (darmo, official init) `mobile_inverted_conv`.
    state_dict = rename_keys(state_dict, lambda k: re.sub(r"^blocks\.(\d+)\.conv\.", r"blocks.\1.mobile_inverted_conv.", k),
                         notes, "ofa 0.1.0 blocks.{i}.conv -> blocks.{i}.mobile_inverted_conv")
    # darmo's reset_classifier puts a bare nn.Linear at `classifier` (the original's model1/model2.pth).
    return rename_keys(state_dict, lambda k: re.sub(r"^classifier\.(weight|bias)$", r"classifier.linear.\1", k),
                   notes, "darmo reset_classifier head classifier.* -> classifier.linear.*")


def convert_densenet(state_dict: StateDict, model: nn.Module, notes: list[str]) -> StateDict:
    # arnoweng's wrapper (`module.densenet121.`, the module. part already stripped) and the original's model3.pth.
    state_dict = strip_prefix(state_dict, "densenet121.", notes, "arnoweng's DenseNet121 wrapper")
    # Pre-0.4 torchvision named dense-layer modules `norm.1`, `conv.2`, ...: illegal module names since then.
    state_dict = rename_keys(state_dict, lambda k: re.sub(r"(denselayer\d+\.(?:norm|relu|conv))\.([12])\.", r"\1\2.", k),
                         notes, "old torchvision dense-layer names norm.1/conv.1/norm.2/conv.2 -> norm1/conv1/...")
    # Sequential(Linear, Sigmoid) head: keep the Linear; the sigmoid belongs to the loss and metrics.
    return rename_keys(state_dict, lambda k: re.sub(r"^classifier\.0\.", "classifier.", k),
                   notes, "Sequential head classifier.0.* -> classifier.* (its Sigmoid is not part of the model)")


def convert_visformer(state_dict: StateDict, model: nn.Module, notes: list[str]) -> StateDict:
    # danczs/Visformer wraps every BatchNorm in a module with a `bn` child; timm does not.
    state_dict = rename_keys(state_dict, lambda k: k.replace(".bn.", "."), notes, "danczs Visformer '.bn.' removed")
    return rename_keys(state_dict, lambda k: re.sub(r"^head\.0\.", "head.", k),
                   notes, "Sequential head head.0.* -> head.* (its Sigmoid is not part of the model)")


def convert_swin(state_dict: StateDict, model: nn.Module, notes: list[str]) -> StateDict:
    from timm.models.swin_transformer import checkpoint_filter_fn

    # The original's model5.pth: Cream naming with a Sequential(Linear, Sigmoid) head.
    state_dict = rename_keys(state_dict, lambda k: re.sub(r"^head\.0\.", "head.", k),
                         notes, "Sequential head head.0.* -> head.* (its Sigmoid is not part of the model)")
    cream = "layers.0.downsample.reduction.weight" in state_dict
    tables = {k: v.shape for k, v in state_dict.items() if k.endswith("relative_position_bias_table")}
    # timm's own converter: drops the relative_position_index / attn_mask buffers, moves Cream's end-of-stage
    # downsampling to the start of the next stage, renames head.* to head.fc.*, and resizes relative-position
    # tables when the model was built for another input size. Harmless on timm-format files.
    try:
        converted = checkpoint_filter_fn(state_dict, model)
    except AttributeError as err:
        # A relative-position table for a block the model does not have (another Swin depth).
        raise ConversionError(f"timm's Swin converter failed ({err}); is this an S3-B checkpoint?") from None
    if cream:
        notes.append(f"converted Cream/darmo AutoFormerV2 naming ({len(state_dict)} entries) to timm's "
                     f"swin_s3_base_224 naming ({len(converted)} entries) with timm's checkpoint_filter_fn")
    resized = [k for k, shape in tables.items() if converted[k].shape != shape]
    if resized:
        notes.append(f"resized {len(resized)} relative-position bias tables to the model's attention windows "
                     "(the checkpoint was trained at another input size)")
    return converted
