"""Predicting on a user's own files: PNG (grey, RGBA), JPEG and DICOM, folders, unreadable files, ONNX, CAMs."""
import csv
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from conftest import make_image_dependent, write_decompression_bomb
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless, SecondaryCaptureImageStorage, generate_uid

from common.commands import predict as predict_command
from common.commands._cli import run_main
from common.constants import CLASS_NAMES, IMAGENET_MEAN, IMAGENET_STD
from common.data.images import load_png
from common.data.transforms import build_transform
from common.errors import UserError
from common.inference import onnx as onnx_export
from common.inference import predictor as predict
from common.inference.prediction_files import read_probabilities
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


def _write_dicom(path, pixels, photometric="MONOCHROME2", window=None, intercept=None, bits_stored=None,
                 syntax=ExplicitVRLittleEndian, pixel_data=None):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    bits = 8 if pixels.dtype == np.uint8 else 16
    ds.BitsAllocated = bits
    ds.BitsStored = bits_stored or bits
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if intercept is not None:
        ds.RescaleIntercept, ds.RescaleSlope = intercept, 1
    ds.PixelData = pixel_data if pixel_data is not None else pixels.tobytes()
    if pixel_data is not None:
        ds["PixelData"].VR = "OB"
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


def test_dicom_without_window_is_scaled_by_its_stored_bits(tmp_path):
    """Issue 15 §4: no min-max stretch; the bit depth the file stores is full scale (signed: its range)."""
    pixels = np.array([[100, 200], [300, 1100]], dtype=np.uint16)
    sixteen = predict.read_image_any(_write_dicom(tmp_path / "raw.dcm", pixels))
    np.testing.assert_array_equal(np.asarray(sixteen), np.rint(pixels / 65535 * 255))
    twelve = predict.read_image_any(_write_dicom(tmp_path / "twelve.dcm", pixels, bits_stored=12))
    np.testing.assert_array_equal(np.asarray(twelve), [[6, 12], [19, 68]])
    signed = predict.read_image_any(_write_dicom(tmp_path / "signed.dcm", np.array([[-2048, 0], [1, 2047]],
                                                                                   dtype=np.int16), bits_stored=12))
    np.testing.assert_array_equal(np.asarray(signed), [[0, 128], [128, 255]])
    # A blank image is an image (its out-of-distribution score, not the reader, says it is no radiograph).
    blank = predict.read_image_any(_write_dicom(tmp_path / "blank.dcm", np.full((2, 2), 7, dtype=np.uint16)))
    assert np.asarray(blank).max() == 0


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


# --------------------------------------------------------------------------------------------------------------------
# One pixel rule (issue 15 §4)
# --------------------------------------------------------------------------------------------------------------------
def test_one_pixel_rule_8_bit_16_bit_png_and_dicom_give_the_same_probabilities(checkpoint, tmp_path):
    """A lossless conversion of one real PNG (grey levels 3..232, so a min-max stretch would change it) into a
    16-bit PNG and into 8- and 16-bit DICOMs without a window: the same input, so the same probabilities. The old
    rule stretched 16-bit PNGs and window-less DICOMs to their own [min, max] (0.028 apart on real images)."""
    source = REAL / "00000493_000.png"
    grey = np.asarray(Image.open(source))
    assert grey.dtype == np.uint8 and (grey.min(), grey.max()) == (3, 232)
    sixteen_png = tmp_path / "sixteen.png"
    Image.fromarray(grey.astype(np.uint16) * 257).save(sixteen_png)
    assert Image.open(sixteen_png).mode == "I;16"
    files = [sixteen_png, _write_dicom(tmp_path / "eight.dcm", grey),
             _write_dicom(tmp_path / "sixteen.dcm", grey.astype(np.uint16) * 257),
             _write_dicom(tmp_path / "windowed.dcm", grey, window=(128, 256))]
    for path in files:
        np.testing.assert_array_equal(np.asarray(predict.read_image_any(path)), grey, err_msg=path.name)
    result = _probs(checkpoint, [source, *files])
    assert not result.failed
    difference = np.abs(result.probs[1:] - result.probs[0]).max()
    assert difference <= 1e-4, difference


def test_jpeg_ls_dicom_without_a_decoder_names_the_package(tmp_path):
    path = _write_dicom(tmp_path / "jpegls.dcm", np.zeros((8, 8), dtype=np.uint16), bits_stored=12,
                        syntax=JPEGLSLossless, pixel_data=encapsulate([b"\xff\xd8\xff\xf7" + bytes(20) + b"\xff\xd9"]))
    with pytest.raises(UserError) as caught:
        predict.read_image_any(path)
    message = str(caught.value)
    assert "\n" not in message and "JPEG-LS" in message and "no decoder for it is installed" in message
    assert "pip install pylibjpeg" in message and "pylibjpeg-libjpeg" in message and "python-gdcm" in message


