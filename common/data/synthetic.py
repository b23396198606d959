"""A small synthetic data set in the exact ChestX-ray14 (CXR8) file formats, for CPU demos and tests.

``generate_synthetic_cxr8`` writes the same files the real data set ships (docs/data.md §1-§4):

- ``images/<patient:08d>_<followup:03d>.png``: 8-bit grayscale ("L") chest-like images;
- ``Data_Entry_2017_v2020.csv`` with the v2020 header and value conventions (integer Patient ID, Follow-up # and age);
- ``train_val_list.txt`` / ``test_list.txt``: the official-split format (names only), patient-disjoint, ~80/20;
- ``labels/train_list.txt`` / ``val_list.txt`` / ``test_list.txt``: the arnoweng format (name and 14 0/1 labels in
  ``CLASS_NAMES`` order), patient-disjoint, ~70/10/20 and, as in the real data, a *different* partition from the
  official one.
- ``BBox_List_synthetic.csv``: in the exact ``BBox_List_2017.csv`` layout (header split over columns, ``Infiltrate``
  spelling), the box of every drawn finding of the eight box classes on the official *test* images (all NIH boxes
  are on test images). A box encloses the pixels the finding's pattern was drawn on, one box per lung side (the
  patterns are mirrored) except Cardiomegaly (one central box). Coordinates are the image's own pixel edges scaled
  by ``1024 / image_size`` into the 1024 x 1024 frame of the NIH boxes (a pattern covering columns 3..5 of a 64 px
  image gives x = 3 * 16 = 48, w = 3 * 16 = 48). A pattern hidden entirely (for example behind the heart) has no box.

Image design. Every finding adds its own pattern that a CNN trained from scratch can learn at 64x64 px:

- Every pattern is mirror-symmetric about the vertical midline (drawn identically in both lung fields), so a
  horizontal flip leaves what identifies the label unchanged and a random crop that loses one side keeps the other.
- Findings differ by shape, texture orientation/frequency or vertical position, never by left versus right.
- Patterns are large and high-contrast relative to the background noise, so they survive downscaling and crops with
  scale down to ~0.3.
- Patterns are drawn independently of each other, so co-occurring findings remain individually visible.

Label structure (``label_structure``):

- ``"plain"`` (default): "No Finding" with probability ``1 - ABNORMAL_RATE``, otherwise every finding drawn
  independently at ``PREVALENCE``; every label exact.
- ``"nih"``: findings drawn with the co-occurrence of the packaged Data_Entry file, and the labels of the *training*
  list (``labels/train_list.txt``) flipped at the rates of the published text-mining precision and recall
  (:mod:`common.data.synthetic_labels`). The validation and test lists and the Data_Entry file keep the clean labels,
  so a model trained on the noisy labels is selected and scored against the truth. The official-style lists read
  their labels from the Data_Entry file, so their training part is clean: the noise model is for the labelled-list
  split (``--split OUT_DIR/labels``), which the demo uses. A model of label noise, not a claim about the real data.

Run ``python -m common.synthetic OUT_DIR`` to write a set (:mod:`common.commands.synthetic`).
"""
from __future__ import annotations

import json
import os
import re

import numpy as np
from PIL import Image

from common.constants import CLASS_NAMES, NUM_CLASSES
from common.data.synthetic_labels import draw_nih_labels, flip_labels, flip_rates, nih_label_distribution
from common.errors import UserError

DATA_ENTRY_NAME = "Data_Entry_2017_v2020.csv"
DATA_ENTRY_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
                     "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")
MANIFEST_NAME = "SYNTHETIC_CXR8.json"
BBOX_NAME = "BBox_List_synthetic.csv"
BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"
BBOX_FRAME = 1024
# The classes the NIH box list covers, and its spelling of one of them.
BBOX_CLASSES = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
                "Pneumothorax")
BBOX_SPELLING = {"Infiltration": "Infiltrate"}
MANIFEST_GENERATOR = "common.synthetic"
IMAGE_NAME_RE = re.compile(r"^\d{8}_\d{3}\.png$")
LABEL_STRUCTURES = ("plain", "nih")

