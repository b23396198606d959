"""Every ``--help`` states the defaults the parser really has.

The parsers are taken from the scripts themselves (every numbered folder's scripts and the ``python -m`` commands):
``parse_args`` is stopped at its first call and hands over the parser, so no hand-kept list can miss one.
"""
import argparse
import os
import re
import runpy
import sys
from pathlib import Path

import pytest

from common.commands._cli import ArgumentParser
from common.data.labels import LABEL_VERSIONS, NAMED_SPLITS

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(str(p.relative_to(REPO)) for p in REPO.glob("[0-9]-*/*.py"))
MODULES = ["common.demo", "common.image_cache", "common.synthetic"]
# "default 10", "(default: official; ...", "; default: random weights", "default uniform)"; and "X (default)".
STATED = re.compile(r"(?<![\w-])default:? (?P<value>.+?)(?=;|\)|, | \(|$)")
VALUE_FIRST = re.compile(r"(?P<value>[\w.$/,-]+) \(default[;)]")


class Captured(Exception):
    def __init__(self, parser):
        super().__init__(parser.prog)
        self.parser = parser


@pytest.fixture(scope="module")
def parsers():
    """{"<script or module>": its ArgumentParser} for every command a user runs."""
    found = {}
    original = ArgumentParser.parse_args

    def capture(self, *args, **kwargs):
        raise Captured(self)

    ArgumentParser.parse_args = capture
    argv = sys.argv
    try:
        for target in [*SCRIPTS, *MODULES]:
            sys.argv = [target, "--help"]
            try:
                if target in MODULES:
                    runpy.run_module(target, run_name="__main__")
                else:
                    runpy.run_path(str(REPO / target), run_name="__main__")
            except Captured as captured:
                found[target] = captured.parser
    finally:
        ArgumentParser.parse_args = original
        sys.argv = argv
    return found


def stated_default(help_text: str) -> str | None:
    """What a help text says the flag's default is, or None."""
    match = VALUE_FIRST.search(help_text)
    if match:
        return match.group("value")
    match = STATED.search(help_text)
    return match.group("value").strip() if match else None


def is_literal(action, text: str) -> bool:
    """True when ``text`` is a value the flag takes as it is (a choice, a number of a numeric flag, a split or label
    name): a help text may say such a value is the default only when the parser's default is that value."""
    if action.choices:
        return text in action.choices
    if action.type not in (None, str):
        try:
            action.type(text)
        except (ValueError, TypeError, argparse.ArgumentTypeError):
            return False
        return True
    return (action.dest == "split" and text in NAMED_SPLITS) or (action.dest == "label_file" and text in LABEL_VERSIONS)


def default_problems(parser) -> list[str]:
    problems = []
    for action in parser._actions:
        if (action.help in (None, argparse.SUPPRESS) or action.required or not action.option_strings
                or isinstance(action, (argparse._StoreConstAction, argparse._StoreTrueAction, argparse._HelpAction))):
            continue
        flag, default, stated = action.option_strings[-1], action.default, stated_default(action.help or "")
        if default is None:
            if stated is not None and is_literal(action, stated):
                problems.append(f"{flag}: help says default {stated!r}, the parser's default is None")
            continue
        if isinstance(default, (list, tuple)) or (isinstance(default, str) and os.path.isabs(default)):
            continue  # an empty repeatable flag, or a path computed from the script's folder
        if stated is None:
            problems.append(f"{flag}: help does not state its default {default!r}")
            continue
        first = stated.split()[0]
        try:
            value = (action.type or str)(first)
        except (ValueError, TypeError, argparse.ArgumentTypeError):
            value = first
        if value != default:
            problems.append(f"{flag}: help says default {first!r}, the parser's default is {default!r}")
    return problems


def test_every_script_is_found(parsers):
    assert set(parsers) == {*SCRIPTS, *MODULES}
    assert len(SCRIPTS) == 24  # train, test, predict and para-test in each of the six folders


@pytest.mark.parametrize("kind", ["train-model.py", "test-model.py", "predict.py", "para-test", "common."])
def test_stated_defaults_are_the_parsers(parsers, kind):
    problems = {target: default_problems(parser) for target, parser in parsers.items() if kind in target}
    assert problems and not any(problems.values()), {k: v for k, v in problems.items() if v}


def test_the_check_catches_the_defaults_test_model_used_to_advertise():
    parser = ArgumentParser()
    parser.add_argument("--split", default=None, help="official or a folder (default: official; original: ...)")
    parser.add_argument("--val-fraction", type=float, default=None, help="share held out (default 0.1)")
    parser.add_argument("--teacher-mode", choices=("online", "cached"), default="online", help="online or cached")
    parser.add_argument("--lr", type=float, default=3e-4, help="peak learning rate (default 1e-3 with warm-up)")
    parser.add_argument("--label-file", default=None, help="v2020 or 2017 (default: v2020 for official; inline)")
    assert default_problems(parser) == [
        "--split: help says default 'official', the parser's default is None",
        "--val-fraction: help says default '0.1', the parser's default is None",
        "--teacher-mode: help does not state its default 'online'",
        "--lr: help says default '1e-3', the parser's default is 0.0003"]


def test_folder_6_names_the_defaults_that_decide_a_recipe(parsers):
    helps = {a.dest: a.help for a in parsers["6-Distilling-to-EEEA-Net-C2/train-model.py"]._actions}
    assert "default online" in helps["teacher_mode"] and "default uniform" in helps["ensemble_weights"]
    assert "model K.pth" not in helps["teacher"] and "modelK.pth" in helps["teacher"]


def test_descriptions_use_display_names(parsers):
    from common.models import model_folders, model_info
    for index, (folder, name) in model_folders().items():
        for script in ("train-model.py", "test-model.py"):
            description = parsers[f"{folder}/{script}"].description
            assert model_info(name).display_name in description and f" {name} " not in f" {description} ", \
                (folder, script, description)
