"""Scoring a checkpoint on a part of its split: metrics, the printed report and the result files.

Shared by ``test-model.py`` of folders 1-5 and the folder 6 comparison.
"""
from __future__ import annotations

import csv
import gzip
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from common.atomic import save_bytes_atomic, write_text_atomic
from common.constants import CLASS_NAMES, NUM_CLASSES
from common.data.fingerprint import file_sha256
from common.data.labels import LABEL_VERSIONS
from common.data.split_data import DataFlags, SplitData, split_data_for
from common.data.splits import Split, SplitPart, build_split
from common.errors import UserError
from common.evaluation.external import read_predictions_csv
from common.evaluation.logits import predict_logits, sigmoid
from common.evaluation.metrics import (
    choose_thresholds,
    evaluation_report,
    format_auroc_lines,
    format_metrics_table,
    patient_bootstrap_auroc_ci,
)
from common.evaluation.plots import plot_roc_curves
from common.evaluation.subgroups import (
    AGE_BANDS,
    AGE_LEFT_OUT,
    SEXES,
    SUBGROUP_RULE,
    VIEWS,
    Demographics,
    calibration,
    plot_reliability,
    read_demographics,
    subgroup_aurocs,
)
from common.inference.prediction_files import IMAGE_COLUMN, format_predictions, logit_column
from common.runs.checkpoint import load_model_from_checkpoint
from common.runs.identity import check_unseen_patients, run_identity, split_identity
from common.runtime.device import amp_dtype_for, precision_name, resolve_device


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
    model: object = None        # the evaluated model (for parameter and MAC counts, Grad-CAM)
    meta: dict | None = None    # the checkpoint's model_name, img_size, mean and std (to rebuild the input view)
    logits: np.ndarray | None = None  # float32 logits of a checkpoint's evaluation (written for reuse)
    reuse: "EarlierResults | None" = None  # what an earlier evaluation gave (with ``reuse_from``), or why nothing


@dataclass(frozen=True)
class ScoringSettings:
    """How a checkpoint or a predictions file is scored (the evaluation flags of ``test-model.py``)."""

    device: str = "auto"
    amp: bool = True                 # bf16/fp16 body on CUDA (the head stays fp32); ignored on a CPU
    tencrop: bool = False
    batch_size: int = 32
    n_boot: int = 1000               # patient-bootstrap resamples of the mean-AUROC interval
    subgroup_boot: int = 200         # resamples of each subgroup's interval
    demographics: str | None = None  # Data_Entry file with sex, age and view (default: the split's label file)
    data: DataFlags = field(default_factory=DataFlags)


THRESHOLD_TRANSFER_NOTE = ("Per-class thresholds are chosen on validation patients of the training pool; on the "
                           "official split they transfer imperfectly to the test set, whose case mix differs "
                           "(56.6% AP views against 35% in train_val; docs/data.md §3).")


