"""Every published checkpoint layout (docs/architectures.md §10), the head rule and the loading errors. CPU, offline.

Each published file is imitated by transforming a reference model's state dict into the published naming and
wrapper (random weights, real key names); loading it must reproduce the reference model's outputs exactly.
"""
import argparse
import copy
import re
import socket

import pytest
import torch
from torch import nn

from common.constants import CLASS_NAMES
from common.errors import UserError
from common.models import create_model, load_pretrained, model_info

SIZE = 64  # small inputs keep the forward passes fast; every model accepts 64


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def refs(one_thread):
    """Reference models with random weights, built once: name -> {num_classes: model}."""
    torch.manual_seed(0)
    built = {}
    for name in ("eeea_c2", "ofa595", "chexnet", "visformer_small", "autoformerv2_base"):
        model = create_model(name, num_classes=1000, img_size=SIZE).eval()
        _randomize_buffers(model)
        head14 = copy.deepcopy(model)
        head14.reset_classifier(14)
        built[name] = {1000: model, 14: head14.eval()}
    return built


def _randomize_buffers(model):
    # Fresh BatchNorm statistics (0 / 1) would hide a swapped mean/var; make them distinctive.
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.normal_(0, 0.1)
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 1.5)


def _scrambled_copy(model):
    """A copy with every float parameter and buffer changed, so a load that does nothing is caught."""
    target = copy.deepcopy(model)
    with torch.no_grad():
        # state_dict() tensors share storage with the model; non-persistent buffers (Swin's attention masks)
        # are left alone because no checkpoint restores them.
        for tensor in target.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(0.5)
    return target


def _outputs(model, pre_logits=False):
    torch.manual_seed(123)
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        features = model.forward_features(x)
        return model.forward_head(features, pre_logits=pre_logits)


def _save(tmp_path, obj, filename="ckpt.pth"):
    path = tmp_path / filename
    torch.save(obj, path)
    return path


def _load_and_compare(ref, path, name, capsys=None):
    target = _scrambled_copy(ref).eval()
    assert not torch.equal(_outputs(target), _outputs(ref))
    notes = load_pretrained(target, name, path)
    target.eval()
    assert torch.equal(_outputs(target), _outputs(ref))
    assert all(torch.equal(a, b) for a, b in zip(target.state_dict().values(), ref.state_dict().values()))
    return notes


# ---- published-naming generators ------------------------------------------------------------------------------

def _rename(state_dict, rule):
    return {rule(k): v for k, v in state_dict.items()}


def _torchvision_old_densenet(state_dict):
    return _rename(state_dict, lambda k: re.sub(r"(denselayer\d+\.(?:norm|conv))([12])\.", r"\1.\2.", k))


def _danczs_visformer(model):
    bn_modules = {n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}

    def rule(key):
        owner, _, leaf = key.rpartition(".")
        return f"{owner}.bn.{leaf}" if owner in bn_modules else key
    return _rename(model.state_dict(), rule)


def _cream_swin(model):
    """timm Swin -> Cream/darmo SSSTransformer naming: end-of-stage downsampling, `head.*`, index/mask buffers."""
    state_dict = _rename(model.state_dict(), lambda k: re.sub(
        r"^layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) - 1}.downsample", k).replace(
        "head.fc.", "head."))
    for name, buf in model.named_buffers():
        if name.endswith(("relative_position_index", "attn_mask")):
            state_dict[name] = buf
    return state_dict


# ---- EEEA-Net-C2 / OFA-595 -----------------------------------------------------------------------------------

def test_darmo_eeea_and_ofa_files_load_without_mapping(refs, tmp_path):
    for name, entries in (("eeea_c2", 395), ("ofa595", 417)):
        state_dict = refs[name][1000].state_dict()
        assert len(state_dict) == entries
        _load_and_compare(refs[name][1000], _save(tmp_path, state_dict, f"{name}.pt"), name)


def test_official_ofa_init_and_ofa_010_names(refs, tmp_path):
    ref = refs["ofa595"][1000]
    _load_and_compare(ref, _save(tmp_path, {"state_dict": ref.state_dict()}, "init"), "ofa595")
    new_names = _rename(ref.state_dict(), lambda k: k.replace(".mobile_inverted_conv.", ".conv."))
    notes = _load_and_compare(ref, _save(tmp_path, new_names, "ofa010.pth"), "ofa595")
    assert any("mobile_inverted_conv" in note for note in notes)


