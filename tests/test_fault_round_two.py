"""Faults, round two (issue 16; docs/guide/faults.md): the pieces each fault is handled by, one test each.

The faults as a user meets them (real signals, full tmpfs disks, torchrun) are the rows of tools/fault_table.py,
which tests/test_fault_table.py runs; these are the fast checks of the parts.
"""
import ast
import errno
import json
import os
import re
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import full_disk_at

import common.atomic as atomic
import common.data.cache_build as cache_build
from common.atomic import StagedWrites
from common.commands import _cli
from common.commands._cli import run_main
from common.data.labels import read_data_entry, read_labelled_list, read_name_list
from common.engine.distill import read_teacher_cache
from common.engine.loop import DIVERGENCE_FACTOR, DivergenceGuard, EpochProgress
from common.errors import Interrupted, UserError
from common.runs.checkpoint import load_checkpoint
from common.runtime.signals import StopRequest, raise_on_stop_signals

REPO = Path(__file__).resolve().parents[1]
PNG = sorted((REPO / "tests" / "data" / "images").glob("*.png"))[0]


# --- §1 the divergence rule ------------------------------------------------------------------------------------------

def test_a_finite_blow_up_is_divergence_and_an_ordinary_rise_is_not():
    guard = DivergenceGuard(lr=100.0)
    guard.first_step(0.6931, epoch=1)
    guard.check(0.9, epoch=1, step=10)  # noise, a bad batch: far below 100x
    guard.check(DIVERGENCE_FACTOR * 0.6931 * 0.99, epoch=1, step=20)
    with pytest.raises(UserError, match=r"training diverged at epoch 2, step 30: .* 5e\+09, more than 100x the "
                                        r"first step's 0.6931 .*lower --lr \(now 100\)"):
        guard.check(5e9, epoch=2, step=30)
    with pytest.raises(UserError, match="the training loss became nan at epoch 1, step 7"):
        guard.check(float("nan"), epoch=1, step=7)


def test_the_rule_has_a_floor_and_survives_a_resume():
    guard = DivergenceGuard()
    guard.first_step(0.01, epoch=1)
    guard.check(5.0, epoch=1, step=10)  # 500x a tiny start, but a sane loss level: the floor of 10
    with pytest.raises(UserError, match="diverged"):
        guard.check(11.0, epoch=1, step=20)
    resumed = DivergenceGuard(reference=0.01)
    resumed.first_step(3.0, epoch=4)  # the resumed run keeps the run's own first step
    assert resumed.reference == 0.01


def test_the_help_of_lr_states_the_rule():
    from common.commands.train import get_args_parser
    text = " ".join(get_args_parser().format_help().split())
    assert "100x its first step's loss stops as diverged" in text and "docs/guide/faults.md" in text


def test_a_stopped_epochs_progress_is_a_weights_only_checkpoint_value(tmp_path):
    from common.runtime.device import random_state
    progress = EpochProgress(steps=3, loss_sum=torch.tensor(2.5), seen=48, skipped=0,
                             term_sums={"kd": torch.tensor(1.0)}, seconds=4.0, random=random_state(),
                             augment_random=torch.Generator().get_state())
    torch.save({"partial_epoch": progress.saved()}, tmp_path / "x.pth")
    loaded = torch.load(tmp_path / "x.pth", weights_only=True)["partial_epoch"]
    again = EpochProgress.restored(loaded, "cpu")
    assert again.steps == 3 and again.seen == 48 and torch.equal(again.loss_sum, torch.tensor(2.5))
    assert torch.equal(again.random["torch"], progress.random["torch"])


# --- §2 stops --------------------------------------------------------------------------------------------------------

def _deliver(number):
    os.kill(os.getpid(), number)
    time.sleep(0.05)  # the handler runs at the next bytecode boundary of the main thread


def test_the_first_signal_is_recorded_and_a_second_one_stops_at_once():
    before = signal.getsignal(signal.SIGTERM)
    with StopRequest() as stop:
        _deliver(signal.SIGTERM)
        assert stop.requested and stop.signal_number == signal.SIGTERM
        with pytest.raises(Interrupted) as raised:
            _deliver(signal.SIGINT)
        assert raised.value.signal_number == signal.SIGINT and raised.value.exit_code == 130
    assert signal.getsignal(signal.SIGTERM) is before