# Per-class prevalence targets over all images (docs/data.md §1 and §2.1 list the real ones; these are larger so that every class
# has enough positives in a few hundred images). Indexed like CLASS_NAMES.
PREVALENCE = {
    "Atelectasis": 0.16, "Cardiomegaly": 0.10, "Effusion": 0.17, "Infiltration": 0.20, "Mass": 0.12,
    "Nodule": 0.13, "Pneumonia": 0.08, "Pneumothorax": 0.12, "Consolidation": 0.11, "Edema": 0.09,
    "Emphysema": 0.09, "Fibrosis": 0.08, "Pleural_Thickening": 0.10, "Hernia": 0.08,
}
# Probability that an image has at least one finding; the rest are "No Finding".
ABNORMAL_RATE = 0.52
# Probability that a follow-up image repeats its patient's baseline labels (otherwise it draws fresh labels).
FOLLOWUP_REPEAT_RATE = 0.5
# (width, height) of plausible original acquisitions and pixel spacings (mm), as in Data_Entry.
ORIGINAL_SIZES = ((2500, 2048), (2048, 2500), (2992, 2991), (3056, 2544), (2021, 2021), (2539, 2705))
PIXEL_SPACINGS = (0.143, 0.168, 0.139, 0.171)


class _Canvas:
    """Normalised coordinates of one square image, with the lung geometry of one patient."""

    def __init__(self, size, lung_center_u, lung_center_y, lung_ru, lung_rv):
        # Pixel-centre coordinates in [0, 1]. The signed offset from the vertical midline is built from half-integers,
        # so it is exactly antisymmetric in floating point and mirrored patterns are exactly mirrored pixel by pixel.
        offsets = (np.arange(size, dtype=np.float32) + 0.5 - size / 2) / size
        self.size = size
        self.y, self.xc = np.meshgrid(offsets + 0.5, offsets, indexing="ij")
        self.x = self.xc + 0.5
        # u is the distance from the vertical midline: any function of (u, y) is mirror-symmetric.
        self.u = np.abs(self.xc)
        self.u0, self.y0, self.ru, self.rv = lung_center_u, lung_center_y, lung_ru, lung_rv
        self.lung_r = np.sqrt(((self.u - self.u0) / self.ru) ** 2 + ((self.y - self.y0) / self.rv) ** 2)
        self.lung = self.lung_r < 1.0

    def disc_mask(self, u_c, y_c, radius):
        """Mask of two mirrored discs centred at lateral offset u_c and height y_c."""
        return (self.u - u_c) ** 2 + (self.y - y_c) ** 2 < radius ** 2

    def ring_mask(self, u_c, y_c, radius, width):
        """Mask of two mirrored rings."""
        dist = np.sqrt((self.u - u_c) ** 2 + (self.y - y_c) ** 2)
        return np.abs(dist - radius) < width / 2

    def random_lung_point(self, rng, margin):
        """A (u, y) point inside the lung ellipse, at most ``1 - margin`` of its normalised radius from the centre."""
        angle = rng.uniform(0, 2 * np.pi)
        radius = (1.0 - margin) * np.sqrt(rng.uniform(0, 1))
        return self.u0 + radius * self.ru * np.cos(angle), self.y0 + radius * self.rv * np.sin(angle)


def _smooth_noise(rng, size, grid):
    """Smooth noise in [-1, 1]: a random ``grid`` x ``grid`` field upsampled bicubically to ``size``."""
    field = rng.uniform(0, 255, size=(grid, grid)).astype(np.uint8)
    image = Image.fromarray(field, mode="L").resize((size, size), Image.BICUBIC)
    return np.asarray(image, dtype=np.float32) / 127.5 - 1.0


def _symmetrise(mask):
    """Union of a mask and its mirror image, so a random pattern is identical under a horizontal flip."""
    return mask | mask[:, ::-1]


