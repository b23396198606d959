"""The model registry: names, facts, shapes, shared interface, key layouts (docs/architectures.md §15). CPU, offline."""
import pytest
import torch
from torch import nn

from common.constants import IMAGENET_MEAN, IMAGENET_STD
from common.errors import UserError
from common.models import ModelInfo, check_img_size, create_model, list_models, model_info

NAMES = ["eeea_c2", "ofa595", "chexnet", "visformer_small", "autoformerv2_base"]
# A small input keeps the forward passes fast; the counts do not depend on it (the profile tests use 224).
SIZE = 64


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def models(one_thread):
    """Every registered model with a 14-class head, built once (AutoFormerV2-base has 70M parameters)."""
    torch.manual_seed(0)
    return {name: create_model(name, num_classes=14, img_size=SIZE).eval() for name in NAMES}


def test_registry_names_and_facts():
    assert list_models() == NAMES
    expected = {  # native size, head width, original head size, display name, ImageNet file
        "eeea_c2": (192, 1280, 14, "MobileNetV3", "jitdee-ai/darmo/releases/download/0.0.1/eeea-c2.pt"),
        "ofa595": (236, 1536, 14, "MobileNetV3", "jitdee-ai/darmo/releases/download/0.0.1/ofa595_1k_b1a18d5.pt"),
        "chexnet": (224, 1024, 14, "DenseNet121", "download.pytorch.org/models/densenet121-a639ec97.pth"),
        "visformer_small": (224, 768, 1000, "Visformer", "danczs/Visformer/releases/download/v1.0.0/"
                                                         "visformer_small.pth"),
        "autoformerv2_base": (224, 768, 1000, "SSSTransformer", "v0.1-weights/s3_b-a1e95db4.pth"),
    }
    for name, (native, features, original_classes, display, url_tail) in expected.items():
        info = model_info(name)
        assert isinstance(info, ModelInfo)
        assert (info.name, info.native_size, info.num_features, info.original_count_classes, info.display_class_name) == (
            name, native, features, original_classes, display)
        assert info.mean == IMAGENET_MEAN and info.std == IMAGENET_STD
        assert info.imagenet_url.startswith("https://") and info.imagenet_url.endswith(url_tail)
    with pytest.raises(AttributeError):
        model_info("eeea_c2").native_size = 1  # frozen


def test_unknown_name_lists_valid_names():
    for call in (lambda: create_model("resnet50"), lambda: model_info("resnet50")):
        with pytest.raises(UserError, match="resnet50") as err:
            call()
        assert all(name in str(err.value) for name in NAMES)


@pytest.mark.parametrize("name, size", [("chexnet", 28), ("visformer_small", 30), ("visformer_small", 65),
                                        ("autoformerv2_base", 3), ("eeea_c2", 0)])
def test_unusable_img_size_is_a_user_error(name, size):
    with pytest.raises(UserError, match=rf"img_size {size}\b.*{name}"):
        check_img_size(name, size)
    with pytest.raises(UserError, match=str(size)):
        create_model(name, img_size=size)


@pytest.mark.parametrize("num_classes", [0, -1, 2.5, True])
def test_bad_num_classes_is_a_user_error(num_classes):
    with pytest.raises(UserError, match="num_classes"):
        create_model("eeea_c2", num_classes=num_classes)


@pytest.mark.parametrize("name", NAMES)
def test_logits_shapes_and_no_sigmoid(models, name):
    model = models[name]
    assert not any(isinstance(m, nn.Sigmoid) for m in model.modules())
    with torch.no_grad():
        for batch in (1, 2):
            out = model(torch.randn(batch, 3, SIZE, SIZE))
            assert out.shape == (batch, 14)
            assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES)
def test_shared_interface(models, name):
    model, info = models[name], model_info(name)
    assert model.num_features == info.num_features
    cfg = model.default_cfg
    assert tuple(cfg["input_size"]) == (3, info.native_size, info.native_size)
    assert tuple(cfg["mean"]) == IMAGENET_MEAN and tuple(cfg["std"]) == IMAGENET_STD
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        pre_logits = model.forward_head(model.forward_features(x), pre_logits=True)
        assert pre_logits.shape == (2, info.num_features)
        assert torch.equal(model.forward_head(model.forward_features(x)), model(x))
    head_keys = [k for k in model.state_dict() if k.startswith(info.head_prefix)]
    assert head_keys == [info.head_prefix + "weight", info.head_prefix + "bias"]


