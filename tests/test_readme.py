"""The README is a short landing page whose paths exist and whose real-data commands run as printed.

The real-data block is expanded by bash itself (variables, the loop) with a ``python`` function that records each
command instead of running it; the recorded commands are then checked for one recipe and, in the slow test, run on
the synthetic set with the paths substituted and tiny epochs.
"""
import os
import re
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FAST_BOOT, LOADER, official_split_flags, tiny_training_flags

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
GUIDE = sorted((REPO / "docs" / "guide").glob("*.md"))
REAL_DATA_HEADING = "## Real data in four commands"
# What the README's real-data block calls the data and the cache; the slow test substitutes them.
README_DATA, README_CACHE = "/data/cxr8", "/data/cxr8-cache"
# Flags that make a run's weights what they are: every training command of the block must agree on them.
RECIPE = ("data_dir", "split", "label_file", "val_fraction", "image_cache", "epochs", "batch_size", "lr",
          "weight_decay", "warmup_epochs", "clip_grad", "pos_weight", "img_size", "crop_scale", "pretrained", "seed",
          "no_amp")
# ... and every distillation command on these.
DISTILLATION_RECIPE = ("teacher_mode", "alpha", "temperature", "student_init", "cache_dir")
# The ensemble line the README printed before: without the recipe of the --teacher all line above it.
OLD_ENSEMBLE = ("python train-model.py --image-cache /data/cxr8-cache --teacher ensemble --ensemble-weights auroc")


# --------------------------------------------------------------------------------------------------------------------
# Size and links
# --------------------------------------------------------------------------------------------------------------------
def code_share(text: str) -> tuple[int, float]:
    """(lines, share of the lines inside fenced code blocks, fences included)."""
    lines = text.rstrip("\n").split("\n")
    inside, code = False, 0
    for line in lines:
        fence = line.startswith("```")
        if fence or inside:
            code += 1
        if fence:
            inside = not inside
    return len(lines), code / len(lines)


def test_readme_is_a_landing_page():
    lines, share = code_share(README.read_text())
    assert 120 <= lines <= 170, f"README.md has {lines} lines; the landing page is about 150"
    assert share >= 0.40, f"only {share:.0%} of README.md is in code blocks (at least 40%)"


def heading_anchors(path: Path) -> set[str]:
    """GitHub's anchors of a Markdown file's headings (lower case, punctuation dropped, spaces to dashes)."""
    anchors, inside = set(), False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            inside = not inside
        elif not inside and line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


def markdown_links(path: Path):
    """(target file, anchor or None) of every relative link in a Markdown file."""
    for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text()):
        if re.match(r"[a-z]+:", target):
            continue
        file_part, _, anchor = target.partition("#")
        yield (path.parent / file_part).resolve() if file_part else path, anchor or None


@pytest.mark.parametrize("page", [README, REPO / "docs" / "README.md", *GUIDE], ids=lambda p: p.name)
def test_every_link_reaches_a_file_and_heading(page):
    for target, anchor in markdown_links(page):
        assert target.exists(), f"{page.name} links to {target}, which does not exist"
        if anchor and target.suffix == ".md":
            assert anchor in heading_anchors(target), f"{page.name} links to {target.name}#{anchor}: no such heading"


def repository_paths(text: str) -> set[str]:
    """Every path of the repository a text names: ``docs/...`` anywhere, and code spans or code lines that start at
    one of the repository's top-level folders (placeholders such as ``K-*/`` or ``$K/`` are not paths, nor the files
    commands write into a numbered folder: the repository holds only the folder and its scripts)."""
    tops = sorted(p.name for p in REPO.iterdir() if p.is_dir() and not p.name.startswith((".git", ".venv")))
    pattern = re.compile(r"(?<![\w./$-])((?:" + "|".join(map(re.escape, tops)) + r")/[\w./-]*)")
    paths = set(re.findall(r"(?<![\w/])(docs/[\w./-]+)", text))
    paths |= set(pattern.findall(text))
    paths = {p.rstrip(".,;:") for p in paths if "*" not in p}
    return {p for p in paths if not re.match(r"\d-", p) or p.endswith((".py", "/")) or "/" not in p}


