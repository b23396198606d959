"""The image cache through the commands: training and testing with --image-cache, the same evaluation predictions
as the PNG path, and the run identity that records the cache."""
import json

import numpy as np
import pytest
import torch

from common.commands import evaluate as evaluation
from common.commands import train as training
from common.data.cache_build import build_image_cache
from common.data.split_data import DataFlags, SplitData, split_data_for
from common.errors import UserError
from common.evaluation.logits import predict_logits
from common.runs.checkpoint import load_checkpoint, load_model_from_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")
IMG_SIZE = 32  # eval_resize(32) = 37: a 37-px cache gives the PNG path's eval view


@pytest.fixture(scope="module")
def cached(synthetic, tmp_path_factory):
    labels = synthetic / "labels"
    names = [line.split()[0] for part in ("train", "val", "test")
             for line in (labels / f"{part}_list.txt").read_text().splitlines() if line.strip()]
    return build_image_cache(synthetic / "images", names, tmp_path_factory.mktemp("cache"), size=37, workers=1)


def flags(synthetic, cache, out):
    return ["--data-dir", str(synthetic / "images"), "--split", str(synthetic / "labels"), "--epochs", "1",
            "--batch-size", "16", "--img-size", str(IMG_SIZE), "--workers", "0", "--threads", "1", "--device", "cpu",
            "--image-cache", str(cache.directory), "--output-dir", str(out)]


@pytest.mark.slow
def test_train_and_test_with_the_image_cache(synthetic, cached, tmp_path, capsys):
    assert training.main(flags(synthetic, cached, tmp_path), model="eeea_c2", index=1) == 0
    checkpoint = load_checkpoint(tmp_path / "model1.pth")
    assert checkpoint["config"]["image_cache"] == str(cached.directory)
    recorded = checkpoint["identity"]["data"]["image_cache"]
    assert recorded == {"directory": str(cached.directory), "size": 37, "fingerprint": cached.fingerprint}
    output = capsys.readouterr().out
    assert "reading images from ImageCache" in output and "threads: 1 intra-op thread(s)" in output

    assert evaluation.main(["--checkpoint", str(tmp_path / "model1.pth"), "--workers", "0", "--device", "cpu",
                            "--image-cache", str(cached.directory)], model="eeea_c2", index=1) == 0
    report = json.loads((tmp_path / "model1-test.json").read_text())
    assert report["identity"]["data"]["image_cache"]["fingerprint"] == cached.fingerprint


def test_cached_and_png_evaluation_give_the_same_predictions(synthetic, cached, tmp_path):
    assert training.main(flags(synthetic, cached, tmp_path)[:-4] + ["--output-dir", str(tmp_path)],
                         model="eeea_c2", index=1) == 0  # trained on the PNGs
    checkpoint, model = load_model_from_checkpoint(tmp_path / "model1.pth")
    results = {}
    for source, cache_dir in (("png", None), ("cache", cached.directory)):
        data = split_data_for(checkpoint["config"], DataFlags(workers=0, threads=1, image_cache=cache_dir),
                              parts=("test",))
        for view in ("eval", "tencrop"):
            loader, augment = data.batches("test", view, IMG_SIZE, checkpoint["mean"], checkpoint["std"], 8)
            assert (augment is None) == (source == "png" or view == "tencrop")
            results[source, view] = predict_logits(model, loader, torch.device("cpu"), None, augment=augment)
    for view in ("eval", "tencrop"):
        np.testing.assert_array_equal(results["png", view][1], results["cache", view][1])
        # The eval view is bit-identical; only the float normalisation's rounding differs (x * a + b).
        np.testing.assert_allclose(results["png", view][0], results["cache", view][0], atol=1e-4)


def test_cached_train_batches_are_uint8_and_augmented_on_the_device(synthetic, cached):
    data = SplitData(synthetic / "images", str(synthetic / "labels"), None, 0.1, 0, parts=("train", "val"), workers=0,
                     image_cache=cached.directory)
    loader, augment = data.batches("train", "train", IMG_SIZE, (0.5,) * 3, (0.25,) * 3, 8, seed=3, epoch=2)
    batch = next(iter(loader))
    assert batch["image"].dtype == torch.uint8 and batch["image"].shape == (8, 37, 37)
    images = augment(batch["image"])
    assert images.shape == (8, 3, IMG_SIZE, IMG_SIZE) and images.dtype == torch.float32
    # The same (seed, epoch) gives the same order and crops: a resumed epoch sees the same batches.
    loader_again, augment_again = data.batches("train", "train", IMG_SIZE, (0.5,) * 3, (0.25,) * 3, 8, seed=3,
                                               epoch=2)
    again = next(iter(loader_again))
    assert torch.equal(again["index"], batch["index"])
    assert torch.equal(augment_again(again["image"]), images)


def test_a_cache_of_other_images_is_refused(synthetic, cached, tmp_path):
    other = build_image_cache(synthetic / "images", cached.names[:5], tmp_path / "small", size=37, workers=1)
    with pytest.raises(UserError, match="not in the image cache"):
        SplitData(synthetic / "images", str(synthetic / "labels"), None, 0.1, 0, parts=("train",), workers=0,
                  image_cache=other.directory)
