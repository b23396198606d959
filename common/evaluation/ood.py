"""Fitting the out-of-distribution statistics of a checkpoint (the score itself: :mod:`common.inference.ood`).

The means and covariances of both parts (pre-logits features, 8 x 8 input block means) are fitted on up to
:data:`OOD_FIT_IMAGES` training images (a seeded sample of the training part) and shrunk with scikit-learn's
Ledoit-Wolf estimator, which stays well conditioned when there are fewer images than features. Each part's scale and
the threshold are the :data:`OOD_PERCENTILE` th percentile on the validation images: images the network was not
trained on but which come from the same distribution, so that about 1% of new in-distribution images are flagged.
Both use the evaluation view (resize, centre crop) in float32, the view ``predict.py`` and the ONNX export score.

The statistics are written beside the checkpoint as ``<stem>-ood.json`` (never into the checkpoint: its hash is
recorded by the test results and by the students distilled from it), with the checkpoint's hash, and are ignored
(with a note) when the checkpoint has changed since.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from common.atomic import write_text_atomic
from common.data.fingerprint import file_sha256
from common.data.split_data import DataFlags, split_data_for
from common.errors import UserError
from common.inference.ood import (
    INPUT_GRID,
    INPUT_PART,
    OOD_FORM,
    OOD_LAYER,
    PARTS,
    check_ood_statistics,
    input_blocks,
    ood_scores,
    part_distances,
)
from common.runtime.device import batch_to_device, resolve_device
from common.runtime.progress import progress

OOD_FIT_IMAGES = 10_000   # training images the mean and covariance are fitted on (a seeded sample when more)
OOD_COMPONENTS = 64       # leading eigenpairs kept (the file holds K x D numbers; see common.inference.ood)
OOD_PERCENTILE = 99.0     # percentile of the validation scores that is the threshold
OOD_SEED = 0
SIGNIFICANT_DIGITS = 8    # in the JSON file: float32 precision, a file half the size of full doubles
# Below this relative spread the pre-logits features are float32 rounding noise (float32 resolves ~1e-7 relative).
MIN_RELATIVE_SPREAD = 1e-4


@dataclass(frozen=True)
class OodSettings:
    """How the OOD statistics are fitted (the defaults are the documented ones)."""

    fit_images: int = OOD_FIT_IMAGES
    components: int = OOD_COMPONENTS
    percentile: float = OOD_PERCENTILE
    seed: int = OOD_SEED

    def record(self) -> dict:
        return {"fit_images_max": self.fit_images, "components_max": self.components, "percentile": self.percentile,
                "seed": self.seed}


def ood_path(checkpoint_path) -> Path:
    """``<stem>-ood.json`` beside a checkpoint."""
    return Path(f"{Path(checkpoint_path).with_suffix('')}-ood.json")


@torch.no_grad()
def ood_features(model, loader, device, augment=None, desc: str = "features") -> dict:
    """``{"pre_logits": [N, D], "input_8x8": [N, 64]}`` float32 of a loader's images
    (``forward_head(forward_features(x), pre_logits=True)`` and :func:`common.inference.ood.input_blocks`), in eval
    mode and float32, the precision ``predict.py`` uses; the model's mode is restored."""
    was_training = model.training
    model.eval()
    features, blocks = [], []
    try:
        for batch in progress(loader, desc, unit="batch"):
            images = batch_to_device(batch, device, False, augment)["image"].float()
            features.append(model.forward_head(model.forward_features(images), pre_logits=True).float().cpu())
            blocks.append(input_blocks(images.cpu().numpy()))
    finally:
        model.train(was_training)
    if not features:
        return {OOD_LAYER: np.zeros((0, 0), np.float32), INPUT_PART: np.zeros((0, INPUT_GRID ** 2), np.float32)}
    return {OOD_LAYER: torch.cat(features).numpy(), INPUT_PART: np.concatenate(blocks).astype(np.float32)}


def _rounded(values):
    array = np.asarray(values, dtype=np.float64)
    if array.ndim == 0:
        return float(f"{float(array):.{SIGNIFICANT_DIGITS}g}")
    return [_rounded(row) for row in array]


def relative_spread(features: np.ndarray) -> float:
    """How much features vary between images relative to their size: root mean variance / root mean square."""
    features = np.asarray(features, dtype=np.float64)
    size = float(np.sqrt(np.mean(features ** 2)))
    return float(np.sqrt(features.var(axis=0).mean())) / size if size > 0 else 0.0