# --------------------------------------------------------------------------------------------------------------------
# Files that are damaged or odd (issue 16 §3), extension-less DICOM (issue 17 §5)
# --------------------------------------------------------------------------------------------------------------------
def test_a_decompression_bomb_is_a_skipped_file(checkpoint, tmp_path, capsys):
    bomb = write_decompression_bomb(tmp_path / "00009999_000.png")
    assert bomb.stat().st_size < 200_000
    with pytest.raises(UserError, match="cannot read image .*00009999_000.png.*decompression bomb"):
        load_png(bomb)  # the reader of training images and the cache build
    output = tmp_path / "predictions.csv"
    common = dict(model="eeea_c2", index=1, folder=checkpoint.parent)
    capsys.readouterr()
    assert run_main(lambda argv: predict_command.main(argv, **common), [str(bomb), str(GREY), "--output",
                                                                        str(output)]) == 1
    err = capsys.readouterr().err
    assert err.count("warning: cannot read image") == 1 and "00009999_000.png" in err and "Traceback" not in err
    assert read_probabilities(output, [GREY.name]).shape == (1, 14)


def test_no_readable_image_is_one_line_and_exit_2(checkpoint, tmp_path, capsys):
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(GREY.read_bytes()[:2000])
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    common = dict(model="eeea_c2", index=1, folder=checkpoint.parent)
    for given in ([truncated], [text], [truncated, text]):
        capsys.readouterr()
        output = tmp_path / "never.csv"
        code = run_main(lambda argv: predict_command.main(argv, **common), [*map(str, given), "--output", str(output)])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and err[-1].startswith("error: none of the") and "could be read" in err[-1]
        assert len(err) == len(given) + 1 and all(line.startswith("warning: cannot read") for line in err[:-1])
        assert not output.exists()


def test_extensionless_dicom_in_a_folder_is_found(tmp_path):
    folder = tmp_path / "study"
    folder.mkdir()
    grey = np.asarray(Image.open(GREY))
    _write_dicom(folder / "IM0001", grey)                      # no extension
    _write_dicom(folder / "1.2.840.113619.2.55.3", grey)        # a UID name: its "suffix" is .3
    (folder / "README").write_text("not an image")
    (folder / "a.png").write_bytes(GREY.read_bytes())
    found = predict.collect_images([folder])
    assert [p.name for p in found] == ["1.2.840.113619.2.55.3", "IM0001", "a.png"]
    for path in found:
        np.testing.assert_array_equal(np.asarray(predict.read_image_any(path)), grey)


# --------------------------------------------------------------------------------------------------------------------
# Streaming (issue 18 §1)
# --------------------------------------------------------------------------------------------------------------------
class CountingPredictor:
    """Records how far decoding has run ahead of the model."""

    def __init__(self, inner):
        self.inner, self.class_names = inner, CLASS_NAMES
        self.decoded = self.predicted = self.most_ahead = 0

    def preprocess(self, image):
        self.decoded += 1
        return self.inner.preprocess(image)

    def predict_array(self, batch):
        self.most_ahead = max(self.most_ahead, self.decoded - self.predicted)
        self.predicted += len(batch)
        return self.inner.predict_array(batch)


def test_prediction_streams_with_bounded_read_ahead(checkpoint, tmp_path):
    """Decoding runs at most BATCHES_AHEAD batches ahead of the model (it used to decode every file first), keeps
    the order, and gives the probabilities of decoding in the calling thread."""
    from common.inference.metadata import checkpoint_metadata
    from common.runs.checkpoint import load_model_from_checkpoint as load

    loaded, model = load(checkpoint)
    inner = predict.TorchPredictor(model, checkpoint_metadata(loaded, checkpoint))
    bad = tmp_path / "bad.png"
    bad.write_text("x")
    paths = sorted(REAL.glob("*.png")) * 3
    paths.insert(7, bad)
    batch = 3
    streamed = CountingPredictor(inner)
    warnings = []
    result = predict.predict_images(streamed, None, paths, batch_size=batch, decoders=2, warn=warnings.append)
    assert streamed.most_ahead <= (predict.BATCHES_AHEAD + 2) * batch
    assert len(warnings) == 1 and result.paths == [p for p in paths if p != bad]
    inline = predict.predict_images(inner, None, paths, batch_size=batch, decoders=0, warn=lambda line: None)
    np.testing.assert_array_equal(result.probs, inline.probs)


# --------------------------------------------------------------------------------------------------------------------
# Thresholds, the research note, --device and --threads (issues 17 §1, 20)
# --------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def thresholded(checkpoint, tmp_path_factory):
    """The checkpoint with validation thresholds, as a run's best checkpoint has them: the median probability of the
    real PNGs per class, so some images are above and some below."""
    loaded = torch.load(checkpoint, weights_only=True)
    probs = _probs(checkpoint, sorted(REAL.glob("*.png"))).probs
    thresholds = np.median(probs, axis=0)
    path = tmp_path_factory.mktemp("best") / "model1.pth"
    torch.save({**loaded, "val_thresholds": [float(t) for t in thresholds], "epoch": 3}, path)
    return path, thresholds


