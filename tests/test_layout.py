"""The house in floors (every import points down, the commands sit on top, the light paths stay light), and a model
is one registry entry.

The rules read the package's imports with ``ast`` (every import, including the ones inside functions), so they
hold for any module added later without a list to keep up to date.
"""
import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

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

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "common"

#: The floors, bottom to top. A module may import its own floor and the floors below; ``explain`` and ``engine``
#: share a floor and do not import each other. The top-level modules (``constants``, ``errors``, ``atomic``) are
#: the ground floor.
FLOORS = (("",), ("runtime",), ("data",), ("inference",), ("models",), ("runs",), ("evaluation",),
          ("explain", "engine"), ("commands",))
#: Three-line modules kept so ``python -m common.demo`` (and the other two) stay short; they forward to a command.
FORWARDERS = {"common.demo", "common.image_cache", "common.synthetic"}
#: Paths that must import without torch: the ONNX predictor path and the torch-free image reading.
TORCH_FREE = ("common.inference.predictor", "common.inference.onnx", "common.data.images")


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules(root: Path = PACKAGE) -> dict[str, Path]:
    """Every module of the package by dotted name."""
    return {module_name(path, root): path for path in sorted(root.rglob("*.py"))}


def imports_of(path: Path, name: str, known: set[str], top_level_only: bool = False) -> set[str]:
    """The ``common`` modules (dotted names) a source file imports, relative or absolute, anywhere in the file.

    ``from common.x import y`` counts as ``common.x.y`` when that is a module, else ``common.x``.
    """
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if not module.startswith("common"):
                continue
            for alias in node.names:
                child = f"{module}.{alias.name}"
                found.add(child if child in known else module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("common")}
    return {module for module in found if module != "common"}


def folder_of(module: str, modules: dict[str, Path]) -> str:
    """The floor folder of a module: its first name below ``common``, or "" for the ground-floor modules."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and modules[module].parent.name != "common" else ""


def floor_of(module: str, modules: dict[str, Path]) -> int:
    folder = folder_of(module, modules)
    for number, floor in enumerate(FLOORS):
        if folder in floor:
            return number
    raise AssertionError(f"{module} is in no floor; add its folder to FLOORS")


def upward_imports(modules: dict[str, Path]) -> list[str]:
    wrong = []
    for name, path in modules.items():
        if name in FORWARDERS:
            continue
        for imported in imports_of(path, name, set(modules)):
            if imported in FORWARDERS:
                wrong.append(f"{name} imports the forwarding module {imported}")
            elif imported not in modules:
                wrong.append(f"{name} imports {imported}, which does not exist")
            elif floor_of(imported, modules) > floor_of(name, modules):
                wrong.append(f"{name} (floor {folder_of(name, modules) or 'ground'}) imports {imported} from a floor "
                             "above")
            elif (floor_of(imported, modules) == floor_of(name, modules)
                  and folder_of(imported, modules) != folder_of(name, modules)):
                wrong.append(f"{name} imports {imported}: {folder_of(name, modules)} and "
                             f"{folder_of(imported, modules)} share a floor")
    return wrong


def import_cycles(modules: dict[str, Path]) -> list[list[str]]:
    """Cycles among the modules' top-level imports (the ones that run at import time)."""
    graph = {name: imports_of(path, name, set(modules), top_level_only=True) & set(modules)
             for name, path in modules.items()}
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [])
    return cycles


def commands(modules: dict[str, Path]) -> set[str]:
    """The command modules, found by place: public modules of ``common.commands``."""
    return {name for name in modules if name.startswith("common.commands.")
            and not name.rpartition(".")[2].startswith("_")}


def command_imports(modules: dict[str, Path]) -> list[str]:
    wrong = []
    found = commands(modules)
    for name, path in modules.items():
        imported = imports_of(path, name, set(modules))
        if not name.startswith("common.commands") and name not in FORWARDERS:
            wrong += [f"{name} imports {m}" for m in imported if m.startswith("common.commands")]
        elif name in found and name != "common.commands.demo":  # the demo drives the other commands
            wrong += [f"command {name} imports command {m}" for m in imported & found]
    return wrong