def fit_part(fit_features: np.ndarray, components: int) -> dict:
    """Ledoit-Wolf mean and covariance of ``fit_features`` ``[N, D]`` in the low-rank form of
    :mod:`common.inference.ood` (without its ``scale``)."""
    from sklearn.covariance import LedoitWolf

    fit_features = np.asarray(fit_features, dtype=np.float64)
    dimension = fit_features.shape[1]
    estimator = LedoitWolf().fit(fit_features)
    eigenvalues, eigenvectors = np.linalg.eigh(estimator.covariance_)
    order = np.argsort(eigenvalues)[::-1]
    eigenvalues, eigenvectors = eigenvalues[order], eigenvectors[:, order]
    # Round-off can leave the smallest eigenvalues a hair below zero; shrinkage keeps the true ones positive.
    eigenvalues = np.maximum(eigenvalues, eigenvalues[0] * 1e-12)
    kept = int(min(components, dimension - 1))
    return {"mean": _rounded(estimator.location_), "components": _rounded(eigenvectors[:, :kept].T),
            "component_variances": _rounded(eigenvalues[:kept]), "residual_variance": _rounded(eigenvalues[kept:].mean()),
            "shrinkage": float(estimator.shrinkage_), "n_features": int(dimension), "n_components": kept,
            "exact": bool(fit_features.shape[0] - 1 <= kept), "scale": 1.0}


def fit_ood_statistics(fit_features: dict, threshold_features: dict, settings: OodSettings = OodSettings()) -> dict:
    """OOD statistics (:mod:`common.inference.ood`) from the features of the fit images (training) and of the
    threshold images (validation), both as returned by :func:`ood_features`.

    Each part is fitted with :func:`fit_part`; its ``scale`` is the ``settings.percentile`` th percentile of the
    validation distances, and the threshold the same percentile of the validation scores. The ``pre_logits`` part
    is left out (and the reason recorded) when the features hardly vary between images (relative spread below
    :data:`MIN_RELATIVE_SPREAD`: an under-trained network whose features sit at float32 rounding noise).

    Raises:
        UserError: fewer than two images to fit on, or none to choose the threshold on.
    """
    count = len(fit_features[INPUT_PART])
    if count < 2:
        raise UserError(f"OOD statistics need at least 2 training images, got {count}")
    if len(threshold_features[INPUT_PART]) < 1:
        raise UserError("OOD statistics need at least one validation image to choose the threshold on")
    parts, omitted, spreads = {}, {}, {}
    for name in PARTS:
        spreads[name] = relative_spread(fit_features[name])
        if spreads[name] < MIN_RELATIVE_SPREAD:
            omitted[name] = (f"the {name} features hardly vary between training images (relative spread "
                             f"{spreads[name]:.1e}, below {MIN_RELATIVE_SPREAD:g}: an under-trained network?)")
            continue
        part = fit_part(fit_features[name], settings.components)
        part["scale"] = _rounded(np.percentile(part_distances(threshold_features[name], part), settings.percentile))
        parts[name] = part
    if not parts:
        raise UserError("no OOD statistics: " + "; ".join(omitted.values()))
    stats = {"layer": OOD_LAYER, "form": OOD_FORM, "parts": parts, "omitted": omitted,
             "relative_spread": spreads, "estimator": "sklearn.covariance.LedoitWolf",
             "score": "max over parts of the Mahalanobis distance divided by the part's scale",
             "n_fit": int(count), "n_threshold": int(len(threshold_features[INPUT_PART])),
             "percentile": float(settings.percentile), "threshold": 0.0}
    scores = ood_scores(threshold_features, stats)
    stats["threshold"] = float(np.percentile(scores, settings.percentile))
    stats["threshold_part_quantiles"] = {f"{q:g}": float(np.percentile(scores, q)) for q in (50, 90, 95, 99, 100)}
    stats["fit_part_median"] = float(np.median(ood_scores(fit_features, stats)))
    return stats


