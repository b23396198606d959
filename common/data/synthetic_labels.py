"""Label structure of the NIH-structured synthetic set: findings that co-occur as in the Data_Entry file, and training
labels corrupted at the rates the text-mining of ChestX-ray14 is published to have.

The plain synthetic set draws every finding independently and labels every image exactly. ChestX-ray14 differs in
two ways that matter to what a soft (distillation) target can add (docs/guide/distillation-study.md):

1. **Co-occurrence.** Its findings are correlated (effusion with atelectasis, for example).
   :func:`nih_label_distribution` gives a distribution over the label combinations of the packaged
   ``Data_Entry_2017_v2020.csv.gz``: the file's own joint frequencies, tilted (an exponential tilt, the I-projection)
   just enough that every class reaches a minimum prevalence and "No Finding" keeps the file's rate. Of all the
   distributions with those marginals it is the one closest to the file's joint distribution (smallest
   Kullback-Leibler divergence), it draws only combinations that occur in the file, and its ratio to the file's
   frequencies is ``exp(Σ_c θ_c y_c + θ_0 [y = 0])``: every interaction between findings beyond the per-class
   rates is the file's. Rare classes are lifted only so that a sample of a few hundred images has positives of
   every class to score (Hernia is 0.2% of the file).
2. **Label noise.** Its labels were text-mined from reports. Wang et al. (CVPR 2017, "ChestX-ray8", Table 2)
   measured the mining against human annotations of 2,435 OpenI reports: precision and recall per finding for eight
   findings and overall (``TEXT_MINING_QUALITY``, ``TEXT_MINING_TOTAL``). :func:`flip_rates` turns a class's
   precision P, recall R and prevalence π into the flip rates that reproduce them: a positive label is dropped with
   probability 1 − R, and a negative label is set with probability π·R·(1 − P) / (P·(1 − π)), so that of the noisy
   positives a share P is true and of the true positives a share R is kept. Oakden-Rayner's visual audit
   (Academic Radiology 2020, "Exploring large-scale public medical image datasets") found the labels' positive
   predictive values mostly 10-30 points lower than the documented ones, so these rates are a mild model of the noise.

This is a model of label noise, not a claim about the real data: flips are independent across images and classes,
while real mining errors depend on the report's wording.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from common.constants import CLASS_NAMES, NUM_CLASSES
from common.data.labels import read_data_entry

# Wang et al. 2017, Table 2 ("Our Method" columns): (precision, recall) of the text-mined labels against the human
# annotations of the OpenI reports, for the eight findings of ChestX-ray8.
TEXT_MINING_QUALITY = {
    "Atelectasis": (0.99, 0.85), "Cardiomegaly": (1.00, 0.79), "Effusion": (0.93, 0.82),
    "Infiltration": (0.74, 0.87), "Mass": (0.75, 0.40), "Nodule": (0.96, 0.62), "Pneumonia": (0.66, 0.93),
    "Pneumothorax": (0.90, 0.82),
}
# The same table's "Total" row, used for the six findings ChestX-ray14 added later, which the table does not list.
TEXT_MINING_TOTAL = (0.90, 0.91)
# Smallest per-class prevalence of the NIH-structured set (the real file's is kept where it is larger).
NIH_MIN_PREVALENCE = 0.05
# Iterations of the proportional fitting; it converges to float precision in far fewer (checked by a test).
_FIT_ITERATIONS = 500


def text_mining_quality(name: str) -> tuple[float, float]:
    """(precision, recall) of class ``name``'s text-mined labels (Wang et al. 2017, Table 2; its Total row for a
    class the table does not list)."""
    return TEXT_MINING_QUALITY.get(name, TEXT_MINING_TOTAL)


def tilt_to_marginals(rows: np.ndarray, base: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Probabilities over ``rows`` closest to ``base`` (in KL divergence) whose feature means equal ``targets``.

    Args:
        rows: [K, F] 0/1 features of each combination (here 14 findings and the "No Finding" indicator).
        base: [K] probabilities of the combinations (the file's frequencies).
        targets: [F] wanted means, each strictly between the smallest and largest value a tilt can reach.

    The solution has the form ``base · exp(rows @ θ)`` (normalised); θ is found by iterative proportional fitting:
    for one binary feature at a time the exact one-dimensional update multiplies the odds of that feature by the ratio
    of target to current odds.
    """
    features = rows.astype(np.float64)
    log_base = np.log(base)
    theta = np.zeros(features.shape[1])
    for _ in range(_FIT_ITERATIONS):
        for column in range(features.shape[1]):
            logits = log_base + features @ theta
            probs = np.exp(logits - logits.max())
            probs /= probs.sum()
            current = probs @ features[:, column]
            theta[column] += (np.log(targets[column] / current) - np.log((1 - targets[column]) / (1 - current)))
    logits = log_base + features @ theta
    probs = np.exp(logits - logits.max())
    return probs / probs.sum()