def _draw_findings(canvas, image, labels, rng, regions=None):
    """Add one distinct, mirror-symmetric pattern per positive label to ``image`` (float, in place).

    When ``regions`` is a dict, the mask of the pixels each box-class pattern was drawn on is stored under the class
    name (no random numbers are drawn for it, so images are the same with or without ``regions``).
    """
    def record(name, mask):
        if regions is not None:
            regions[name] = mask

    c = canvas
    lung, u, y = c.lung, c.u, c.y
    lower = y > c.y0 - 0.05
    upper = y < c.y0 + 0.05
    for index in np.flatnonzero(labels):
        name = CLASS_NAMES[index]
        if name == "Atelectasis":
            # Fine horizontal lines (plate-like atelectasis) in the lower lung fields.
            lines = np.cos(2 * np.pi * y / 0.075) > 0.4
            image[lung & lower & lines] += 0.42
            record(name, lung & lower & lines)
        elif name == "Cardiomegaly":
            # A much larger, brighter, sharp-edged heart shadow in the centre.
            heart = (c.xc / 0.21) ** 2 + ((y - 0.64) / 0.17) ** 2 < 1.0
            image[heart] = 0.86
            record(name, heart)
        elif name == "Effusion":
            # A uniform bright fill of the lung bases with a meniscus that rises laterally.
            level = c.y0 + 0.42 * c.rv - 0.10 * np.clip((u - c.u0) / c.ru, -1, 1)
            image[lung & (y > level)] = 0.78
            record(name, lung & (y > level))
        elif name == "Infiltration":
            # Bright fluffy blotches: thresholded smooth noise inside the lungs.
            blotches = _symmetrise(_smooth_noise(rng, c.size, 12) > 0.25)
            image[lung & blotches] += 0.33
            record(name, lung & blotches)
        elif name == "Mass":
            # One large bright disc per lung.
            u_c, y_c = c.random_lung_point(rng, margin=0.45)
            image[c.disc_mask(u_c, y_c, 0.075)] += 0.5
            record(name, c.disc_mask(u_c, y_c, 0.075))
        elif name == "Nodule":
            # Many small bright dots.
            dots = np.zeros_like(lung)
            for _ in range(7):
                u_c, y_c = c.random_lung_point(rng, margin=0.15)
                dots |= c.disc_mask(u_c, y_c, 0.022)
            image[dots] += 0.5
            record(name, dots)
        elif name == "Pneumonia":
            # Vertical lines in the upper and middle lung fields.
            lines = np.cos(2 * np.pi * u / 0.06) > 0.3
            image[lung & upper & lines] += 0.4
            record(name, lung & upper & lines)
        elif name == "Pneumothorax":
            # A black, texture-free apical crescent bounded by a bright pleural line.
            crescent = c.lung & (y < c.y0 - 0.05) & (c.lung_r > 0.45)
            edge = (c.lung_r > 0.37) & (c.lung_r < 0.45) & (y < c.y0 - 0.05)
            image[crescent] = 0.0
            image[edge] = 0.85
            record(name, crescent | edge)
        elif name == "Consolidation":
            # A coarse checkerboard in the mid lung fields.
            period = 0.09
            checks = (np.floor(u / period) + np.floor(y / period)) % 2 == 0
            mid = np.abs(y - c.y0) < 0.6 * c.rv
            image[lung & mid & checks] += 0.38
        elif name == "Edema":
            # Smooth perihilar "bat-wing" haze close to the midline.
            haze = np.exp(-(((u - 0.11) / 0.07) ** 2 + ((y - c.y0) / 0.13) ** 2))
            image += 0.45 * haze
        elif name == "Emphysema":
            # Hollow bright rings (bullae).
            rings = np.zeros_like(lung)
            for _ in range(3):
                u_c, y_c = c.random_lung_point(rng, margin=0.4)
                rings |= c.ring_mask(u_c, y_c, 0.05, 0.018)
            image[rings] += 0.5
        elif name == "Fibrosis":
            # A diagonal cross-hatch (reticular net); both diagonals, so a flip maps it onto itself.
            period = 0.07
            diag_a = np.cos(2 * np.pi * (c.xc + y) / period) > 0.75
            diag_b = np.cos(2 * np.pi * (-c.xc + y) / period) > 0.75
            image[lung & (diag_a | diag_b)] += 0.42
        elif name == "Pleural_Thickening":
            # A thick bright rim along the lung outline.
            rim = (c.lung_r > 0.82) & (c.lung_r < 1.02)
            image[rim] = 0.88
        elif name == "Hernia":
            # A bright dome rising from the diaphragm below the heart, with a dark air-fluid bubble inside.
            dome = ((c.xc / 0.16) ** 2 + ((y - 0.9) / 0.12) ** 2 < 1.0) & (y < 0.9)
            bubble = (c.xc / 0.07) ** 2 + ((y - 0.84) / 0.035) ** 2 < 1.0
            image[dome] = 0.95
            image[bubble] = 0.1
        else:  # pragma: no cover - CLASS_NAMES and this function must stay in sync
            raise AssertionError(f"no synthetic pattern for class {name!r}")