def test_inside_raising_a_signal_interrupts_the_wait():
    with StopRequest() as stop, pytest.raises(Interrupted) as raised:
        with stop.raising():
            _deliver(signal.SIGTERM)
    assert raised.value.exit_code == 143 and raised.value.signal_name == "SIGTERM"


def test_a_signal_started_ignored_stays_ignored():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with raise_on_stop_signals():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            _deliver(signal.SIGINT)  # nothing happens
    finally:
        signal.signal(signal.SIGINT, previous)


def test_run_main_prints_one_stopped_line_and_exits_with_the_signals_code(capsys):
    def preempted(argv):
        raise Interrupted(signal.SIGTERM, "SIGTERM at epoch 2, step 3 of 9: saved")

    assert run_main(preempted) == 143
    assert capsys.readouterr().err == "stopped: SIGTERM at epoch 2, step 3 of 9: saved\n"

    def signalled(argv):
        _deliver(signal.SIGTERM)
        raise AssertionError("not reached: the handler raises")

    assert run_main(signalled) == 143
    err = capsys.readouterr().err
    assert err.startswith("stopped: SIGTERM arrived before the command finished") and err.count("\n") == 1

    def interrupted(argv):
        raise KeyboardInterrupt

    assert run_main(interrupted) == 130
    assert "SIGINT arrived before the command finished" in capsys.readouterr().err


def test_the_command_is_imported_inside_run_main(capsys, monkeypatch):
    """A script passes its command by name, so a Ctrl-C while the command's modules load is one line too."""
    import importlib

    def interrupted_import(name, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib, "import_module", interrupted_import)
    assert run_main(_cli._resolved("common.commands.train"), []) == 130
    assert capsys.readouterr().err.startswith("stopped: SIGINT")


@pytest.mark.slow
def test_leaving_a_loader_loop_early_ends_its_workers_at_once():
    from common.runtime.progress import progress

    class Slow(torch.utils.data.Dataset):
        def __len__(self):
            return 64

        def __getitem__(self, index):
            time.sleep(2.0)
            return torch.zeros(1)

    loader = torch.utils.data.DataLoader(Slow(), batch_size=2, num_workers=2)
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="fails at the first batch"):
        for _ in progress(loader, "slow", disable=True):
            raise RuntimeError("fails at the first batch")
    # torch alone waits up to 5 s for each worker busy with its next batch (4 s of sleeping each).
    assert time.monotonic() - started < 4.0 + 4.0


# --- §3 disks that fill ----------------------------------------------------------------------------------------------

def test_staged_writes_replace_all_files_or_none(tmp_path, monkeypatch):
    first, second, gone = tmp_path / "a.pth", tmp_path / "b.csv", tmp_path / "c.png"
    for path in (first, second, gone):
        path.write_text("old")
    full_disk_at(monkeypatch, 2, across_files=True)
    with pytest.raises(UserError, match=f"cannot write {second}: no space left on device"):
        with StagedWrites() as staged:
            staged.write(first, lambda stream: stream.write(b"new"))
            staged.write(second, lambda stream: stream.write(b"new"))
            staged.remove(gone)
            staged.commit()
    assert [p.read_text() for p in (first, second, gone)] == ["old"] * 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pth", "b.csv", "c.png"]  # no temporary left
    monkeypatch.undo()
    with StagedWrites() as staged:
        staged.write(first, lambda stream: stream.write(b"new"))
        staged.remove(gone)
        assert first.read_text() == "old"  # nothing replaced before the commit
        staged.commit()
    assert first.read_text() == "new" and not gone.exists()


def test_the_cache_array_is_reserved_before_decoding(tmp_path, monkeypatch):
    partial = tmp_path / "images-256.npy.partial"
    np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=(100, 256, 256))

    def full(handle, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(cache_build.os, "posix_fallocate", full)
    with pytest.raises(UserError, match=rf"cannot reserve 6\.6 MB for the image cache {partial}: no space left on "
                                        r"device \(Errno 28\), .* free on its file system; nothing was decoded"):
        cache_build.reserve_space(partial, remove_on_failure=True)
    assert not partial.exists()


def test_a_reserved_array_takes_its_blocks(tmp_path):
    partial = tmp_path / "images-64.npy.partial"
    np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=(64, 64, 64))
    cache_build.reserve_space(partial, remove_on_failure=True)
    assert os.stat(partial).st_blocks * 512 >= partial.stat().st_size


