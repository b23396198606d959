"""Weakly supervised localisation scored against the NIH boxes, with Wang et al.'s (ChestX-ray8, CVPR 2017) protocol.

Protocol (Wang et al. and their supplement):

1. For each box image and each of its boxed classes, take the heatmap of that class and bring it to the 1024 x 1024
   frame of the boxes (:func:`map_to_original`).
2. Normalise the heatmap to [0, 255] and threshold it; a box is drawn around every connected region of the binary map
   (:func:`boxes_from_heatmap`). Wang et al. thresholded at both 60 and 180 and used the boxes of both;
   :data:`WANG_THRESHOLDS` = (60, 180) is this module's default, so the numbers compare with their table
   (:func:`boxes_from_heatmap_wang`). No threshold is tuned on the test boxes.
3. A detected box is correct when IoU > T(IoU) or IoBB > T(IoBB) (IoBB = intersection / area of the *detected* box),
   scored per threshold T separately. Per class: **Acc.** = share of ground-truth boxes hit by at least one correct
   detection of that class on the same image; **AFP** = false-positive detections of that class (correct for no
   ground-truth box of that class on that image) divided by the number of boxes scored, all classes together (984
   for the whole NIH list). That denominator is the one that reproduces Wang et al.'s published arithmetic: each of
   their eight AFP values at T(IoBB) = 0.1 times 984 is a whole number (0.8293 = 816/984, ..., 0.4543 = 447/984),
   which no other denominator between 50 and 3,000 but multiples of 984 gives for all eight (docs/guide/trust.md).
   The false positives per image of the class (over the class's box images) are kept as ``fp_per_class_image``.

Box tuples are ``(x, y, w, h)``: top-left corner, width and height in pixels; pixel ``(row, col)`` covers
``[col, col + 1) x [row, row + 1)``, so a region covering columns 3..5 has ``x = 3, w = 3``.
"""
from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
from PIL import Image
from scipy import ndimage

from common.data.fingerprint import file_sha256
from common.data.images import eval_resize
from common.data.labels import read_text, resource_path
from common.errors import UserError

BBOX_RESOURCE = "BBox_List_2017.csv.gz"
# The eight classes with boxes, in CLASS_NAMES order.
BOX_CLASSES = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
               "Pneumothorax")
# The BBox file spells one class differently from Data_Entry.
BBOX_LABEL_ALIASES = {"Infiltrate": "Infiltration"}
ORIGINAL_SIZE = 1024       # NIH PNGs and the boxes' frame are 1024 x 1024
WANG_THRESHOLDS = (60, 180)
IOBB_THRESHOLDS = (0.1, 0.25, 0.5, 0.75, 0.9)
IOU_THRESHOLDS = (0.1, 0.3, 0.5)

Box = tuple[float, float, float, float]

# Wang et al. 2017, supplement Table 19 (ChestX-ray14, T(IoBB)): {T: {"acc": {class: value}, "afp": {...}}}.
# AFP is published for T(IoBB) = 0.1 only.
_WANG_ACC = {
    0.1: (.6222, 1.0, .7974, .9106, .5882, .1519, .8583, .5204),
    0.25: (.3944, .9863, .6339, .7967, .4588, .0506, .7083, .3367),
    0.5: (.1944, .9452, .4183, .6504, .3058, 0.0, .4833, .2653),
    0.75: (.0889, .8151, .2287, .4390, .1647, 0.0, .2917, .1735),
    0.9: (.0722, .6507, .1373, .3577, .0941, 0.0, .2333, .1224),
}
_WANG_AFP_01 = (.8293, .1768, .6148, .4919, .3933, .4685, .4360, .4543)
WANG_2017_IOBB = {
    t: {"acc": dict(zip(BOX_CLASSES, acc)), "afp": dict(zip(BOX_CLASSES, _WANG_AFP_01)) if t == 0.1 else None}
    for t, acc in _WANG_ACC.items()
}


