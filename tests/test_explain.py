"""Grad-CAM layers and maps for the five networks, and the overlay / sheet figures."""
import numpy as np
import pytest
import torch
from PIL import Image

from common.constants import IMAGENET_MEAN, IMAGENET_STD
from common.errors import UserError
from common.explain import gradcam as explain
from common.models import create_model

# Big enough for a 3x3 or 4x4 last-stage map: with random weights a 2x2 map (64 px) can be all negative, which
# Grad-CAM correctly turns into an all-zero map.
SIZES = {"eeea_c2": 128, "ofa595": 128, "chexnet": 128, "visformer_small": 96, "autoformerv2_base": 96}
FAST = ["eeea_c2", "ofa595", "chexnet"]
SLOW = [pytest.param(name, marks=pytest.mark.slow) for name in ("visformer_small", "autoformerv2_base")]


@pytest.mark.parametrize("name", FAST + SLOW)
def test_gradcam_map_is_finite_non_constant_and_shaped(name, one_thread):
    torch.manual_seed(0)
    size = SIZES[name]
    model = create_model(name, num_classes=14, img_size=size)
    images = torch.randn(2, 3, size, size)
    # Explain each image's highest logit: with random weights a class with a negative logit can have no positive
    # evidence anywhere, which Grad-CAM rightly returns as an all-zero map (with global average pooling and a linear
    # head, the CAM sums to the logit minus the bias).
    with torch.no_grad():
        classes = model.eval()(images).argmax(dim=1).tolist()
    model.train()
    maps = explain.gradcam_maps(model, name, images, classes)
    assert model.training
    assert maps.shape == (2, size, size) and maps.dtype == np.float32
    assert np.isfinite(maps).all() and maps.min() >= 0.0 and maps.max() <= 1.0
    for single in maps:
        assert single.max() - single.min() > 0.1, name


def test_target_layers_and_reshape():
    model = create_model("chexnet", img_size=64)
    assert explain.cam_target_layer(model, "chexnet") is model.features.norm5
    assert explain.reshape_transform_for("chexnet") is None
    ofa = create_model("eeea_c2", img_size=64)
    assert explain.cam_target_layer(ofa, "eeea_c2") is ofa.final_expand_layer
    swin = explain.reshape_transform_for("autoformerv2_base")
    nhwc = torch.arange(2 * 3 * 3 * 5, dtype=torch.float32).reshape(2, 3, 3, 5)
    assert torch.equal(swin(nhwc), nhwc.permute(0, 3, 1, 2))
    tokens = nhwc.reshape(2, 9, 5)
    assert torch.equal(swin(tokens), nhwc.permute(0, 3, 1, 2))
    with pytest.raises(ValueError, match="square"):
        swin(torch.zeros(1, 8, 5))
    with pytest.raises(UserError, match="resnet"):
        explain.cam_target_layer(model, "resnet")


def test_overlays_and_sheet(tmp_path):
    maps = np.zeros((2, 32, 32), dtype=np.float32)
    maps[:, 8:16, 8:16] = 1.0
    images = [np.full((32, 32), 100, dtype=np.uint8), Image.new("L", (32, 32), 30)]
    paths = explain.write_cam_overlays(tmp_path / "cam", images, maps, ["a.png", "b.png"], "Mass", [0.9, 0.2],
                                       boxes=[[(8, 8, 8, 8)], None])
    assert [p.name for p in paths] == ["a_Mass.png", "b_Mass.png"]
    with Image.open(paths[0]) as written:
        assert written.format == "PNG" and written.size[0] > 100
    panels = [[explain.CamPanel("Mass", "a.png", images[0], maps[0], 0.9, [(8, 8, 8, 8)])],
              [explain.CamPanel("Nodule", "a.png", images[0], maps[0], 0.5),
               explain.CamPanel("Nodule", "b.png", images[1], maps[1], 0.4)]]
    sheet = explain.write_cam_sheet(tmp_path / "sheet.png", panels, title="model1.pth")
    assert sheet.is_file()
    with pytest.raises(ValueError, match="differ in size"):
        explain.write_cam_overlays(tmp_path, [np.zeros((16, 16))], maps[:1], ["c.png"], "Mass", [0.1])


def test_top_k_per_class_and_input_view():
    probs = np.array([[0.1, 0.9], [0.8, 0.9], [0.5, 0.2]])
    assert explain.top_k_per_class(probs, 2) == {0: [1, 2], 1: [0, 1]}
    assert explain.top_k_per_class(probs, 1, [1]) == {1: [0]}
    pixels = torch.tensor([[0.0, 128.0], [255.0, 64.0]], dtype=torch.float64) / 255
    normalised = ((pixels.float() - IMAGENET_MEAN[0]) / IMAGENET_STD[0]).expand(1, 3, 2, 2)
    view = explain.input_view_gray(normalised, IMAGENET_MEAN, IMAGENET_STD)[0]
    np.testing.assert_array_equal(view, np.round(pixels.numpy() * 255).astype(np.uint8))
