"""Figures people would rather look at than read: training curves, ROC curves and the before/after bar chart."""
from __future__ import annotations

import csv
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from common.atomic import write_atomic

matplotlib.use("Agg")  # files only; no display is needed or assumed


def _save(figure, path: Path) -> None:
    """Save ``figure`` atomically: a uniquely named temporary in the same folder, then a rename, so two processes
    never share a temporary and a kill never leaves half an image."""
    path = Path(path)
    image_format = path.suffix.lstrip(".").lower() or "png"  # the temporary's .tmp suffix says nothing to savefig
    try:
        write_atomic(path, lambda stream: figure.savefig(stream, format=image_format, dpi=120,
                                                          bbox_inches="tight"), "wb")
    finally:
        plt.close(figure)  # also on failure: pyplot keeps every open figure alive


def plot_training_curves(log_csv: Path, png_path: Path, title: str = "") -> None:
    """Training loss (and, for distillation, its hard-label and KD terms) and validation mean AUROC per epoch."""
    with open(log_csv, newline="") as stream:
        rows = list(csv.DictReader(stream))
    if not rows:
        return
    epochs = [int(r["epoch"]) for r in rows]
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4), constrained_layout=True)
    left.plot(epochs, [float(r["train_loss"]) for r in rows], marker="o", label="total")
    for column, label in (("train_hard_loss", "hard labels (BCE)"), ("train_kd_loss", "KD term")):
        values = [r.get(column) or "" for r in rows]
        if all(values):  # distillation logs both terms; base training leaves the columns empty
            left.plot(epochs, [float(v) for v in values], marker=".", linestyle="--", label=label)
    if any(line.get_label() != "total" for line in left.get_lines()):
        left.legend(fontsize=8)
    left.set(xlabel="epoch", ylabel="training loss", title=f"{title} loss")
    right.plot(epochs, [float(r["val_mean_auroc"]) for r in rows], marker="o", color="tab:green")
    right.set(xlabel="epoch", ylabel="validation mean AUROC", title=f"{title} validation")
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    _save(figure, png_path)


def plot_roc_curves(targets: np.ndarray, probs: np.ndarray, class_names, aurocs, png_path: Path, title: str) -> None:
    """One ROC curve per class (sklearn ``roc_curve``) in a 4 x 4 grid."""
    figure, axes = plt.subplots(4, 4, figsize=(12, 12))
    for index, axis in enumerate(axes.flat):
        if index >= len(class_names):
            axis.axis("off")
            continue
        column = targets[:, index].astype(int)
        if aurocs[index] is None:
            axis.text(0.5, 0.5, "n/a (one label value)", ha="center")
        else:
            fpr, tpr, _ = roc_curve(column, probs[:, index])
            axis.plot(fpr, tpr)
        axis.plot([0, 1], [0, 1], linestyle=":", color="grey")
        label = "n/a" if aurocs[index] is None else f"{aurocs[index]:.3f}"
        axis.set_title(f"{class_names[index]} ({label})", fontsize=9)
        axis.set_xlabel("false positive rate", fontsize=7)
        axis.set_ylabel("true positive rate", fontsize=7)
        axis.tick_params(labelsize=7)
    figure.suptitle(title)
    _save(figure, png_path)


def plot_before_after(rows: list[dict], baseline: float | None, png_path: Path, title: str) -> None:
    """Bars of each teacher's test mean AUROC next to its distilled student's, with the undistilled baseline.

    ``rows`` items: ``{"label", "teacher", "student"}`` (values may be None when a model is missing).
    """
    labels = [r["label"] for r in rows]
    positions = np.arange(len(rows))
    width = 0.38
    figure, axis = plt.subplots(figsize=(max(6, 1.6 * len(rows)), 4))
    # The tables' 0-1 scale, so a number read off the chart is the number in comparison.md.
    teacher = [np.nan if r["teacher"] is None else r["teacher"] for r in rows]
    student = [np.nan if r["student"] is None else r["student"] for r in rows]
    bars_t = axis.bar(positions - width / 2, teacher, width, label="teacher (before distillation)", zorder=2)
    bars_s = axis.bar(positions + width / 2, student, width, label="EEEA-Net-C2 student (after)", zorder=2)
    for bars in (bars_t, bars_s):
        for text in axis.bar_label(bars, fmt="%.3f", fontsize=8, padding=2):
            # A white box keeps the baseline line from running through the numbers.
            text.set(bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.6}, zorder=4)
    if baseline is not None:
        axis.axhline(baseline, color="black", linestyle="--", linewidth=1, zorder=3,
                     label=f"EEEA-Net-C2 without distillation ({baseline:.3f})")
    finite = [v for v in teacher + student + ([baseline] if baseline is not None else []) if np.isfinite(v)]
    if finite:
        axis.set_ylim(max(0.0, min(finite) - 0.05), min(1.0, max(finite) + 0.04))
    axis.set_xticks(positions, labels, rotation=15)
    axis.set_ylabel("test mean AUROC")
    axis.set_title(title, fontsize=10)
    axis.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, frameon=False)
    _save(figure, png_path)
