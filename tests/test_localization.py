"""Wang et al.'s localisation protocol: the BBox file, heatmap boxes, IoU/IoBB, Acc./AFP and the frame mapping."""
import gzip
from collections import Counter

import numpy as np
import pytest

from common.errors import UserError
from common.explain import localization as loc


def test_packaged_bbox_list_has_the_published_counts():
    rows = loc.read_bbox_list()
    assert len(rows) == 984
    assert len({r.image for r in rows}) == 880
    assert Counter(r.label for r in rows) == {
        "Atelectasis": 180, "Effusion": 153, "Cardiomegaly": 146, "Infiltration": 123, "Pneumonia": 120,
        "Pneumothorax": 98, "Mass": 85, "Nodule": 79}
    first = rows[0]
    assert (first.image, first.label) == ("00013118_008.png", "Atelectasis")
    assert first.box == pytest.approx((225.084745762712, 547.019216763771, 86.7796610169491, 79.1864406779661))
    assert all(0 <= r.x < 1024 and 0 <= r.y < 1024 for r in rows)


def test_bbox_reader_accepts_plain_files_and_names_the_bad_line(tmp_path):
    good = tmp_path / "boxes.csv"
    good.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
                    "a.png,Infiltrate,1,2,3,4\nb.png,Mass,5,6,7,8,,\n")
    rows = loc.read_bbox_list(good)
    assert [(r.image, r.label, r.box) for r in rows] == [("a.png", "Infiltration", (1, 2, 3, 4)),
                                                         ("b.png", "Mass", (5, 6, 7, 8))]
    zipped = tmp_path / "boxes.csv.gz"
    zipped.write_bytes(gzip.compress(good.read_bytes()))
    assert loc.read_bbox_list(zipped) == rows
    bad = tmp_path / "bad.csv"
    bad.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\na.png,Mass,1,2,3,4\nb.png,Mass,1,x,3,4\n")
    with pytest.raises(UserError, match=r"bad.csv, line 3"):
        loc.read_bbox_list(bad)
    bad.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\na.png,Hernia,1,2,3,4\n")
    with pytest.raises(UserError, match=r"line 2: unknown box class 'Hernia'"):
        loc.read_bbox_list(bad)
    bad.write_text("name,label\n")
    with pytest.raises(UserError, match="line 1"):
        loc.read_bbox_list(bad)
    with pytest.raises(UserError, match="does not exist"):
        loc.read_bbox_list(tmp_path / "absent.csv")


def test_boxes_from_heatmap_boxes_each_region():
    heatmap = np.zeros((20, 30))
    heatmap[2:5, 3:6] = 1.0          # a strong square: x 3, y 2, w 3, h 3
    heatmap[10:12, 20:28] = 0.5      # a weaker bar: 0.5 * 255 = 127.5
    heatmap[15, 0] = 0.8             # two diagonal pixels: one 8-connected region
    heatmap[16, 1] = 0.8
    assert loc.boxes_from_heatmap(heatmap, 180) == [(3.0, 2.0, 3.0, 3.0), (0.0, 15.0, 2.0, 2.0)]
    assert loc.boxes_from_heatmap(heatmap, 60) == [(3.0, 2.0, 3.0, 3.0), (20.0, 10.0, 8.0, 2.0),
                                                   (0.0, 15.0, 2.0, 2.0)]
    # Both of Wang's thresholds together, each distinct box once.
    assert loc.boxes_from_heatmap_wang(heatmap) == loc.boxes_from_heatmap(heatmap, 60)
    assert loc.boxes_from_heatmap(np.full((5, 5), 0.3)) == []
    # Normalisation to [0, 255]: scaling the map changes nothing.
    assert loc.boxes_from_heatmap(heatmap * 7 + 2, 180) == loc.boxes_from_heatmap(heatmap, 180)


