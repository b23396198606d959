"""The shareable model folder (issue 17 §4): ``predict.py --export-hub DIR`` writes it, ``--checkpoint DIR``,
``--pretrained DIR`` and ``torch.hub.load(..., source="local")`` read it back with the same probabilities."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_image_dependent
from safetensors.torch import load_file

from common.commands import predict as predict_command
from common.commands._cli import run_main
from common.constants import CLASS_NAMES, IMAGENET_MEAN, IMAGENET_STD
from common.data.fingerprint import file_sha256
from common.data.images import load_png
from common.data.transforms import build_transform
from common.evaluation.ood import fit_ood_statistics, ood_path
from common.inference.ood import INPUT_PART, OOD_LAYER, input_blocks
from common.inference.onnx import OnnxPredictor
from common.inference.predictor import collect_images, predict_images
from common.models import create_model, load_pretrained
from common.models.model_folder import read_model_folder
from common.runs.checkpoint import load_model_from_checkpoint
from common.runs.identity import weights_identity

REPO = Path(__file__).resolve().parents[1]
REAL = REPO / "tests" / "data" / "images"
SIZE = 64


@pytest.fixture(scope="module")
def exported(tmp_path_factory, one_thread):
    """A checkpoint with thresholds, identity, OOD statistics and a card, and the folder predict.py exports."""
    torch.manual_seed(0)
    model = create_model("eeea_c2", img_size=SIZE)
    transform = build_transform(SIZE, IMAGENET_MEAN, IMAGENET_STD, train=False)
    images = torch.stack([transform(load_png(p)) for p in sorted(REAL.glob("*.png"))])
    assert make_image_dependent(model, images) > 1e-3
    with torch.no_grad():
        features = {OOD_LAYER: model.forward_head(model.forward_features(images), pre_logits=True).numpy(),
                    INPUT_PART: input_blocks(images.numpy())}
    root = tmp_path_factory.mktemp("folder")
    path = root / "model1.pth"
    checkpoint = {"model": model.state_dict(), "model_name": "eeea_c2", "num_classes": 14, "img_size": SIZE,
                  "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "class_names": list(CLASS_NAMES),
                  "val_thresholds": [0.1 + 0.05 * c for c in range(14)], "epoch": 3, "val_mean_auroc": 0.71,
                  "config": {"split": "official", "epochs": 3},
                  "identity": {"split": {"split": "official"}, "git_commit": "abc"}}
    torch.save(checkpoint, path)
    stats = fit_ood_statistics({k: v[:7] for k, v in features.items()}, {k: v[7:] for k, v in features.items()})
    stats["checkpoint_sha256"] = file_sha256(path)
    ood_path(path).write_text(json.dumps(stats))
    Path(f"{root / 'model1'}-card.md").write_text("# Model card: EEEA-Net-C2 (`model1.pth`)\n\ntested.\n")
    folder = root / "hub"
    assert run_main(predict_command.main, ["--checkpoint", str(path), "--export-hub", str(folder)],
                    model="eeea_c2", index=1, folder=root) == 0
    return {"path": path, "folder": folder, "stats": stats, "root": root}


def test_folder_holds_weights_config_card_and_onnx(exported):
    folder = exported["folder"]
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.onnx", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    cfg = config["pretrained_cfg"]
    assert cfg["input_size"] == [3, SIZE, SIZE] and cfg["mean"] == list(IMAGENET_MEAN) and cfg["num_classes"] == 14
    assert cfg["crop_pct"] == pytest.approx(64 / 73, abs=1e-6) and cfg["interpolation"] == "bilinear"
    assert cfg["label_names"] == config["label_names"] == list(CLASS_NAMES) and cfg["license"] == "other"
    assert config["architecture"] == "eeea_c2" and config["num_features"] == 1280
    ours = config["dtforcxr8"]
    assert ours["thresholds"]["Hernia"] == pytest.approx(0.75) and ours["identity"]["git_commit"] == "abc"
    assert ours["ood"]["threshold"] == pytest.approx(exported["stats"]["threshold"])
    assert ours["exported_from"]["sha256"] == file_sha256(exported["path"])
    readme = (folder / "README.md").read_text()
    assert readme.startswith("---\nlicense: other") and "tested." in readme
    weights = load_file(str(folder / "model.safetensors"))  # plain tensors: nothing is unpickled
    assert torch.equal(weights["classifier.linear.weight"], torch.load(exported["path"])["model"]["classifier.linear.weight"])
    assert OnnxPredictor(folder / "model.onnx").has_ood


def test_folder_round_trips_the_probabilities_and_scores(exported):
    paths = collect_images([REAL])
    original_checkpoint, original = load_model_from_checkpoint(exported["path"])
    from_folder_checkpoint, from_folder = load_model_from_checkpoint(exported["folder"])
    meta = {k: original_checkpoint[k] for k in ("img_size", "mean", "std")}
    assert {k: from_folder_checkpoint[k] for k in meta} == meta
    assert from_folder_checkpoint["val_thresholds"] == pytest.approx(original_checkpoint["val_thresholds"])
    first = predict_images(original, meta, paths, ood=exported["stats"])
    second = predict_images(from_folder, meta, paths, ood=from_folder_checkpoint["ood"])
    assert np.abs(first.probs - second.probs).max() <= 1e-6
    assert np.abs(first.ood_scores - second.ood_scores).max() <= 1e-6
    # --pretrained DIR: the same weights into a fresh model, and the run records the folder's weights file.
    fresh = create_model("eeea_c2", img_size=SIZE)
    load_pretrained(fresh, "eeea_c2", str(exported["folder"]))
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), original.state_dict().values()))
    assert weights_identity(exported["folder"])["sha256"] == file_sha256(exported["folder"] / "model.safetensors")
    # torch.hub, from this repository, nothing downloaded.
    spec = importlib.util.spec_from_file_location("hubconf_under_test", REPO / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    # torch.hub lists every public callable: exactly the registry's models.
    assert sorted(n for n in dir(hubconf) if callable(getattr(hubconf, n)) and not n.startswith("_")) == \
        sorted(["eeea_c2", "ofa595", "chexnet", "visformer_small", "autoformerv2_base"])
    hub_model = torch.hub.load(str(REPO), "eeea_c2", source="local", pretrained=str(exported["folder"]))
    assert hub_model.dtforcxr8["thresholds"]["Atelectasis"] == pytest.approx(0.1)
    third = predict_images(hub_model, meta, paths)
    assert np.abs(first.probs - third.probs).max() <= 1e-6


def test_predict_reads_the_folder(exported, tmp_path, capsys):
    output = tmp_path / "predictions.csv"
    assert predict_command.main([str(REAL / "00000001_000.png"), "--checkpoint", str(exported["folder"]),
                                 "--output", str(output)], model="eeea_c2", index=1, folder=exported["root"]) == 0
    assert "Out-of-distribution score" in capsys.readouterr().out
    assert output.read_text().splitlines()[0].endswith("ood_score,unlike_training_images")


def test_a_folder_without_its_files_is_one_clear_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")
    assert run_main(predict_command.main, [str(REAL / "00000001_000.png"), "--checkpoint", str(tmp_path / "empty")],
                    model="eeea_c2", index=1, folder=tmp_path) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "model.safetensors is missing" in error
    with pytest.raises(Exception, match="not a DTforCXR8 model folder"):
        (tmp_path / "empty" / "model.safetensors").write_bytes(b"")
        read_model_folder(tmp_path / "empty")
