"""The synthetic set's box list: BBox_List_2017 layout, test images only, boxes around the drawn findings."""
import numpy as np

from common.constants import CLASS_NAMES
from common.data import synthetic
from common.explain.localization import BOX_CLASSES, read_bbox_list


def test_box_list_layout_and_content(tmp_path):
    summary = synthetic.generate_synthetic_cxr8(tmp_path / "set", num_patients=40, image_size=64, seed=2)
    text = open(summary["bbox_list"], encoding="utf-8").read()
    assert text.startswith("Image Index,Finding Label,Bbox [x,y,w,h],,,\n") and "\r" not in text
    assert "Infiltration" not in text  # spelled "Infiltrate" as in the NIH file
    rows = read_bbox_list(summary["bbox_list"])
    test_names = set(open(summary["test_list"]).read().split())
    assert rows and {r.image for r in rows} <= test_names
    labels = {}
    for line in open(summary["data_entry"]).read().splitlines()[1:]:
        name, findings = line.split(",")[:2]
        labels[name] = set(findings.split("|"))
    boxed = {(r.image, r.label) for r in rows}
    expected = {(n, c) for n in test_names for c in BOX_CLASSES if c in labels[n]}
    # Every boxed finding is a label of its image; nearly every box-class label of a test image has a box (a pattern
    # can be hidden, e.g. behind the heart).
    assert boxed <= expected and len(boxed) >= 0.9 * len(expected)
    for row in rows:
        assert 0 <= row.x and row.x + row.w <= 1024 and 0 <= row.y and row.y + row.h <= 1024
        assert all(v % 16 == 0 for v in row.box)  # pixel edges of a 64 px image times 1024 / 64
    # Lateral patterns are boxed once per side, mirrored; Cardiomegaly once.
    mass = [r for r in rows if r.label == "Mass"]
    if mass:
        left, right = sorted((r for r in mass if r.image == mass[0].image), key=lambda r: r.x)
        assert left.x + left.w + right.x == 1024 and left.w == right.w
    assert all(sum(1 for s in rows if (s.image, s.label) == (r.image, r.label)) == 1
               for r in rows if r.label == "Cardiomegaly")


def test_region_boxes_are_those_of_the_drawn_mask():
    canvas = synthetic._Canvas(64, 0.19, 0.47, 0.14, 0.29)
    image = np.zeros((64, 64), dtype=np.float32)
    labels = np.zeros(len(CLASS_NAMES), dtype=int)
    labels[CLASS_NAMES.index("Mass")] = 1
    regions = {}
    synthetic._draw_findings(canvas, image, labels, np.random.default_rng(0), regions)
    drawn = image > 0
    np.testing.assert_array_equal(regions["Mass"], drawn)
    rows, cols = np.flatnonzero(drawn.any(axis=1)), np.flatnonzero(drawn[:, :32].any(axis=0))
    box = synthetic._region_boxes("Mass", regions["Mass"])[0]
    assert box == (cols[0], rows[0], cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1)
    assert synthetic._bbox_lines([("a.png", "Infiltration", (1, 2, 3, 4))], 64) == \
        ["a.png,Infiltrate,16.0,32.0,48.0,64.0"]