@dataclass(frozen=True)
class BBoxRow:
    """One ground-truth box: image name, class (Data_Entry spelling) and the box in 1024-pixel coordinates."""

    image: str
    label: str
    x: float
    y: float
    w: float
    h: float

    @property
    def box(self) -> Box:
        return (self.x, self.y, self.w, self.h)


# --------------------------------------------------------------------------------------------------------------------
# The BBox file
# --------------------------------------------------------------------------------------------------------------------
def _bbox_path(path_or_resource) -> Path:
    if path_or_resource is None:
        return resource_path(BBOX_RESOURCE)
    path = Path(path_or_resource)
    if path.is_file():
        return path
    packaged = resource_path(str(path_or_resource))
    if packaged.is_file():
        return packaged
    raise UserError(f"box list {path} does not exist (pass a BBox_List_2017.csv file, or nothing for the packaged one)")


def read_bbox_list(path_or_resource: str | os.PathLike | None = None) -> list[BBoxRow]:
    """Read a ``BBox_List_2017.csv`` (plain or ``.gz``); None reads the packaged copy.

    The layout is the NIH one: header ``Image Index,Finding Label,Bbox [x,y,w,h],,,`` (the bracketed name split
    over four columns, two empty trailing columns), then ``name,label,x,y,w,h`` rows (trailing empty fields are
    accepted). ``Infiltrate`` is read as ``Infiltration``. A malformed line is one :class:`UserError` naming the file
    and the line.
    """
    path = _bbox_path(path_or_resource)
    lines = list(csv.reader(io.StringIO(read_text(path))))
    if not lines or [f.strip() for f in lines[0][:2]] != ["Image Index", "Finding Label"]:
        raise UserError(f"{path}, line 1: expected the BBox_List_2017 header 'Image Index,Finding Label,Bbox [x,y,w,h]'")
    rows = []
    for number, fields in enumerate(lines[1:], start=2):
        if not any(f.strip() for f in fields):
            continue
        values = [f.strip() for f in fields]
        if len(values) < 6 or any(values[6:]):
            raise UserError(f"{path}, line {number}: expected 'image,label,x,y,w,h', got {','.join(fields)[:80]!r}")
        name, label = values[0], BBOX_LABEL_ALIASES.get(values[1], values[1])
        if label not in BOX_CLASSES:
            raise UserError(f"{path}, line {number}: unknown box class {values[1]!r} "
                            f"(expected one of {', '.join(BOX_CLASSES)} or Infiltrate)")
        try:
            x, y, w, h = (float(v) for v in values[2:6])
        except ValueError:
            raise UserError(f"{path}, line {number}: box values {values[2:6]} are not numbers") from None
        if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
            raise UserError(f"{path}, line {number}: box {values[2:6]} needs finite values and a positive size")
        rows.append(BBoxRow(name, label, x, y, w, h))
    if not rows:
        raise UserError(f"{path} lists no boxes")
    return rows


def group_boxes(rows: Sequence[BBoxRow]) -> dict[tuple[str, str], list[Box]]:
    """Ground-truth boxes by ``(image, class)``."""
    grouped: dict[tuple[str, str], list[Box]] = {}
    for row in rows:
        grouped.setdefault((row.image, row.label), []).append(row.box)
    return grouped


# --------------------------------------------------------------------------------------------------------------------
# Heatmap -> boxes, geometry
# --------------------------------------------------------------------------------------------------------------------
def normalise_to_255(heatmap: np.ndarray) -> Optional[np.ndarray]:
    """Min-max scale a heatmap to [0, 255] (float); None for a constant map, which has no region to box."""
    heatmap = np.asarray(heatmap, dtype=np.float64)
    if heatmap.ndim != 2 or not np.isfinite(heatmap).all():
        raise ValueError(f"expected a finite 2-D heatmap, got shape {heatmap.shape}")
    low, high = heatmap.min(), heatmap.max()
    if high <= low:
        return None
    return (heatmap - low) * (255.0 / (high - low))