# --- §4 damaged and odd files ----------------------------------------------------------------------------------------

def test_a_damaged_teacher_cache_is_recognised(tmp_path):
    path = tmp_path / "teacher1-eeea_c2-0123.pt"
    torch.save({"key": {}, "filled": 3, "logits": torch.zeros(3, 14)}, path)
    state, damage = read_teacher_cache(path)
    assert damage is None and state["filled"] == 3
    path.write_bytes(path.read_bytes()[:200])
    state, damage = read_teacher_cache(path)
    assert state is None and damage
    torch.save({"unrelated": 1}, path)
    assert read_teacher_cache(path)[1] == "it lacks the key, filled and logits entries of a teacher cache"


def test_an_image_listed_twice_is_refused_with_both_lines(tmp_path):
    names = tmp_path / "test_list.txt"
    names.write_text("00000001_000.png\n00000002_000.png\n\n00000001_000.png\n")
    with pytest.raises(UserError, match=rf"{names}, line 4: image 00000001_000.png is listed again \(first on line "
                                        r"1\)"):
        read_name_list(names)
    labelled = tmp_path / "train_list.txt"
    row = " ".join(["0"] * 14)
    labelled.write_text(f"00000003_000.png {row}\n00000004_000.png {row}\n00000003_000.png {row}\n")
    with pytest.raises(UserError, match=r"line 3: image 00000003_000.png is listed again \(first on line 1\)"):
        read_labelled_list(labelled)


def test_a_data_entry_row_twice_is_refused_with_both_lines(tmp_path):
    entry = tmp_path / "Data_Entry.csv"
    entry.write_text("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position\n"
                     "00000001_000.png,No Finding,0,1,50,M,PA\n00000002_000.png,Hernia,0,2,40,F,AP\n"
                     "00000001_000.png,Hernia,0,1,50,M,PA\n")
    with pytest.raises(UserError, match=r"line 4: image 00000001_000.png is listed again \(first on line 2\)"):
        read_data_entry(str(entry))


@pytest.mark.parametrize("content, looks", [(None, "a PNG image"), (b'{"model": 1}', "a JSON text file"),
                                            (b"hello", None)])
def test_a_file_that_is_not_a_checkpoint_is_named_so(tmp_path, content, looks):
    path = PNG if content is None else tmp_path / "teacher.pth"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UserError) as raised:
        load_checkpoint(path)
    assert str(raised.value).startswith(f"{path} is not a checkpoint")
    assert (f"it looks like {looks}" in str(raised.value)) if looks else "looks like" not in str(raised.value)


# --- §5 folders and repeated runs ------------------------------------------------------------------------------------

def test_test_results_are_replaced_only_by_the_same_options(tmp_path):
    from common.commands.evaluate import check_results_replaceable, get_args_parser, result_options
    stem = tmp_path / "model1"
    options = result_options(get_args_parser().parse_args([]))
    check_results_replaceable(stem, options, overwrite=False)  # nothing there yet
    Path(f"{stem}-test.json").write_text(json.dumps({"mean_auroc": 0.7, "options": options}))
    check_results_replaceable(stem, options, overwrite=False)  # same options: a rerun replaces them
    tencrop = result_options(get_args_parser().parse_args(["--tencrop", "--n-boot", "200"]))
    with pytest.raises(UserError, match=r"model1-test.json holds results made with other options \(--tencrop off "
                                        r"then, on now; --n-boot 1000 then, 200 now\); pass --overwrite"):
        check_results_replaceable(stem, tencrop, overwrite=False)
    check_results_replaceable(stem, tencrop, overwrite=True)
    Path(f"{stem}-test.json").write_text(json.dumps({"mean_auroc": 0.7}))
    with pytest.raises(UserError, match="did not record its options"):
        check_results_replaceable(stem, options, overwrite=False)


def _parsers() -> dict:
    """The parser of every command that reads data with flags, by the name of its module."""
    from common.commands import compare, distill, evaluate, image_cache, train
    return {"train": train.get_args_parser(), "distill": distill.get_args_parser(),
            "evaluate": evaluate.get_args_parser(), "compare": compare.get_args_parser(),
            "image_cache": image_cache.get_args_parser()}


def _options(parser) -> set:
    return {option for action in parser._actions for option in action.option_strings}


