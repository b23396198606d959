"""Scoring a checkpoint on a part of its split: metrics, the printed report and the result files.

Shared by ``test-model.py`` of folders 1-5 and the folder 6 comparison.
"""
from __future__ import annotations

import csv
import gzip
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .checkpoint import load_model_from_checkpoint, save_bytes_atomic, write_text_atomic
from .constants import CLASS_NAMES, NUM_CLASSES
from .engine import amp_dtype_for, predict_logits, resolve_device, sigmoid
from .errors import UserError
from .identity import check_unseen_patients, file_sha256, precision_name, run_identity, split_identity
from .metrics import (choose_thresholds, evaluation_report, format_auroc_lines, format_metrics_table,
                      patient_bootstrap_auroc_ci)
from .plots import plot_roc_curves
from .split_data import SplitData, split_data_for


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


THRESHOLD_TRANSFER_NOTE = ("Per-class thresholds are chosen on validation patients of the training pool; on the "
                           "official split they transfer imperfectly to the test set, whose case mix differs "
                           "(56.6% AP views against 35% in train_val; docs/data.md §3).")


def evaluate_checkpoint(checkpoint_path: Path, expected_model: str | None, data: SplitData | None, args,
                        part: str = "test") -> TestResult:
    """Evaluate a checkpoint on ``part`` of its split (or of ``data`` when given); returns the metrics and scores.

    A split other than the checkpoint's own is allowed only when none of its ``part`` patients was trained or
    selected on (checked by patients). With ``--tencrop`` the validation thresholds are chosen again on ten-crop
    validation probabilities, the view they are applied to.
    """
    checkpoint, model = load_model_from_checkpoint(checkpoint_path, expected_model)
    if checkpoint["num_classes"] != NUM_CLASSES:
        raise UserError(f"{checkpoint_path} has {checkpoint['num_classes']} classes, not the {NUM_CLASSES} of "
                        "ChestX-ray14")
    config = checkpoint["config"]
    parts = (part, "val") if args.tencrop else (part,)
    if data is None:
        data = split_data_for(config, args, parts=parts)
    leakage = patient_check(checkpoint_path, checkpoint, data, parts)
    device = resolve_device(args.device)
    amp_dtype = amp_dtype_for(device, not args.no_amp)
    model.to(device)
    view = ("tencrop" if args.tencrop else "eval", checkpoint["img_size"], checkpoint["mean"], checkpoint["std"])
    batch_size = max(1, args.batch_size // 10) if args.tencrop else args.batch_size
    loader, augment = data.batches(part, *view, batch_size)  # augment: the eval view on the device (image cache)
    logits, targets = predict_logits(model, loader, device, amp_dtype, desc=f"{checkpoint_path.name} {part}",
                                     augment=augment)
    probs = sigmoid(logits)
    thresholds = checkpoint.get("val_thresholds")
    threshold_view = "centre crop (chosen when the checkpoint was saved)"
    if args.tencrop:
        # Thresholds must come from the view they are applied to: ten-crop probabilities are smoother.
        val_loader, val_augment = data.batches("val", *view, batch_size)
        val_logits, val_targets = predict_logits(model, val_loader, device, amp_dtype, augment=val_augment,
                                                 desc=f"{checkpoint_path.name} val (ten-crop thresholds)")
        thresholds = choose_thresholds(val_targets, sigmoid(val_logits))
        threshold_view = "ten-crop (chosen now on the validation part)"
    report = evaluation_report(targets, probs, CLASS_NAMES,
                               val_thresholds=None if thresholds is None else np.asarray(thresholds))
    part_data = data.split.parts[part]
    n_boot = getattr(args, "n_boot", 1000)
    interval = patient_bootstrap_auroc_ci(targets, probs, part_data.patient_ids, n_boot=n_boot, seed=0)
    identity = run_identity(split_identity(data.split, data.val_fraction, data.seed),
                            data.identity(part_data.names),
                            {"checkpoint": str(checkpoint_path), "checkpoint_sha256": file_sha256(checkpoint_path),
                             "crop": "ten-crop" if args.tencrop else "centre crop",
                             "precision": precision_name(amp_dtype) + " body, fp32 head",
                             "trained": checkpoint.get("identity")})
    report.update({
        "checkpoint": str(checkpoint_path), "model_name": checkpoint["model_name"], "split": data.split.name,
        "split_description": data.split.describe(), "part": part, "label_file": data.split.labels,
        "crop": "ten-crop" if args.tencrop else "centre crop", "img_size": checkpoint["img_size"],
        "trained_epoch": checkpoint.get("epoch"), "val_mean_auroc": checkpoint.get("val_mean_auroc"),
        "git_commit": checkpoint.get("git_commit"),
        "mean_auroc_ci95": {"low": interval["ci_low"], "high": interval["ci_high"], "n_boot": interval["n_boot"],
                            "n_patients": interval["n_patients"], "resampling": "patients"},
        "threshold_view": threshold_view, "threshold_note": THRESHOLD_TRANSFER_NOTE,
        "leakage_check": leakage, "identity": identity,
    })
    return TestResult(checkpoint_path, checkpoint["model_name"], report, probs, targets, list(part_data.names),
                      part_data.patient_ids, model)


def patient_check(checkpoint_path: Path, checkpoint: dict, data: SplitData, parts) -> dict:
    """Record that the evaluated part is the checkpoint's own test part, or check by patients that the parts of
    another split (the test part, and the validation part ten-crop thresholds are chosen on) hold no patient the
    checkpoint was trained or selected on."""
    config = checkpoint.get("config", {})
    own = (config.get("split") == data.split.name and config.get("val_fraction", 0.1) == data.val_fraction
           and config.get("seed", 0) == data.seed)
    if own and set(parts) <= {"test", "val"}:
        return {"same_split": True, "checked_by": "the split's own leakage check (train, val, test disjoint)"}
    checked = check_unseen_patients(
        checkpoint_path, checkpoint,
        {f"{part} part of split {data.split.name}": (data.split.parts[part].patient_ids, ("train", "val"))
         for part in parts}, "checkpoint")
    return {"same_split": False, "cross_split": True, **checked}


def write_results(result: TestResult) -> dict:
    """Write ``<stem>-test.json``, ``<stem>-test.csv``, per-image predictions and ROC curves beside the checkpoint."""
    stem = result.checkpoint.with_suffix("")
    paths = {"json": Path(f"{stem}-test.json"), "csv": Path(f"{stem}-test.csv"),
             "predictions": Path(f"{stem}-test-predictions.csv.gz"), "roc": Path(f"{stem}-test-roc.png")}
    write_text_atomic(json.dumps(result.report, indent=2), paths["json"])
    write_text_atomic(_per_class_csv(result.report), paths["csv"])
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(["Image Index", "Patient ID", *[f"p_{c}" for c in CLASS_NAMES], *CLASS_NAMES])
    for name, patient, prob, target in zip(result.names, result.patient_ids, result.probs, result.targets):
        writer.writerow([name, patient, *[f"{p:.6f}" for p in prob], *target.tolist()])
    # mtime=0: the same predictions give the same bytes; written atomically like every result file.
    save_bytes_atomic(gzip.compress(table.getvalue().encode(), mtime=0), paths["predictions"])
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
    interval = result.report.get("mean_auroc_ci95")
    if interval and interval["low"] is not None:
        print(f"95% interval of the mean AUROC (patients resampled, {interval['n_boot']} times, "
              f"{interval['n_patients']:,} patients): [{interval['low']:.3f}, {interval['high']:.3f}]")
    print(f"({result.report['split_description']}; {result.report['crop']} at {result.report['img_size']})")
    print(format_metrics_table(result.report))
    print(f"Thresholds: {result.report['threshold_view']}. {result.report['threshold_note']}")