def boxes_from_heatmap(heatmap: np.ndarray, threshold: float = 180) -> list[Box]:
    """Boxes around the connected regions of ``normalised heatmap >= threshold`` (threshold on the 0-255 scale).

    Regions are 8-connected (diagonal neighbours join), so a thin diagonal hot streak is one region. A constant map
    gives no box. Boxes are in the heatmap's pixel frame, sorted top-to-bottom then left-to-right.
    """
    if not 0 <= threshold <= 255:
        raise ValueError(f"threshold must be on the 0-255 scale, got {threshold}")
    scaled = normalise_to_255(heatmap)
    if scaled is None:
        return []
    labelled, _ = ndimage.label(scaled >= threshold, structure=np.ones((3, 3), dtype=bool))
    boxes = [(float(cols.start), float(rows.start), float(cols.stop - cols.start), float(rows.stop - rows.start))
             for rows, cols in ndimage.find_objects(labelled) if rows is not None]
    return sorted(boxes, key=lambda b: (b[1], b[0]))


def boxes_from_heatmap_wang(heatmap: np.ndarray, thresholds: Sequence[float] = WANG_THRESHOLDS) -> list[Box]:
    """Wang et al.'s detections: the boxes of every threshold together (60 and 180 by default). A box that two
    thresholds produce identically is kept once, so it is not counted twice as a false positive."""
    boxes: list[Box] = []
    for threshold in thresholds:
        boxes.extend(b for b in boxes_from_heatmap(heatmap, threshold) if b not in boxes)
    return boxes


def _intersection(a: Box, b: Box) -> float:
    width = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    height = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    return max(0.0, width) * max(0.0, height)


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two ``(x, y, w, h)`` boxes."""
    inter = _intersection(a, b)
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def iobb(detected: Box, truth: Box) -> float:
    """Wang et al.'s IoBB: intersection over the area of the *detected* box (a small box inside the truth scores 1)."""
    area = detected[2] * detected[3]
    return _intersection(detected, truth) / area if area > 0 else 0.0


# --------------------------------------------------------------------------------------------------------------------
# Model input frame <-> 1024-pixel frame
# --------------------------------------------------------------------------------------------------------------------
def eval_view_geometry(img_size: int, original_size=(ORIGINAL_SIZE, ORIGINAL_SIZE)) -> tuple[float, int, int]:
    """How the evaluation view (``Resize(round(s*256/224))`` of the shorter side, then ``CenterCrop(s)``) maps the
    original frame: returns ``(scale, left, top)`` with ``model = original * scale - (left, top)``.

    The resized size and the crop offsets are computed as torchvision computes them (long side ``int(r * long /
    short)``, offsets ``int(round((resized - s) / 2))``). Boxes are in the 1024-pixel frame whatever size the stored
    PNG has, so ``original_size`` is the frame of the boxes (1024 x 1024 for NIH), not the PNG's pixel size.
    """
    width, height = original_size
    resized_short = eval_resize(img_size)
    short, long = min(width, height), max(width, height)
    resized_long = int(resized_short * long / short)
    resized_w, resized_h = (resized_short, resized_long) if width <= height else (resized_long, resized_short)
    left = int(round((resized_w - img_size) / 2.0))
    top = int(round((resized_h - img_size) / 2.0))
    return resized_short / short, left, top


def box_to_original(box: Box, img_size: int, original_size=(ORIGINAL_SIZE, ORIGINAL_SIZE)) -> Box:
    """A box in the model's input crop -> the original (1024-pixel) frame: ``orig = (model + offset) / scale``."""
    scale, left, top = eval_view_geometry(img_size, original_size)
    x, y, w, h = box
    return ((x + left) / scale, (y + top) / scale, w / scale, h / scale)


def box_to_crop(box: Box, img_size: int, original_size=(ORIGINAL_SIZE, ORIGINAL_SIZE)) -> Box:
    """The inverse of :func:`box_to_original`: an NIH box (1024-pixel frame) -> the model's input crop, to draw it on
    a Grad-CAM overlay; ``model = orig * scale - offset`` (parts outside the crop are not clipped)."""
    scale, left, top = eval_view_geometry(img_size, original_size)
    x, y, w, h = box
    return (x * scale - left, y * scale - top, w * scale, h * scale)


