"""Parsers against the real NIH files shipped in common/resources, and the real PNGs in tests/data/images."""
import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from common.constants import CLASS_NAMES
from common.data.images import index_images, load_png, require_images
from common.data.labels import patient_id_from_name, read_data_entry, read_labelled_list, read_name_list, resource_path
from common.data.splits import Split, SplitPart, build_split, check_no_leakage
from common.data.transforms import build_transform
from common.errors import UserError

IMAGES = Path(__file__).parent / "data" / "images"


@pytest.fixture(scope="module")
def v2020():
    return read_data_entry("v2020")


@pytest.fixture(scope="module")
def entry2017():
    return read_data_entry("2017")


def test_data_entry_both_releases_have_every_image(v2020, entry2017):
    assert len(v2020.names) == len(entry2017.names) == 112_120
    assert set(v2020.names) == set(entry2017.names)
    assert len(set(v2020.patient_ids.tolist())) == 30_805


def test_2017_release_quirks_parse(entry2017):
    # CRLF, trailing comma and zero-padded ids all parse; labels differ from v2020 on exactly 181 images.
    raw = gzip.decompress(resource_path("Data_Entry_2017.csv.gz").read_bytes())
    assert b"\r\n" in raw[:400] and raw.splitlines()[0].endswith(b",")
    assert entry2017.patient_ids[entry2017.row_of["00000001_000.png"]] == 1


def test_label_versions_differ_on_181_test_images(v2020, entry2017):
    rows2017 = entry2017.lookup(list(v2020.names), "v2020")
    differing = np.any(rows2017 != v2020.labels, axis=1)
    assert differing.sum() == 181
    test_names = set(read_name_list(resource_path("official_split/test_list.txt.gz")))
    assert all(name in test_names for name, d in zip(v2020.names, differing) if d)


def test_patient_id_from_file_name_equals_data_entry(v2020):
    from_names = np.array([patient_id_from_name(n) for n in v2020.names])
    assert (from_names == v2020.patient_ids).all()


def test_official_lists_and_known_label_counts(v2020):
    train_val = read_name_list(resource_path("official_split/train_val_list.txt.gz"))
    test = read_name_list(resource_path("official_split/test_list.txt.gz"))
    assert (len(train_val), len(test)) == (86_524, 25_596)
    shared = {patient_id_from_name(n) for n in train_val} & {patient_id_from_name(n) for n in test}
    assert len(shared) == 0
    counts = dict(zip(CLASS_NAMES, v2020.lookup(test, "test").sum(0).tolist()))
    assert counts["Infiltration"] == 6_112 and counts["Effusion"] == 4_658 and counts["Hernia"] == 86
    assert counts["Pneumonia"] == 555
    assert (v2020.lookup(test, "test").sum(1) == 0).sum() == 9_861  # No Finding


def test_official_split_is_patient_wise_and_seeded():
    split = build_split("official", "v2020", val_fraction=0.1, seed=0)
    train, val, test = (split.parts[p] for p in ("train", "val", "test"))
    assert len(train) + len(val) == 86_524 and len(test) == 25_596
    assert not set(train.patient_ids.tolist()) & set(val.patient_ids.tolist())
    assert abs(len(set(val.patient_ids.tolist())) - 2_801) <= 1  # 10 % of 28,008 patients
    again = build_split("official", "v2020", val_fraction=0.1, seed=0)
    assert again.parts["val"].names == val.names
    assert "v2020" in split.labels
    assert build_split("official", "2017").parts["test"].labels[:, CLASS_NAMES.index("Pneumonia")].sum() == 477


def test_arnoweng_split_sizes_and_labels_match_2017(entry2017):
    split = build_split("arnoweng")
    assert [len(split.parts[p]) for p in ("train", "val", "test")] == [78_468, 11_219, 22_433]
    assert split.parts["test"].names[0] == "00011997_000.png"
    for part in split.parts.values():
        assert (entry2017.lookup(part.names, "arnoweng") == part.labels).all()
    assert split.parts["test"].labels[:, CLASS_NAMES.index("Hernia")].sum() == 42


def test_leakage_is_refused_with_a_count():
    part = lambda names: SplitPart(names, np.zeros((len(names), 14), np.uint8),
                                   np.array([patient_id_from_name(n) for n in names]))
    split = Split("x", "inline", {"train": part(["00000001_000.png", "00000002_000.png"]),
                                  "val": part(["00000003_000.png"]),
                                  "test": part(["00000001_001.png", "00000001_002.png"])})
    with pytest.raises(UserError, match="1 patient"):
        check_no_leakage(split)


