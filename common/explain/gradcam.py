"""Grad-CAM heatmaps for the five networks, and the figures that show them.

- :func:`cam_target_layer` / :func:`reshape_transform_for`: which layer Grad-CAM reads for each architecture, and how
  its activations become ``[B, C, H, W]``.
- :func:`gradcam_maps`: one ``[H, W]`` map in [0, 1] per image for one class each, with the ``grad-cam`` package
  (jacobgil/pytorch-grad-cam). The target is the class *logit* (``ClassifierOutputTarget``), which suits the
  independent sigmoid outputs: the gradient of one class does not depend on the other classes.
- :func:`write_cam_overlays`: one PNG per image (X-ray, heatmap, optional ground-truth boxes, probability).
- :func:`write_cam_sheet`: a one-page grid (classes x top-K images) per model. A zero or constant map (an
  under-trained network, or a class nothing in the image raises) is drawn as a uniform tint; such panels say so and
  the sheet's title counts them (:func:`flat_map_note`).
- :func:`top_k_per_class`: the images a sheet shows (highest probability per class).

Coordinates: maps have the model's input size (the evaluation crop). Boxes given to the writers must be in the same
pixel frame as the image they are drawn on; :mod:`common.explain.localization` converts between the crop and the 1024-pixel
frame of the NIH boxes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import matplotlib
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from torch import nn  # noqa: E402

from common.evaluation.plots import _save, wrap_title
from common.models import model_info

matplotlib.use("Agg")  # files only; no display is needed or assumed

# Heatmap transparency on the overlays: enough of the X-ray stays visible to see the anatomy under the colour.
OVERLAY_ALPHA = 0.4
Box = tuple[float, float, float, float]  # x, y, w, h (top-left corner, width, height) in pixels


def cam_target_layer(model: nn.Module, model_name: str) -> nn.Module:
    """The layer whose activations and gradients Grad-CAM combines: the registry entry's ``cam_layer``.

    EEEA-Net-C2 and OFA-595: ``final_expand_layer``, the last convolution stage before pooling; CheXNet:
    ``features[-1]`` (``norm5``); Visformer-small: ``stage3``; AutoFormerV2-base: the last Swin stage, whose
    channels-last output :func:`reshape_transform_for` rearranges.

    Raises:
        UserError: unknown model name.
    """
    return model_info(model_name).cam_layer(model)


def _tokens_to_nchw(tensor: torch.Tensor) -> torch.Tensor:
    """Swin activations -> ``[B, C, H, W]``.

    timm's Swin stages return channels-last maps ``[B, H, W, C]``; older timm releases returned token sequences
    ``[B, H*W, C]`` of a square grid. Without this, grad-cam fails with "axis 3 is out of bounds" or, worse, treats
    a spatial axis as channels.
    """
    if tensor.ndim == 4:
        return tensor.permute(0, 3, 1, 2)
    if tensor.ndim == 3:
        side = int(round(tensor.shape[1] ** 0.5))
        if side * side != tensor.shape[1]:
            raise ValueError(f"cannot arrange {tensor.shape[1]} Swin tokens on a square grid")
        return tensor.reshape(tensor.shape[0], side, side, tensor.shape[2]).permute(0, 3, 1, 2)
    raise ValueError(f"unexpected Swin activation shape {tuple(tensor.shape)}")


def reshape_transform_for(model_name: str) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
    """The grad-cam ``reshape_transform`` for a model: None where the layer is already ``[B, C, H, W]``, a
    channels-last/tokens -> ``[B, C, H, W]`` function where the registry entry says ``cam_channels_last``."""
    return _tokens_to_nchw if model_info(model_name).cam_channels_last else None


def gradcam_maps(model: nn.Module, model_name: str, images: torch.Tensor, class_indices: Sequence[int]) -> np.ndarray:
    """Grad-CAM maps of one class per image.

    Args:
        model: one of the project's networks (logits out); it is put in eval mode for the call and its previous
            mode restored afterwards.
        model_name: its registry name (chooses the layer and the reshape).
        images: ``[B, 3, H, W]`` normalised model inputs (the evaluation view), on the model's device.
        class_indices: ``B`` class indices, the class explained for each image.

    Returns:
        float32 array ``[B, H, W]`` in [0, 1] (grad-cam's per-image min-max scaling, upsampled to the input size).
        A map that is zero everywhere means no location raised the class logit (every ReLU'd weighted activation is
        zero); it is returned as such, not replaced.
    """
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be [B, 3, H, W], got {tuple(images.shape)}")
    class_indices = [int(c) for c in class_indices]
    if len(class_indices) != images.shape[0]:
        raise ValueError(f"{len(class_indices)} class indices for {images.shape[0]} images")
    was_training = model.training
    layer = cam_target_layer(model, model_name)
    try:
        # An input that requires grad builds the graph even when the caller froze every parameter.
        inputs = images.detach().clone().requires_grad_(True)
        with torch.enable_grad(), GradCAM(model=model, target_layers=[layer],
                                          reshape_transform=reshape_transform_for(model_name)) as cam:
            maps = cam(input_tensor=inputs, targets=[ClassifierOutputTarget(c) for c in class_indices])
    finally:
        model.train(was_training)
    maps = np.asarray(maps, dtype=np.float32)
    if maps.shape != (images.shape[0], images.shape[2], images.shape[3]):
        raise RuntimeError(f"grad-cam returned maps of shape {maps.shape} for inputs {tuple(images.shape)}")
    return np.clip(maps, 0.0, 1.0)


# --------------------------------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------------------------------
def _as_gray_array(image) -> np.ndarray:
    """A 2-D uint8 array from a PIL 'L' image or an array (float arrays must be in [0, 1])."""
    array = np.asarray(image)
    if array.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale image, got shape {array.shape}")
    if array.dtype != np.uint8:
        array = np.clip(np.round(array.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    return array


# Maps whose spread is below this are drawn as a uniform tint; the panel says so instead of letting it pass for one.
FLAT_MAP_SPREAD = 1e-6
ZERO_MAP_NOTE = "zero map: nothing in the image\nraises this class"
CONSTANT_MAP_NOTE = "constant map: no location\nstands out"


def flat_map_note(heatmap) -> Optional[str]:
    """:data:`ZERO_MAP_NOTE` for a map that is zero everywhere, :data:`CONSTANT_MAP_NOTE` for another constant map,
    None for a map with something to show."""
    heatmap = np.asarray(heatmap, dtype=np.float64)
    if float(heatmap.max() - heatmap.min()) > FLAT_MAP_SPREAD:
        return None
    return ZERO_MAP_NOTE if float(np.abs(heatmap).max()) <= FLAT_MAP_SPREAD else CONSTANT_MAP_NOTE


def _draw_panel(axis, image, heatmap, boxes: Optional[Sequence[Box]], title: str) -> bool:
    """Draw one X-ray with its map; returns True when the map is zero or constant (and the panel says so)."""
    gray = _as_gray_array(image)
    if gray.shape != heatmap.shape:
        raise ValueError(f"image {gray.shape} and heatmap {heatmap.shape} differ in size; draw the map on the model's "
                         "input view or rescale it first (common.explain.localization.map_to_original)")
    axis.imshow(gray, cmap="gray", vmin=0, vmax=255)
    axis.imshow(heatmap, cmap="jet", vmin=0.0, vmax=1.0, alpha=OVERLAY_ALPHA)
    for x, y, w, h in boxes or ():
        # Pixel (i, j) covers [j - 0.5, j + 0.5] in imshow coordinates, so a box starting at pixel x starts at x - 0.5.
        axis.add_patch(Rectangle((x - 0.5, y - 0.5), w, h, fill=False, edgecolor="lime", linewidth=1.5))
    axis.set_title(title, fontsize=8)
    axis.axis("off")
    note = flat_map_note(heatmap)
    if note:
        axis.text(0.5, 0.5, note, transform=axis.transAxes, ha="center", va="center", fontsize=7,
                  bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "none", "pad": 2})
    return note is not None


def _safe_name(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in text)


def write_cam_overlays(out_dir: str | os.PathLike, images_gray, maps: np.ndarray, names: Sequence[str],
                       class_name: str, probs: Sequence[float],
                       boxes: Optional[Sequence[Optional[Sequence[Box]]]] = None) -> list[Path]:
    """Write one PNG per image: the X-ray, the Grad-CAM heatmap over it, and the NIH boxes when given.

    Args:
        out_dir: folder to write into (created).
        images_gray: ``B`` grayscale images (PIL 'L' or 2-D arrays, uint8 or float in [0, 1]) in the same pixel
            frame as ``maps`` (for example the un-normalised evaluation crop).
        maps: ``[B, H, W]`` heatmaps in [0, 1] (:func:`gradcam_maps`).
        names: ``B`` image names (file names of the originals).
        class_name: the class the maps explain (in the title and the file name).
        probs: ``B`` predicted probabilities of that class.
        boxes: optional, per image a list of ``(x, y, w, h)`` boxes in the same pixel frame (None for none).

    Returns:
        the written paths, ``<out_dir>/<image stem>_<class>.png``.
    """
    maps = np.asarray(maps)
    count = len(names)
    if maps.ndim != 3 or maps.shape[0] != count or len(images_gray) != count or len(probs) != count:
        raise ValueError(f"{count} names, {len(images_gray)} images, {len(probs)} probabilities and maps of shape "
                         f"{maps.shape} do not match")
    if boxes is not None and len(boxes) != count:
        raise ValueError(f"{len(boxes)} box lists for {count} images")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for index, name in enumerate(names):
        figure, axis = plt.subplots(figsize=(4, 4.3))
        _draw_panel(axis, images_gray[index], maps[index], None if boxes is None else boxes[index],
                    f"{name}\n{class_name}: p = {float(probs[index]):.3f}")
        path = out_dir / f"{_safe_name(Path(name).stem)}_{_safe_name(class_name)}.png"
        _save(figure, path)
        written.append(path)
    return written


@dataclass
class CamPanel:
    """One cell of a summary sheet."""

    class_name: str
    name: str                    # image name
    image: object                # grayscale image in the map's pixel frame (PIL 'L' or 2-D array)
    heatmap: np.ndarray          # [H, W] in [0, 1]
    prob: float
    boxes: Optional[Sequence[Box]] = None


def write_cam_sheet(path: str | os.PathLike, panels: Sequence[Sequence[CamPanel]], title: str = "") -> Path:
    """Write a one-page summary: one row per class, its top-K images as columns.

    Args:
        path: PNG to write (atomically).
        panels: rows of :class:`CamPanel`, one row per class (rows may be shorter than the longest; the rest of the
            row stays empty).
        title: figure title (for example the model and checkpoint).
    """
    rows = [list(row) for row in panels if len(row)]
    if not rows:
        raise ValueError("a CAM sheet needs at least one panel")
    columns = max(len(row) for row in rows)
    # Constrained layout: a tall sheet would otherwise keep a fixed share of its height empty above the rows.
    figure, axes = plt.subplots(len(rows), columns, figsize=(2.3 * columns, 2.5 * len(rows)), squeeze=False,
                                layout="constrained")
    flat = 0
    for r, row in enumerate(rows):
        for c in range(columns):
            axis = axes[r][c]
            if c >= len(row):
                axis.axis("off")
                continue
            panel = row[c]
            flat += _draw_panel(axis, panel.image, np.asarray(panel.heatmap), panel.boxes,
                                f"{panel.class_name}\n{panel.name} p={panel.prob:.2f}")
    total = sum(len(row) for row in rows)
    count = (f"{flat} of {total} maps are zero or constant (nothing in those images raises the class)" if flat
             else f"all {total} maps show where the class is raised")
    figure.suptitle(wrap_title(f"{title}\n{count}" if title else count, 2.3 * columns, 10), fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _save(figure, path)
    return path


def top_k_per_class(probs: np.ndarray, k: int, class_indices: Optional[Sequence[int]] = None) -> dict[int, list[int]]:
    """For each class, the rows of the ``k`` highest probabilities (highest first; ties by row order).

    Returns:
        {class index: [row, ...]} for ``class_indices`` (all classes by default).
    """
    probs = np.asarray(probs)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    classes = range(probs.shape[1]) if class_indices is None else class_indices
    # Stable sort of the negated scores keeps the earlier row first among ties, so the choice is reproducible.
    return {int(c): np.argsort(-probs[:, c], kind="stable")[:k].tolist() for c in classes}


def input_view_gray(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> list[np.ndarray]:
    """Undo the normalisation of ``[B, 3, H, W]`` model inputs: the grayscale crop the model saw, as uint8 arrays
    (channel 0; the three channels of a grey X-ray are copies), to draw maps on."""
    first = images[:, 0].detach().cpu().double() * float(std[0]) + float(mean[0])
    return [np.clip(np.round(view.numpy() * 255.0), 0, 255).astype(np.uint8) for view in first]