def map_to_original(heatmap: np.ndarray, original_size=(ORIGINAL_SIZE, ORIGINAL_SIZE)) -> np.ndarray:
    """Bring an ``s x s`` heatmap of the evaluation crop back to the original frame.

    The crop covers the original region ``[left/scale, (left+s)/scale)`` x ``[top/scale, (top+s)/scale)``
    (:func:`eval_view_geometry`; for s = 224 and 1024 x 1024: 56/256*1024 = 64 ... 960 on both axes). The map is
    resized bilinearly onto that region; the border the crop cut off has no heatmap and is 0 (which is the minimum
    of a Grad-CAM map, so it never starts a region). Returns a float32 ``[H, W]`` array of the original size.
    """
    heatmap = np.asarray(heatmap, dtype=np.float32)
    if heatmap.ndim != 2 or heatmap.shape[0] != heatmap.shape[1]:
        raise ValueError(f"expected a square s x s heatmap of the evaluation crop, got shape {heatmap.shape}")
    img_size = heatmap.shape[0]
    scale, left, top = eval_view_geometry(img_size, original_size)
    width, height = original_size
    x0, y0 = int(round(left / scale)), int(round(top / scale))
    x1 = min(width, int(round((left + img_size) / scale)))
    y1 = min(height, int(round((top + img_size) / scale)))
    result = np.zeros((height, width), dtype=np.float32)
    resized = Image.fromarray(heatmap, mode="F").resize((x1 - x0, y1 - y0), Image.BILINEAR)
    result[y0:y1, x0:x1] = np.asarray(resized, dtype=np.float32)
    return result


# --------------------------------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------------------------------
def localization_scores(gt_rows: Sequence[BBoxRow], predicted: Mapping[tuple[str, str], Sequence[Box]],
                        iobb_thresholds: Sequence[float] = IOBB_THRESHOLDS,
                        iou_thresholds: Sequence[float] = IOU_THRESHOLDS) -> dict:
    """Acc. and AFP per class and threshold, as Wang et al. define them.

    Args:
        gt_rows: ground-truth boxes (:func:`read_bbox_list`), possibly a subset (for example the box images in a
            split's test part).
        predicted: ``{(image, class): [detected boxes]}`` in the same 1024-pixel frame, for **every** ``(image,
            class)`` pair of ``gt_rows`` (an empty list when the heatmap gave no box). A missing pair is an error,
            so an image that was never scored cannot pass as "no false positives".
        iobb_thresholds, iou_thresholds: T values; a detection is correct when the measure is *greater* than T.

    Returns:
        ``{"iobb": {T: per_class}, "iou": {T: per_class}, "n_boxes": {class: n}, "n_images": {class: n},
        "afp_denominator": n}`` where ``per_class`` is ``{class: {"acc": float, "afp": float, "fp_per_class_image":
        float, "hits": int, "false_positives": int}}`` for the classes present in ``gt_rows`` (BOX_CLASSES order);
        ``afp = false_positives / afp_denominator``, the number of boxes scored (module docstring).
    """
    truth = group_boxes(gt_rows)
    missing = [key for key in truth if key not in predicted]
    if missing:
        raise ValueError(f"{len(missing)} (image, class) pair(s) with ground-truth boxes have no predictions "
                         f"(first: {missing[0]})")
    classes = [c for c in BOX_CLASSES if any(label == c for _, label in truth)]
    n_boxes = {c: sum(len(b) for (_, label), b in truth.items() if label == c) for c in classes}
    n_images = {c: sum(1 for _, label in truth if label == c) for c in classes}
    afp_denominator = sum(n_boxes.values())  # Wang et al.'s: every box scored, all classes (984 for the NIH list)

    def score(measure, threshold):
        per_class = {}
        for c in classes:
            hits = false_positives = 0
            for (image, label), gt_boxes in truth.items():
                if label != c:
                    continue
                detections = list(predicted[(image, label)])
                # A detection is correct for a ground-truth box when the measure exceeds T.
                correct = [[measure(d, g) > threshold for g in gt_boxes] for d in detections]
                hits += sum(1 for j in range(len(gt_boxes)) if any(row[j] for row in correct))
                false_positives += sum(1 for row in correct if not any(row))
            per_class[c] = {"acc": hits / n_boxes[c], "afp": false_positives / afp_denominator,
                            "fp_per_class_image": false_positives / n_images[c], "hits": hits,
                            "false_positives": false_positives}
        return per_class

    return {
        "iobb": {float(t): score(iobb, t) for t in iobb_thresholds},
        "iou": {float(t): score(iou, t) for t in iou_thresholds},
        "n_boxes": n_boxes,
        "n_images": n_images,
        "afp_denominator": afp_denominator,
    }


