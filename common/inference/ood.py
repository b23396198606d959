"""How unlike the training images a new image is: the out-of-distribution (OOD) statistics and their score.

Two Mahalanobis distances to the training images, each under a Ledoit-Wolf shrunk covariance:

- ``pre_logits``: of the network's pre-logits features (the vector the classifier sees,
  ``model.forward_head(model.forward_features(x), pre_logits=True)``), the baseline of Lee et al. (NeurIPS 2018)
  with one Gaussian for the multi-label task: what the network makes of the image;
- ``input_8x8``: of the 8 x 8 block means of the normalised input crop (the linear, PCA form of the reconstruction
  check Chester applies with an autoencoder): what the image looks like as a whole. A classifier's features answer
  "which findings?", and an image with none of the patterns it learnt (a blank or a flat picture) can land near
  the features of an unremarkable X-ray; the layout of a frontal chest X-ray (bright mediastinum, dark lungs,
  upright) is what the block means see, and an inverted, rotated or natural picture is far from it.

The score is the larger of the two distances, each divided by its ``scale`` (its :data:`percentile` th percentile on
the validation images), so 1 means "as far as the farthest 1% of validation images on one of the two". The
``threshold`` is the stated percentile of the validation images' scores; an image above it gets :data:`OOD_FLAG`.
:mod:`common.evaluation.ood` fits the statistics; this module only scores, and stays torch-free at import.

The statistics (``checkpoint["ood"]``, the ``<stem>-ood.json`` file beside a checkpoint, ``config.json`` of a model
folder), all plain JSON values::

    {"layer": "pre_logits", "form": "low_rank", "threshold": float, "percentile": float,
     "score": "max over parts of distance / scale",
     "parts": {"pre_logits": PART, "input_8x8": PART},       # a part may be left out, see "omitted"
     "omitted": {part: reason}, ...a record of how they were fitted (n_fit, n_threshold, checkpoint_sha256...)}
    PART = {"mean": [D], "components": [K][D], "component_variances": [K], "residual_variance": float,
            "scale": float, ...}

With ``z = f - mean`` and ``p = components @ z`` (orthonormal rows: the K leading eigenvectors of the shrunk
covariance), a part's distance is ``sqrt(sum(p**2 / component_variances) + |z - components.T @ p|**2 /
residual_variance)``: the Mahalanobis distance under the covariance whose K leading eigenpairs are the shrunk
covariance's and whose other eigenvalues are replaced by their mean (``residual_variance``). It is the full
Ledoit-Wolf distance when the sample covariance has rank at most K, and keeps the file small otherwise (K x D
numbers instead of D x D; :func:`precision_matrix` gives the D x D form).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from common.errors import UserError

OOD_LAYER = "pre_logits"
INPUT_PART = "input_8x8"
INPUT_GRID = 8            # block means per side of the input part
OOD_FORM = "low_rank"
PARTS = (OOD_LAYER, INPUT_PART)
OOD_FLAG = "unlike the training images: the probabilities may not mean anything"
OOD_OUTPUT_NAME = "ood_score"
REQUIRED_KEYS = ("layer", "form", "threshold", "percentile", "parts")
PART_KEYS = ("mean", "components", "component_variances", "residual_variance", "scale")


def check_ood_statistics(stats: dict, source: str = "the OOD statistics") -> dict:
    """Check the keys and shapes of OOD statistics; returns them. A problem is a :class:`UserError` naming
    ``source``."""
    if not isinstance(stats, dict):
        raise UserError(f"{source}: expected a dict of OOD statistics, got {type(stats).__name__}")
    missing = [key for key in REQUIRED_KEYS if key not in stats]
    if missing:
        raise UserError(f"{source}: OOD statistics without {', '.join(missing)}")
    if stats["layer"] != OOD_LAYER or stats["form"] != OOD_FORM:
        raise UserError(f"{source}: OOD statistics of layer {stats['layer']!r}, form {stats['form']!r}; this version "
                        f"reads layer {OOD_LAYER!r}, form {OOD_FORM!r}")
    parts = stats["parts"]
    if not parts or set(parts) - set(PARTS):
        raise UserError(f"{source}: OOD parts {sorted(parts)}; expected some of {list(PARTS)}")
    for name, part in parts.items():
        absent = [key for key in PART_KEYS if key not in part]
        if absent:
            raise UserError(f"{source}: OOD part {name} without {', '.join(absent)}")
        mean, components, variances, residual = _arrays(part)
        if components.shape != (variances.size, mean.size):
            raise UserError(f"{source}: OOD part {name} has components of shape {components.shape} for "
                            f"{variances.size} variances of {mean.size} features")
        if not (np.all(variances > 0) and residual > 0 and float(part["scale"]) > 0):
            raise UserError(f"{source}: OOD part {name} has variances or a scale that are not positive")
    return stats


def _arrays(part: dict):
    mean = np.asarray(part["mean"], dtype=np.float64)
    components = np.asarray(part["components"], dtype=np.float64).reshape(-1, mean.size)
    return mean, components, np.asarray(part["component_variances"], dtype=np.float64), \
        float(part["residual_variance"])


def part_distances(features: np.ndarray, part: dict) -> np.ndarray:
    """Mahalanobis distances ``[N]`` (float64) of features ``[N, D]`` under one part's statistics."""
    mean, components, variances, residual = _arrays(part)
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[1] != mean.size:
        raise ValueError(f"features of shape {features.shape} for an OOD part of {mean.size} features")
    centred = features - mean
    projected = centred @ components.T
    rest = centred - projected @ components
    return np.sqrt((projected ** 2 / variances).sum(axis=1) + (rest ** 2).sum(axis=1) / residual)


