"""The out-of-distribution score (issue 17 §2): the low-rank Ledoit-Wolf Mahalanobis distance, its parts, the same
score in PyTorch, numpy and the ONNX graph, and the flag on images that are not frontal chest X-rays."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import LOADER, copy_runs, make_image_dependent
from PIL import Image
from sklearn.covariance import LedoitWolf

from common.commands import evaluate as evaluation
from common.commands import predict as predict_command
from common.commands._cli import run_main
from common.constants import CLASS_NAMES, IMAGENET_MEAN, IMAGENET_STD
from common.data.images import load_png
from common.data.split_data import DataFlags
from common.data.splits import build_split
from common.data.transforms import build_transform
from common.evaluation.ood import (
    OodSettings,
    compute_ood_statistics,
    fit_ood_statistics,
    fit_part,
    load_ood_statistics,
    ood_path,
)
from common.inference.ood import (
    INPUT_PART,
    OOD_FLAG,
    OOD_LAYER,
    block_matrix,
    input_blocks,
    ood_score_module,
    ood_scores,
    part_distances,
    precision_matrix,
)
from common.inference.onnx import OnnxPredictor, export_onnx
from common.inference.predictor import predict_images
from common.models import create_model

REAL = Path(__file__).parent / "data" / "images"
SIZE = 64


def not_chest_xrays(folder: Path) -> dict[str, Path]:
    """The four images of issue 17 §2 that are not frontal chest X-rays: a natural-looking picture (sky, sun, a
    house, grass), an inverted and a rotated real PNG, and a blank image."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    height, width = 240, 320
    rows = np.linspace(0, 1, height)[:, None, None]
    picture = np.broadcast_to(np.array([110, 160, 250]) + rows * np.array([80, 60, -40]), (height, width, 3)).copy()
    horizon = int(height * 0.62)
    picture[horizon:] = np.array([70, 140, 55]) + rng.normal(0, 20, (height - horizon, width, 1))
    yy, xx = np.mgrid[:height, :width]
    picture[(yy - 55) ** 2 + (xx - 255) ** 2 < 26 ** 2] = [255, 225, 80]
    picture[100:horizon, 50:140] = [160, 80, 50]
    picture[75:100, 40:150] = [95, 40, 30]
    real = load_png(REAL / "00000001_000.png")
    paths = {"natural picture": folder / "landscape.png", "inverted X-ray": folder / "inverted.png",
             "rotated X-ray": folder / "rotated.png", "blank image": folder / "blank.png"}
    Image.fromarray(np.clip(picture, 0, 255).astype(np.uint8), "RGB").save(paths["natural picture"])
    Image.fromarray(255 - np.asarray(real)).save(paths["inverted X-ray"])
    real.rotate(90, expand=True).save(paths["rotated X-ray"])
    Image.fromarray(np.full((300, 300), 128, np.uint8)).save(paths["blank image"])
    return paths


# ---------------------------------------------------------------------------------------------------------------------
# The distance
# ---------------------------------------------------------------------------------------------------------------------
def test_low_rank_distance_is_the_ledoit_wolf_mahalanobis_distance():
    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(40, 40))
    few = rng.normal(size=(30, 40)) @ mixing + 3      # 30 images, 40 features: rank 29 <= K, exact
    new = rng.normal(size=(7, 40)) @ mixing + 3
    part = fit_part(few, components=32)
    estimator = LedoitWolf().fit(few)
    assert part["exact"]
    assert part_distances(new, part) == pytest.approx(np.sqrt(estimator.mahalanobis(new)), rel=1e-6)
    assert precision_matrix(part) == pytest.approx(estimator.precision_, rel=1e-5, abs=1e-9)
    # More images than components: the K leading eigenpairs kept, the others at their mean.
    many = rng.normal(size=(300, 40)) @ mixing
    part = fit_part(many, components=8)
    eigenvalues, eigenvectors = np.linalg.eigh(LedoitWolf().fit(many).covariance_)
    eigenvalues, eigenvectors = eigenvalues[::-1], eigenvectors[:, ::-1]
    eigenvalues[8:] = eigenvalues[8:].mean()
    covariance = eigenvectors @ np.diag(eigenvalues) @ eigenvectors.T
    z = many[:5] - many.mean(axis=0)
    expected = np.sqrt(np.einsum("ij,jk,ik->i", z, np.linalg.inv(covariance), z))
    assert not part["exact"] and part_distances(many[:5], part) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("size", [64, 192, 236])