def test_iou_and_iobb():
    assert loc.iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert loc.iou((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(50 / 150)
    assert loc.iou((0, 0, 1, 1), (2, 2, 1, 1)) == 0.0
    # IoBB divides by the detected box: a small detection inside the truth scores 1, a large one around it less.
    assert loc.iobb((2, 2, 2, 2), (0, 0, 10, 10)) == 1.0
    assert loc.iobb((0, 0, 20, 20), (0, 0, 10, 10)) == 0.25


def test_localization_scores_known_answers():
    gt = [loc.BBoxRow("a.png", "Mass", 0, 0, 10, 10), loc.BBoxRow("a.png", "Mass", 50, 50, 10, 10),
          loc.BBoxRow("b.png", "Mass", 0, 0, 10, 10), loc.BBoxRow("b.png", "Nodule", 0, 0, 4, 4)]
    predicted = {
        ("a.png", "Mass"): [(0, 0, 20, 20), (80, 80, 5, 5)],  # IoBB 0.25 / IoU 0.25 with box 1; one far away
        ("b.png", "Mass"): [(1, 1, 8, 8)],                   # IoBB 1, IoU 0.64
        ("b.png", "Nodule"): [],
    }
    scores = loc.localization_scores(gt, predicted, iobb_thresholds=(0.1, 0.25), iou_thresholds=(0.5,))
    assert scores["n_boxes"] == {"Mass": 3, "Nodule": 1} and scores["n_images"] == {"Mass": 2, "Nodule": 1}
    mass = scores["iobb"][0.1]["Mass"]
    assert (mass["hits"], mass["false_positives"]) == (2, 1)
    # AFP over the 4 boxes scored (Wang et al.'s denominator); per image of the class it would be 1 / 2.
    assert scores["afp_denominator"] == 4
    assert mass["acc"] == pytest.approx(2 / 3) and mass["afp"] == pytest.approx(1 / 4)
    assert mass["fp_per_class_image"] == pytest.approx(1 / 2)
    # T = 0.25: the 0.25 detection is not *greater* than T, so it becomes a false positive.
    mass = scores["iobb"][0.25]["Mass"]
    assert (mass["hits"], mass["false_positives"]) == (1, 2)
    assert scores["iou"][0.5]["Mass"]["acc"] == pytest.approx(1 / 3)
    assert scores["iobb"][0.1]["Nodule"] == {"acc": 0.0, "afp": 0.0, "fp_per_class_image": 0.0, "hits": 0,
                                             "false_positives": 0}
    with pytest.raises(ValueError, match="no predictions"):
        loc.localization_scores(gt, {("a.png", "Mass"): []})
    table = loc.format_localization_table(scores)
    assert "IoBB>0.1 Acc Wang17" in table and "0.5882" in table and "0.6667" in table


def test_wang_table_values():
    assert loc.WANG_2017_IOBB[0.1]["acc"]["Atelectasis"] == pytest.approx(112 / 180, abs=1e-4)
    assert loc.WANG_2017_IOBB[0.1]["acc"]["Effusion"] == pytest.approx(122 / 153, abs=1e-4)
    assert loc.WANG_2017_IOBB[0.9]["acc"]["Nodule"] == 0 and loc.WANG_2017_IOBB[0.5]["afp"] is None
    assert loc.WANG_2017_IOBB[0.1]["afp"]["Cardiomegaly"] == 0.1768


def test_afp_denominator_reproduces_wang_et_al_arithmetic():
    # Their eight AFP values at T(IoBB) = 0.1 are whole counts over 984, the box list's size; no denominator from 50
    # to 3,000 other than multiples of 984 fits all eight to their four printed digits.
    published = list(loc.WANG_2017_IOBB[0.1]["afp"].values())
    fits = [d for d in range(50, 3001) if all(abs(v * d - round(v * d)) <= d * 5e-5 for v in published)]
    assert fits == [984, 1968, 2952]
    assert [round(v * 984) for v in published] == [816, 174, 605, 484, 387, 461, 429, 447]
    # Scoring the whole packaged list with one false detection per (image, class) pair: each class's AFP is its
    # pair count over 984 (the old per-class-image AFP would be exactly 1.0 for every class).
    rows = loc.read_bbox_list()
    pairs = loc.group_boxes(rows)
    scores = loc.localization_scores(rows, {key: [(0, 0, 1, 1)] for key in pairs}, iobb_thresholds=(0.1,),
                                     iou_thresholds=())
    assert scores["afp_denominator"] == len(rows) == 984
    for name, entry in scores["iobb"][0.1].items():
        assert entry["afp"] == pytest.approx(scores["n_images"][name] / 984)
        assert entry["fp_per_class_image"] == 1.0


def test_eval_view_mapping():
    # 1024 -> resize 256 -> centre crop 224: offset 16 px at scale 1/4, i.e. the crop covers 64..960.
    assert loc.eval_view_geometry(224) == (0.25, 16, 16)
    assert loc.box_to_original((0, 0, 224, 224), 224) == (64.0, 64.0, 896.0, 896.0)
    assert loc.box_to_crop((64.0, 64.0, 896.0, 896.0), 224) == (0, 0, 224, 224)
    assert loc.box_to_crop(loc.box_to_original((10, 20, 30, 40), 96), 96) == pytest.approx((10, 20, 30, 40))
    heatmap = np.zeros((224, 224), dtype=np.float32)
    heatmap[100:124, 50:74] = 1.0
    full = loc.map_to_original(heatmap)
    assert full.shape == (1024, 1024)
    assert full[:64].max() == 0 and full[:, 960:].max() == 0
    (box,) = loc.boxes_from_heatmap(full, 180)
    expected = loc.box_to_original((50, 100, 24, 24), 224)
    assert box == pytest.approx(expected, abs=3)
    assert loc.detect_boxes(heatmap[None])[0][-1] == pytest.approx(expected, abs=6)
    # A non-square frame: the shorter side is resized to 256.
    scale, left, top = loc.eval_view_geometry(224, (2048, 1024))
    assert (scale, left, top) == (0.25, 144, 16)
