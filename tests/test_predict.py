"""Predicting on a user's own files: PNG (grey, RGBA), JPEG and DICOM, folders, unreadable files, ONNX, CAMs."""
import csv
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from conftest import make_image_dependent
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from common.commands import predict as predict_command
from common.commands._cli import run_main
from common.constants import CLASS_NAMES, IMAGENET_MEAN, IMAGENET_STD
from common.data.images import load_png
from common.data.transforms import build_transform
from common.errors import UserError
from common.inference import predictor as predict
from common.models import create_model
from common.runs.checkpoint import load_model_from_checkpoint

REAL = Path(__file__).parent / "data" / "images"
GREY = REAL / "00000001_000.png"     # 512 x 512 L
RGBA = REAL / "00001369_000.png"     # 1024 x 1024 RGBA
SIZE = 64


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("eeea_c2", img_size=SIZE)
    # Probabilities that depend on the image: a fresh EEEA-Net-C2 gives the same ones for every input.
    transform = build_transform(SIZE, IMAGENET_MEAN, IMAGENET_STD, train=False)
    assert make_image_dependent(model, torch.stack([transform(load_png(p)) for p in sorted(REAL.glob("*.png"))])) \
        > 1e-3
    path = tmp_path_factory.mktemp("ckpt") / "model1.pth"
    torch.save({"model": model.state_dict(), "model_name": "eeea_c2", "num_classes": 14, "img_size": SIZE,
                "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "class_names": list(CLASS_NAMES)}, path)
    return path


def _write_dicom(path, pixels, photometric="MONOCHROME2", window=None, intercept=None):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    bits = 8 if pixels.dtype == np.uint8 else 16
    ds.BitsAllocated = ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if intercept is not None:
        ds.RescaleIntercept, ds.RescaleSlope = intercept, 1
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def _probs(checkpoint, paths):
    _, model = load_model_from_checkpoint(checkpoint)
    meta = {"img_size": SIZE, "mean": IMAGENET_MEAN, "std": IMAGENET_STD}
    return predict.predict_images(model, meta, paths)


def test_dicom_variants_give_the_png_probabilities(checkpoint, tmp_path):
    grey = np.asarray(Image.open(GREY))
    assert grey.dtype == np.uint8
    wide = grey.astype(np.uint16) * 257
    files = [
        # 8-bit; the window 128/256 maps x to x exactly (linear DICOM window).
        _write_dicom(tmp_path / "eight.dcm", grey, window=(128, 256)),
        # 16-bit: x * 257 with the window 32768/65536 maps back to x.
        _write_dicom(tmp_path / "sixteen.dcm", wide, window=(32768, 65536)),
        # 16-bit with a Modality LUT: stored x * 128 + 1000, intercept -1000, window centre w/2 and width
        # 255 * 128 + 1 map x * 128 to x; no file extension (found by the DICM magic).
        _write_dicom(tmp_path / "offset", (grey.astype(np.uint16) * 128 + 1000).astype(np.uint16),
                     window=(16320.5, 32641), intercept=-1000),
        # MONOCHROME1 stores bright as low: 255 - x, inverted back on reading.
        _write_dicom(tmp_path / "inverted.dcm", (255 - grey).astype(np.uint8), "MONOCHROME1", window=(128, 256)),
    ]
    for path in files:
        decoded = np.asarray(predict.read_image_any(path), dtype=int)
        assert np.abs(decoded - grey.astype(int)).max() <= 1, path.name
    result = _probs(checkpoint, [GREY, *files])
    assert not result.failed and result.probs.shape == (5, 14)
    difference = np.abs(result.probs[1:] - result.probs[0]).max()
    print(f"DICOM vs PNG max probability difference: {difference:.3g}")
    assert difference <= 1e-4


def test_dicom_without_window_is_min_max_scaled(tmp_path):
    pixels = np.array([[100, 200], [300, 1100]], dtype=np.uint16)
    image = predict.read_image_any(_write_dicom(tmp_path / "raw.dcm", pixels))
    np.testing.assert_array_equal(np.asarray(image), [[0, 26], [51, 255]])
    blank = _write_dicom(tmp_path / "blank.dcm", np.full((2, 2), 7, dtype=np.uint16))
    with pytest.raises(UserError, match="blank.dcm.*blank"):
        predict.read_image_any(blank)


def test_png_rgba_jpeg_and_unreadable_files(checkpoint, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.open(GREY).save(folder / "grey.jpg", quality=95)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    sixteen = folder / "sixteen.png"
    Image.fromarray(np.asarray(Image.open(GREY)).astype(np.uint16) * 257).save(sixteen)
    paths = predict.collect_images([GREY, RGBA, folder])
    assert [p.name for p in paths] == ["00000001_000.png", "00001369_000.png", "broken.png", "grey.jpg",
                                       "sixteen.png"]
    warnings = []
    result = predict.predict_images(load_model_from_checkpoint(checkpoint)[1],
                                    {"img_size": SIZE, "mean": IMAGENET_MEAN, "std": IMAGENET_STD}, paths,
                                    warn=warnings.append)
    assert [p.name for p in result.paths] == ["00000001_000.png", "00001369_000.png", "grey.jpg", "sixteen.png"]
    assert len(warnings) == 1 and "broken.png" in warnings[0] and "\n" not in warnings[0]
    assert np.abs(result.probs[3] - result.probs[0]).max() <= 1e-6  # 16-bit x*257 reads back as x
    assert np.isfinite(result.probs).all()
    with pytest.raises(UserError, match="absent"):
        predict.collect_images([tmp_path / "absent"])


def test_main_csv_onnx_and_cam(checkpoint, tmp_path, capsys):
    folder = checkpoint.parent
    output = tmp_path / "out" / "predictions.csv"
    onnx_file = tmp_path / "model1.onnx"
    common = dict(model="eeea_c2", index=1, folder=folder)
    assert predict_command.main([str(GREY), str(RGBA), "--output", str(output), "--cam", "--export-onnx", str(onnx_file)],
                        **common) == 0
    with open(output, newline="") as stream:
        rows = list(csv.reader(stream))
    assert rows[0] == ["Image Index", *(f"prob_{c}" for c in CLASS_NAMES)]
    assert [r[0] for r in rows[1:]] == ["00000001_000.png", "00001369_000.png"]
    assert sorted(p.name for p in (tmp_path / "out" / "predictions-cam").iterdir())[0].startswith("00000001_000_")
    via_onnx = tmp_path / "onnx.csv"
    assert predict_command.main([str(GREY), str(RGBA), "--onnx", str(onnx_file), "--output", str(via_onnx)], **common) == 0
    with open(via_onnx, newline="") as stream:
        onnx_rows = list(csv.reader(stream))
    difference = np.abs(np.array([r[1:] for r in rows[1:]], float) - np.array([r[1:] for r in onnx_rows[1:]], float))
    assert difference.max() <= 2e-6  # 6-decimal CSV values
    # An unreadable file: one warning line, the others written, exit status 1.
    bad = tmp_path / "bad.png"
    bad.write_text("text")
    capsys.readouterr()
    assert predict_command.main([str(bad), str(GREY), "--output", str(via_onnx)], **common) == 1
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "bad.png" in err
    # Flag problems are one-line errors with exit status 2.
    assert run_main(lambda argv: predict_command.main(argv, **common), []) == 2
    assert run_main(lambda argv: predict_command.main(argv, **common), [str(GREY), "--checkpoint", str(tmp_path / "x.pth")]) \
        == 2
    assert "x.pth does not exist" in capsys.readouterr().err
