"""Losses for 14-label (sigmoid) chest X-ray classification and its knowledge distillation (docs/distillation.md §2-§5).

Every class is an independent Bernoulli variable: there is no softmax across labels anywhere in this module.
Reduction convention for both the hard and the KD term: **mean over batch and classes**, so α weighs two terms of
comparable size. Total loss (Hinton / torchdistill convention): ``α · hard + (1 − α) · KD``. All terms are computed in
float32, also when the forward passes run under autocast.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# Floor on a teacher's per-class weight when its validation AUROC is at or below chance (see auroc_teacher_weights).
MIN_TEACHER_WEIGHT = 1e-3


def _float32(tensor):
    """The tensor in float32 (a no-op when it already is)."""
    return tensor.float() if tensor.dtype != torch.float32 else tensor


def _check_temperature(temperature):
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")


class LabelLoss(nn.Module):
    """Hard-label term: ``BCEWithLogits(logits, targets)``, mean over batch and classes.

    Args:
        pos_weight: optional [C] tensor of per-class positive weights (class-imbalance option of docs/distillation.md §2);
            stored as a buffer so it follows ``.to(device)``.
    """

    def __init__(self, pos_weight=None):
        super().__init__()
        if pos_weight is not None:
            pos_weight = torch.as_tensor(pos_weight, dtype=torch.float32)
            if pos_weight.ndim != 1 or not torch.all(pos_weight > 0):
                raise ValueError("pos_weight must be a 1-D tensor of positive values")
        self.register_buffer("pos_weight", pos_weight)

    def forward(self, logits, targets):
        """Loss of [B, C] logits (no sigmoid applied) against [B, C] 0/1 (or soft) targets."""
        if logits.shape != targets.shape:
            raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} "
                             "must have the same shape")
        if self.pos_weight is not None and self.pos_weight.shape[0] != logits.shape[-1]:
            raise ValueError(f"pos_weight has {self.pos_weight.shape[0]} classes, logits have {logits.shape[-1]}")
        # Autocast off and explicit float32: the loss must not run in half precision.
        with torch.autocast(device_type=logits.device.type, enabled=False):
            return F.binary_cross_entropy_with_logits(_float32(logits), _float32(targets), pos_weight=self.pos_weight,
                                                      reduction="mean")


def bernoulli_kd(student_logits, teacher_probs, temperature) -> torch.Tensor:
    """Per-class Bernoulli KL distillation term (docs/distillation.md §3, loss A computed as B minus a constant).

    Value: ``T² · mean_{batch, class} KL(Ber(p) ‖ Ber(σ(s/T)))`` where ``p = teacher_probs`` are already tempered
    teacher probabilities (σ(t/T), or an average of those). It is computed as
    ``BCEWithLogits(s/T, p) − H(p)`` (H = Bernoulli entropy of the teacher): numerically stable in the student's
    logits, 0 at a perfect match, gradient w.r.t. s of ``T · (σ(s/T) − p) / (B·C)``. The teacher target is detached.

    Float round-off can make an element's KL a tiny negative number; the *value* is clamped at 0 with a
    straight-through clamp that leaves the gradient exactly that of the formula.
    """
    _check_temperature(temperature)
    if student_logits.shape != teacher_probs.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher probabilities "
                         f"{tuple(teacher_probs.shape)} must have the same shape")
    with torch.autocast(device_type=student_logits.device.type, enabled=False):
        probs = _float32(teacher_probs.detach())
        if probs.numel() and (probs.min() < 0 or probs.max() > 1):
            raise ValueError("teacher_probs must be probabilities in [0, 1] (temper logits with "
                             "tempered_teacher_probs first)")
        cross_entropy = F.binary_cross_entropy_with_logits(_float32(student_logits) / temperature, probs,
                                                           reduction="none")
        # xlogy gives 0·log 0 = 0, so hard 0/1 targets have zero entropy instead of NaN.
        entropy = -(torch.special.xlogy(probs, probs) + torch.special.xlogy(1 - probs, 1 - probs))
        kl = cross_entropy - entropy
        kl = kl + (kl.clamp_min(0) - kl).detach()
        return temperature ** 2 * kl.mean()


def _normalised_teacher_weights(weights, num_teachers, num_classes, device):
    """[K, C] float32 weights, non-negative and summing to 1 over teachers for every class."""
    weights = torch.as_tensor(weights, dtype=torch.float32, device=device)
    if weights.ndim == 1:
        if weights.shape[0] != num_teachers:
            raise ValueError(f"teacher weights have {weights.shape[0]} entries for {num_teachers} teachers")
        weights = weights[:, None].expand(num_teachers, num_classes)
    elif weights.shape != (num_teachers, num_classes):
        raise ValueError(f"teacher weights must have shape [{num_teachers}] or [{num_teachers}, {num_classes}], "
                         f"got {tuple(weights.shape)}")
    if not torch.isfinite(weights).all() or (weights < 0).any():
        raise ValueError("teacher weights must be finite and >= 0")
    totals = weights.sum(dim=0, keepdim=True)
    if (totals <= 0).any():
        raise ValueError("teacher weights must have a positive sum over teachers for every class")
    return weights / totals


def tempered_teacher_probs(teacher_logits, temperature, weights=None) -> torch.Tensor:
    """Tempered teacher probabilities, averaged over an ensemble (docs/distillation.md §5, options 1 and 4).

    Args:
        teacher_logits: [B, C] logits of one teacher or [K, B, C] logits of K teachers (logits, never
            probabilities: the temperature applies to logits).
        temperature: T > 0.
        weights: None (uniform over teachers), [K] per-teacher or [K, C] per-class weights; normalised over the K
            teachers (per class) here.

    Returns:
        [B, C] float32 tensor ``Σ_k w_kc σ(t_kc / T)``, detached from the teachers' graph.
    """
    _check_temperature(temperature)
    logits = _float32(teacher_logits.detach())
    if logits.ndim == 2:
        if weights is not None:
            raise ValueError("teacher weights are only meaningful for [K, B, C] teacher logits")
        return torch.sigmoid(logits / temperature)
    if logits.ndim != 3:
        raise ValueError(f"teacher logits must be [B, C] or [K, B, C], got shape {tuple(logits.shape)}")
    probs = torch.sigmoid(logits / temperature)
    num_teachers, _, num_classes = logits.shape
    if weights is None:
        return probs.mean(dim=0)
    normalised = _normalised_teacher_weights(weights, num_teachers, num_classes, logits.device)
    return (normalised[:, None, :] * probs).sum(dim=0)


class MultiLabelKDLoss(nn.Module):
    """``α · LabelLoss(s, y) + (1 − α) · bernoulli_kd(s, tempered_teacher_probs(t, T, w), T)``.

    Args:
        alpha: weight of the hard-label term, in [0, 1] (α = 1 is the no-KD baseline).
        temperature: T > 0 (the original project used T = 2, α = 0.5).
        pos_weight: optional [C] positive weights of the hard-label term.
        teacher_weights: optional [K] or [K, C] ensemble weights (e.g. from ``auroc_teacher_weights``).

    After each forward, ``self.last_terms`` gives the detached terms as plain floats for logging: ``{'hard': ...,
    'kd': ...}``, without ``'kd'`` when no teacher logits were given (α = 1); it is empty before the first forward.
    The terms are kept as tensors and turned into floats only when read, so a training step waits for no GPU.
    """

    def __init__(self, alpha=0.5, temperature=2.0, pos_weight=None, teacher_weights=None):
        super().__init__()
        if not (isinstance(alpha, (int, float)) and 0.0 <= alpha <= 1.0):
            raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
        _check_temperature(temperature)
        self.alpha = float(alpha)
        self.temperature = float(temperature)
        self.label_loss = LabelLoss(pos_weight)
        if teacher_weights is not None:
            teacher_weights = torch.as_tensor(teacher_weights, dtype=torch.float32)
        self.register_buffer("teacher_weights", teacher_weights)
        self._last_terms = {}

    @property
    def last_terms(self) -> dict:
        return {name: float(value) for name, value in self._last_terms.items()}

    @property
    def last_term_tensors(self) -> dict:
        """The same terms as detached tensors, for summing on the device without waiting for it."""
        return dict(self._last_terms)

    def forward(self, student_logits, targets, teacher_logits) -> torch.Tensor:
        """Total loss for [B, C] student logits, [B, C] labels and [B, C] or [K, B, C] teacher logits.

        ``teacher_logits`` may be None only when α = 1 (no distillation term).
        """
        hard = self.label_loss(student_logits, targets)
        if teacher_logits is None:
            if self.alpha != 1.0:
                raise ValueError("teacher_logits are required when alpha < 1")
            self._last_terms = {"hard": hard.detach()}
            return hard
        if teacher_logits.shape[-2:] != student_logits.shape:
            raise ValueError(f"teacher logits {tuple(teacher_logits.shape)} do not match student logits "
                             f"{tuple(student_logits.shape)}")
        target = tempered_teacher_probs(teacher_logits, self.temperature, self.teacher_weights)
        kd = bernoulli_kd(student_logits, target, self.temperature)
        self._last_terms = {"hard": hard.detach(), "kd": kd.detach()}
        return self.alpha * hard + (1.0 - self.alpha) * kd


def auroc_teacher_weights(per_teacher_class_auroc) -> torch.Tensor:
    """Per-class ensemble weights [K, C] from each teacher's **validation** AUROC (never test data).

    Choice: ``w_kc ∝ max(AUROC_kc − 0.5, MIN_TEACHER_WEIGHT)``, i.e. proportional to the teacher's skill above chance
    for that class; a teacher at or below chance keeps a tiny weight rather than none, so a class where every
    teacher is poor still gets a (near-uniform) target. A missing AUROC (None or NaN, e.g. no positives in the
    validation split) gives that teacher weight 0 for the class; if every teacher is missing for a class, the class
    gets uniform weights. Each column is normalised to sum to 1 over teachers.

    Args:
        per_teacher_class_auroc: K sequences of C values (float, None or NaN).
    """
    rows = [list(row) for row in per_teacher_class_auroc]
    if not rows or not rows[0]:
        raise ValueError("need at least one teacher with at least one class")
    num_classes = len(rows[0])
    if any(len(row) != num_classes for row in rows):
        raise ValueError("every teacher must have one AUROC per class")
    raw = torch.zeros(len(rows), num_classes, dtype=torch.float32)
    for k, row in enumerate(rows):
        for c, value in enumerate(row):
            if value is None or math.isnan(float(value)):
                continue
            raw[k, c] = max(float(value) - 0.5, MIN_TEACHER_WEIGHT)
    missing = raw.sum(dim=0) == 0
    raw[:, missing] = 1.0
    return raw / raw.sum(dim=0, keepdim=True)


def pos_weight_for(mode: str, labels: np.ndarray) -> torch.Tensor | None:
    """BCE ``pos_weight`` for ``--pos-weight``: None for ``none``; for ``balanced``, negatives / positives per class
    of the training labels (classes without positives get 1)."""
    if mode == "none":
        return None
    positives = labels.sum(0).astype(np.float64)
    negatives = len(labels) - positives
    weights = np.where(positives > 0, negatives / np.maximum(positives, 1), 1.0)
    return torch.tensor(weights, dtype=torch.float32)
