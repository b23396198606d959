"""The commands' explanation and trust reports: Grad-CAM sheets, localisation on boxes, external predictions,
subgroups and calibration, the comparison's new columns, predict.py scripts and the ONNX latency line."""
import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FAST_BOOT, LOADER, copy_runs, make_image_dependent, official_split_flags
from PIL import Image
from sklearn.metrics import roc_auc_score

from common.commands import compare
from common.commands import evaluate as evaluation
from common.commands._cli import run_main
from common.commands.para_test import para_test_main
from common.constants import CLASS_NAMES, IMAGENET_MEAN, IMAGENET_STD
from common.data.images import load_png
from common.data.splits import build_split
from common.data.transforms import build_transform
from common.explain.localization import read_bbox_list
from common.inference.predictor import predictions_csv
from common.models import create_model

REPO = Path(__file__).resolve().parents[1]
REAL = REPO / "tests" / "data" / "images"


split_flags = official_split_flags


@pytest.fixture(scope="module")
def trained(trained_model1, tmp_path_factory):
    """A copy of the session's model1 (EEEA-Net-C2, 2 epochs at 64 px: a 2 x 2 last feature map, on the
    official-style split); the reports are written beside it."""
    return copy_runs(tmp_path_factory, trained_model1)


def test_cam_and_localization_write_the_sheet_and_the_table(trained, synthetic, capsys):
    checkpoint = trained / "1-EEEA-Net-C2" / "model1.pth"
    bbox = synthetic / "BBox_List_synthetic.csv"
    argv = ["--checkpoint", str(checkpoint), *LOADER, "--cam", "2", "--localization",
            "--bbox-file", str(bbox), *FAST_BOOT]
    assert run_main(evaluation.main, argv, model="eeea_c2", index=1) == 0
    printed = capsys.readouterr().out
    stem = checkpoint.with_suffix("")
    sheet = Path(f"{stem}-test-cam-sheet.png")
    with Image.open(sheet) as image:
        assert image.format == "PNG" and image.size[1] > 1000  # 14 rows of panels
    overlays = sorted(Path(f"{stem}-test-cam").rglob("*.png"))
    assert len(overlays) == 2 * len(CLASS_NAMES)
    assert "IoBB>0.1 Acc Wang17" in printed and "IoU>0.5 Acc ours" in printed
    report = json.loads(Path(f"{stem}-test.json").read_text())
    loc = report["localization"]
    boxes = read_bbox_list(bbox)
    # Every synthetic box is on an official-style test image: all are scored, and the report says so.
    assert loc["boxes_scored"] == loc["boxes_in_file"] == len(boxes)
    assert f"{len(boxes)} of the {len(boxes)} boxes" in printed
    assert set(loc["scores"]["iobb"]) == {"0.1", "0.25", "0.5", "0.75", "0.9"} and set(loc["scores"]["iou"]) == \
        {"0.1", "0.3", "0.5"}
    assert Path(f"{stem}-test-localization.txt").read_text().startswith("Localisation of eeea_c2")
    # Subgroups and calibration are in every report.
    assert set(report["subgroups"]["view"]) >= {"PA", "AP"} and report["subgroups"]["n_boot"] == 10
    assert len(report["calibration"]["per_class"]) == 14 and report["calibration"]["n_bins"] == 15
    assert Path(f"{stem}-test-reliability.png").is_file()
    assert "Mean AUROC by subgroup" in printed and "mean ECE" in printed
    # The model card and the out-of-distribution statistics beside the results (issue 17 §2, §4).
    card = Path(f"{stem}-card.md").read_text()
    for heading in ("## Model", "## Training data", "## Recipe", "## Test results", "### Subgroups", "### Calibration",
                    "### Localisation", "## Out-of-distribution score", "## Intended use", "## Out of scope",
                    "## Run identity"):
        assert heading in card, heading
    assert "not for clinical diagnosis" in card and "aid to inspection, not a localisation" in card
    assert report["identity"]["recipe"]["checkpoint_sha256"] in card
    assert report["ood"]["threshold"] > 0 and Path(f"{stem}-ood.json").is_file()


def _write_predictions(path, names, probs):
    path.write_text(predictions_csv(names, probs))
    return path


