"""Grad-CAM heatmaps of an evaluated checkpoint: overlays and a summary sheet, and their localisation score.

Shared by ``test-model.py`` (``--cam K``, ``--localization``) and the folder 6 comparison (``--localization``). The
maps are computed on the evaluation view the model was scored on (resize, centre crop, normalise), reloaded from the
split's image source, so a map lines up with the probability it explains.

- :func:`write_cam_report`: for each class, overlays of the ``K`` test images with the highest probability (the
  X-ray, the map and the NIH box of that class where the box list has one), and one sheet per model.
- :func:`localization_report`: Wang et al.'s protocol (:mod:`common.explain.localization`) on every box of the test part:
  the heatmap of the boxed class, thresholded at Wang's fixed 60 and 180. No threshold is tuned: every NIH box is
  on a test image, so there are no validation boxes to tune one on, and tuning on the scored boxes would flatter it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from common.atomic import write_text_atomic
from common.constants import CLASS_NAMES
from common.data.split_data import SplitData, eval_transform_for
from common.errors import UserError
from common.explain.gradcam import (
    CamPanel,
    gradcam_maps,
    input_view_gray,
    top_k_per_class,
    write_cam_overlays,
    write_cam_sheet,
)
from common.explain.localization import (
    WANG_THRESHOLDS,
    BBoxRow,
    box_to_crop,
    detect_boxes,
    format_localization_table,
    group_boxes,
    localization_scores,
)


def _result_stem(result) -> str:
    return str(Path(result.checkpoint).with_suffix(""))


def _maps_for_pairs(result, data: SplitData, pairs: Sequence[tuple[str, int]], batch_size: int):
    """Grad-CAM maps ``[P, s, s]`` and the grey input views of ``(image name, class index)`` pairs, in batches."""
    if result.model is None or result.meta is None:
        raise ValueError("Grad-CAM needs the evaluated model and its input settings (a checkpoint's TestResult)")
    meta = result.meta
    transform = eval_transform_for(meta, meta["img_size"])
    device = next(result.model.parameters()).device
    maps, views = [], []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        images = torch.stack([transform(data.source.load(name)) for name, _ in chunk]).to(device)
        maps.append(gradcam_maps(result.model, meta["model_name"], images, [c for _, c in chunk]))
        views += input_view_gray(images, meta["mean"], meta["std"])
    return (np.concatenate(maps) if maps else np.zeros((0, meta["img_size"], meta["img_size"]), np.float32)), views


def write_cam_report(result, data: SplitData, k: int, bbox_rows: Sequence[BBoxRow] | None = None,
                     batch_size: int = 16) -> dict:
    """Overlays of the ``k`` most probable test images of every class and one sheet (classes x images).

    Writes ``<stem>-test-cam/<Class>/<image>_<Class>.png`` and ``<stem>-test-cam-sheet.png`` beside the checkpoint.
    Boxes from ``bbox_rows`` of the shown class and image are drawn in green, moved onto the model's crop.

    Returns:
        ``{"sheet": path, "overlays": [paths], "folder": path}``.
    """
    top = top_k_per_class(result.probs, k)
    row_of = {name: row for row, name in enumerate(result.names)}
    pairs = [(result.names[row], c) for c in top for row in top[c]]
    maps, views = _maps_for_pairs(result, data, pairs, batch_size)
    boxes = group_boxes(bbox_rows or [])
    img_size = result.meta["img_size"]
    folder = Path(f"{_result_stem(result)}-test-cam")
    overlays, sheet_rows, index = [], [], 0
    for c, rows in top.items():
        name_list = [result.names[row] for row in rows]
        class_name = CLASS_NAMES[c]
        crop_boxes = [[box_to_crop(b, img_size) for b in boxes.get((name, class_name), [])] or None
                      for name in name_list]
        class_maps, class_views = maps[index:index + len(rows)], views[index:index + len(rows)]
        probs = [float(result.probs[row_of[name], c]) for name in name_list]
        overlays += write_cam_overlays(folder / class_name, class_views, class_maps, name_list, class_name, probs,
                                       crop_boxes)
        sheet_rows.append([CamPanel(class_name, name, view, heatmap, prob, box)
                           for name, view, heatmap, prob, box in zip(name_list, class_views, class_maps, probs,
                                                                     crop_boxes)])
        index += len(rows)
    sheet = write_cam_sheet(Path(f"{_result_stem(result)}-test-cam-sheet.png"), sheet_rows,
                            title=f"{result.model_name} ({Path(result.checkpoint).name}): Grad-CAM of the {k} most "
                                  "probable test images per class (green: the box of that class in the box list)")
    return {"sheet": sheet, "overlays": overlays, "folder": folder}


def localization_report(result, data: SplitData, bbox_rows: Sequence[BBoxRow], bbox_name: str,
                        batch_size: int = 16, bbox_sha256: str | None = None) -> dict:
    """Score the heatmaps of every boxed (image, class) pair of the evaluated part with Wang et al.'s protocol.

    Only boxes on images of the evaluated part are scored (all 880 NIH box images are in the official test list,
    188 in the arnoweng test list); the report says how many of the file's boxes that is.

    Returns:
        ``{"bbox_file", "bbox_sha256", "boxes_in_file", "images_in_file", "boxes_scored", "images_scored",
        "pairs_scored", "empty_maps", "heatmap_thresholds", "threshold_choice", "scores"}`` with ``scores`` from
        :func:`common.explain.localization.localization_scores`; ``bbox_sha256`` as given (the box file's hash,
        :func:`common.explain.localization.box_list_sha256`), so that a later comparison can reuse the scores.

    Raises:
        UserError: no box of the file is on an image of the evaluated part.
    """
    evaluated = set(result.names)
    scored = [row for row in bbox_rows if row.image in evaluated]
    images_in_file = len({row.image for row in bbox_rows})
    if not scored:
        raise UserError(f"none of the {len(bbox_rows)} boxes of {bbox_name} ({images_in_file} images) is on an image "
                        f"of the {result.report['part']} part of split {result.report['split']}; pass --bbox-file "
                        "with boxes of these images")
    pairs = sorted({(row.image, row.label) for row in scored})
    maps, _ = _maps_for_pairs(result, data, [(name, CLASS_NAMES.index(label)) for name, label in pairs], batch_size)
    predicted = dict(zip(pairs, detect_boxes(maps, WANG_THRESHOLDS)))
    scores = localization_scores(scored, predicted)
    # A map without any positive evidence (all zero) yields no box: a miss, but worth counting apart, since a
    # table of zeros could otherwise be read as boxes drawn in the wrong place.
    empty = int(sum(1 for heatmap in maps if float(heatmap.max()) <= float(heatmap.min())))
    return {"bbox_file": bbox_name, "bbox_sha256": bbox_sha256, "boxes_in_file": len(bbox_rows),
            "images_in_file": images_in_file,
            "boxes_scored": len(scored), "images_scored": len({row.image for row in scored}),
            "pairs_scored": len(pairs), "empty_maps": empty,
            "heatmap_thresholds": list(WANG_THRESHOLDS),
            "threshold_choice": "fixed at Wang et al.'s 60 and 180 (of 255); not tuned on any boxes",
            "scores": scores}


def localization_text(result, loc: dict) -> str:
    """The table of :func:`localization_report` with the counts of scored boxes above it."""
    return (f"Localisation of {result.model_name} (Grad-CAM, Wang et al. 2017 protocol; heatmap thresholds "
            f"{'/'.join(str(t) for t in loc['heatmap_thresholds'])} fixed): {loc['boxes_scored']} of the "
            f"{loc['boxes_in_file']} boxes of {loc['bbox_file']} are on {loc['images_scored']} of the "
            f"{loc['images_in_file']} box images in the {result.report['part']} part of split "
            f"{result.report['split']}; {loc['empty_maps']} of the {loc['pairs_scored']} heatmaps were constant (no "
            "box)\n" + format_localization_table(loc["scores"]))


def mean_localization_accuracy(loc: dict | None, measure: str = "iobb", threshold: float = 0.1):
    """Mean over the scored classes of Acc. at one threshold, or None without a localisation report."""
    if not loc:
        return None
    per_class = loc["scores"][measure][float(threshold)]
    return float(np.mean([v["acc"] for v in per_class.values()])) if per_class else None


def write_localization(result, loc: dict) -> Path:
    """Write ``<stem>-test-localization.txt`` (the table) beside the checkpoint; the numbers go into the JSON."""
    path = Path(f"{_result_stem(result)}-test-localization.txt")
    write_text_atomic(localization_text(result, loc) + "\n", path)
    return path


def json_ready(loc: dict) -> dict:
    """``loc`` with the float threshold keys written as text (``"0.1"``), as JSON needs."""
    scores = loc["scores"]
    return {**loc, "scores": {**scores, "iobb": {f"{t:g}": v for t, v in scores["iobb"].items()},
                              "iou": {f"{t:g}": v for t, v in scores["iou"].items()}}}


def from_json_ready(loc: dict) -> dict:
    """The inverse of :func:`json_ready`: a localisation report read back from a result file, threshold keys as
    floats again."""
    scores = loc["scores"]
    return {**loc, "scores": {**scores, "iobb": {float(t): v for t, v in scores["iobb"].items()},
                              "iou": {float(t): v for t, v in scores["iou"].items()}}}
