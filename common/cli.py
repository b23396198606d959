"""Dispatch from the numbered folders' scripts to the package: ``folder_main(__file__, argv)``.

Each script is a few lines; its folder name says which model (folder K writes modelK.pth) and its file name says
which command (train-model.py, test-model.py, para-test-*.py).
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

from .constants import DISTILL_FOLDER, MODEL_FOLDERS, STUDENT_MODEL
from .errors import UserError, run_main


def _command_for(folder: Path, script: str):
    if folder.name == DISTILL_FOLDER:
        from . import compare, distill, profile
        commands = {"train-model.py": partial(distill.main, folder=folder),
                    "test-model.py": partial(compare.main, folder=folder)}
        return commands.get(script) or (partial(profile.para_test_main, model_name=STUDENT_MODEL)
                                        if script.startswith("para-test") else None)
    index = next((k for k, (name, _) in MODEL_FOLDERS.items() if name == folder.name), None)
    if index is None:
        raise UserError(f"{folder} is not one of the project's numbered folders")
    model_name = MODEL_FOLDERS[index][1]
    from . import evaluation, profile, training
    if script == "train-model.py":
        return partial(training.main, model_name=model_name, prefix=f"model{index}", default_output=folder)
    if script == "test-model.py":
        return partial(evaluation.main, model_name=model_name, prefix=f"model{index}", default_dir=folder)
    if script.startswith("para-test"):
        return partial(profile.para_test_main, model_name=model_name)
    return None


def folder_main(script_file: str, argv=None) -> int:
    """Run the command of ``script_file`` (a numbered folder's script) with ``argv``; returns the exit code."""
    script = Path(script_file).resolve()

    def dispatch(arguments):
        command = _command_for(script.parent, script.name)
        if command is None:
            raise UserError(f"{script.name} is not a known script name")
        return command(arguments)

    return run_main(dispatch, argv)
