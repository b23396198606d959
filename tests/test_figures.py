"""Every figure the project writes is readable: no two pieces of drawn text overlap and every axis with a scale is
labelled (issue 17 §3), checked from the text's bounding boxes as the figure's own renderer draws them."""
import csv
import itertools
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from matplotlib.text import Text
from PIL import Image

from common.constants import CLASS_NAMES
from common.evaluation import plots
from common.evaluation.subgroups import calibration, plot_reliability
from common.explain import gradcam
from common.explain.gradcam import ZERO_MAP_NOTE, CamPanel, flat_map_note, write_cam_sheet

matplotlib.use("Agg")
MIN_OVERLAP_PX2 = 1.0  # touching edges are not an overlap


def _not_drawn(figure) -> set[int]:
    """Ids of texts matplotlib keeps but does not draw: labels of ticks outside the view, and the tick and axis
    labels of axes switched off (image panels)."""
    hidden = set()
    for axes in figure.axes:
        for axis, limits, coordinate in ((axes.xaxis, axes.get_xlim(), 0), (axes.yaxis, axes.get_ylim(), 1)):
            low, high = sorted(limits)
            slack = 1e-9 * (high - low)
            for label in axis.get_ticklabels(which="both"):
                if not axes.axison or not low - slack <= label.get_position()[coordinate] <= high + slack:
                    hidden.add(id(label))
        if not axes.axison:
            hidden |= {id(axes.xaxis.label), id(axes.yaxis.label)}
    return hidden


def drawn_texts(figure) -> list[Text]:
    """Every piece of text the figure draws (titles, labels, tick labels, legends, annotations)."""
    figure.canvas.draw()
    hidden = _not_drawn(figure)
    return [text for text in figure.findobj(Text)
            if text.get_visible() and text.get_text().strip() and id(text) not in hidden]


def figure_problems(figure) -> list[str]:
    """Overlapping texts and axes without x or y labels, as readable lines."""
    renderer = figure.canvas.get_renderer()
    texts = drawn_texts(figure)
    boxes = [text.get_window_extent(renderer) for text in texts]
    problems = []
    for (a, box_a), (b, box_b) in itertools.combinations(zip(texts, boxes), 2):
        width = min(box_a.x1, box_b.x1) - max(box_a.x0, box_b.x0)
        height = min(box_a.y1, box_b.y1) - max(box_a.y0, box_b.y0)
        if width > 0 and height > 0 and width * height > MIN_OVERLAP_PX2:
            problems.append(f"{a.get_text()!r} overlaps {b.get_text()!r}")
    for axis in figure.axes:
        if axis.axison and axis.get_visible() and (axis.lines or axis.patches or axis.collections):
            if not axis.get_xlabel().strip() or not axis.get_ylabel().strip():
                problems.append(f"axes {axis.get_title()!r} lacks a label (x {axis.get_xlabel()!r}, "
                                f"y {axis.get_ylabel()!r})")
    return problems


class Findings(dict):
    def __init__(self):
        super().__init__()
        self.figures = {}


@pytest.fixture
def checked(monkeypatch):
    """Every figure saved through the project's one ``_save`` is checked first: ``{file name: problems}``, and
    the figures themselves under ``checked.figures``."""
    found = Findings()
    original = plots._save

    def checking_save(figure, path):
        found[Path(path).name] = figure_problems(figure)
        found.figures[Path(path).name] = figure
        original(figure, path)

    monkeypatch.setattr(plots, "_save", checking_save)
    monkeypatch.setattr(gradcam, "_save", checking_save)
    return found


def _targets_and_probs(rows=200, seed=0):
    rng = np.random.default_rng(seed)
    targets = (rng.uniform(size=(rows, len(CLASS_NAMES))) < 0.2).astype(np.uint8)
    targets[:, -1] = 0  # one class with a single label value: its panel says n/a
    probs = np.clip(0.35 * targets + 0.65 * rng.uniform(size=targets.shape), 0, 1)
    return targets, probs


def test_training_curves_are_readable(tmp_path, checked):
    log = tmp_path / "modeld-ensemble-log.csv"
    with open(log, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["epoch", "train_loss", "train_hard_loss", "train_kd_loss", "val_mean_auroc"])
        for epoch in range(1, 7):
            writer.writerow([epoch, 0.5 / epoch, 0.3 / epoch, 0.2 / epoch, 0.6 + 0.03 * epoch])
    plots.plot_training_curves(log, tmp_path / "curves.png", "modeld-ensemble")
    assert checked["curves.png"] == []


def test_roc_sheet_titles_clear_the_row_above(tmp_path, checked):
    targets, probs = _targets_and_probs()
    from sklearn.metrics import roc_auc_score
    aurocs = [roc_auc_score(targets[:, c], probs[:, c]) if len(set(targets[:, c])) == 2 else None
              for c in range(len(CLASS_NAMES))]
    plots.plot_roc_curves(targets, probs, CLASS_NAMES, aurocs, tmp_path / "roc.png",
                          "eeea_c2: official test, labels Data_Entry_2017_v2020.csv (v2020)")
    assert checked["roc.png"] == []