def args_parameters(modules: dict[str, Path]) -> list[str]:
    found = []
    for name, path in modules.items():
        if name.startswith("common.commands"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                every = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
                if any(a.arg == "args" for a in every):
                    found.append(f"{name}.{node.name}")
    return found


def test_every_import_points_down_the_floors():
    assert upward_imports(package_modules()) == []


def test_no_module_imports_itself_back_through_a_cycle():
    assert import_cycles(package_modules()) == []


def test_only_commands_import_commands_and_commands_are_siblings():
    modules = package_modules()
    assert {"common.commands.train", "common.commands.evaluate", "common.commands.distill", "common.commands.compare",
            "common.commands.predict", "common.commands.para_test", "common.commands.demo"} <= commands(modules)
    assert command_imports(modules) == []


def test_settings_travel_as_dataclasses_not_as_args():
    assert args_parameters(package_modules()) == []


def test_the_rules_fail_on_a_broken_house(tmp_path):
    """Each rule sees its own kind of break in a small copy of the floors."""
    root = tmp_path / "common"
    files = {
        "__init__.py": "",
        "errors.py": "",
        "runtime/__init__.py": "",
        "runtime/device.py": "from common.data.images import load\n",            # up a floor
        "data/__init__.py": "",
        "data/images.py": "from common.data.labels import x\n",                  # a cycle with labels
        "data/labels.py": "from .images import load\n",
        "explain/__init__.py": "",
        "explain/gradcam.py": "def draw(args):\n    from common.engine.loop import fit\n",  # same floor; args
        "engine/__init__.py": "",
        "engine/loop.py": "",
        "commands/__init__.py": "",
        "commands/train.py": "from common.commands.evaluate import main\n",     # a command imports a command
        "commands/evaluate.py": "",
        "evaluation/__init__.py": "",
        "evaluation/scoring.py": "from common.commands import _cli\n",          # below imports commands
        "commands/_cli.py": "",
    }
    for relative, text in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text)
    modules = package_modules(root)
    up = upward_imports(modules)
    assert any("common.runtime.device" in line and "floor above" in line for line in up)
    assert any("common.explain.gradcam imports common.engine.loop" in line for line in up)
    assert import_cycles(modules) == [["common.data.images", "common.data.labels", "common.data.images"]]
    wrong = command_imports(modules)
    assert "command common.commands.train imports command common.commands.evaluate" in wrong
    assert "common.evaluation.scoring imports common.commands._cli" in wrong
    assert args_parameters(modules) == ["common.explain.gradcam.draw"]


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)


def test_the_inference_path_and_every_folder_face_import_no_torch():
    packages = [name for name, path in package_modules().items() if path.name == "__init__.py"]
    code = ("import importlib, sys\n"
            f"for name in {[*TORCH_FREE, *packages]!r}:\n"
            "    importlib.import_module(name)\n"
            "    assert 'torch' not in sys.modules, f'importing {name} imported torch'\n"
            "print('ok')\n")
    done = _run(code)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def scripts() -> list[Path]:
    return sorted(REPO.glob("[1-6]-*/*.py"))


def test_every_script_prints_its_help_without_importing_torch():
    """One process runs every script's ``--help`` in turn and names the first that pulled torch in."""
    code = ("import runpy, sys, io, contextlib\n"
            f"for path in {[str(p) for p in scripts()]!r}:\n"
            "    sys.argv = [path, '--help']\n"
            "    out = io.StringIO()\n"
            "    with contextlib.redirect_stdout(out):\n"
            "        try:\n"
            "            runpy.run_path(path, run_name='__main__')\n"
            "        except SystemExit as done:\n"
            "            assert done.code in (0, None), (path, done.code)\n"
            "    assert 'usage:' in out.getvalue(), path\n"
            "    assert 'torch' not in sys.modules, f'{path} --help imported torch'\n"
            "print('ok', len(sys.argv))\n")
    done = _run(code)
    assert done.returncode == 0 and done.stdout.startswith("ok"), done.stderr[-2000:]
    assert len(scripts()) == 24


@pytest.mark.parametrize("module", ["common.demo", "common.image_cache", "common.synthetic"])
def test_the_short_module_commands_still_answer(module):
    done = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, cwd=REPO,
                          timeout=300)
    assert done.returncode == 0 and "usage:" in done.stdout


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
    # run_script imports the command inside run_main, so that a Ctrl-C while it loads is one line (faults §2).
    repo = PACKAGE.parent
    for index, (folder, model_name) in model_folders().items():
        train = (repo / folder / "train-model.py").read_text()
        assert 'run_script("common.commands.train"' in train and f'model="{model_name}", index={index}' in train
        test = (repo / folder / "test-model.py").read_text()
        assert 'run_script("common.commands.evaluate"' in test and f'model="{model_name}", index={index}' in test
        predict = (repo / folder / "predict.py").read_text()
        assert 'run_script("common.commands.predict"' in predict and f'model="{model_name}", index={index}' in predict
    six = (repo / "6-Distilling-to-EEEA-Net-C2" / "predict.py").read_text()
    assert 'run_script("common.commands.predict"' in six and 'model="eeea_c2", index=6' in six
    assert 'run_script("common.commands.distill"' in (repo / "6-Distilling-to-EEEA-Net-C2" / "train-model.py").read_text()
    assert 'run_script("common.commands.compare"' in (repo / "6-Distilling-to-EEEA-Net-C2" / "test-model.py").read_text()


def test_a_project_checkpoint_saved_for_the_sixth_model_round_trips(sixth_model, tmp_path):
    from common.runs.checkpoint import load_model_from_checkpoint
    model = create_model("tinynet", num_classes=14)
    save_atomic({"model": model.state_dict(), "model_name": "tinynet", "num_classes": 14, "img_size": 32},
                tmp_path / "model7.pth")
    checkpoint, loaded = load_model_from_checkpoint(tmp_path / "model7.pth", "tinynet")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