@lru_cache(maxsize=4)
def nih_label_distribution(min_prevalence: float = NIH_MIN_PREVALENCE) -> tuple[np.ndarray, np.ndarray]:
    """``(combinations [K, 14] uint8, probabilities [K])``: the label combinations of the packaged v2020 Data_Entry
    file, with the file's frequencies tilted so that every class has at least ``min_prevalence`` and "No Finding"
    keeps the file's rate (see the module docstring). Cached: the file is read once per process."""
    labels = read_data_entry("v2020").labels.astype(np.int64)
    combinations, counts = np.unique(labels, axis=0, return_counts=True)
    base = counts / counts.sum()
    no_finding = combinations.sum(axis=1) == 0
    features = np.concatenate([combinations, no_finding[:, None]], axis=1)
    targets = np.concatenate([np.maximum(labels.mean(axis=0), min_prevalence), [no_finding @ base]])
    probs = tilt_to_marginals(features, base, targets)
    combinations = combinations.astype(np.uint8)
    # Shared by every caller through the cache: read-only, so no caller can change another's draws.
    combinations.setflags(write=False)
    probs.setflags(write=False)
    return combinations, probs


def draw_nih_labels(rng: np.random.Generator, combinations: np.ndarray, cumulative: np.ndarray) -> np.ndarray:
    """One label vector drawn from :func:`nih_label_distribution` (``cumulative``: its probabilities' cumsum)."""
    index = min(int(np.searchsorted(cumulative, rng.uniform(), side="right")), len(combinations) - 1)
    return combinations[index].astype(np.int64)


def flip_rates(clean_labels: np.ndarray) -> dict:
    """Per-class flip rates that give labels of the published precision and recall (module docstring).

    Args:
        clean_labels: [N, 14] 0/1 true labels of the images to corrupt; their prevalence π enters the rate of added
            positives.

    Returns:
        ``{class: {"precision", "recall", "prevalence", "drop_positive", "add_positive"}}``; ``drop_positive`` is
        P(noisy 0 | true 1) = 1 − R and ``add_positive`` is P(noisy 1 | true 0) = π·R·(1 − P) / (P·(1 − π)).
    """
    labels = np.asarray(clean_labels)
    if labels.ndim != 2 or labels.shape[1] != NUM_CLASSES:
        raise ValueError(f"clean_labels must be [N, {NUM_CLASSES}], got shape {labels.shape}")
    prevalence = labels.mean(axis=0) if len(labels) else np.zeros(NUM_CLASSES)
    rates = {}
    for index, name in enumerate(CLASS_NAMES):
        precision, recall = text_mining_quality(name)
        share = float(prevalence[index])
        add = share * recall * (1 - precision) / (precision * (1 - share)) if 0 < share < 1 else 0.0
        rates[name] = {"precision": precision, "recall": recall, "prevalence": share,
                       "drop_positive": 1 - recall, "add_positive": min(1.0, add)}
    return rates


def flip_labels(clean_labels: np.ndarray, rates: dict, rng: np.random.Generator) -> np.ndarray:
    """Noisy copy of ``clean_labels`` [N, 14]: each positive dropped and each negative set independently at the
    class's ``rates`` (from :func:`flip_rates`)."""
    labels = np.asarray(clean_labels, dtype=np.int64)
    drop = np.array([rates[name]["drop_positive"] for name in CLASS_NAMES])
    add = np.array([rates[name]["add_positive"] for name in CLASS_NAMES])
    draws = rng.uniform(size=labels.shape)
    flipped = np.where(labels == 1, draws < drop[None, :], draws < add[None, :])
    return np.where(flipped, 1 - labels, labels)