def test_input_blocks_are_adaptive_average_pooling(size):
    images = torch.randn(3, 3, size, size)
    pooled = torch.nn.functional.adaptive_avg_pool2d(images[:, :1], 8).flatten(1).numpy()
    assert input_blocks(images.numpy()) == pytest.approx(pooled, abs=1e-5)
    assert block_matrix(size).sum(axis=1) == pytest.approx(np.ones(8))


def _features(rng, count, shift=0.0):
    return {OOD_LAYER: rng.normal(size=(count, 24)) * np.linspace(0.2, 2, 24) + 1 + shift,
            INPUT_PART: rng.normal(size=(count, 64)) + shift}


def test_score_is_the_larger_scaled_part_and_torch_agrees():
    rng = np.random.default_rng(1)
    stats = fit_ood_statistics(_features(rng, 200), _features(rng, 50), OodSettings(components=16))
    assert set(stats["parts"]) == {OOD_LAYER, INPUT_PART} and stats["omitted"] == {}
    probe = _features(rng, 6, shift=0.5)
    expected = np.maximum(part_distances(probe[OOD_LAYER], stats["parts"][OOD_LAYER])
                          / stats["parts"][OOD_LAYER]["scale"],
                          part_distances(probe[INPUT_PART], stats["parts"][INPUT_PART])
                          / stats["parts"][INPUT_PART]["scale"])
    assert ood_scores(probe, stats) == pytest.approx(expected)
    # The torch module takes the images themselves: inputs whose 8 x 8 block means are the probe's.
    images = np.repeat(np.repeat(probe[INPUT_PART].reshape(6, 8, 8), 8, axis=1), 8, axis=2)
    images = torch.tensor(np.repeat(images[:, None], 3, axis=1), dtype=torch.float32)
    module = ood_score_module(stats, img_size=64)
    got = module(images, torch.tensor(probe[OOD_LAYER], dtype=torch.float32)).numpy()
    assert got == pytest.approx(expected, rel=1e-4)
    # The scales make 1 each part's 99th percentile on validation, so the threshold (the 99th percentile of the
    # larger of the two) is at least 1.
    assert stats["percentile"] == 99.0 and stats["threshold"] >= 1.0


def test_features_that_do_not_vary_are_left_out_with_the_reason():
    rng = np.random.default_rng(3)
    flat = {OOD_LAYER: 0.03 + 1e-9 * rng.normal(size=(40, 24)), INPUT_PART: rng.normal(size=(40, 64))}
    stats = fit_ood_statistics(flat, {k: v[:10] for k, v in flat.items()})
    assert list(stats["parts"]) == [INPUT_PART]
    assert "hardly vary" in stats["omitted"][OOD_LAYER]