def test_list_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "train_list.txt"
    bad.write_text("00000001_000.png " + " ".join(["0"] * 14) + "\n00000002_000.png 0 1\n")
    with pytest.raises(UserError, match=r"train_list.txt, line 2: .* found 2 label"):
        read_labelled_list(bad)
    bad.write_text("00000001_000.png " + " ".join(["0"] * 13) + " 2\n")
    with pytest.raises(UserError, match=r"line 1: label value '2' is not 0 or 1"):
        read_labelled_list(bad)


def test_unknown_split_is_an_error():
    with pytest.raises(UserError, match="unknown split 'nonsense'"):
        build_split("nonsense")


def test_real_pngs_load_as_grayscale_including_rgba():
    from PIL import Image
    index = index_images(IMAGES)
    assert len(index) == 10
    modes = {name: Image.open(path).mode for name, path in index.items()}
    assert modes["00001369_000.png"] == "RGBA" and modes["00000001_000.png"] == "L"
    for name, path in index.items():
        image = load_png(path)
        assert image.mode == "L"
    rgba = np.asarray(load_png(index["00001369_000.png"]))
    assert rgba.std() > 10  # a real radiograph, not a blank alpha-only conversion
    transform = build_transform(224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), train=False)
    tensor = transform(load_png(index["00001369_000.png"]))
    assert tensor.shape == (3, 224, 224) and torch.equal(tensor[0] * 0.229 + 0.485, tensor[1] * 0.224 + 0.456) \
        or torch.allclose(tensor[0] * 0.229 + 0.485, tensor[1] * 0.224 + 0.456, atol=1e-6)
    tencrop = build_transform(224, (0.5,) * 3, (0.5,) * 3, train=False, tencrop=True)(load_png(index["00000001_000.png"]))
    assert tencrop.shape == (10, 3, 224, 224)


def test_16bit_and_rgb_pngs_are_converted(tmp_path):
    """Issue 15 §4, one pixel rule: a 16-bit PNG is divided by its bit depth (no stretch to its own [min, max])."""
    from PIL import Image
    ramp = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16)
    Image.fromarray(ramp).save(tmp_path / "00000005_000.png")
    Image.new("RGB", (32, 32), (200, 100, 50)).save(tmp_path / "00000006_000.png")
    sixteen = np.asarray(load_png(tmp_path / "00000005_000.png"))
    np.testing.assert_array_equal(sixteen, np.floor(ramp.astype(np.float64) * 255 / 65535 + 0.5))
    grey = np.arange(256, dtype=np.uint16).reshape(16, 16)
    Image.fromarray(grey * 257).save(tmp_path / "00000008_000.png")
    np.testing.assert_array_equal(np.asarray(load_png(tmp_path / "00000008_000.png")), grey)
    # Unscaled 12-bit values in a 16-bit file are dark, by the rule (the guide says to rescale such files).
    twelve_bit = np.linspace(100, 4095, 64 * 64).astype(np.uint16).reshape(64, 64)
    Image.fromarray(twelve_bit).save(tmp_path / "00000007_000.png")
    assert np.asarray(load_png(tmp_path / "00000007_000.png")).max() == 16
    assert load_png(tmp_path / "00000006_000.png").mode == "L"


def test_kaggle_layouts_are_indexed(tmp_path):
    from PIL import Image
    for folder in ("images_001/images", "images_002"):
        (tmp_path / folder).mkdir(parents=True)
    Image.new("L", (8, 8)).save(tmp_path / "images_001/images/00000001_000.png")
    Image.new("L", (8, 8)).save(tmp_path / "images_002/00000002_000.png")
    index = index_images(tmp_path)
    assert set(index) == {"00000001_000.png", "00000002_000.png"}
    Image.new("L", (8, 8)).save(tmp_path / "00000002_000.png")
    with pytest.raises(UserError, match="occur twice"):
        index_images(tmp_path)


def test_missing_and_unreadable_images_are_reported_with_count(tmp_path):
    from PIL import Image
    Image.new("L", (8, 8)).save(tmp_path / "00000001_000.png")
    (tmp_path / "00000002_000.png").write_bytes(b"not a png")
    index = index_images(tmp_path)
    with pytest.raises(UserError, match=r"2 of 3 listed image\(s\) are not under .*first: 00000003_000.png"):
        require_images(index, ["00000001_000.png", "00000003_000.png", "00000004_000.png"], tmp_path)
    with pytest.raises(UserError, match=r"1 image\(s\) .* unreadable"):
        require_images(index, ["00000001_000.png", "00000002_000.png"], tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        index_images(tmp_path / "nope")
