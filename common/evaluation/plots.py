"""Figures people would rather look at than read: training curves, ROC curves and the before/after bar chart."""
from __future__ import annotations

import csv
import textwrap
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


def wrap_title(text: str, figure_width_in: float, fontsize: float = 12) -> str:
    """``text`` broken into lines that fit a figure ``figure_width_in`` inches wide (about 0.55 em per character)."""
    width = max(20, int(figure_width_in * 72 / (0.55 * fontsize)))
    return "\n".join(textwrap.fill(line, width) for line in text.splitlines())


def plot_roc_curves(targets: np.ndarray, probs: np.ndarray, class_names, aurocs, png_path: Path, title: str) -> None:
    """One ROC curve per class (sklearn ``roc_curve``) in a 4 x 4 grid."""
    # Constrained layout: without it each subplot title overlaps the x label of the subplot above.
    figure, axes = plt.subplots(4, 4, figsize=(12, 12), layout="constrained")
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
    figure.suptitle(wrap_title(title, 12))
    _save(figure, png_path)


def plot_before_after(rows: list[dict], baseline: float | None, png_path: Path, title: str) -> None:
    """Bars of each teacher's test mean AUROC next to its distilled student's, with their 95% intervals and the
    undistilled baseline.

    ``rows`` items: ``{"label", "teacher", "student"}`` and optionally ``"teacher_ci"`` / ``"student_ci"`` as
    ``(low, high)`` (the patient-bootstrap interval of that model's mean AUROC); values may be None when a model is
    missing (its slot says "missing"), and ``"no_teacher": True`` marks a row without a teacher bar (the
    ensemble). The axis starts at 0.5 (chance), or at 0 when a value or an interval reaches below chance, and says
    so.
    """
    labels = [textwrap.fill(r["label"], 16) for r in rows]
    positions = np.arange(len(rows))
    width = 0.38
    figure, axis = plt.subplots(figsize=(max(6.5, 1.7 * len(rows)), 4.6), layout="constrained")

    def values(key):
        return np.array([np.nan if r.get(key) is None else r[key] for r in rows], dtype=float)

    def intervals(key, centre):
        pairs = [r.get(key) or (np.nan, np.nan) for r in rows]
        low = np.array([np.nan if p[0] is None else p[0] for p in pairs], dtype=float)
        high = np.array([np.nan if p[1] is None else p[1] for p in pairs], dtype=float)
        return np.clip(centre - low, 0, None), np.clip(high - centre, 0, None), low, high

    teacher, student = values("teacher"), values("student")
    t_below, t_above, t_low, t_high = intervals("teacher_ci", teacher)
    s_below, s_above, s_low, s_high = intervals("student_ci", student)
    known = np.concatenate([teacher, student, t_low, s_low, [np.nan if baseline is None else baseline]])
    floor = 0.5 if not np.any(np.nan_to_num(known, nan=1.0) < 0.5) else 0.0
    tops = np.concatenate([teacher, student, t_high, s_high])
    top = float(np.nanmax(tops)) if np.isfinite(tops).any() else 1.0
    for offset, heights, below, above, name in ((-width / 2, teacher, t_below, t_above, "teacher (before distillation)"),
                                                (width / 2, student, s_below, s_above, "EEEA-Net-C2 student (after)")):
        # Bars rise from the axis floor (chance, or 0), so their length is the skill the number claims.
        axis.bar(positions + offset, heights - floor, width, bottom=floor, label=name, zorder=2)
        have = np.isfinite(heights) & np.isfinite(below) & np.isfinite(above)  # no bar for an unknown interval
        axis.errorbar((positions + offset)[have], heights[have], yerr=[below[have], above[have]],
                      fmt="none", ecolor="black", elinewidth=1, capsize=3, zorder=3)
        for x, value, up, row in zip(positions + offset, heights, above, rows):
            if np.isfinite(value):
                axis.text(x, value + np.nan_to_num(up) + 0.01, f"{value:.3f}", ha="center", va="bottom", fontsize=7,
                          zorder=4)
            elif not (offset < 0 and row.get("no_teacher")):
                # An empty slot says why it is empty rather than looking like a value of zero or chance.
                axis.text(x, floor + 0.01, "missing", rotation=90, ha="center", va="bottom", fontsize=7,
                          color="grey", zorder=4)
    if baseline is not None:
        axis.axhline(baseline, color="black", linestyle="--", linewidth=1, zorder=1,
                     label=f"EEEA-Net-C2 without distillation ({baseline:.3f})")
    if floor == 0.0:
        axis.axhline(0.5, color="grey", linestyle=":", linewidth=1, zorder=1, label="chance (0.5)")
    # Room above the highest interval for its number; the ticks stop at 1, the largest AUROC there is.
    axis.set_ylim(floor, max(top, floor + 0.1) + 0.07)
    axis.set_yticks(np.round(np.arange(floor, 1.0001, 0.1), 1))
    axis.set_xticks(positions, labels, fontsize=8)
    axis.set_xlabel("teacher (before) and its EEEA-Net-C2 student (after); error bars: 95% patient-bootstrap "
                    "interval", fontsize=8)
    axis.set_ylabel("test mean AUROC" + (" (axis from 0.5 = chance)" if floor == 0.5 else " (axis from 0)"))
    axis.set_title(wrap_title(title, max(6.5, 1.7 * len(rows)), 10), fontsize=10)
    axis.grid(axis="y", alpha=0.3, zorder=0)
    figure.legend(loc="outside lower center", ncol=2, fontsize=8, frameon=False)
    _save(figure, png_path)
