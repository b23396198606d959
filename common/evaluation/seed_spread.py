"""Training-seed spread: the same comparison repeated over runs trained with different seeds.

The paired bootstrap of the comparison covers test-set sampling for one trained model each. Retraining with another
``--seed`` moves a mean AUROC by about as much as distillation does, so the comparison can also take several runs
(``--seed-runs DIR ...``), each a folder laid out like the repository (``1-EEEA-Net-C2/model1.pth``,
``6-Distilling-to-EEEA-Net-C2/modeldK.pth``, ...) and trained with its own ``--seed``, and report for every model the
mean and standard deviation of its test mean AUROC, and of each student's difference from the baseline, across them.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from common.constants import DISTILL_FOLDER
from common.errors import UserError
from common.models import model_folders
from common.runs.layout import folder_model_path


def seed_run_files(root: Path) -> dict[str, Path]:
    """The models present in one seed run folder: ``{"model1": path, "modeld1": path, ...}``."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"--seed-runs: {root} is not a folder")
    files = {}
    for index in model_folders():
        for key, path in ((f"model{index}", folder_model_path(root, index)),
                          (f"modeld{index}", root / DISTILL_FOLDER / f"modeld{index}.pth")):
            if path.is_file():
                files[key] = path
    ensemble = root / DISTILL_FOLDER / "modeld-ensemble.pth"
    if ensemble.is_file():
        files["modeld-ensemble"] = ensemble
    if not files:
        raise UserError(f"--seed-runs: no model files under {root} (expected e.g. {folder_model_path(root, 1)})")
    return files


def seed_spread(per_run: list[dict[str, float]], baseline_key: str) -> list[dict]:
    """Mean and sample standard deviation across runs of each model's mean AUROC and of student − baseline.

    ``per_run``: one ``{model key: test mean AUROC}`` per seed run. A model missing from a run is left out of that
    run's numbers; ``runs`` says how many runs each row has.
    """
    keys = sorted({key for run in per_run for key in run})
    rows = []
    for key in keys:
        values = [run[key] for run in per_run if key in run and run[key] is not None]
        row = {"model": key, "runs": len(values), "mean_auroc_mean": _mean(values), "mean_auroc_sd": _sd(values)}
        if key.startswith("modeld"):
            diffs = [run[key] - run[baseline_key] for run in per_run
                     if run.get(key) is not None and run.get(baseline_key) is not None]
            row.update({"diff_runs": len(diffs), "diff_mean": _mean(diffs), "diff_sd": _sd(diffs)})
        rows.append(row)
    return rows


def _mean(values) -> float | None:
    return float(np.mean(values)) if values else None


def _sd(values) -> float | None:
    return float(np.std(values, ddof=1)) if len(values) > 1 else None