def evaluate_checkpoint(checkpoint_path: Path, expected_model: str | None, data: SplitData | None,
                        settings: ScoringSettings,
                        part: str = "test", demographics: Demographics | None = None,
                        reuse_from: Sequence[Path] | None = None) -> TestResult:
    """Evaluate a checkpoint on ``part`` of its split (or of ``data`` when given); returns the metrics and scores.

    A split other than the checkpoint's own is allowed only when none of its ``part`` patients was trained or
    selected on (checked by patients). With ``--tencrop`` the validation thresholds are chosen again on ten-crop
    validation probabilities, the view they are applied to. The report always adds the subgroup AUROCs and the
    calibration (:func:`add_subgroups_and_calibration`); ``demographics`` saves re-reading the Data_Entry file when
    several checkpoints are scored on one split (default: :func:`demographics_for`). ``reuse_from`` (a list of
    result stems, possibly empty): take the logits from the first earlier result whose run identity matches, among
    the checkpoint's own ``test-model.py`` results and those stems (:func:`earlier_results`); ``result.reuse``
    says what was reused or why the model was scored again.
    """
    checkpoint, model = load_model_from_checkpoint(checkpoint_path, expected_model)
    if checkpoint["num_classes"] != NUM_CLASSES:
        raise UserError(f"{checkpoint_path} has {checkpoint['num_classes']} classes, not the {NUM_CLASSES} of "
                        "ChestX-ray14")
    config = checkpoint["config"]
    parts = (part, "val") if settings.tencrop else (part,)
    if data is None:
        data = split_data_for(config, settings.data, parts=parts)
    leakage = patient_check(checkpoint_path, checkpoint, data, parts)
    device = resolve_device(settings.device)
    amp_dtype = amp_dtype_for(device, settings.amp)
    model.to(device)
    view = ("tencrop" if settings.tencrop else "eval", checkpoint["img_size"], checkpoint["mean"], checkpoint["std"])
    batch_size = max(1, settings.batch_size // 10) if settings.tencrop else settings.batch_size
    part_data = data.split.parts[part]
    identity = run_identity(split_identity(data.split, data.val_fraction, data.seed),
                            data.identity(part_data.names),
                            {"checkpoint": str(checkpoint_path), "checkpoint_sha256": file_sha256(checkpoint_path),
                             "crop": "ten-crop" if settings.tencrop else "centre crop",
                             "precision": precision_name(amp_dtype) + " body, fp32 head",
                             "trained": checkpoint.get("identity")})
    earlier = None
    if reuse_from is not None:
        earlier = earlier_results([Path(checkpoint_path).with_suffix(""), *reuse_from], identity, part_data.names)
        print(f"{checkpoint_path.name}: {earlier.note}")
    if earlier is None or earlier.logits is None:
        loader, augment = data.batches(part, *view, batch_size)  # augment: the eval view on the device (image cache)
        logits, targets = predict_logits(model, loader, device, amp_dtype, desc=f"{checkpoint_path.name} {part}",
                                         augment=augment)
    else:
        logits, targets = earlier.logits, part_data.labels.astype(np.uint8)
    probs = sigmoid(logits)
    thresholds = checkpoint.get("val_thresholds")
    threshold_view = "centre crop (chosen when the checkpoint was saved)"
    if settings.tencrop:
        # Thresholds must come from the view they are applied to: ten-crop probabilities are smoother.
        val_loader, val_augment = data.batches("val", *view, batch_size)
        val_logits, val_targets = predict_logits(model, val_loader, device, amp_dtype, augment=val_augment,
                                                 desc=f"{checkpoint_path.name} val (ten-crop thresholds)")
        thresholds = choose_thresholds(val_targets, sigmoid(val_logits), CLASS_NAMES)
        threshold_view = "ten-crop (chosen now on the validation part)"
    report = evaluation_report(targets, probs, CLASS_NAMES,
                               val_thresholds=None if thresholds is None else np.asarray(thresholds))
    n_boot = settings.n_boot
    interval = patient_bootstrap_auroc_ci(targets, probs, part_data.patient_ids, n_boot=n_boot, seed=0)
    report.update({
        "checkpoint": str(checkpoint_path), "model_name": checkpoint["model_name"], "split": data.split.name,
        "split_description": data.split.describe(), "part": part, "label_file": data.split.labels,
        "crop": "ten-crop" if settings.tencrop else "centre crop", "img_size": checkpoint["img_size"],
        "trained_epoch": checkpoint.get("epoch"), "val_mean_auroc": checkpoint.get("val_mean_auroc"),
        "git_commit": checkpoint.get("git_commit"),
        "mean_auroc_ci95": {"low": interval["ci_low"], "high": interval["ci_high"], "n_boot": interval["n_boot"],
                            "n_patients": interval["n_patients"], "resampling": "patients"},
        "threshold_view": threshold_view, "threshold_note": THRESHOLD_TRANSFER_NOTE,
        "leakage_check": leakage, "identity": identity,
    })
    if demographics is None:
        demographics, note = demographics_for(data.split, settings.demographics)
    else:
        note = None
    add_subgroups_and_calibration(report, targets, probs, part_data.names, part_data.patient_ids, demographics,
                                  settings.subgroup_boot, note)
    meta = {"model_name": checkpoint["model_name"], "img_size": checkpoint["img_size"], "mean": checkpoint["mean"],
            "std": checkpoint["std"]}
    return TestResult(checkpoint_path, checkpoint["model_name"], report, probs, targets, list(part_data.names),
                      part_data.patient_ids, model, meta, logits, earlier)


@dataclass(frozen=True)
class EarlierResults:
    """What an earlier evaluation of the same checkpoint left for this one (:func:`earlier_results`)."""

    logits: np.ndarray | None   # the earlier float32 logits; None: score again
    source: Path | None         # the report whose logits are reused
    note: str                   # "reused ..." or "scored again, because ..."
    # Every earlier report of the same checkpoint, images, view and precision, by file (with the logits reused):
    # what else they computed (a localisation) may be reused too.
    reports: tuple[tuple[Path, dict], ...] = ()


# What the logits depend on besides the split and the pixels (the identity's recipe keys; docs/guide/benchmarks.md).
LOGIT_RECIPE_KEYS = ("checkpoint_sha256", "crop", "precision")


def result_paths(stem: Path) -> tuple[Path, Path]:
    """``(<stem>-test.json, <stem>-test-predictions.csv.gz)``: the report and per-image predictions of a result."""
    return Path(f"{stem}-test.json"), Path(f"{stem}-test-predictions.csv.gz")


def _identity_mismatch(recorded: dict, identity: dict) -> str | None:
    """Why logits recorded under ``recorded`` are not those this evaluation would compute; None when they are."""
    if not recorded:
        return "it records no run identity"
    if recorded.get("split") != identity["split"]:
        then, now = recorded.get("split") or {}, identity["split"]
        keys = [key for key in sorted(set(then) | set(now)) if then.get(key) != now.get(key)]
        return "it was scored on another split (" + "; ".join(f"{k} {then.get(k)} then, {now.get(k)} now"
                                                            for k in keys) + ")"
    if recorded.get("data") != identity["data"]:
        then, now = recorded.get("data") or {}, identity["data"]
        keys = [key for key in sorted(set(then) | set(now)) if then.get(key) != now.get(key)]
        detail = "; ".join("the image files' sizes or times changed" if k == "files_sha256"
                           else f"{k} {then.get(k)} then, {now.get(k)} now" for k in keys)
        return f"its test images differ ({detail})"
    then, now = recorded.get("recipe") or {}, identity["recipe"]
    if then.get("checkpoint_sha256") != now["checkpoint_sha256"]:
        return "the checkpoint file changed since (another sha256)"
    for key in LOGIT_RECIPE_KEYS[1:]:
        if then.get(key) != now[key]:
            return f"it was scored with {key} {then.get(key)!r}, now {now[key]!r}"
    return None


def earlier_results(stems, identity: dict, names) -> EarlierResults:
    """The float32 test logits of the first earlier result among ``stems`` (``<stem>-test.json`` and
    ``<stem>-test-predictions.csv.gz``, as :func:`write_results` writes them) whose recorded identity equals this
    evaluation's in everything the logits depend on (checkpoint file hash, split, image files, view and precision)
    and whose predictions cover ``names`` in order. Without one, ``logits`` is None and ``note`` says why."""
    reasons, matching, found = [], [], None
    for stem in stems:
        report_path, predictions_path = result_paths(stem)
        if not report_path.is_file() or not predictions_path.is_file():
            continue
        report = json.loads(report_path.read_text())
        mismatch = _identity_mismatch(report.get("identity") or {}, identity)
        if mismatch is None and report.get("predictions_sha256") not in (None, file_sha256(predictions_path)):
            mismatch = "its predictions file was rewritten after the report (another sha256)"
        if mismatch is None and found is None:
            logits, mismatch = _read_logits(predictions_path, names)
            if logits is not None:
                found = EarlierResults(logits, report_path, f"reused the test logits of {report_path} (same "
                                       "checkpoint, images, view and precision)")
        if mismatch is None:
            matching.append((report_path, report))
        else:
            reasons.append(f"{report_path}: {mismatch}")
    if found is not None:
        return EarlierResults(found.logits, found.source, found.note, tuple(matching))
    if not reasons:
        looked = " or ".join(str(result_paths(stem)[0]) for stem in stems)
        return EarlierResults(None, None, f"scored again, because there is no earlier result ({looked})")
    return EarlierResults(None, None, "scored again, because " + "; ".join(reasons))


def _read_logits(predictions_path: Path, names) -> tuple[np.ndarray | None, str | None]:
    """(float32 logits [N, 14], None) from a predictions file listing ``names`` in order; else (None, why not)."""
    with gzip.open(predictions_path, "rt", newline="") as stream:
        rows = list(csv.DictReader(stream))
    columns = [logit_column(name) for name in CLASS_NAMES]
    if not rows or columns[0] not in rows[0]:
        return None, "its predictions file has no logit columns"
    if [row[IMAGE_COLUMN] for row in rows] != list(names):
        return None, "its predictions file lists other images"
    return np.asarray([[float(row[column]) for column in columns] for row in rows], dtype=np.float32), None


# --------------------------------------------------------------------------------------------------------------------
# Subgroups and calibration
# --------------------------------------------------------------------------------------------------------------------
ECE_BINS = 15


def demographics_for(split: Split, demographics_flag: str | None) -> tuple[Demographics | None, str | None]:
    """The sex, age and view of the split's images, and a note when there are none.

    Where they come from, first match: ``--demographics FILE``; the split's Data_Entry label file (``v2020``,
    ``2017`` or a path); for ``arnoweng`` (inline 2017 labels) the packaged Data_Entry_2017; for a folder of
    labelled lists, the one ``Data_Entry*.csv`` (or ``.csv.gz``) in that folder or its parent, where the NIH download
    and the synthetic generator keep it. Without any, ``(None, note)``: the report says the subgroups were not
    computed and why. Two candidate files are refused rather than one picked.
    """
    if demographics_flag:
        return read_demographics(demographics_flag), None
    source = split.label_source
    if source in LABEL_VERSIONS or (source and source != "inline"):
        return read_demographics(source), None
    if split.name == "arnoweng":
        return read_demographics("2017"), None
    folder = Path(split.name)
    for place in (folder, folder.parent):
        found = sorted(set(place.glob("Data_Entry*.csv")) | set(place.glob("Data_Entry*.csv.gz")))
        if len(found) > 1:
            raise UserError(f"{place} holds {len(found)} Data_Entry files ({', '.join(p.name for p in found)}); "
                            "pass --demographics FILE to say which gives sex, age and view")
        if found:
            return read_demographics(found[0]), None
    return None, (f"no Data_Entry file beside the split lists in {folder}; pass --demographics FILE for the "
                  "subgroup AUROCs")


def add_subgroups_and_calibration(report: dict, targets, probs, names, patient_ids, demographics, n_boot: int,
                                  note: str | None = None) -> None:
    """Add ``report["subgroups"]`` (mean AUROC by sex, age band and view with patient-level intervals of ``n_boot``
    resamples) and ``report["calibration"]`` (per-class ECE with :data:`ECE_BINS` bins, Brier, reliability curve).

    ``n_boot`` is separate from the main interval's: one resample of the nine groups costs about six resamples of
    the whole set (each of the three groupings covers every image once, plus nine smaller calls; measured by
    ``benchmarks/bootstrap.py`` at the official test size: 16 ms against 2.9 ms on 2 cores), so the default
    ``--subgroup-boot 200`` costs about as much as the main 1000-resample interval, a few seconds each.
    Without ``demographics`` the subgroups are ``{"note": ...}``.
    """
    if demographics is None:
        report["subgroups"] = {"note": note or "no demographics"}
    else:
        report["subgroups"] = {"source": demographics.source, "n_boot": int(n_boot), "resampling": "patients",
                               **subgroup_aurocs(targets, probs, names, patient_ids, demographics, n_boot=n_boot,
                                                 seed=0)}
    report["calibration"] = calibration(targets, probs, n_bins=ECE_BINS)


def format_subgroup_lines(report: dict) -> list[str]:
    """Mean AUROC [95% interval] of each sex, age band and view, with the images, patients and classes it covers
    (n/a with the reason when too small: :data:`common.evaluation.subgroups.SUBGROUP_RULE`); then the mean ECE and
    Brier."""
    subgroups = report.get("subgroups", {})
    lines = []
    if "note" in subgroups:
        lines.append(f"Subgroups: not computed ({subgroups['note']})")
    elif subgroups:
        lines.append(f"Mean AUROC by subgroup (95% interval: patients resampled, {subgroups['n_boot']} times; "
                     f"from {Path(subgroups['source']).name}; {subgroups.get('rule', SUBGROUP_RULE)}):")
        for grouping, groups in (("sex", SEXES), ("age", AGE_BANDS), ("view", VIEWS)):
            for group in groups:
                entry = subgroups[grouping][group]
                counts = f"{entry['n_images']:,} images, {entry['n_patients']:,} patients"
                if entry["mean_auroc"] is None:
                    reason = entry.get("not_estimated", "undefined")
                    lines.append(f"  {grouping:<5} {group:<6} {'n/a':<21} {counts}: {reason}")
                    continue
                interval = (f" [{entry['ci_low']:.3f}, {entry['ci_high']:.3f}]" if entry.get("ci_low") is not None
                            else "")
                value = f"{entry['mean_auroc']:.3f}{interval}"
                lines.append(f"  {grouping:<5} {group:<6} {value:<21} {counts}, {entry['n_classes']} classes")
            for rest, why in (("other", f"with another {grouping}"), (AGE_LEFT_OUT, "recorded older than 120 years")):
                if rest in subgroups[grouping]:
                    left = subgroups[grouping][rest]
                    lines.append(f"  {grouping:<5} left out: {left['n_images']:,} images ({left['n_patients']:,} "
                                 f"patients) {why}")
    cal = report.get("calibration")
    if cal:
        worst = max(cal["per_class"], key=lambda c: cal["per_class"][c]["ece"])
        lines.append(f"Calibration ({cal['n_bins']} bins): mean ECE {cal['mean_ece']:.4f}, mean Brier "
                     f"{cal['mean_brier']:.4f}; largest ECE {worst} {cal['per_class'][worst]['ece']:.4f}")
    return lines


# --------------------------------------------------------------------------------------------------------------------
# External predictions
# --------------------------------------------------------------------------------------------------------------------
def predictions_split(flags: DataFlags) -> Split:
    """The split a predictions file is scored on: ``--split`` (default official) and ``--label-file``."""
    return build_split(flags.split or "official", flags.label_file,
                       flags.val_fraction if flags.val_fraction is not None else 0.1, 0)


def score_predictions_file(path: Path, split: Split, settings: ScoringSettings, part: str = "test", name: str | None = None,
                           demographics: Demographics | None = None) -> TestResult:
    """Score a CSV of per-image probabilities (``Image Index,prob_<Class>,...``) on ``part`` of ``split``, with the
    report a checkpoint gets (per-class metrics at 0.5, the patient-level interval, subgroups, calibration).

    The file must hold exactly the part's images (:func:`common.evaluation.external.read_predictions_csv`). There are no
    validation thresholds: the file has no validation predictions to choose them on.
    """
    path = Path(path)
    part_data: SplitPart = split.parts[part]
    probs = read_predictions_csv(path, part_data.names)
    targets = part_data.labels.astype(np.float32)
    report = evaluation_report(targets, probs, CLASS_NAMES)
    interval = patient_bootstrap_auroc_ci(targets, probs, part_data.patient_ids,
                                          n_boot=settings.n_boot, seed=0)
    label = name or path.stem
    report.update({
        "source": str(path), "source_sha256": file_sha256(path), "model_name": label, "split": split.name,
        "split_description": split.describe(), "part": part, "label_file": split.labels,
        "crop": "as in the predictions file", "img_size": None,
        "mean_auroc_ci95": {"low": interval["ci_low"], "high": interval["ci_high"], "n_boot": interval["n_boot"],
                            "n_patients": interval["n_patients"], "resampling": "patients"},
        "threshold_view": "0.5 only (a predictions file has no validation predictions to choose thresholds on)",
        "threshold_note": "", "identity": {"predictions": {"file": str(path), "sha256": file_sha256(path)}},
    })
    if demographics is None:
        demographics, note = demographics_for(split, settings.demographics)
    else:
        note = None
    add_subgroups_and_calibration(report, targets, probs, part_data.names, part_data.patient_ids, demographics,
                                  settings.subgroup_boot, note)
    return TestResult(path, label, report, probs, targets, list(part_data.names), part_data.patient_ids)


def patient_check(checkpoint_path: Path, checkpoint: dict, data: SplitData, parts) -> dict:
    """Check by patients, against the patients the checkpoint recorded, that the parts scored here hold none it was
    trained or selected on: the test part none of either, the validation part ten-crop thresholds are chosen on
    none it was trained on. The split's own name is no shortcut: its list files may have been edited since."""
    config = checkpoint.get("config", {})
    own = (config.get("split") == data.split.name and config.get("val_fraction", 0.1) == data.val_fraction
           and config.get("seed", 0) == data.seed)
    checked = check_unseen_patients(
        checkpoint_path, checkpoint,
        {f"{part} part of split {data.split.name}": (data.split.parts[part].patient_ids,
                                                     ("train",) if part == "val" else ("train", "val"))
         for part in parts}, "checkpoint")
    return {"same_split": own, "cross_split": not own, **checked}


def results_stem(path) -> Path:
    """Where a checkpoint's or a predictions file's results go: ``model1.pth`` -> ``model1``, ``scores.csv`` and
    ``scores.csv.gz`` -> ``scores`` (``<stem>-test.json`` and its companions)."""
    path = Path(path)
    if path.suffix == ".gz":
        path = path.with_suffix("")
    return path.with_suffix("")


def write_results(result: TestResult) -> dict:
    """Write ``<stem>-test.json``, ``<stem>-test.csv``, per-image predictions and ROC curves beside the checkpoint."""
    stem = results_stem(result.checkpoint)
    paths = {"json": Path(f"{stem}-test.json"), "csv": Path(f"{stem}-test.csv"),
             "predictions": Path(f"{stem}-test-predictions.csv.gz"), "roc": Path(f"{stem}-test-roc.png")}
    if "calibration" in result.report:
        paths["reliability"] = Path(f"{stem}-test-reliability.png")
    # The predictions first, their hash into the report: a report never vouches for predictions it did not write.
    result.report["predictions_sha256"] = _write_predictions(result, paths["predictions"])
    write_text_atomic(json.dumps(result.report, indent=2), paths["json"])
    write_text_atomic(_per_class_csv(result.report), paths["csv"])
    plot_roc_curves(result.targets, result.probs, CLASS_NAMES, [result.report["auroc"][c] for c in CLASS_NAMES],
                    paths["roc"], f"{result.model_name}: {result.report['split']} {result.report['part']}, "
                                  f"labels {result.report['label_file']}")
    if "reliability" in paths:
        cal = result.report["calibration"]
        plot_reliability(paths["reliability"], cal,
                         f"{result.model_name}: reliability ({cal['n_bins']} bins; mean ECE {cal['mean_ece']:.3f}, "
                         f"mean Brier {cal['mean_brier']:.3f})")
    return paths


def write_reusable_results(result: TestResult, stem: Path) -> tuple[Path, Path]:
    """Write only what a later evaluation reuses (:func:`earlier_results`): the report with its run identity and
    the per-image predictions with the logits, as ``<stem>-test.json`` and ``<stem>-test-predictions.csv.gz``."""
    report_path, predictions_path = result_paths(stem)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    result.report["predictions_sha256"] = _write_predictions(result, predictions_path)
    write_text_atomic(json.dumps(result.report, indent=2), report_path)
    return report_path, predictions_path


def _write_predictions(result: TestResult, path: Path) -> str:
    """The project's one predictions layout (:mod:`common.inference.prediction_files`), gzipped and written
    atomically; returns the file's sha256. Image Index, Patient ID, prob_<Class> written exactly (scoring this file
    with --predictions reproduces the report), label_<Class>, and the float32 logits last, exactly, so the
    comparison can reuse them."""
    text = format_predictions(result.names, result.probs, CLASS_NAMES, decimals=None, patient_ids=result.patient_ids,
                              labels=np.asarray(result.targets), logits=result.logits)
    # mtime=0: the same predictions give the same bytes; written atomically like every result file.
    content = gzip.compress(text.encode(), mtime=0)
    save_bytes_atomic(content, path)
    return hashlib.sha256(content).hexdigest()


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
    size = result.report["img_size"]
    print(f"({result.report['split_description']}; {result.report['crop']}{'' if size is None else f' at {size}'})")
    print(format_metrics_table(result.report))
    print(f"Thresholds: {result.report['threshold_view']}. {result.report['threshold_note']}".rstrip())
    for line in format_subgroup_lines(result.report):
        print(line)
