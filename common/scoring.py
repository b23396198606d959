"""Scoring a checkpoint on a part of its split: metrics, the printed report and the result files.

Shared by ``test-model.py`` of folders 1-5 and the folder 6 comparison.
"""
from __future__ import annotations

import csv
import gzip
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .checkpoint import load_model_from_checkpoint, write_text_atomic
from .constants import CLASS_NAMES
from .engine import amp_dtype_for, predict_logits, resolve_device, sigmoid
from .metrics import evaluation_report, format_auroc_lines, format_metrics_table
from .plots import plot_roc_curves
from .split_data import SplitData, eval_transform_for, split_data_for


@dataclass
class TestResult:
    """Everything one evaluation produced."""

    checkpoint: Path
    model_name: str
    report: dict
    probs: np.ndarray
    targets: np.ndarray
    names: list
    patient_ids: np.ndarray
    model: object = None        # the evaluated model (for parameter and MAC counts)


def evaluate_checkpoint(checkpoint_path: Path, expected_model: str | None, data: SplitData | None, args,
                        part: str = "test") -> TestResult:
    """Evaluate a checkpoint on ``part`` of its split (or of ``data`` when given); returns the metrics and scores."""
    checkpoint, model = load_model_from_checkpoint(checkpoint_path, expected_model)
    config = checkpoint["config"]
    if data is None:
        data = split_data_for(config, args, parts=(part,))
    device = resolve_device(args.device)
    amp_dtype = amp_dtype_for(device, not args.no_amp)
    model.to(device)
    transform = eval_transform_for({"mean": checkpoint["mean"], "std": checkpoint["std"]}, checkpoint["img_size"],
                                   tencrop=args.tencrop)
    batch_size = max(1, args.batch_size // 10) if args.tencrop else args.batch_size
    loader = data.loader(part, transform, batch_size, shuffle=False)
    logits, targets = predict_logits(model, loader, device, amp_dtype, desc=f"{checkpoint_path.name} {part}")
    probs = sigmoid(logits)
    thresholds = checkpoint.get("val_thresholds")
    report = evaluation_report(targets, probs, CLASS_NAMES,
                               val_thresholds=None if thresholds is None else np.asarray(thresholds))
    report.update({
        "checkpoint": str(checkpoint_path), "model_name": checkpoint["model_name"], "split": data.split.name,
        "split_description": data.split.describe(), "part": part, "label_file": data.split.labels,
        "crop": "ten-crop" if args.tencrop else "centre crop", "img_size": checkpoint["img_size"],
        "trained_epoch": checkpoint.get("epoch"), "val_mean_auroc": checkpoint.get("val_mean_auroc"),
        "git_commit": checkpoint.get("git_commit"),
    })
    part_data = data.split.parts[part]
    return TestResult(checkpoint_path, checkpoint["model_name"], report, probs, targets, list(part_data.names),
                      part_data.patient_ids, model)


def write_results(result: TestResult) -> dict:
    """Write ``<stem>-test.json``, ``<stem>-test.csv``, per-image predictions and ROC curves beside the checkpoint."""
    stem = result.checkpoint.with_suffix("")
    paths = {"json": Path(f"{stem}-test.json"), "csv": Path(f"{stem}-test.csv"),
             "predictions": Path(f"{stem}-test-predictions.csv.gz"), "roc": Path(f"{stem}-test-roc.png")}
    write_text_atomic(json.dumps(result.report, indent=2), paths["json"])
    write_text_atomic(_per_class_csv(result.report), paths["csv"])
    with gzip.open(paths["predictions"], "wt", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["Image Index", "Patient ID", *[f"p_{c}" for c in CLASS_NAMES], *CLASS_NAMES])
        for name, patient, prob, target in zip(result.names, result.patient_ids, result.probs, result.targets):
            writer.writerow([name, patient, *[f"{p:.6f}" for p in prob], *target.tolist()])
    plot_roc_curves(result.targets, result.probs, CLASS_NAMES, [result.report["auroc"][c] for c in CLASS_NAMES],
                    paths["roc"], f"{result.model_name}: {result.report['split']} {result.report['part']}, "
                                  f"labels {result.report['label_file']}")
    return paths


def _cell(value) -> str:
    return "n/a" if value is None else f"{value:.6f}"


def _per_class_csv(report: dict) -> str:
    rows = ["class,positives,auroc,f1@0.5,accuracy@0.5,sensitivity@0.5,specificity@0.5,threshold_val,"
            "f1@val,accuracy@val,sensitivity@val,specificity@val"]
    at_half = report["threshold_0.5"]
    at_val = report.get("threshold_val_max_f1")
    for index, name in enumerate(report["classes"]):
        auroc = report["auroc"][name]
        cells = [name, str(report["positives"][name]), "n/a" if auroc is None else f"{auroc:.6f}"]
        cells += [_cell(at_half[m][name]) for m in ("f1", "accuracy", "sensitivity", "specificity")]
        if at_val:
            cells.append(_cell(at_val["thresholds"][name]))
            cells += [_cell(at_val[m][name]) for m in ("f1", "accuracy", "sensitivity", "specificity")]
        else:
            cells += [""] * 5
        rows.append(",".join(cells))
    return "\n".join(rows) + "\n"


def print_result(result: TestResult) -> None:
    """The original's AUROC lines, then the metrics table and which split and labels they are on."""
    for line in format_auroc_lines(result.report):
        print(line)
    print(f"({result.report['split_description']}; {result.report['crop']} at {result.report['img_size']})")
    print(format_metrics_table(result.report))