def module_paths(text: str) -> set[str]:
    """Dotted names under ``common`` that a text names (``common.commands.train``, ``common.runs.checkpoint.x``)."""
    return set(re.findall(r"(?<![\w/])(common(?:\.\w+)+)", text))


def resolves(dotted: str) -> bool:
    """True when the longest module prefix of ``dotted`` exists as a file and any rest is defined in it."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        base = REPO.joinpath(*parts[:end])
        module = base.with_suffix(".py") if base.with_suffix(".py").is_file() else base / "__init__.py"
        if module.is_file():
            rest = parts[end:]
            if not rest:
                return True
            source = module.read_text()
            return len(rest) == 1 and re.search(rf"^(def|class) {rest[0]}\b|^{rest[0]}\s*[:=]", source, re.M)
    return False


@pytest.mark.parametrize("page", [README, *GUIDE], ids=lambda p: p.name)
def test_every_path_and_module_named_exists(page):
    text = page.read_text()
    for path in sorted(repository_paths(text)):
        assert (REPO / path).exists(), f"{page.name} names {path}, which is not in the repository"
    for dotted in sorted(module_paths(text)):
        assert resolves(dotted), f"{page.name} names {dotted}, which is not a module (or a name in one)"


def test_the_path_check_finds_what_it_checks():
    text = ("see `common/models/registry.py`, docs/data.md §9, `3-CheXNet/train-model.py` (it writes "
            "`3-CheXNet/model3.pth`) and `K-*/modelK.pth` in `demo-run/`; common.training")
    assert repository_paths(text) == {"common/models/registry.py", "docs/data.md", "3-CheXNet/train-model.py"}
    assert not resolves("common.training") and resolves("common.commands.train")
    assert resolves("common.runs.checkpoint.save_atomic") and not resolves("common.runs.checkpoint.no_such_name")


# --------------------------------------------------------------------------------------------------------------------
# The real-data commands
# --------------------------------------------------------------------------------------------------------------------
def real_data_block(text: str) -> str:
    after = text.split(REAL_DATA_HEADING, 1)[1]
    return after.split("```bash\n", 1)[1].split("\n```", 1)[0]


# Each call of `python` is recorded as its working directory, $CXR8_DATA_DIR and its arguments (unit separators).
RECORDER = 'python() { printf "%s\\037" "$PWD" "${CXR8_DATA_DIR-}" "$@" >> "$RECORD"; printf "\\n" >> "$RECORD"; }\n'


def recorded_commands(block: str, tmp_path: Path) -> list[dict]:
    """The commands bash runs for ``block`` (variables and loops expanded), without running any of them."""
    record = tmp_path / "commands.txt"
    record.write_text("")
    result = subprocess.run(["bash", "-e", "-c", RECORDER + block], cwd=REPO, capture_output=True, text=True,
                            env={"PATH": os.environ["PATH"], "RECORD": str(record)}, timeout=60)
    assert result.returncode == 0, result.stderr
    commands = []
    for line in record.read_text().splitlines():
        cwd, data_dir, *argv = line.split("\x1f")[:-1]
        commands.append({"cwd": Path(cwd), "data_dir": data_dir or None, "argv": argv})
    return commands


def parsed(command: dict):
    """(kind, folder, parsed flags) of a recorded command: image_cache, train, distill, test or compare."""
    from common.commands import compare, distill, evaluate, image_cache, train
    from common.commands._flags import parse_args
    argv = command["argv"]
    if argv[:2] == ["-m", "common.image_cache"]:
        return "image_cache", None, image_cache.get_args_parser().parse_args(argv[2:])
    script = (command["cwd"] / argv[0]).resolve()
    folder = script.parent.name
    assert script.is_file(), f"{argv[0]} (from {command['cwd']}) is not a script of the repository"
    kind = {"train-model.py": "train", "test-model.py": "test"}[script.name]
    if folder.startswith("6-"):
        kind = {"train": "distill", "test": "compare"}[kind]
    parser = {"train": train.get_args_parser, "distill": distill.get_args_parser, "test": evaluate.get_args_parser,
              "compare": compare.get_args_parser}[kind]()
    return kind, folder, parse_args(parser, argv[1:]) if kind in ("train", "distill") else parser.parse_args(argv[1:])


def recipe_differences(commands: list[dict]) -> list[str]:
    """How the training commands' recipes differ from the first one's (and the students' from the first student's)."""
    found, first, first_student = [], None, None
    for command in commands:
        kind, folder, args = parsed(command)
        if kind not in ("train", "distill"):
            continue
        args.data_dir = args.data_dir or command["data_dir"]
        recipe = {key: getattr(args, key) for key in RECIPE}
        first = first or (folder, recipe)
        found += [f"{folder} --teacher {getattr(args, 'teacher', '-')}: --{key.replace('_', '-')} {recipe[key]} "
                  f"vs {first[1][key]} in {first[0]}" for key in RECIPE if recipe[key] != first[1][key]]
        if kind == "distill":
            student = {key: getattr(args, key) for key in DISTILLATION_RECIPE}
            first_student = first_student or student
            found += [f"--teacher {args.teacher}: --{key.replace('_', '-')} {student[key]} vs {first_student[key]}"
                      for key in DISTILLATION_RECIPE if student[key] != first_student[key]]
    return found


def test_real_data_commands_are_complete_and_share_one_recipe(tmp_path):
    commands = recorded_commands(real_data_block(README.read_text()), tmp_path)
    kinds = [(kind, folder, getattr(args, "teacher", None)) for kind, folder, args in map(parsed, commands)]
    assert kinds[0][0] == "image_cache", "the cache is built before anything reads it"
    from common.models import model_folders
    for index, (folder, _) in model_folders().items():
        assert ("train", folder, None) in kinds and ("test", folder, None) in kinds, folder
        assert kinds.index(("train", folder, None)) < kinds.index(("test", folder, None))
    distilling = [teacher for kind, _, teacher in kinds if kind == "distill"]
    assert distilling == ["all", "ensemble"] and kinds[-1][0] == "compare"
    assert recipe_differences(commands) == []
    # Every command reads the cache the first one builds.
    cache = parsed(commands[0])[2].out
    assert all(parsed(c)[2].image_cache == cache for c in commands[1:])


def test_the_old_ensemble_command_is_found_to_train_another_recipe(tmp_path):
    block = real_data_block(README.read_text())
    ensemble = next(line for line in block.splitlines() if "--teacher ensemble" in line)
    old = block.replace(ensemble, "cd 6-Distilling-to-EEEA-Net-C2 && " + OLD_ENSEMBLE + " && cd ..")
    found = recipe_differences(recorded_commands(old, tmp_path))
    assert any("--pretrained None vs imagenet" in line for line in found), found
    assert any("--teacher-mode online vs cached" in line for line in found), found


def published_stand_ins(torch_home: Path, img_size: int) -> None:
    """Random-weight files where ``--pretrained imagenet`` looks for the published ones (the torch hub cache), so
    that the commands run as printed, offline."""
    from urllib.parse import urlparse

    import torch

    from common.models import create_model, model_info, model_folders
    checkpoints = torch_home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    for _, name in model_folders().values():
        torch.manual_seed(0)
        model = create_model(name, img_size=img_size)
        # A bare state dict, as the published files are: a dict with "model_name" would be read as this project's
        # checkpoint, which must record the patients it saw.
        torch.save(model.state_dict(), checkpoints / Path(urlparse(model_info(name).imagenet_url).path).name)


def exit_instead_of_ending_the_process(pytest_pid: int, end_process=os._exit):
    """``os._exit`` for an in-process run: SystemExit in pytest's own process, the real thing in a forked child
    (a DataLoader or cache worker must never unwind into pytest's stack)."""
    def exit_(code: int):
        if os.getpid() != pytest_pid:
            end_process(code)
        raise SystemExit(code)
    return exit_


def run_command(command: dict, root: Path, tiny: dict) -> int:
    """Run one recorded command in-process, from the copy of the repository at ``root``, with its tiny flags."""
    argv = command["argv"]
    if argv[:2] == ["-m", "common.image_cache"]:
        sys.argv = ["common.image_cache", *argv[2:], *tiny["image_cache"]]
        target, run = "common.image_cache", runpy.run_module
    else:
        script = root / (command["cwd"] / argv[0]).resolve().relative_to(REPO)
        kind = parsed(command)[0]
        sys.argv = [str(script), *argv[1:], *tiny[kind]]
        target, run = str(script), runpy.run_path
    try:
        run(target, run_name="__main__")
    except SystemExit as exit_:
        return exit_.code or 0
    return 0


@pytest.mark.slow
def test_real_data_commands_run_as_printed_on_the_synthetic_set(synthetic, tmp_path, monkeypatch, capsys):
    import torch

    from common.data.images import eval_resize
    img_size = 32
    cache = tmp_path / "cache"
    block = real_data_block(README.read_text())
    block = block.replace(README_CACHE, str(cache)).replace(README_DATA, str(synthetic / "images"))
    commands = recorded_commands(block, tmp_path)
    root = tmp_path / "repo"
    for folder in REPO.glob("[0-9]-*"):
        shutil.copytree(folder, root / folder.name, ignore=shutil.ignore_patterns("*.pth", "*.csv", "*.png",
                                                                                     "__pycache__"))
    published_stand_ins(tmp_path / "torch-home", img_size)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setenv("CXR8_DATA_DIR", str(synthetic / "images"))
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    # A refused script ends its process with os._exit (run_script); in-process that would end pytest itself.
    monkeypatch.setattr(os, "_exit", exit_instead_of_ending_the_process(os.getpid()))
    split = official_split_flags(synthetic)
    training = [*split, *tiny_training_flags(epochs=1, img_size=img_size)]
    tiny = {"image_cache": [*split, "--size", str(eval_resize(img_size)), "--workers", "1"], "train": training,
            "distill": training, "test": [*LOADER, *FAST_BOOT], "compare": [*LOADER, *FAST_BOOT]}
    threads = torch.get_num_threads()
    try:
        for command in commands:
            code = run_command(command, root, tiny)
            assert code == 0, f"refused: {' '.join(command['argv'])}: {capsys.readouterr().err.strip()}"
    finally:
        torch.set_num_threads(threads)
    # Every model of the story is there, and every one was trained with the same recipe from "ImageNet" weights.
    students = root / "6-Distilling-to-EEEA-Net-C2"
    written = [*sorted(root.glob("[1-5]-*/model[1-5].pth")), *sorted(students.glob("modeld*.pth"))]
    assert [p.name for p in written if "last" not in p.name] == [
        *(f"model{k}.pth" for k in range(1, 6)), "modeld-ensemble.pth", *(f"modeld{k}.pth" for k in range(1, 6))]
    recipes = []
    for path in written:
        if "last" in path.name:
            continue
        recipe = dict(torch.load(path, map_location="cpu", weights_only=True)["identity"]["recipe"])
        recipe.pop("distillation", None)
        recipes.append(recipe)
    assert all(r == recipes[0] for r in recipes) and recipes[0]["initial_weights"] == {"source": "imagenet"}
    assert (students / "comparison.md").is_file() and (root / "3-CheXNet" / "model3-test.json").is_file()