def test_reliability_diagrams_have_axis_labels(tmp_path, checked):
    targets, probs = _targets_and_probs()
    plot_reliability(tmp_path / "reliability.png", calibration(targets, probs, n_bins=15))
    assert checked["reliability.png"] == []


def test_cam_sheet_says_which_maps_are_zero(tmp_path, checked):
    rng = np.random.default_rng(0)
    image = (rng.uniform(size=(64, 64)) * 255).astype(np.uint8)
    live = np.outer(np.hanning(64), np.hanning(64)).astype(np.float32)
    zero = np.zeros((64, 64), np.float32)
    rows = [[CamPanel(name, f"0000000{k}_000.png", image, zero if (c + k) % 3 == 0 else live, 0.4 + 0.1 * k,
                      [(10, 12, 20, 18)] if k == 0 else None)
             for k in range(2)] for c, name in enumerate(CLASS_NAMES)]
    path = write_cam_sheet(tmp_path / "sheet.png", rows,
                           title="eeea_c2 (model1.pth): Grad-CAM of the 2 most probable test images per class "
                                 "(green: the box of that class in the box list)")
    assert checked["sheet.png"] == []
    zeros = sum(panel.heatmap.max() == 0 for row in rows for panel in row)
    assert flat_map_note(zero) == ZERO_MAP_NOTE and flat_map_note(live) is None
    assert flat_map_note(np.full((4, 4), 0.3)).startswith("constant map")
    with Image.open(path) as opened:
        assert opened.size[0] > 400
    assert f"{zeros} of 28 maps are zero or constant" in checked.figures["sheet.png"].get_suptitle().replace("\n", " ")


def test_cam_sheet_title_counts_flat_maps(tmp_path, checked):
    image = np.zeros((32, 32), np.uint8)
    rows = [[CamPanel("Mass", "a.png", image, np.zeros((32, 32)), 0.5),
             CamPanel("Mass", "b.png", image, np.eye(32), 0.4)]]
    write_cam_sheet(tmp_path / "small.png", rows, title="tiny")
    figure = checked.figures["small.png"]
    assert "1 of 2 maps are zero or constant" in figure.get_suptitle().replace("\n", " ")
    assert [t.get_text() for axis in figure.axes for t in axis.texts] == [ZERO_MAP_NOTE]
    assert checked["small.png"] == []


@pytest.mark.parametrize("low", [False, True])
def test_comparison_chart_has_intervals_from_chance(tmp_path, checked, low):
    labels = ["EEEA-Net-C2", "OFA-595", "CheXNet", "Visformer-small", "AutoFormerV2-base",
              "ensemble of 1+2+3+4+5 (auroc)"]
    rows = []
    for k, label in enumerate(labels):
        teacher = None if k == 5 else 0.78 + 0.01 * k - (0.35 if low and k == 2 else 0.0)
        student = 0.80 - 0.005 * k
        rows.append({"label": label, "teacher": teacher, "student": student, "no_teacher": k == 5,
                     "teacher_ci": None if teacher is None else (teacher - 0.02, teacher + 0.02),
                     "student_ci": (student - 0.015, student + 0.02)})
    plots.plot_before_after(rows, 0.80, tmp_path / "comparison-auroc.png",
                            "Test mean AUROC before and after distillation (split official, "
                            "Data_Entry_2017_v2020.csv (v2020))")
    axis = checked.figures["comparison-auroc.png"].axes[0]
    assert checked["comparison-auroc.png"] == []
    assert axis.get_ylim()[0] == (0.0 if low else 0.5)
    assert ("axis from 0.5 = chance" in axis.get_ylabel()) != low
    # Error bars: one per present model (5 teachers + 6 students).
    caps = [c for c in axis.collections if c.__class__.__name__ == "LineCollection"]
    assert sum(len(c.get_segments()) for c in caps) == 11
    assert not any(t.get_text() == "missing" for t in axis.texts)  # the ensemble has no teacher: no slot


def test_comparison_chart_says_which_models_are_missing(tmp_path, checked):
    rows = [{"label": "EEEA-Net-C2", "teacher": 0.7, "student": 0.72, "teacher_ci": (0.65, 0.75),
             "student_ci": (0.66, 0.77)},
            {"label": "CheXNet", "teacher": None, "student": None},
            {"label": "ensemble of 1+3 (uniform)", "teacher": None, "student": 0.71, "no_teacher": True}]
    plots.plot_before_after(rows, 0.7, tmp_path / "partial.png", "partial comparison")
    axis = checked.figures["partial.png"].axes[0]
    assert [t.get_text() for t in axis.texts].count("missing") == 2 and checked["partial.png"] == []
    bars = [c for c in axis.collections if c.__class__.__name__ == "LineCollection"]
    assert sum(len(c.get_segments()) for c in bars) == 2  # the ensemble's interval is unknown: no error bar