def test_every_command_reading_the_image_cache_takes_cache_size():
    for name, parser in _parsers().items():
        options = _options(parser)
        if "--image-cache" in options:
            assert "--cache-size" in options, name
    assert {"train", "distill", "evaluate", "compare"} <= {n for n, p in _parsers().items()
                                                          if "--cache-size" in _options(p)}


# The modules a command's messages come from: its own module, and the shared floors below that every command of its
# kind runs through. A flag named in one of their UserError messages must be a flag of that command.
MESSAGE_SOURCES = {
    "train": ["commands/train.py", "commands/_setup.py", "commands/_flags.py", "engine/loop.py", "data/*.py",
              "runs/*.py", "runtime/*.py", "models/pretrained.py"],
    "distill": ["commands/distill.py", "commands/_setup.py", "commands/_flags.py", "engine/*.py", "data/*.py",
                "runs/*.py", "runtime/*.py", "models/pretrained.py"],
    "evaluate": ["commands/evaluate.py", "evaluation/*.py", "explain/*.py", "data/*.py", "runs/checkpoint.py",
                 "runtime/*.py"],
    "compare": ["commands/compare.py", "evaluation/*.py", "explain/*.py", "data/*.py", "runs/checkpoint.py",
                "runtime/*.py"],
    "image_cache": ["commands/image_cache.py", "data/cache_build.py", "data/image_cache.py", "data/splits.py",
                    "data/labels.py"],
}
# Modules of a command's floors that it never reaches: the cache build belongs to the image_cache command, the seed
# spread to the comparison.
NOT_REACHED = {"train": {"data/cache_build.py"}, "distill": {"data/cache_build.py"},
               "evaluate": {"data/cache_build.py", "evaluation/seed_spread.py"}, "compare": {"data/cache_build.py"}}
# A message of a module that a command reaches but never prints: the build opens the one size it built.
NEVER_PRINTED = {("image_cache", "data/image_cache.py", "--cache-size")}
# Flags of other programs a message may name: torchrun's, and a script's own when the message names the script.
FOREIGN = {"--nproc_per_node", "--nproc-per-node"}
SCRIPT_FLAG = re.compile(r"(train-model\.py|test-model\.py|python -m common\.image_cache)\s+(--[a-z][a-z0-9_-]*)")
SCRIPT_COMMAND = {"train-model.py": "train", "test-model.py": "evaluate", "python -m common.image_cache": "image_cache"}


def _message_texts(path: Path) -> list[str]:
    """The constant text of every UserError message raised in a module (f-string pieces joined)."""
    texts = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "UserError" and node.args:
            texts.append(" ".join(n.value for n in ast.walk(node.args[0])
                                  if isinstance(n, ast.Constant) and isinstance(n.value, str)))
    return texts


def _message_flags(path: Path) -> set:
    """The ``--flags`` a module's UserError messages name as flags of the command printing them."""
    flags = set()
    for text in _message_texts(path):
        text = SCRIPT_FLAG.sub("", text)  # checked against that script's parser below
        flags |= set(re.findall(r"(?<![\w-])--[a-z][a-z0-9_-]*[a-z0-9]", text))
    return flags - FOREIGN


def test_every_flag_a_message_names_is_a_flag_of_the_command_that_prints_it():
    parsers, package = _parsers(), REPO / "common"
    found = []
    for command, patterns in MESSAGE_SOURCES.items():
        accepted = _options(parsers[command])
        for pattern in patterns:
            for path in sorted(package.glob(pattern)):
                module = str(path.relative_to(package))
                if module in NOT_REACHED.get(command, ()):
                    continue
                found += [f"{command}: {module} names {flag}" for flag in sorted(_message_flags(path) - accepted)
                          if (command, module, flag) not in NEVER_PRINTED]
    for path in sorted(package.rglob("*.py")):  # "train-model.py --pretrained": a flag of the script named
        for text in _message_texts(path):
            for script, flag in SCRIPT_FLAG.findall(text):
                if flag not in _options(parsers[SCRIPT_COMMAND[script]]):
                    found.append(f"{path.relative_to(package)} names {script} {flag}")
    assert not found, "\n".join(found)
    # The message of issue 16 itself: "choose one with --cache-size" is printed by the commands reading the cache.
    assert "--cache-size" in _message_flags(package / "data" / "image_cache.py")