def test_predictions_file_scores_equal_sklearn(synthetic, tmp_path, capsys):
    split = build_split(str(synthetic), str(synthetic / "Data_Entry_2017_v2020.csv"))
    test = split.parts["test"]
    rng = np.random.default_rng(0)
    probs = np.round(np.clip(0.4 * test.labels + 0.6 * rng.uniform(size=test.labels.shape), 0, 1), 6)
    path = _write_predictions(tmp_path / "published.csv", test.names, probs)
    argv = ["--predictions", str(path), *split_flags(synthetic), *FAST_BOOT]
    assert run_main(evaluation.main, argv, model="eeea_c2", index=1) == 0
    report = json.loads((tmp_path / "published-test.json").read_text())
    for c, name in enumerate(CLASS_NAMES):
        if len(set(test.labels[:, c])) == 2:
            assert report["auroc"][name] == pytest.approx(roc_auc_score(test.labels[:, c], probs[:, c]), abs=1e-12)
        else:
            assert report["auroc"][name] is None
    assert report["mean_auroc_ci95"]["resampling"] == "patients" and "calibration" in report
    assert (tmp_path / "published-test-reliability.png").is_file()
    # A file without some of the test images: one line with the counts, exit status 2.
    short = _write_predictions(tmp_path / "short.csv", test.names[:-2], probs[:-2])
    capsys.readouterr()
    assert run_main(evaluation.main, ["--predictions", str(short), *split_flags(synthetic)],
                    model="eeea_c2", index=1) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "2 missing" in error and "short.csv" in error


def test_comparison_with_a_baseline_file_and_localisation(trained, synthetic, tmp_path):
    root = tmp_path / "repo"
    shutil.copytree(trained / "1-EEEA-Net-C2", root / "1-EEEA-Net-C2")
    student_dir = root / "6-Distilling-to-EEEA-Net-C2"
    student_dir.mkdir()
    # The student of teacher 1 is a copy of it: its teacher / student cells must agree.
    shutil.copy(root / "1-EEEA-Net-C2" / "model1.pth", student_dir / "modeld1.pth")
    split = build_split(str(synthetic), str(synthetic / "Data_Entry_2017_v2020.csv"))
    test = split.parts["test"]
    probs = np.clip(0.5 * test.labels + 0.5 * np.random.default_rng(1).uniform(size=test.labels.shape), 0, 1)
    baseline = _write_predictions(tmp_path / "chexnet-published.csv", test.names, probs)
    argv = ["--output-dir", str(student_dir), *LOADER, *FAST_BOOT, "--localization",
            "--bbox-file", str(synthetic / "BBox_List_synthetic.csv"), "--baseline", f"Published={baseline}"]
    assert run_main(compare.main, argv, folder=student_dir) == 0
    with open(student_dir / "comparison.csv") as stream:
        rows = {row["model"]: row for row in csv.DictReader(stream)}
    assert rows["external:Published"]["status"] == "ok" and rows["model2"]["status"] == "missing"
    for key in ("auroc_PA", "auroc_AP", "mean_ece", "mean_brier", "loc_acc_iobb0.1"):
        assert rows["model1"][key] == rows["modeld1"][key], key
    for key in ("mean_ece", "mean_brier", "loc_acc_iobb0.1"):
        assert rows["model1"][key] != "", key
    # A view's cell is empty only when the subgroup rule (5 positive and 5 negative images of a class) leaves it n/a,
    # and the report says why; 18 test images are too few for some views.
    views = json.loads((student_dir / "comparison.json").read_text())["details"]["model1"]["subgroups"]["view"]
    for view in ("PA", "AP"):
        assert (rows["model1"][f"auroc_{view}"] != "") == (views[view]["mean_auroc"] is not None)
        assert views[view]["mean_auroc"] is not None or "5 positive and 5 negative" in views[view]["not_estimated"]
    assert rows["external:Published"]["loc_acc_iobb0.1"] == ""  # no heatmaps for a predictions file
    markdown = (student_dir / "comparison.md").read_text()
    assert "## Subgroups, calibration and localisation: teacher / student" in markdown
    assert "| Published (predictions file) |" in markdown and "missing / missing" in markdown
    # Every localisation figure says how many boxes it was scored on.
    boxes = rows["model1"]["loc_boxes"]
    assert f"{float(rows['model1']['loc_acc_iobb0.1']):.3f} / {float(rows['modeld1']['loc_acc_iobb0.1']):.3f} " \
           f"({boxes} boxes)" in markdown
    assert (student_dir / "modeld1-card.md").read_text().startswith("# Model card: EEEA-Net-C2")


def test_para_test_prints_the_onnxruntime_latency_last(capsys, one_thread):
    para_test_main(["--img-size", "32", "--repeats", "1", "--device", "cpu", "--quiet-thop"], model_name="eeea_c2")
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-2].startswith("Median latency of one 32x32 image on cpu")
    assert lines[-1].startswith("Median latency of one 32x32 image with onnxruntime on cpu") and \
        lines[-1].endswith(" ms")
    # Issue 20: each CPU latency says how many threads it used.
    para_test_main(["--img-size", "32", "--repeats", "1", "--device", "cpu", "--quiet-thop", "--threads", "1"],
                   model_name="eeea_c2")
    lines = capsys.readouterr().out.strip().splitlines()
    assert "(14-class head, 1 torch thread(s), median of 1 runs)" in lines[-2]
    assert "exported ONNX, 1 onnxruntime thread(s), median of 1 runs" in lines[-1]


