"""ONNX export of the five networks, agreement with PyTorch on the real PNGs, and the torch-free predictor."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_image_dependent

from common.constants import IMAGENET_MEAN, IMAGENET_STD
from common.data.images import load_png
from common.data.transforms import build_transform
from common.errors import UserError
from common.inference import onnx as onnx_export
from common.models import create_model

REAL = sorted((Path(__file__).parent / "data" / "images").glob("*.png"))
REPO = Path(__file__).resolve().parents[1]
SIZE = 64


def _real_batch(size):
    transform = build_transform(size, IMAGENET_MEAN, IMAGENET_STD, train=False)
    return torch.stack([transform(load_png(path)) for path in REAL])


@pytest.fixture(scope="module")
def eeea_export(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("eeea_c2", img_size=SIZE)
    path = onnx_export.export_onnx(model, SIZE, tmp_path_factory.mktemp("onnx") / "model1.onnx", model_name="eeea_c2")
    return model, path


def test_eeea_export_matches_pytorch_on_real_pngs(eeea_export, one_thread):
    model, path = eeea_export
    assert model.training  # the mode is given back
    assert onnx_export.check_onnx(path, model, _real_batch(SIZE)) <= 1e-4


def test_predictor_preprocessing_equals_the_eval_transform(eeea_export):
    _, path = eeea_export
    predictor = onnx_export.OnnxPredictor(path)
    assert (predictor.model_name, predictor.img_size, predictor.resize) == ("eeea_c2", SIZE, 73)
    images = [load_png(p) for p in REAL]  # 512 and 1024 px, grey and RGBA originals
    ours = np.stack([predictor.preprocess(image) for image in images])
    np.testing.assert_array_equal(ours, _real_batch(SIZE).numpy())
    probs = predictor.predict(images, batch_size=3)  # the dynamic batch axis: batches of 3 and 1
    assert probs.shape == (len(REAL), 14) and ((probs >= 0) & (probs <= 1)).all()


def test_predictor_does_not_import_torch(eeea_export):
    _, path = eeea_export
    code = ("import sys, json; from PIL import Image; from common.inference.onnx import OnnxPredictor; "
            f"p = OnnxPredictor({str(path)!r}); out = p.predict([Image.open({str(REAL[0])!r}).convert('L')]); "
            "print(json.dumps({'torch': 'torch' in sys.modules, 'shape': list(out.shape)}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120,
                            env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"torch": False, "shape": [1, 14]}


def test_predictor_refuses_files_without_metadata(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        onnx_export.OnnxPredictor(tmp_path / "absent.onnx")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not onnx")
    with pytest.raises(UserError, match="cannot load ONNX model"):
        onnx_export.OnnxPredictor(broken)


# Export took 10-25 s per network in a cold process on 2 CPU cores (tracing plus onnx.checker), hence the slow marker.
# Visformer with random weights differs by ~1e-4 (onnxruntime's fused kernels); 1e-3 is the common tolerance.
@pytest.mark.slow
@pytest.mark.parametrize("name,tolerance", [("ofa595", 1e-4), ("chexnet", 1e-4), ("visformer_small", 1e-3),
                                            ("autoformerv2_base", 1e-4)])
def test_every_network_exports(name, tolerance, tmp_path):
    torch.manual_seed(0)
    model = create_model(name, img_size=SIZE)
    path = onnx_export.export_onnx(model, SIZE, tmp_path / f"{name}.onnx", model_name=name)
    difference = onnx_export.check_onnx(path, model, _real_batch(SIZE))
    print(f"{name}: max |onnx - torch| = {difference:.3g}")
    assert difference <= tolerance



@pytest.mark.parametrize("name", ["eeea_c2", "ofa595", *(pytest.param(n, marks=pytest.mark.slow)
                                                          for n in ("chexnet", "visformer_small", "autoformerv2_base"))])
def test_export_agrees_on_image_dependent_outputs(name, tmp_path, one_thread):
    torch.manual_seed(0)
    model = create_model(name, img_size=SIZE)
    batch = _real_batch(SIZE)
    spread = make_image_dependent(model, batch)
    assert spread > 1e-3, f"{name}: probabilities barely depend on the image ({spread:.2g})"
    path = onnx_export.export_onnx(model, SIZE, tmp_path / f"{name}.onnx", model_name=name)
    difference = onnx_export.check_onnx(path, model, batch)
    print(f"{name}: probability spread over the real PNGs {spread:.3g}, max |onnx - torch| = {difference:.3g}")
    assert difference <= 1e-4