def compute_ood_statistics(checkpoint_path, model, checkpoint: dict, flags: DataFlags, device: str = "auto",
                           batch_size: int = 32, settings: OodSettings = OodSettings()) -> dict:
    """Fit the OOD statistics of a checkpoint on the split it was trained on (train: fit, val: threshold) and
    write them to :func:`ood_path`; returns them."""
    checkpoint_path = Path(checkpoint_path)
    data = split_data_for(checkpoint["config"], flags, parts=("train", "val"))
    device = resolve_device(device)
    model.to(device)
    train_size = len(data.split.parts["train"])
    rows = None
    if train_size > settings.fit_images:
        rows = np.sort(np.random.default_rng(settings.seed).choice(train_size, settings.fit_images, replace=False))
    view = (int(checkpoint["img_size"]), tuple(checkpoint["mean"]), tuple(checkpoint["std"]))
    fit_loader, fit_augment = data.batches("train", "eval", *view, batch_size, rows=rows)
    fit = ood_features(model, fit_loader, device, fit_augment, desc=f"{checkpoint_path.name} OOD fit (train)")
    val_loader, val_augment = data.batches("val", "eval", *view, batch_size)
    val = ood_features(model, val_loader, device, val_augment, desc=f"{checkpoint_path.name} OOD threshold (val)")
    stats = fit_ood_statistics(fit, val, settings)
    stats.update({"fit_part": "train" if rows is None else f"train (seeded sample of {len(rows):,} of "
                                                           f"{train_size:,} images)",
                  "threshold_part": "val", "split": data.split.name, "label_file": data.split.labels,
                  "view": f"eval (resize, centre crop {view[0]}), float32", "settings": settings.record(),
                  "checkpoint": str(checkpoint_path), "checkpoint_sha256": file_sha256(checkpoint_path)})
    write_text_atomic(json.dumps(stats), ood_path(checkpoint_path))
    return stats


def load_ood_statistics(checkpoint_path, checkpoint: dict | None = None) -> tuple[dict | None, str]:
    """The OOD statistics of a checkpoint: its own ``ood`` entry (a model folder's), else ``<stem>-ood.json``
    when it was fitted on this very file. Returns ``(stats or None, a note saying where they came from or why
    there are none)``."""
    if checkpoint is not None and checkpoint.get("ood"):
        return check_ood_statistics(checkpoint["ood"], str(checkpoint_path)), f"from {checkpoint_path}"
    if Path(checkpoint_path).is_dir():
        return None, f"model folder {checkpoint_path} carries no out-of-distribution statistics"
    side = ood_path(checkpoint_path)
    if not side.is_file():
        return None, (f"no out-of-distribution statistics for {Path(checkpoint_path).name} (run its test-model.py "
                      f"to fit them into {side.name})")
    try:
        stats = json.loads(side.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read OOD statistics {side}: {err}") from None
    check_ood_statistics(stats, str(side))
    if stats.get("checkpoint_sha256") != file_sha256(checkpoint_path):
        return None, (f"{side.name} was fitted on another version of {Path(checkpoint_path).name}; run its "
                      "test-model.py again to refit it (no OOD score until then)")
    return stats, f"from {side}"


def ensure_ood_statistics(checkpoint_path, model, checkpoint: dict, flags: DataFlags, device: str = "auto",
                          batch_size: int = 32, settings: OodSettings = OodSettings()) -> tuple[dict | None, str]:
    """The checkpoint's OOD statistics, fitted now unless ``<stem>-ood.json`` holds them for this file and these
    settings. Returns ``(stats, note)``; when the training or validation images cannot be read the statistics are
    ``None`` and the note says why (the caller prints it and records it)."""
    stats, _ = load_ood_statistics(checkpoint_path, checkpoint)
    if stats is not None and stats.get("settings") == settings.record():
        return stats, f"reused {ood_path(checkpoint_path).name} (fitted on this checkpoint)"
    try:
        stats = compute_ood_statistics(checkpoint_path, model, checkpoint, flags, device, batch_size, settings)
    except UserError as err:
        return None, f"OOD statistics not fitted: {err}"
    left_out = "".join(f"; {name} left out: {reason}" for name, reason in stats["omitted"].items())
    return stats, (f"{' + '.join(stats['parts'])} fitted on {stats['n_fit']:,} training images, threshold "
                   f"{stats['threshold']:.2f} at the {stats['percentile']:g}th percentile of {stats['n_threshold']:,} "
                   f"validation images; written to {ood_path(checkpoint_path).name}{left_out}")


def ood_summary(stats: dict | None, note: str) -> dict:
    """What a test report records of the OOD statistics (no arrays)."""
    if stats is None:
        return {"note": note}
    keep = ("layer", "form", "score", "threshold", "percentile", "n_fit", "n_threshold", "omitted", "relative_spread",
            "estimator", "fit_part", "threshold_part", "threshold_part_quantiles", "fit_part_median", "view",
            "checkpoint_sha256")
    parts = {name: {key: value for key, value in part.items() if key not in ("mean", "components",
                                                                             "component_variances")}
             for name, part in stats["parts"].items()}
    return {"note": note, **{key: stats[key] for key in keep if key in stats}, "parts": parts}