# --------------------------------------------------------------------------------------------------------------------
# predict.py as a user runs it
# --------------------------------------------------------------------------------------------------------------------
def _random_checkpoint(path, size=64):
    """A random-weight EEEA-Net-C2 whose probabilities depend on the image (else every comparison is of constants)."""
    torch.manual_seed(0)
    model = create_model("eeea_c2", img_size=size)
    transform = build_transform(size, IMAGENET_MEAN, IMAGENET_STD, train=False)
    assert make_image_dependent(model, torch.stack([transform(load_png(p)) for p in sorted(REAL.glob("*.png"))])) \
        > 1e-3
    torch.save({"model": model.state_dict(), "model_name": "eeea_c2", "num_classes": 14, "img_size": size,
                "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "class_names": list(CLASS_NAMES)}, path)
    return path


def _dicom_of(png: Path, path: Path) -> Path:
    """A DX DICOM holding the PNG's grey values (8-bit, MONOCHROME2, window 128/256: the identity)."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    pixels = np.asarray(Image.open(png).convert("L"))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PhotometricInterpretation, ds.SamplesPerPixel = "DX", "MONOCHROME2", 1
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.WindowCenter, ds.WindowWidth = 128, 256
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def _run(script, *args, cwd, code=None):
    command = [sys.executable, "-c", code, *map(str, args)] if code else [sys.executable, str(REPO / script),
                                                                         *map(str, args)]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "2",
                               "PYTHONWARNINGS": "ignore"})


def _read(csv_path):
    with open(csv_path, newline="") as stream:
        rows = list(csv.reader(stream))
    return rows[0], {row[0]: np.array(row[1:], dtype=float) for row in rows[1:]}


@pytest.mark.slow
def test_predict_scripts_png_rgba_dicom_and_onnx_without_torch(tmp_path):
    grey, rgba = REAL / "00000001_000.png", REAL / "00001369_000.png"
    assert Image.open(rgba).mode == "RGBA"
    checkpoint = _random_checkpoint(tmp_path / "model1.pth")
    dicom = _dicom_of(grey, tmp_path / "grey.dcm")
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    out = tmp_path / "p.csv"
    onnx_file = tmp_path / "model1.onnx"
    result = _run("1-EEEA-Net-C2/predict.py", grey, rgba, dicom, bad, "--checkpoint", checkpoint, "--output", out,
                  "--cam", "--export-onnx", onnx_file, cwd=tmp_path)
    # The unreadable file is one line naming it; the three others are predicted (exit status 1 says some failed).
    assert result.returncode == 1, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: cannot read")]
    assert len(warnings) == 1 and "bad.png" in warnings[0]
    header, probs = _read(out)
    assert header == ["Image Index", *(f"prob_{c}" for c in CLASS_NAMES)]
    assert list(probs) == ["00000001_000.png", "00001369_000.png", "grey.dcm"]
    assert np.abs(probs["grey.dcm"] - probs["00000001_000.png"]).max() <= 1e-4
    assert len(list((tmp_path / "p-cam").glob("*.png"))) == 3
    # --onnx with torch made unimportable: the on-device path needs numpy, Pillow, pydicom and onnxruntime only.
    no_torch = ("import runpy, sys; [sys.modules.__setitem__(m, None) for m in ('torch', 'torchvision', 'timm')]; "
                f"sys.argv = [{str(REPO / '1-EEEA-Net-C2' / 'predict.py')!r}] + sys.argv[1:]; "
                "runpy.run_path(sys.argv[0], run_name='__main__')")
    via_onnx = tmp_path / "onnx.csv"
    result = _run(None, grey, rgba, dicom, "--onnx", onnx_file, "--output", via_onnx, cwd=tmp_path, code=no_torch)
    assert result.returncode == 0, result.stderr
    _, onnx_probs = _read(via_onnx)
    assert max(np.abs(onnx_probs[name] - probs[name]).max() for name in probs) <= 1e-4
    # Folder 6 predicts with the ensemble student by default; absent, it is one line naming the file.
    result = _run("6-Distilling-to-EEEA-Net-C2/predict.py", grey, cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0
    assert "modeld-ensemble.pth does not exist" in result.stderr