def combine(distances: dict, stats: dict) -> np.ndarray:
    """The score: the largest of each part's distance divided by its scale."""
    return np.max([np.asarray(distances[name], dtype=np.float64) / float(part["scale"])
                   for name, part in stats["parts"].items()], axis=0)


def ood_scores(features: dict, stats: dict) -> np.ndarray:
    """Scores ``[N]`` (float64) from ``{"pre_logits": [N, D], "input_8x8": [N, 64]}`` (:func:`input_blocks`)."""
    return combine({name: part_distances(features[name], part) for name, part in stats["parts"].items()}, stats)


def block_matrix(size: int, grid: int = INPUT_GRID) -> np.ndarray:
    """``[grid, size]`` rows averaging the bins of ``torch.nn.functional.adaptive_avg_pool2d`` (bin ``i`` covers
    ``floor(i * size / grid)`` to ``ceil((i + 1) * size / grid)``), so ``B @ image @ B.T`` is the pooled image for any
    size, also inside an ONNX graph (adaptive pooling exports only when the size is a multiple of the grid)."""
    matrix = np.zeros((grid, size))
    for i in range(grid):
        start, end = (i * size) // grid, -((-(i + 1) * size) // grid)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


def input_blocks(images: np.ndarray, grid: int = INPUT_GRID) -> np.ndarray:
    """``[N, grid * grid]`` block means of channel 0 of normalised inputs ``[N, 3, s, s]`` (the channels of a grey
    X-ray are copies)."""
    images = np.asarray(images, dtype=np.float64)
    rows, cols = block_matrix(images.shape[2], grid), block_matrix(images.shape[3], grid)
    return np.einsum("ih,nhw,jw->nij", rows, images[:, 0], cols).reshape(images.shape[0], -1)


def precision_matrix(part: dict) -> np.ndarray:
    """The ``[D, D]`` precision matrix of one part: ``distance**2 = z @ precision @ z``."""
    mean, components, variances, residual = _arrays(part)
    eye = np.eye(mean.size)
    return components.T @ np.diag(1.0 / variances) @ components + (eye - components.T @ components) / residual


def ood_score_module(stats: dict, img_size: int):
    """A ``torch.nn.Module`` ``(images [N, 3, s, s], pre_logits [N, D]) -> scores [N]`` (float32): the formula of
    :func:`ood_scores`, for the PyTorch prediction path and inside the exported ONNX graph."""
    import torch

    check_ood_statistics(stats)

    class PartDistance(torch.nn.Module):
        """One part's Mahalanobis distance, in the low-rank form (whitening factors instead of divisions)."""

        def __init__(self, part: dict):
            super().__init__()
            mean, components, variances, residual = _arrays(part)
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
            self.register_buffer("components", torch.tensor(components, dtype=torch.float32))
            self.register_buffer("inverse_scales", torch.tensor(1.0 / np.sqrt(variances), dtype=torch.float32))
            self.register_buffer("inverse_residual_scale", torch.tensor(1.0 / np.sqrt(residual), dtype=torch.float32))
            self.inverse_scale = 1.0 / float(part["scale"])

        def forward(self, features):
            centred = features.float() - self.mean
            projected = centred @ self.components.T
            rest = centred - projected @ self.components
            whitened = projected * self.inverse_scales
            distance = torch.sqrt((whitened * whitened).sum(dim=1)
                                  + ((rest * self.inverse_residual_scale) ** 2).sum(dim=1))
            return distance * self.inverse_scale

    class OodScore(torch.nn.Module):
        """The OOD score of :mod:`common.inference.ood` from the input images and their pre-logits features."""

        def __init__(self):
            super().__init__()
            self.names = list(stats["parts"])
            self.parts = torch.nn.ModuleList(PartDistance(stats["parts"][name]) for name in self.names)
            self.register_buffer("blocks", torch.tensor(block_matrix(img_size), dtype=torch.float32))

        def forward(self, images, pre_logits):
            inputs = {OOD_LAYER: pre_logits}
            if INPUT_PART in self.names:
                pooled = self.blocks @ images[:, 0].float() @ self.blocks.T
                inputs[INPUT_PART] = pooled.reshape(images.shape[0], -1)
            scores = [part(inputs[name]) for name, part in zip(self.names, self.parts)]
            return torch.stack(scores, dim=1).amax(dim=1)

    return OodScore()


def ood_flags(scores: Sequence[float], threshold: float) -> np.ndarray:
    """True where a score is above the threshold (unlike the training images)."""
    return np.asarray(scores, dtype=np.float64) > float(threshold)


def format_ood_lines(names: Sequence[str], scores: Sequence[float], threshold: float, percentile: float) -> list[str]:
    """One line per image: its OOD score, and :data:`OOD_FLAG` when it is above the threshold."""
    lines = [f"Out-of-distribution score (Mahalanobis distances of the image's features and layout to the training "
             f"images'; 1 = the {percentile:g}th percentile of validation images, flagged above {threshold:.2f}):"]
    width = max(len(name) for name in names) if len(names) else 0
    for name, score in zip(names, scores):
        flag = f"  {OOD_FLAG}" if score > threshold else ""
        lines.append(f"  {name:<{width}}  {score:8.2f}{flag}")
    return lines