def _render_image(size, anatomy, labels, rng, regions=None):
    """Render one 8-bit grayscale chest-like image for one patient's anatomy and one label vector (``regions``: see
    ``_draw_findings``)."""
    canvas = _Canvas(size, anatomy["lung_u"], anatomy["lung_y"], anatomy["lung_ru"], anatomy["lung_rv"])
    xc, y = canvas.xc, canvas.y
    image = np.full((size, size), 0.06, dtype=np.float32)
    body = (xc / anatomy["body_rx"]) ** 2 + ((y - 0.56) / 0.54) ** 2 < 1.0
    image[body] = 0.58
    # Soft lung edges: darker towards the centre of each lung field.
    lung_level = 0.2 + 0.08 * np.clip(canvas.lung_r, 0, 1) ** 2
    image[canvas.lung] = lung_level[canvas.lung]
    spine = (np.abs(xc) < 0.035) & body
    image[spine] = 0.62
    heart = (xc / 0.12) ** 2 + ((y - 0.63) / 0.10) ** 2 < 1.0
    image[heart] = 0.52
    # Findings that live in the lungs are drawn only where the lung field is visible (not behind the heart).
    canvas.lung = canvas.lung & ~heart
    # Anatomical texture: faint smooth noise (vessels, soft tissue), much weaker than any finding pattern.
    image += 0.05 * _smooth_noise(rng, size, 10)
    _draw_findings(canvas, image, labels, rng, regions)
    # Acquisition differences: per-image contrast and brightness jitter plus fine sensor noise.
    gain = rng.uniform(0.85, 1.15)
    offset = rng.uniform(-0.05, 0.05)
    image = image * gain + offset + rng.normal(0.0, 0.015, size=image.shape).astype(np.float32)
    return np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)


def random_anatomy(rng) -> dict:
    """One patient's lung and body geometry (normalised), drawn from ``rng``."""
    return {
        "lung_u": rng.uniform(0.18, 0.2), "lung_y": rng.uniform(0.45, 0.49),
        "lung_ru": rng.uniform(0.13, 0.15), "lung_rv": rng.uniform(0.27, 0.31),
        "body_rx": rng.uniform(0.42, 0.47),
    }


def draw_chest_image(size: int, labels, rng, anatomy: dict | None = None) -> np.ndarray:
    """One synthetic ``size`` x ``size`` uint8 chest image showing the findings of ``labels`` (a 0/1 vector in
    ``CLASS_NAMES`` order), drawn as :func:`generate_synthetic_cxr8` draws them, for sets laid out under other
    names (``benchmarks/rehearsal.py`` draws one under the real NIH names). ``anatomy``: a patient's
    :func:`random_anatomy` (default: a new one)."""
    if size < 32:
        raise ValueError(f"size must be >= 32, got {size}")
    return _render_image(size, anatomy or random_anatomy(rng), np.asarray(labels), rng)