def test_reset_classifier_keeps_key_names_and_mode():
    model = create_model("ofa595", num_classes=1000)
    model.train()
    model.reset_classifier(3)
    assert model.training and model.classifier.training
    assert model.state_dict()["classifier.linear.weight"].shape == (3, 1536)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    assert isinstance(model.classifier.dropout, nn.Dropout) and model.classifier.dropout.p == 0.2


@pytest.mark.parametrize("name, entries, counters", [
    ("eeea_c2", 395, 58), ("ofa595", 417, 61), ("chexnet", 727, 121), ("visformer_small", 205, 28),
    ("autoformerv2_base", 485, 0)])
def test_state_dict_layout(models, name, entries, counters):
    keys = list(models[name].state_dict())
    assert len(keys) == entries
    assert sum(k.endswith("num_batches_tracked") for k in keys) == counters


def test_ofa_key_names_follow_ofa_004(models):
    keys = list(models["eeea_c2"].state_dict())
    assert keys[0] == "first_conv.conv.weight"
    assert keys[-2:] == ["classifier.linear.weight", "classifier.linear.bias"]
    assert "feature_mix_layer.conv.weight" in keys and "final_expand_layer.bn.running_var" in keys
    # Stage 0 has no expand conv; stage 2 blocks carry SE with biases.
    assert not any(k.startswith("blocks.0.mobile_inverted_conv.inverted_bottleneck") for k in keys)
    assert "blocks.4.mobile_inverted_conv.depth_conv.se.fc.reduce.bias" in keys
    assert "blocks.7.mobile_inverted_conv.depth_conv.se.fc.reduce.weight" not in keys  # stage 3: no SE
    assert models["eeea_c2"]._get_name() == "MobileNetV3"
    # Block widths of docs/architectures.md §5/§6 (mid channels and SE width).
    sd = models["eeea_c2"].state_dict()
    assert sd["blocks.11.mobile_inverted_conv.depth_conv.conv.weight"].shape == (480, 1, 7, 7)
    assert sd["blocks.11.mobile_inverted_conv.depth_conv.se.fc.reduce.weight"].shape == (120, 480, 1, 1)
    sd = models["ofa595"].state_dict()
    assert sd["first_conv.conv.weight"].shape == (24, 3, 3, 3)
    assert sd["blocks.13.mobile_inverted_conv.depth_conv.se.fc.reduce.weight"].shape == (208, 816, 1, 1)
    assert sd["feature_mix_layer.conv.weight"].shape == (1536, 1152, 1, 1)


def test_dropout_only_in_ofa595_and_only_in_train_mode(models):
    x = torch.randn(2, 3, SIZE, SIZE)
    ofa = models["ofa595"]
    assert [m.p for m in ofa.modules() if isinstance(m, nn.Dropout)] == [0.2]
    assert not any(isinstance(m, nn.Dropout) for m in models["eeea_c2"].modules())
    try:
        ofa.train()
        torch.manual_seed(1)
        first = ofa(x)
        second = ofa(x)
        assert not torch.equal(first, second)  # dropout is active
    finally:
        ofa.eval()
    with torch.no_grad():
        assert torch.equal(ofa(x), ofa(x))


def test_fixed_size_models_accept_small_demo_sizes():
    model = create_model("visformer_small", num_classes=14, img_size=96).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 96, 96)).shape == (1, 14)


def test_create_model_with_local_checkpoint(tmp_path, capsys):
    source = create_model("eeea_c2", num_classes=14).eval()
    path = tmp_path / "weights.pth"
    torch.save(source.state_dict(), path)
    model = create_model("eeea_c2", num_classes=14, pretrained=str(path)).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), source(x))
    assert str(path) in capsys.readouterr().out