def detect_boxes(heatmaps: np.ndarray, thresholds: Sequence[float] = WANG_THRESHOLDS,
                 original_size=(ORIGINAL_SIZE, ORIGINAL_SIZE)) -> list[list[Box]]:
    """Wang-style detections in the 1024-pixel frame for ``[N, s, s]`` evaluation-crop heatmaps (one list each)."""
    return [boxes_from_heatmap_wang(map_to_original(m, original_size), thresholds) for m in np.asarray(heatmaps)]


_SHORT = {"Atelectasis": "Atel", "Cardiomegaly": "Card", "Effusion": "Eff", "Infiltration": "Infil", "Mass": "Mass",
          "Nodule": "Nod", "Pneumonia": "Pneu", "Pneumothorax": "Ptx"}


def format_localization_table(scores: dict, label: str = "ours") -> str:
    """A fixed-width table of :func:`localization_scores`: for each T(IoBB), our Acc. (and AFP) beside Wang et al.'s
    published values, then our Acc. at each T(IoU); counts of boxes and images on the last line."""
    classes = list(scores["n_boxes"])
    head = f"{'':<22}" + "".join(f"{_SHORT[c]:>7}" for c in classes)
    lines = [head, "-" * len(head)]

    def row(text, values):
        return f"{text:<22}" + "".join(f"{'n/a' if v is None else format(v, '.4f'):>7}" for v in values)

    for t, per_class in scores["iobb"].items():
        lines.append(row(f"IoBB>{t:g} Acc {label}", [per_class[c]["acc"] for c in classes]))
        wang = WANG_2017_IOBB.get(t)
        if wang is not None:
            lines.append(row(f"IoBB>{t:g} Acc Wang17", [wang["acc"][c] for c in classes]))
        lines.append(row(f"IoBB>{t:g} AFP {label}", [per_class[c]["afp"] for c in classes]))
        if wang is not None and wang["afp"] is not None:
            lines.append(row(f"IoBB>{t:g} AFP Wang17", [wang["afp"][c] for c in classes]))
    for t, per_class in scores["iou"].items():
        lines.append(row(f"IoU>{t:g} Acc {label}", [per_class[c]["acc"] for c in classes]))
    lines.append("-" * len(head))
    denominator = scores.get("afp_denominator", sum(scores["n_boxes"].values()))
    lines.append(f"{sum(scores['n_boxes'].values())} boxes on {sum(scores['n_images'].values())} "
                 f"(image, class) pairs; Acc = share of boxes hit, AFP = false-positive boxes / {denominator} (the "
                 "boxes scored: Wang et al.'s denominator); Wang17 = Wang et al. 2017 supplement Table 19")
    return "\n".join(lines)


def read_boxes(bbox_file: str | None) -> tuple[list[BBoxRow], str]:
    """The box list of ``--bbox-file`` (default: the packaged BBox_List_2017) and a name for it in reports."""
    rows = read_bbox_list(bbox_file)
    return rows, str(bbox_file) if bbox_file else "BBox_List_2017.csv (packaged)"


def box_list_sha256(bbox_file: str | None) -> str:
    """sha256 of the box list file ``read_boxes(bbox_file)`` reads: what a localisation result records, so that
    a later run reuses it only for the same boxes."""
    return file_sha256(_bbox_path(bbox_file))