# ---------------------------------------------------------------------------------------------------------------------
# A model with image-dependent features: PyTorch, ONNX and predict.py agree, and the four images are flagged
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fitted(synthetic, tmp_path_factory, one_thread):
    """EEEA-Net-C2 whose BatchNorm statistics come from synthetic training images (its features depend on the
    image), with OOD statistics fitted on the synthetic split."""
    split = build_split(str(synthetic), str(synthetic / "Data_Entry_2017_v2020.csv"))
    transform = build_transform(SIZE, IMAGENET_MEAN, IMAGENET_STD, train=False)
    torch.manual_seed(0)
    model = create_model("eeea_c2", img_size=SIZE)
    batch = torch.stack([transform(load_png(synthetic / "images" / n)) for n in split.parts["train"].names[:32]])
    assert make_image_dependent(model, batch) > 1e-3
    folder = tmp_path_factory.mktemp("ood") / "1-EEEA-Net-C2"
    folder.mkdir()
    path = folder / "model1.pth"
    checkpoint = {"model": model.state_dict(), "model_name": "eeea_c2", "num_classes": 14, "img_size": SIZE,
                  "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "class_names": list(CLASS_NAMES),
                  "config": {"split": str(synthetic), "label_file": str(synthetic / "Data_Entry_2017_v2020.csv"),
                             "data_dir": str(synthetic / "images"), "val_fraction": 0.1, "seed": 0}}
    torch.save(checkpoint, path)
    stats = compute_ood_statistics(path, model, checkpoint, DataFlags(workers=0, threads=1), "cpu", 32)
    return {"path": path, "model": model, "checkpoint": checkpoint, "stats": stats, "split": split,
            "others": not_chest_xrays(folder.parent / "not-cxr")}


def test_statistics_file_is_small_json_tied_to_the_checkpoint(fitted):
    side = ood_path(fitted["path"])
    assert side.name == "model1-ood.json" and side.stat().st_size < 2_000_000
    stats, note = load_ood_statistics(fitted["path"], fitted["checkpoint"])
    assert stats["checkpoint_sha256"] == fitted["stats"]["checkpoint_sha256"] and "model1-ood.json" in note
    assert set(stats["parts"]) == {OOD_LAYER, INPUT_PART} and stats["n_fit"] > stats["n_threshold"] > 0
    # Another version of the checkpoint: the statistics are not used, and the note says why.
    changed = fitted["path"].with_name("changed.pth")
    changed.write_bytes(fitted["path"].read_bytes() + b"\0")
    ood_path(changed).write_text(side.read_text())
    assert load_ood_statistics(changed, {})[0] is None and "another version" in load_ood_statistics(changed, {})[1]


def test_onnx_graph_scores_like_pytorch_and_flags_the_four_images(fitted, tmp_path, synthetic, capsys):
    others = list(fitted["others"].values())
    in_distribution = [synthetic / "images" / n for n in fitted["split"].parts["test"].names]
    meta = {"img_size": SIZE, "mean": IMAGENET_MEAN, "std": IMAGENET_STD}
    torch_result = predict_images(fitted["model"], meta, others + in_distribution, ood=fitted["stats"])
    onnx_file = export_onnx(fitted["model"], SIZE, tmp_path / "model1.onnx", model_name="eeea_c2",
                            ood=fitted["stats"])
    predictor = OnnxPredictor(onnx_file)
    assert predictor.has_ood and predictor.ood_threshold == pytest.approx(fitted["stats"]["threshold"])
    onnx_result = predict_images(predictor, {}, others + in_distribution)
    assert onnx_result.ood_scores == pytest.approx(torch_result.ood_scores, rel=1e-4, abs=1e-5)
    assert np.abs(onnx_result.probs - torch_result.probs).max() < 1e-4  # docs: rtol 1e-3 is the usual ONNX tolerance
    threshold = fitted["stats"]["threshold"]
    assert np.all(torch_result.ood_scores[:4] > threshold), dict(zip(fitted["others"], torch_result.ood_scores))
    # The synthetic test images are in distribution: most are below the threshold (the 99th percentile of 9
    # validation images is estimated roughly; a few may pass it).
    assert np.mean(torch_result.ood_scores[4:] > threshold) <= 0.25
    # predict.py: PyTorch and ONNX paths print the score and the flag and write them in the CSV's last columns.
    common = dict(model="eeea_c2", index=1, folder=fitted["path"].parent)
    for extra, name in (([], "torch.csv"), (["--onnx", str(onnx_file)], "onnx.csv")):
        output = tmp_path / name
        assert predict_command.main([*map(str, others), *extra, "--output", str(output)], **common) == 0
        printed = capsys.readouterr().out
        assert printed.count(OOD_FLAG) == 4, printed
        with open(output, newline="") as stream:
            rows = list(csv.reader(stream))
        assert rows[0][:15] == ["Image Index", *(f"prob_{c}" for c in CLASS_NAMES)]
        assert rows[0][15:] == ["ood_score", "unlike_training_images"] and {r[16] for r in rows[1:]} == {"1"}


