"""Folders 1 and 2 on the real NIH PNGs (grayscale and RGBA) in Kaggle's images_0XX/images layout, with the
official-style lists and the packaged v2020 Data_Entry labels."""
import json
import shutil
from pathlib import Path

import pytest

from common.commands import evaluate as evaluation
from common.commands import train as training
from common.commands._cli import run_main
from common.data.labels import read_name_list, resource_path

REAL = Path(__file__).parent / "data" / "images"

# Trains two models on real 1024-px PNGs.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def real_layout(tmp_path_factory):
    root = tmp_path_factory.mktemp("kaggle")
    names = sorted(p.name for p in REAL.glob("*.png"))
    for number, name in enumerate(names):
        folder = root / f"images_00{1 + number % 2}" / "images"   # two of Kaggle's twelve folders
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(REAL / name, folder / name)
    test_names = set(read_name_list(resource_path("official_split/test_list.txt.gz")))
    lists = root / "lists"
    lists.mkdir()
    (lists / "train_val_list.txt").write_text("\n".join(n for n in names if n not in test_names))
    (lists / "test_list.txt").write_text("\n".join(n for n in names if n in test_names))
    return root


@pytest.mark.parametrize("folder, index", [("1-EEEA-Net-C2", 1), ("2-OFA-595", 2)])
def test_train_and_test_on_real_pngs(real_layout, tmp_path, folder, index):
    out = tmp_path / folder
    flags = ["--data-dir", str(real_layout), "--split", str(real_layout / "lists"), "--label-file", "v2020",
             "--val-fraction", "0.34", "--seed", "3", "--epochs", "1", "--batch-size", "4", "--img-size", "64",
             "--workers", "0", "--device", "cpu", "--output-dir", str(out)]
    model = "eeea_c2" if index == 1 else "ofa595"
    assert run_main(training.main, flags, model=model, index=index) == 0
    assert run_main(evaluation.main, ["--checkpoint", str(out / f"model{index}.pth"), "--workers", "0", "--tencrop"],
                    model=model, index=index) == 0
    report = json.loads((out / f"model{index}-test.json").read_text())
    assert report["n_images"] == 4 and report["label_file"].endswith("(v2020)")
    assert report["crop"] == "ten-crop"
    assert report["auroc"]["Hernia"] is not None and report["auroc"]["Edema"] is None  # n/a, not a crash