def _region_boxes(name, mask):
    """Boxes ``(x, y, w, h)`` in pixels around a drawn pattern: one per lung side, one for the central heart."""
    size = mask.shape[1]
    halves = [mask] if name == "Cardiomegaly" else [mask[:, : size // 2], mask[:, size // 2:]]
    boxes = []
    for offset, half in zip((0, size // 2), halves):
        rows, cols = np.flatnonzero(half.any(axis=1)), np.flatnonzero(half.any(axis=0))
        if rows.size:
            boxes.append((int(cols[0]) + offset, int(rows[0]), int(cols[-1] - cols[0]) + 1,
                          int(rows[-1] - rows[0]) + 1))
    return boxes


def _bbox_lines(boxes, size):
    """``BBox_List_2017.csv`` rows for ``[(name, class, (x, y, w, h))]`` in pixels of a ``size`` image."""
    scale = BBOX_FRAME / size
    return [f"{name},{BBOX_SPELLING.get(label, label)}," + ",".join(repr(float(v) * scale) for v in box)
            for name, label, box in boxes]


def _draw_labels(rng, class_rates):
    """One label vector: "No Finding" with probability 1 - ABNORMAL_RATE, otherwise independent per-class draws
    conditioned on at least one finding."""
    labels = np.zeros(NUM_CLASSES, dtype=np.int64)
    if rng.uniform() >= ABNORMAL_RATE:
        return labels
    while not labels.any():
        labels = (rng.uniform(size=NUM_CLASSES) < class_rates).astype(np.int64)
    return labels


def _split_patients(patients, fractions, rng):
    """Shuffle patient ids and cut them into consecutive groups of the given fractions (patient-disjoint)."""
    order = rng.permutation(patients)
    bounds = np.round(np.cumsum(fractions)[:-1] * len(order)).astype(int)
    return [set(part.tolist()) for part in np.split(order, bounds)]


def _is_previous_synthetic_set(out_dir):
    """True when ``out_dir`` holds the manifest written by this generator."""
    manifest = os.path.join(out_dir, MANIFEST_NAME)
    if not os.path.isfile(manifest):
        return False
    try:
        with open(manifest, encoding="utf-8") as handle:
            content = json.load(handle)
    except (OSError, ValueError):
        return False
    return isinstance(content, dict) and content.get("generator") == MANIFEST_GENERATOR


def _prepare_out_dir(out_dir):
    """Create ``out_dir`` or clear the files of a previous synthetic set in it; refuse anything else."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UserError(f"{out_dir} exists and is not a directory")
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        if not _is_previous_synthetic_set(out_dir):
            raise UserError(f"{out_dir} is not empty and does not hold a synthetic CXR8 set "
                            f"(no {MANIFEST_NAME}); refusing to overwrite it, choose an empty or new directory")
        # Remove only files this generator writes, so stale images of a larger previous set do not linger.
        images_dir = os.path.join(out_dir, "images")
        if os.path.isdir(images_dir):
            for name in os.listdir(images_dir):
                if IMAGE_NAME_RE.match(name):
                    os.remove(os.path.join(images_dir, name))
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    os.makedirs(os.path.join(out_dir, "labels"), exist_ok=True)


def _write_lines(path, lines):
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        handle.writelines(line + "\n" for line in lines)


def generate_synthetic_cxr8(out_dir, num_patients=240, images_per_patient=(1, 4), image_size=128, seed=0,
                            label_structure="plain") -> dict:
    """Write a synthetic CXR8-format data set into ``out_dir`` and return its paths and counts.

    Args:
        out_dir: target directory; it must be absent, empty, or a previous synthetic set (UserError otherwise).
        num_patients: number of patients (ids 1..num_patients).
        images_per_patient: inclusive (min, max) number of follow-up images per patient, drawn uniformly.
        image_size: side of the square PNG images in pixels (>= 32).
        seed: random seed; the same arguments and seed give byte-identical files.
        label_structure: ``"plain"`` (independent findings, exact labels; the files are those of earlier versions)
            or ``"nih"`` (the Data_Entry file's co-occurrence, noisy training labels; see the module docstring).

    Returns:
        dict with ``out_dir``, ``images_dir``, ``data_entry``, ``train_val_list``, ``test_list``, ``train_list``,
        ``val_list``, ``labelled_test_list``, ``num_patients``, ``num_images``, ``no_finding`` (count),
        ``positives`` (class name -> count over all images, clean labels), ``bbox_list`` and ``label_structure``;
        for ``"nih"`` also ``label_noise``: per class the flip rates, the clean and noisy positives of the training
        list and the realised precision and recall of its noisy labels.
    """
    out_dir = os.fspath(out_dir)
    if label_structure not in LABEL_STRUCTURES:
        raise UserError(f"label_structure must be one of {', '.join(LABEL_STRUCTURES)}, got {label_structure!r}")
    low, high = images_per_patient
    if num_patients < 10:
        raise UserError(f"num_patients must be >= 10 to make patient-disjoint splits, got {num_patients}")
    if not 1 <= low <= high <= 999:
        raise UserError(f"images_per_patient must satisfy 1 <= min <= max <= 999, got {images_per_patient}")
    if image_size < 32:
        raise UserError(f"image_size must be >= 32, got {image_size}")
    _prepare_out_dir(out_dir)

    rng = np.random.default_rng(seed)
    # Independent streams, so the splits do not change when the image design changes.
    split_rng = np.random.default_rng([seed, 1])
    class_rates = np.array([PREVALENCE[name] for name in CLASS_NAMES]) / ABNORMAL_RATE
    if label_structure == "nih":
        combinations, probs = nih_label_distribution()
        cumulative = np.cumsum(probs)

        def draw_labels():
            return draw_nih_labels(rng, combinations, cumulative)
    else:
        def draw_labels():
            return _draw_labels(rng, class_rates)

    images_dir = os.path.join(out_dir, "images")
    entry_lines = [DATA_ENTRY_HEADER]
    records = []  # (image name, patient id, label vector)
    boxes = []    # (image name, class, (x, y, w, h) in pixels)
    for patient in range(1, num_patients + 1):
        anatomy = random_anatomy(rng)
        age = int(rng.integers(18, 86))
        gender = "M" if rng.uniform() < 0.56 else "F"
        baseline = draw_labels()
        for followup in range(int(rng.integers(low, high + 1))):
            labels = baseline if (followup > 0 and rng.uniform() < FOLLOWUP_REPEAT_RATE) else draw_labels()
            name = f"{patient:08d}_{followup:03d}.png"
            regions = {}
            pixels = _render_image(image_size, anatomy, labels, rng, regions)
            boxes.extend((name, label, box) for label in BBOX_CLASSES if label in regions
                         for box in _region_boxes(label, regions[label]))
            Image.fromarray(pixels, mode="L").save(os.path.join(images_dir, name))
            findings = "|".join(CLASS_NAMES[i] for i in np.flatnonzero(labels)) or "No Finding"
            age_now = min(95, age + followup // 2)
            view = "AP" if rng.uniform() < 0.4 else "PA"
            width, height = ORIGINAL_SIZES[int(rng.integers(len(ORIGINAL_SIZES)))]
            spacing = PIXEL_SPACINGS[int(rng.integers(len(PIXEL_SPACINGS)))]
            entry_lines.append(f"{name},{findings},{followup},{patient},{age_now},{gender},{view},"
                               f"{width},{height},{spacing},{spacing}")
            records.append((name, patient, labels.copy()))

    patients = np.arange(1, num_patients + 1)
    official_train_val, official_test = _split_patients(patients, (0.8, 0.2), split_rng)
    arno_train, arno_val, arno_test = _split_patients(patients, (0.7, 0.1, 0.2), split_rng)

    paths = {
        "out_dir": out_dir,
        "images_dir": images_dir,
        "data_entry": os.path.join(out_dir, DATA_ENTRY_NAME),
        "train_val_list": os.path.join(out_dir, "train_val_list.txt"),
        "test_list": os.path.join(out_dir, "test_list.txt"),
        "train_list": os.path.join(out_dir, "labels", "train_list.txt"),
        "val_list": os.path.join(out_dir, "labels", "val_list.txt"),
        "labelled_test_list": os.path.join(out_dir, "labels", "test_list.txt"),
    }
    _write_lines(paths["data_entry"], entry_lines)
    _write_lines(paths["train_val_list"], [n for n, p, _ in records if p in official_train_val])
    _write_lines(paths["test_list"], [n for n, p, _ in records if p in official_test])
    listed = {key: [(n, lab) for n, p, lab in records if p in group]
              for key, group in (("train_list", arno_train), ("val_list", arno_val), ("labelled_test_list", arno_test))}
    noise = None
    if label_structure == "nih":
        # Only the training list is corrupted, from a stream of its own (the images and splits stay as they are).
        clean = np.stack([lab for _, lab in listed["train_list"]])
        rates = flip_rates(clean)
        noisy = flip_labels(clean, rates, np.random.default_rng([seed, 2]))
        listed["train_list"] = [(name, row) for (name, _), row in zip(listed["train_list"], noisy)]
        noise = _noise_summary(rates, clean, noisy)
    for key, rows in listed.items():
        _write_lines(paths[key], [n + " " + " ".join(str(int(v)) for v in lab) for n, lab in rows])

    test_names = {n for n, p, _ in records if p in official_test}
    bbox_path = os.path.join(out_dir, BBOX_NAME)
    _write_lines(bbox_path, [BBOX_HEADER] + _bbox_lines([b for b in boxes if b[0] in test_names], image_size))

    label_matrix = np.stack([lab for _, _, lab in records])
    summary = dict(paths)
    summary.update({
        "num_patients": num_patients,
        "num_images": len(records),
        "no_finding": int((label_matrix.sum(axis=1) == 0).sum()),
        "positives": {name: int(label_matrix[:, i].sum()) for i, name in enumerate(CLASS_NAMES)},
    })
    manifest = {"generator": MANIFEST_GENERATOR, "seed": seed, "image_size": image_size,
                "images_per_patient": [low, high], **{k: v for k, v in summary.items() if k != "out_dir"}}
    if noise is not None:
        # A plain set's manifest stays byte-identical to earlier versions', which had no label structure.
        manifest.update({"label_structure": label_structure, "label_noise": noise})
    with open(os.path.join(out_dir, MANIFEST_NAME), "w", encoding="utf-8") as handle:
        # Paths in the manifest are relative, so a copied set stays self-describing.
        json.dump({k: (os.path.relpath(v, out_dir) if k in paths else v) for k, v in manifest.items()},
                  handle, indent=2)
    # Added after the manifest, which stays as it was before the box list existed.
    summary["bbox_list"] = bbox_path
    summary["label_structure"] = label_structure
    if noise is not None:
        summary["label_noise"] = noise
    return summary


def _noise_summary(rates: dict, clean: np.ndarray, noisy: np.ndarray) -> dict:
    """Per class: the flip rates used, and the clean and noisy positives of the training list with the precision and
    recall its noisy labels came out with (None where undefined)."""
    summary = {}
    for index, name in enumerate(CLASS_NAMES):
        truth, label = clean[:, index], noisy[:, index]
        kept = int((truth & label).sum())
        summary[name] = {**{k: round(v, 6) for k, v in rates[name].items()},
                         "clean_positives": int(truth.sum()), "noisy_positives": int(label.sum()),
                         "realised_precision": round(kept / label.sum(), 4) if label.sum() else None,
                         "realised_recall": round(kept / truth.sum(), 4) if truth.sum() else None}
    return summary


def read_manifest(out_dir) -> dict | None:
    """The manifest of the synthetic set in ``out_dir`` (with ``label_structure`` filled in: "plain" when absent), or
    None when ``out_dir`` holds no synthetic set."""
    if not _is_previous_synthetic_set(os.fspath(out_dir)):
        return None
    with open(os.path.join(os.fspath(out_dir), MANIFEST_NAME), encoding="utf-8") as handle:
        manifest = json.load(handle)
    manifest.setdefault("label_structure", "plain")
    return manifest
