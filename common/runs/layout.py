"""Where the repository's numbered folders keep their models: folder K holds ``modelK.pth``."""
from __future__ import annotations

from pathlib import Path

from common.errors import UserError
from common.models import model_for_folder


def folder_model_path(root: Path, index: int) -> Path:
    """``<root>/<K-folder>/modelK.pth``: where numbered folder ``index`` writes its trained model."""
    return Path(root) / model_for_folder(index).folder_name / f"model{index}.pth"


def teachers_root(teachers_root_flag: str | None, output_dir: Path) -> Path:
    """``--teachers-root``, or by default the parent of folder 6's output folder (the repository)."""
    return Path(teachers_root_flag) if teachers_root_flag else Path(output_dir).resolve().parent


def output_dir_for(output_dir_flag: str | None, folder: Path | None) -> Path:
    """``--output-dir``, or by default the folder of the script that was run."""
    if output_dir_flag:
        return Path(output_dir_flag)
    if folder is None:
        raise UserError("no output folder: pass --output-dir")
    return Path(folder)