def test_original_model1_darmo_reset_classifier_head(refs, tmp_path):
    ref = refs["eeea_c2"][14]
    darmo_head = _rename(ref.state_dict(), lambda k: k.replace("classifier.linear.", "classifier."))
    wrapped = {f"module._orig_mod.{k}": v for k, v in darmo_head.items()}
    notes = _load_and_compare(ref, _save(tmp_path, wrapped, "model1.pth"), "eeea_c2")
    assert any("'module.'" in note for note in notes) and any("'_orig_mod.'" in note for note in notes)


# ---- CheXNet ----------------------------------------------------------------------------------------------------

def test_torchvision_densenet_old_names(refs, tmp_path):
    ref = refs["chexnet"][1000]
    old = _torchvision_old_densenet(ref.state_dict())
    assert "features.denseblock1.denselayer1.norm.1.weight" in old
    notes = _load_and_compare(ref, _save(tmp_path, old, "densenet121-a639ec97.pth"), "chexnet")
    assert any("norm.1" in note for note in notes)


def test_arnoweng_chexnet_tar_gives_a_ready_14_class_model(refs, tmp_path):
    ref = refs["chexnet"][14]
    # PyTorch <= 0.3 file: DataParallel + wrapper prefix, old names, Sequential(Linear, Sigmoid) head, no
    # num_batches_tracked, and metadata that is not plain data (so weights_only=True alone refuses it).
    weights = {f"module.densenet121.{k}": v for k, v in _torchvision_old_densenet(ref.state_dict()).items()
               if not k.endswith("num_batches_tracked")}
    weights = _rename(weights, lambda k: k.replace("densenet121.classifier.", "densenet121.classifier.0."))
    checkpoint = {"epoch": 7, "arch": "densenet121", "state_dict": weights, "best_loss": 0.15,
                  "args": argparse.Namespace(lr=1e-3)}
    path = _save(tmp_path, checkpoint, "model.pth.tar")
    notes = _load_and_compare(ref, path, "chexnet")
    # Read with weights_only=True and the published formats' allow-list (argparse.Namespace), never unpickled freely.
    assert not any("weights_only=False" in note for note in notes)
    assert any("num_batches_tracked" in note for note in notes)


def test_original_model3_and_timm_densenet(refs, tmp_path):
    ref = refs["chexnet"][14]
    original = _rename(ref.state_dict(), lambda k: "densenet121." + k.replace("classifier.", "classifier.0."))
    _load_and_compare(ref, _save(tmp_path, original, "model3.pth"), "chexnet")
    _load_and_compare(ref, _save(tmp_path, ref.state_dict(), "timm.pth"), "chexnet")


# ---- Visformer-small --------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_danczs_visformer_and_original_model4(refs, tmp_path):
    ref = refs["visformer_small"][1000]
    danczs = _danczs_visformer(ref)
    assert len(danczs) == 205 and "stem.1.bn.weight" in danczs and "norm.bn.running_var" in danczs
    notes = _load_and_compare(ref, _save(tmp_path, {"model": danczs}, "visformer_small.pth"), "visformer_small")
    assert any("'model'" in note for note in notes) and any(".bn." in note for note in notes)
    ref14 = refs["visformer_small"][14]
    original = _rename(_danczs_visformer(ref14), lambda k: k.replace("head.", "head.0."))
    _load_and_compare(ref14, _save(tmp_path, original, "model4.pth"), "visformer_small")
    _load_and_compare(ref, _save(tmp_path, ref.state_dict(), "timm.pth"), "visformer_small")


# ---- AutoFormerV2-base ------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_cream_darmo_original_and_timm_swin_layouts(refs, tmp_path):
    ref = refs["autoformerv2_base"][1000]
    cream = _cream_swin(ref)
    assert len(cream) == 523 and "layers.0.downsample.reduction.weight" in cream and "head.weight" in cream
    notes = _load_and_compare(ref, _save(tmp_path, {"model": cream}, "S3-B.pth"), "autoformerv2_base")
    assert any("Cream" in note for note in notes)
    _load_and_compare(ref, _save(tmp_path, cream, "autoformerv2_base.pt"), "autoformerv2_base")
    timm_sd = ref.state_dict()
    assert len(timm_sd) == 485
    _load_and_compare(ref, _save(tmp_path, timm_sd, "s3_b-a1e95db4.pth"), "autoformerv2_base")
    ref14 = refs["autoformerv2_base"][14]
    original = _rename(_cream_swin(ref14), lambda k: re.sub(r"^head\.", "head.0.", k))
    _load_and_compare(ref14, _save(tmp_path, original, "model5.pth"), "autoformerv2_base")


