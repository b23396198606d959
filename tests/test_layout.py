"""The package's shape: the four commands are siblings, and a model is one registry entry."""
import ast
from pathlib import Path

import pytest
import torch
from torch import nn

import common
from common.commands.compare import model_entries
from common.commands.para_test import para_test_main
from common.models import (
    ModelInfo,
    create_model,
    load_pretrained,
    model_folders,
    model_info,
    register_model,
    unregister_model,
)
from common.models.converters import rename_keys
from common.runs.checkpoint import save_atomic

COMMANDS = ("train", "evaluate", "distill", "compare", "predict")
PACKAGE = Path(common.__file__).parent


def imported_modules(path: Path) -> set[str]:
    """Names of the ``common`` modules a source file imports (relative or absolute)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # from .x import y / from . import x
                found |= {base.split(".")[0]} if base else {alias.name for alias in node.names}
            elif base.startswith("common"):
                parts = base.split(".")
                found |= {parts[-1]} if len(parts) > 1 else {alias.name for alias in node.names}
                if base == "common.commands":
                    found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name.split(".")[-1] for alias in node.names
                      if alias.name.startswith("common.") and alias.name.count(".") >= 1}
    return found


def test_the_four_commands_import_and_none_imports_another():
    for name in COMMANDS:
        __import__(f"common.commands.{name}")
        others = imported_modules(PACKAGE / "commands" / f"{name}.py") & (set(COMMANDS) - {name})
        assert not others, f"common/{name}.py imports {others}"


def test_the_import_reader_sees_relative_and_absolute_imports(tmp_path):
    source = tmp_path / "probe.py"
    source.write_text("from .distill import x\nfrom . import compare\nimport common.commands.train\n"
                      "from common.commands.evaluate import y\nfrom common import engine\n")
    assert imported_modules(source) == {"distill", "compare", "train", "evaluate", "engine"}


class TinyNet(nn.Module):
    """A six-parameter-tensor network: enough to exercise the registry's whole path."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, num_classes)
        self.num_features = 4

    def forward(self, x):
        return self.fc(self.stem(x).mean((2, 3)))

    def reset_classifier(self, num_classes: int):
        self.fc = nn.Linear(4, num_classes)


@pytest.fixture
def sixth_model():
    """A model registered for one test: one entry, folder 7, a converter that renames 'body.' to 'stem.'."""
    def converter(state_dict, model, notes):
        return rename_keys(state_dict, lambda k: k.replace("body.", "stem."), notes, "body.* -> stem.*")

    info = ModelInfo(name="tinynet", display_name="TinyNet", folder_index=7, converter=converter,
                     display_class_name="TinyNet", native_size=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
                     cam_layer=lambda model: model.stem,
                     imagenet_url="https://example.invalid/tinynet.pth", original_count_classes=14,
                     num_features=4, head_prefix="fc.", min_img_size=1, img_size_multiple=1,
                     fixed_input_size=False, timm_name=None)
    register_model(info, lambda num_classes, img_size: TinyNet(num_classes))
    yield info
    unregister_model("tinynet")


def test_a_sixth_model_is_one_registry_entry(sixth_model, tmp_path, capsys):
    model = create_model("tinynet", num_classes=14)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 14)
    assert model_folders()[7] == ("7-TinyNet", "tinynet") and model_info("tinynet").folder_name == "7-TinyNet"

    # load_pretrained uses the entry's converter: a published-style file with other key names and a 1000-class head.
    published = TinyNet(1000)
    state = {k.replace("stem.", "body."): v for k, v in published.state_dict().items()}
    path = tmp_path / "tiny-imagenet.pth"
    torch.save(state, path)
    notes = load_pretrained(model, "tinynet", str(path))
    assert torch.equal(model.stem.weight, published.stem.weight)
    assert any("body.* -> stem.*" in note for note in notes) and any("1000-class head" in n for n in notes)

    para_test_main(["--repeats", "1", "--device", "cpu", "--quiet-thop"], model_name="tinynet")
    printed = capsys.readouterr().out
    expected = sum(p.numel() for p in TinyNet(14).parameters())
    assert f"The total number of parameters: {expected}" in printed
    assert "The parameters of Model TinyNet" in printed

    from common.explain.gradcam import gradcam_maps
    maps = gradcam_maps(model, "tinynet", torch.randn(2, 3, 32, 32), [0, 1])  # the entry's cam_layer
    assert maps.shape == (2, 32, 32)

    entries = {entry["key"]: entry for entry in model_entries(tmp_path, tmp_path / "6")}
    assert entries["model7"]["label"] == "TinyNet" and entries["model7"]["role"] == "teacher"
    assert entries["modeld7"]["label"] == "EEEA-Net-C2 <- TinyNet"
    assert entries["model7"]["path"] == tmp_path / "7-TinyNet" / "model7.pth"


def test_registering_a_taken_name_or_folder_is_refused(sixth_model):
    with pytest.raises(ValueError, match="registered already"):
        register_model(sixth_model, lambda n, s: TinyNet(n))
    clash = ModelInfo(**{**sixth_model.__dict__, "name": "other"})
    with pytest.raises(ValueError, match="folder 7 belongs to 'tinynet'"):
        register_model(clash, lambda n, s: TinyNet(n))


def test_scripts_name_the_command_they_run():
    repo = PACKAGE.parent
    for index, (folder, model_name) in model_folders().items():
        train = (repo / folder / "train-model.py").read_text()
        assert "from common.commands.train import main" in train and f'model="{model_name}", index={index}' in train
        test = (repo / folder / "test-model.py").read_text()
        assert "from common.commands.evaluate import main" in test and f'model="{model_name}", index={index}' in test
        predict = (repo / folder / "predict.py").read_text()
        assert "from common.commands.predict import main" in predict and f'model="{model_name}", index={index}' in predict
    six = (repo / "6-Distilling-to-EEEA-Net-C2" / "predict.py").read_text()
    assert "from common.commands.predict import main" in six and 'model="eeea_c2", index=6' in six
    assert "from common.commands.distill import main" in (repo / "6-Distilling-to-EEEA-Net-C2" / "train-model.py").read_text()
    assert "from common.commands.compare import main" in (repo / "6-Distilling-to-EEEA-Net-C2" / "test-model.py").read_text()


def test_a_project_checkpoint_saved_for_the_sixth_model_round_trips(sixth_model, tmp_path):
    from common.runs.checkpoint import load_model_from_checkpoint
    model = create_model("tinynet", num_classes=14)
    save_atomic({"model": model.state_dict(), "model_name": "tinynet", "num_classes": 14, "img_size": 32},
                tmp_path / "model7.pth")
    checkpoint, loaded = load_model_from_checkpoint(tmp_path / "model7.pth", "tinynet")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