def test_printed_table_marks_probabilities_at_or_above_the_thresholds(thresholded, tmp_path, capsys):
    path, thresholds = thresholded
    common = dict(model="eeea_c2", index=1, folder=path.parent)
    output = tmp_path / "p.csv"
    onnx_file = tmp_path / "model1.onnx"
    images = sorted(REAL.glob("*.png"))[:3]
    capsys.readouterr()
    assert predict_command.main([*map(str, images), "--output", str(output), "--export-onnx", str(onnx_file)],
                                **common) == 0
    printed = capsys.readouterr().out
    assert printed.count("Research model, not a medical device") == 1
    assert "max F1 on the validation patients of model1.pth's training split (epoch 3)" in printed
    probs = read_probabilities(output, [p.name for p in images])
    lines = printed.splitlines()
    for image, row in zip(images, probs):
        start = next(i for i, line in enumerate(lines) if line.startswith(image.name))
        above = [c for c, p, t in zip(CLASS_NAMES, row, thresholds) if p >= t]
        assert lines[start] == f"{image.name}: at or above threshold: {', '.join(above) or 'none'}"
        for offset, (cls, p, t) in enumerate(zip(CLASS_NAMES, row, thresholds)):
            cells = lines[start + 2 + offset].split()
            assert cells[0] == cls and float(cells[2]) == pytest.approx(t, abs=5e-5)
            assert (cells[-1] == "*") == (p >= t), (image.name, cls)
    # The CSV keeps its layout; the thresholds are in the side file, exactly.
    with open(output, newline="") as stream:
        assert next(csv.reader(stream)) == ["Image Index", *(f"prob_{c}" for c in CLASS_NAMES)]
    with open(tmp_path / "p-thresholds.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert [r["class"] for r in rows] == list(CLASS_NAMES) and [r["column"] for r in rows][0] == "prob_Atelectasis"
    np.testing.assert_array_equal([float(r["threshold"]) for r in rows], thresholds)
    # The ONNX export carries the thresholds: --onnx marks the same findings.
    predictor = onnx_export.OnnxPredictor(onnx_file)
    np.testing.assert_array_equal(predictor.val_thresholds, thresholds)
    assert predictor.metadata["checkpoint"] == "model1.pth" and predictor.metadata["metadata_version"] == 2
    assert predict_command.main([*map(str, images), "--onnx", str(onnx_file), "--output", str(tmp_path / "o.csv")],
                                **common) == 0
    onnx_printed = capsys.readouterr().out
    marks = [line for line in printed.splitlines() if "threshold:" in line]
    assert marks == [line for line in onnx_printed.splitlines() if "threshold:" in line]
    assert onnx_printed.count("Research model, not a medical device") == 1


def test_without_thresholds_nothing_is_marked_and_the_side_file_says_why(checkpoint, tmp_path, capsys):
    common = dict(model="eeea_c2", index=1, folder=checkpoint.parent)
    capsys.readouterr()
    assert predict_command.main([str(GREY), "--output", str(tmp_path / "p.csv")], **common) == 0
    printed = capsys.readouterr().out
    assert "Thresholds: none (model1.pth carries no validation thresholds" in printed and "  *" not in printed
    with open(tmp_path / "p-thresholds.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert {r["threshold"] for r in rows} == {""} and "carries no validation thresholds" in rows[0]["source"]


def test_print_limit_device_and_threads(checkpoint, tmp_path, capsys):
    common = dict(model="eeea_c2", index=1, folder=checkpoint.parent)
    capsys.readouterr()
    assert predict_command.main([str(REAL), "--output", str(tmp_path / "p.csv"), "--print-limit", "2", "--threads",
                                 "1", "--workers", "1"], **common) == 0
    printed = capsys.readouterr().out
    assert "threads: 1 intra-op thread(s) + 1 loader worker(s)" in printed and "as requested by --workers and " \
        "--threads" in printed
    assert torch.get_num_threads() == 1
    assert printed.count("  class ") == 2 and "... 8 more image(s) in the CSV" in printed
    assert "on cpu" in printed
    run = lambda argv: run_main(lambda a: predict_command.main(a, **common), argv)  # noqa: E731
    if not torch.cuda.is_available():
        assert run([str(GREY), "--device", "cuda", "--output", str(tmp_path / "q.csv")]) == 2
        assert "CUDA is not available" in capsys.readouterr().err
    assert run([str(GREY), "--onnx", "x.onnx", "--device", "cuda"]) == 2
    assert "--onnx runs on the CPU" in capsys.readouterr().err