@pytest.mark.slow
def test_swin_checkpoint_from_another_input_size_gets_resized_tables(refs, tmp_path):
    # Built for 32 px, the third stage's attention window shrinks from 7 (at 64 px) to 4: timm's converter
    # resizes the relative-position tables, and the loader says so.
    small = create_model("autoformerv2_base", num_classes=1000, img_size=32)
    notes = load_pretrained(small, "autoformerv2_base", _save(tmp_path, _cream_swin(refs["autoformerv2_base"][1000])))
    assert any(note.startswith("resized") for note in notes)
    with torch.no_grad():
        assert small.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 1000)


def test_visformer_checkpoint_from_another_input_size_is_refused(refs, tmp_path):
    other_size = create_model("visformer_small", num_classes=1000, img_size=96)
    path = _save(tmp_path, refs["visformer_small"][1000].state_dict())
    with pytest.raises(UserError, match=r"shape mismatch: pos_embed1 .*img_size"):
        load_pretrained(other_size, "visformer_small", path)


# ---- the head rule ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["eeea_c2", "autoformerv2_base"])
def test_imagenet_head_is_skipped_for_a_14_class_model(refs, tmp_path, name, capsys):
    ref = refs[name][1000]
    checkpoint = _cream_swin(ref) if name == "autoformerv2_base" else ref.state_dict()
    target = _scrambled_copy(refs[name][14])
    head_before = {k: v.clone() for k, v in target.state_dict().items() if k.startswith(model_info(name).head_prefix)}
    notes = load_pretrained(target, name, _save(tmp_path, checkpoint))
    target.eval()
    assert torch.equal(_outputs(target, pre_logits=True), _outputs(ref, pre_logits=True))
    for key, value in head_before.items():
        assert torch.equal(target.state_dict()[key], value)
    skipped = [note for note in notes if note.startswith("skipped")]
    assert len(skipped) == 1 and "1000-class" in skipped[0] and model_info(name).head_prefix + "weight" in skipped[0]
    assert "skipped" in capsys.readouterr().out


def test_headless_checkpoint_keeps_the_fresh_head(refs, tmp_path):
    ref = refs["eeea_c2"][1000]
    headless = {k: v for k, v in ref.state_dict().items() if not k.startswith("classifier.")}
    target = _scrambled_copy(refs["eeea_c2"][14])
    notes = load_pretrained(target, "eeea_c2", _save(tmp_path, headless))
    target.eval()
    assert torch.equal(_outputs(target, pre_logits=True), _outputs(ref, pre_logits=True))
    assert any("no classifier" in note for note in notes)


# ---- this project's checkpoints ---------------------------------------------------------------------------------

def _project_checkpoint(model, model_name, num_classes):
    return {"model": model.state_dict(), "model_name": model_name, "num_classes": num_classes,
            "class_names": list(CLASS_NAMES), "img_size": SIZE, "epoch": 3}


def test_project_checkpoint_round_trip_and_class_count_change(refs, tmp_path):
    ref = refs["eeea_c2"][14]
    path = _save(tmp_path, _project_checkpoint(ref, "eeea_c2", 14), "model1.pth")
    _load_and_compare(ref, path, "eeea_c2")
    five = _scrambled_copy(ref)
    five.reset_classifier(5)
    notes = load_pretrained(five, "eeea_c2", path)
    assert any("14-class head" in note for note in notes)


def test_project_checkpoint_of_another_architecture_is_refused(refs, tmp_path):
    path = _save(tmp_path, _project_checkpoint(refs["ofa595"][14], "ofa595", 14), "model2.pth")
    target = copy.deepcopy(refs["eeea_c2"][14])
    with pytest.raises(UserError) as err:
        load_pretrained(target, "eeea_c2", path)
    message = str(err.value)
    assert str(path) in message and "ofa595" in message and "eeea_c2" in message and "14 classes" in message