def test_predict_without_statistics_says_so(fitted, tmp_path, capsys):
    bare = tmp_path / "bare" / "model1.pth"
    bare.parent.mkdir()
    bare.write_bytes(fitted["path"].read_bytes())
    output = tmp_path / "bare.csv"
    assert predict_command.main([str(REAL / "00000001_000.png"), "--checkpoint", str(bare), "--output", str(output)],
                                model="eeea_c2", index=1, folder=bare.parent) == 0
    assert "no out-of-distribution score" in capsys.readouterr().out
    assert output.read_text().splitlines()[0].split(",")[-1] == "prob_Hernia"


# ---------------------------------------------------------------------------------------------------------------------
# The whole path on a model trained on the synthetic set: train, test-model.py fits, predict.py flags
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_trained_model_flags_what_is_not_a_chest_xray(synthetic, trained_model1, tmp_path_factory, tmp_path, capsys):
    # A copy of the session's model1 (2 epochs at 64 px on the official-style split): test-model.py writes beside it.
    out = copy_runs(tmp_path_factory, trained_model1) / "1-EEEA-Net-C2"
    checkpoint = out / "model1.pth"
    assert run_main(evaluation.main, ["--checkpoint", str(checkpoint), *LOADER, "--n-boot", "10", "--subgroup-boot",
                                      "5"], model="eeea_c2", index=1) == 0
    printed = capsys.readouterr().out
    assert "Out-of-distribution statistics:" in printed
    report = json.loads((out / "model1-test.json").read_text())
    assert report["ood"]["threshold"] > 0 and (out / "model1-ood.json").is_file()
    card = (out / "model1-card.md").read_text()
    assert "## Out-of-distribution score" in card and f"{report['ood']['threshold']:.2f}" in card
    others = not_chest_xrays(tmp_path / "not-cxr")
    in_distribution = [synthetic / "images" / n for n in
                       build_split(str(synthetic), str(synthetic / "Data_Entry_2017_v2020.csv")).parts["test"].names]
    output = tmp_path / "predictions.csv"
    images = [*others.values(), *in_distribution]
    assert run_main(predict_command.main, [*map(str, images), "--checkpoint", str(checkpoint), "--output",
                                           str(output)], model="eeea_c2", index=1, folder=out) == 0
    with open(output, newline="") as stream:
        rows = {row["Image Index"]: row for row in csv.DictReader(stream)}
    assert all(rows[path.name]["unlike_training_images"] == "1" for path in others.values()), rows
    flagged = [rows[path.name]["unlike_training_images"] == "1" for path in in_distribution]
    assert sum(flagged) <= len(flagged) // 4
    # What the score says on the real NIH PNGs (for the record: a model trained on synthetic images).
    real = tmp_path / "real.csv"
    assert run_main(predict_command.main, [str(REAL), "--checkpoint", str(checkpoint), "--output", str(real)],
                    model="eeea_c2", index=1, folder=out) == 0
    print(capsys.readouterr().out)


def test_a_sample_of_a_part_loads_those_images(synthetic):
    from common.data.split_data import SplitData
    data = SplitData(synthetic / "images", str(synthetic), str(synthetic / "Data_Entry_2017_v2020.csv"), 0.1, 0,
                     parts=("train",), workers=0)
    loader, augment = data.batches("train", "eval", 32, IMAGENET_MEAN, IMAGENET_STD, 8, rows=[3, 0])
    batch = next(iter(loader))
    transform = build_transform(32, IMAGENET_MEAN, IMAGENET_STD, train=False)
    names = data.split.parts["train"].names
    assert augment is None and torch.equal(batch["image"], torch.stack([transform(load_png(synthetic / "images" / names[i]))
                                                                        for i in (3, 0)]))