def test_project_checkpoint_with_inconsistent_class_count_is_refused(refs, tmp_path):
    path = _save(tmp_path, _project_checkpoint(refs["eeea_c2"][14], "eeea_c2", 3), "odd.pth")
    with pytest.raises(UserError, match=r"num_classes=3.*14 outputs"):
        load_pretrained(copy.deepcopy(refs["eeea_c2"][14]), "eeea_c2", path)


# ---- errors -----------------------------------------------------------------------------------------------------

def test_shape_and_name_mismatches_name_the_file_and_key(refs, tmp_path):
    target = copy.deepcopy(refs["eeea_c2"][14])
    state_dict = refs["eeea_c2"][1000].state_dict()
    key = "blocks.3.mobile_inverted_conv.depth_conv.conv.weight"
    bad_shape = dict(state_dict, **{key: torch.zeros(72, 1, 5, 5)})
    path = _save(tmp_path, bad_shape, "bad_shape.pth")
    with pytest.raises(UserError, match=re.escape(str(path)) + ".*shape mismatch: " + re.escape(key)):
        load_pretrained(target, "eeea_c2", path)
    missing_key = "blocks.5.mobile_inverted_conv.point_linear.bn.weight"
    missing = {k: v for k, v in state_dict.items() if k != missing_key}
    with pytest.raises(UserError, match="missing keys: " + re.escape(missing_key)):
        load_pretrained(target, "eeea_c2", _save(tmp_path, missing, "missing.pth"))
    extra = dict(state_dict, **{"blocks.99.weight": torch.zeros(1)})
    with pytest.raises(UserError, match=r"unexpected keys: blocks\.99\.weight"):
        load_pretrained(target, "eeea_c2", _save(tmp_path, extra, "extra.pth"))
    both_heads = dict(state_dict, **{"classifier.weight": torch.zeros(1000, 1280)})
    with pytest.raises(UserError, match="same name"):
        load_pretrained(target, "eeea_c2", _save(tmp_path, both_heads, "both.pth"))


def test_weights_of_another_architecture_are_refused(refs, tmp_path):
    path = _save(tmp_path, refs["ofa595"][1000].state_dict(), "ofa595_1k_b1a18d5.pt")
    target = copy.deepcopy(refs["eeea_c2"][14])
    with pytest.raises(UserError, match=re.escape(str(path)) + ".*eeea_c2.*first_conv.conv.weight"):
        load_pretrained(target, "eeea_c2", path)


def test_unreadable_sources(refs, tmp_path):
    target = refs["eeea_c2"][14]
    missing = tmp_path / "absent.pth"
    with pytest.raises(UserError, match="not found: " + re.escape(str(missing))):
        load_pretrained(target, "eeea_c2", missing)
    with pytest.raises(UserError, match="not a model folder: config.json is missing"):
        load_pretrained(target, "eeea_c2", tmp_path)
    for filename, content in (("garbage.pth", b"not a checkpoint at all"), ("empty.pth", b"")):
        (tmp_path / filename).write_bytes(content)
        with pytest.raises(UserError, match="cannot read checkpoint " + re.escape(str(tmp_path / filename))):
            load_pretrained(target, "eeea_c2", tmp_path / filename)
    with pytest.raises(UserError, match="holds a Tensor"):
        load_pretrained(target, "eeea_c2", _save(tmp_path, torch.zeros(3), "tensor.pth"))
    with pytest.raises(UserError, match="entry 'lr'"):
        load_pretrained(target, "eeea_c2", _save(tmp_path, {"lr": 0.1}, "dict.pth"))


def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))

    def refuse_connection(*args, **kwargs):
        raise OSError("network is unreachable")

    def refuse_download(*args, **kwargs):
        raise AssertionError("download attempted although the host is unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse_connection)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse_download)


def test_imagenet_offline_error_gives_the_url(monkeypatch, tmp_path):
    _offline(monkeypatch, tmp_path)
    url = model_info("eeea_c2").imagenet_url
    with pytest.raises(UserError) as err:
        create_model("eeea_c2", pretrained="imagenet")
    assert url in str(err.value) and "--pretrained PATH" in str(err.value)


def test_imagenet_uses_the_cached_file(refs, monkeypatch, tmp_path):
    _offline(monkeypatch, tmp_path)
    cache = tmp_path / "torch_home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    ref = refs["eeea_c2"][1000]
    torch.save(ref.state_dict(), cache / "eeea-c2.pt")
    _load_and_compare(ref, "imagenet", "eeea_c2")
