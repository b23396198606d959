"""Folder 6 ``test-model.py``: every model before and after distillation, on one test split.

Writes ``comparison.md``, ``comparison.csv``, ``comparison-per-class.csv``, ``comparison-bootstrap.csv``,
``comparison.json`` and the bar chart ``comparison-auroc.png`` into the output folder. Besides the AUROC, F1 and
accuracy, each teacher sits beside its student on the AUROC by view position, the calibration (mean ECE, Brier) and,
with ``--localization``, the localisation accuracy on the NIH boxes. ``--baseline NAME=FILE.csv`` adds another
model's published predictions as a row scored on the same test images.

Re-runs reuse what they can: each model's test logits (and localisation scores) come from an earlier result when its
run identity matches (same checkpoint file, split, image files, view and precision; the box file for the
localisation): the comparison's own ``comparison-results/<model>-test.json`` and ``-test-predictions.csv.gz``,
written for every model it scores, or the ``test-model.py`` results beside the checkpoint. It prints, per model,
what it reused or why it scored the model again. The metrics and intervals are always computed anew.
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
from pathlib import Path

from common.atomic import write_text_atomic
from common.commands._cli import ArgumentParser
from common.commands._flags import add_evaluation_arguments, add_localization_arguments, make_paths_absolute
from common.constants import CLASS_NAMES, STUDENT_MODEL
from common.data.images import index_images
from common.errors import UserError


# Folder (in the output folder) of each model's report and logits, which the next comparison reuses.
RESULTS_FOLDER = "comparison-results"


def get_args_parser() -> ArgumentParser:
    """Flags of the comparison; the split and labels are those the checkpoints were trained with."""
    parser = ArgumentParser(prog="test-model.py",
                            description="Compare model1..5 with their distilled students modeld1..5 on one test split")
    add_evaluation_arguments(parser)
    parser.add_argument("--teachers-root", default=None,
                        help="folder holding 1-EEEA-Net-C2 ... 5-AutoFormerV2-base (default: parent of --output-dir)")
    parser.add_argument("--output-dir", default=None,
                        help="folder with modeldK.pth; results go here too (default: the script's folder)")
    parser.add_argument("--seed-runs", nargs="+", default=[], metavar="DIR",
                        help="folders laid out like the repository, each trained with its own --seed: report the mean "
                             "and spread across them of every model's test mean AUROC and of student - model1")
    parser.add_argument("--baseline", action="append", default=[], metavar="NAME=FILE.csv",
                        help="add another model's per-image probabilities (Image Index,prob_<Class>,...) as a row "
                             "scored on the same test images (repeatable)")
    add_localization_arguments(parser)
    parser.add_argument("--no-ood", action="store_true",
                        help="do not fit the students' out-of-distribution statistics (modeldK-ood.json)")
    return parser


def baseline_entries(flags) -> list[dict]:
    """``--baseline NAME=FILE.csv`` flags -> entries of external rows (the file must exist; names must differ)."""
    entries = []
    for flag in flags:
        name, sep, path = flag.partition("=")
        name = name.strip()
        if not sep or not name or not path:
            raise UserError(f"--baseline {flag!r}: expected NAME=FILE.csv")
        if not Path(path).is_file():
            raise UserError(f"--baseline {name}: predictions file {path} does not exist")
        if any(entry["label"] == name for entry in entries):
            raise UserError(f"--baseline {name} is given twice")
        entries.append({"key": f"external:{name}", "role": "external", "teacher": "", "label": name,
                        "path": Path(path)})
    return entries


def model_entries(teachers_root: Path, student_dir: Path) -> list[dict]:
    """Every model of the comparison, present or not: teachers 1..5, students d1..d5, the ensemble student."""
    from common.models import model_folders, model_info
    from common.runs.layout import folder_model_path
    entries = []
    student = model_info(STUDENT_MODEL)
    for index, (_, model_name) in model_folders().items():
        display = model_info(model_name).display_name
        entries.append({"key": f"model{index}", "role": "baseline" if model_name == STUDENT_MODEL else "teacher",
                        "teacher": index, "label": display, "path": folder_model_path(teachers_root, index)})
        entries.append({"key": f"modeld{index}", "role": "student", "teacher": index,
                        "label": f"{student.display_name} <- {display}", "path": student_dir / f"modeld{index}.pth"})
    entries.append({"key": "modeld-ensemble", "role": "student", "teacher": "ensemble",
                    "label": f"{student.display_name} <- ensemble", "path": student_dir / "modeld-ensemble.pth"})
    return entries


def distillation_description(distillation: dict | None, teachers_root: Path) -> dict:
    """What a student was distilled from: ``{"indices", "short", "text", "weights"}`` from its checkpoint's
    ``distillation`` record. Per-class AUROC weights are recomputed from the teachers' checkpoints when the files
    are still the ones the student was distilled from (same sha256), and shown as each teacher's mean weight."""
    from common.data.fingerprint import file_sha256
    from common.engine.losses import auroc_teacher_weights
    from common.models import model_info
    from common.runs.checkpoint import load_checkpoint
    from common.runs.layout import folder_model_path
    if not distillation:
        return {"indices": [], "short": "unknown", "text": "not recorded (no distillation entry)", "weights": None}
    teachers = distillation.get("teachers") or []
    indices = [t.get("index") for t in teachers]
    names = ", ".join(f"{t.get('index')} {model_info(t['model_name']).display_name}" for t in teachers)
    if len(teachers) < 2:
        return {"indices": indices, "short": names, "text": f"teacher {names}", "weights": None}
    scheme = distillation.get("ensemble_weights") or "uniform"
    if scheme == "uniform":
        weights = {t.get("index"): 1.0 / len(teachers) for t in teachers}
        detail = f"uniform weights (1/{len(teachers)} each)"
    else:
        weights, aurocs = None, []
        for teacher in teachers:
            candidates = [Path(teacher["path"])]
            if teacher.get("index") is not None:
                candidates.append(folder_model_path(teachers_root, teacher["index"]))
            found = next((c for c in candidates if c.is_file() and file_sha256(c) == teacher.get("sha256")), None)
            aurocs.append(None if found is None else load_checkpoint(found).get("val_auroc"))
        if all(a is not None for a in aurocs):
            matrix = auroc_teacher_weights(aurocs).numpy()
            weights = {t.get("index"): float(matrix[k].mean()) for k, t in enumerate(teachers)}
            detail = ("per-class weights by validation AUROC above chance; mean over the classes "
                      + ", ".join(f"{index}: {value:.2f}" for index, value in weights.items()))
        else:
            detail = "per-class weights by validation AUROC above chance (teacher files changed since: not shown)"
    return {"indices": indices, "short": "+".join(map(str, indices)) + f" ({scheme})",
            "text": f"teachers {names}; {detail}", "weights": weights}


def student_card(args, entry: dict, result, checkpoint: dict, settings) -> None:
    """A student's out-of-distribution statistics (fitted unless ``--no-ood``) and its model card
    ``modeldK-card.md``, which says what it was distilled from."""
    from common.evaluation.card import write_model_card
    from common.evaluation.ood import OodSettings, ensure_ood_statistics, ood_summary
    if args.no_ood:
        ood = ood_summary(None, "not fitted (--no-ood)")
    else:
        stats, note = ensure_ood_statistics(entry["path"], result.model, checkpoint, settings.data, settings.device,
                                            settings.batch_size, OodSettings())
        print(f"Out-of-distribution statistics of {entry['key']}: {note}")
        ood = ood_summary(stats, note)
    result.report["ood"] = ood
    entry["card"] = write_model_card(result, checkpoint, ood)
    print(f"model card: {entry['card']}")


def baseline_key() -> str:
    """The undistilled student's own model (``model1``: EEEA-Net-C2 trained by its numbered folder)."""
    from common.models import model_info
    return f"model{model_info(STUDENT_MODEL).folder_index}"


def _fmt(value, digits=4):
    return "missing" if value is None else f"{value:.{digits}f}"


def compare(args, teachers_root: Path, output_dir: Path) -> dict:
    """Evaluate every present model on the same test split and write the comparison files."""
    from common.commands._setup import scoring_settings
    from common.data.split_data import split_data_for
    from common.evaluation.scoring import (
        demographics_for,
        evaluate_checkpoint,
        print_result,
        score_predictions_file,
        write_reusable_results,
    )
    from common.explain.localization import box_list_sha256, read_boxes
    from common.explain.report import json_ready, localization_report, localization_text
    from common.models.profile import count_parameters, macs
    from common.runs.checkpoint import load_checkpoint
    entries = model_entries(teachers_root, output_dir)
    externals = baseline_entries(args.baseline)
    present = [e for e in entries if e["path"].is_file()]
    if not present:
        raise UserError(f"no models found: expected model1..5.pth under {teachers_root}/<K-folder>/ and "
                        f"modeldK.pth under {output_dir}")
    configs = {entry["key"]: load_checkpoint(entry["path"])["config"] for entry in present}
    reference = configs[present[0]["key"]]
    parts = ("test", "val") if args.tencrop else ("test",)
    settings = scoring_settings(args)
    data = split_data_for(reference, settings.data, parts=parts)
    check_same_pixels(present, configs, data, args, parts)
    # One read of the Data_Entry file and the box list for every model: the same images, the same subgroups.
    demographics, note = demographics_for(data.split, args.demographics)
    boxes = read_boxes(args.bbox_file) if args.localization else None
    boxes_sha256 = box_list_sha256(args.bbox_file) if args.localization else None
    results, reuse = {}, {}
    for entry in entries:
        if not entry["path"].is_file():
            print(f"== {entry['key']}: missing ({entry['path']}) ==")
            continue
        print(f"== {entry['key']} ({entry['label']}): {entry['path']} ==")
        stored = output_dir / RESULTS_FOLDER / entry["key"]
        result = evaluate_checkpoint(entry["path"], None, data, settings, demographics=demographics,
                                     reuse_from=[stored])
        reuse[entry["key"]] = [result.reuse.note]
        if note:
            result.report["subgroups"] = {"note": note}
        print_result(result)
        entry["params"] = count_parameters(result.model)
        entry["img_size"] = result.report["img_size"]
        entry["macs"] = macs(result.model, entry["img_size"])
        scored_now = result.reuse.logits is None
        if boxes is not None:
            earlier, note_text = earlier_localization(result.reuse, boxes_sha256)
            if earlier is None:
                entry["localization"] = localization_report(result, data, boxes[0], boxes[1],
                                                            batch_size=args.batch_size, bbox_sha256=boxes_sha256)
                scored_now = True
                reuse[entry["key"]].append(f"localisation scored again, because {note_text}")
            else:
                entry["localization"] = earlier
                reuse[entry["key"]].append(note_text)
            print(localization_text(result, entry["localization"]))
            result.report["localization"] = json_ready(entry["localization"])
        if entry["role"] == "student":
            checkpoint = load_checkpoint(entry["path"])
            entry["distilled_from"] = distillation_description(checkpoint.get("distillation"), teachers_root)
            student_card(args, entry, result, checkpoint, settings)
        if scored_now:
            # What a later comparison reuses: this model's logits (and localisation) under its run identity.
            write_reusable_results(result, stored)
        result.model = None  # free it before the next model is loaded
        results[entry["key"]] = result
    for entry in externals:
        print(f"== {entry['label']} (predictions file): {entry['path']} ==")
        result = score_predictions_file(entry["path"], data.split, settings, name=entry["label"],
                                        demographics=demographics)
        if note:
            result.report["subgroups"] = {"note": note}
        print_result(result)
        results[entry["key"]] = result
    entries = entries + externals
    rows = [_row(entry, results.get(entry["key"])) for entry in entries]
    baseline = results.get(baseline_key())
    for row in rows:
        result = results.get(row["model"])
        if row["role"] == "student" and result is not None:
            row["recipe_vs_baseline"] = recipe_differences(result, baseline)
    bootstrap = _bootstrap(entries, results, args.n_boot)
    spread = seed_run_spread(args, data, results, output_dir) if args.seed_runs else []
    split_text = data.split.describe()
    paths = _write(output_dir, rows, entries, results, bootstrap, split_text, data.split.labels,
                   "ten-crop" if args.tencrop else "centre crop", spread)
    print((output_dir / "comparison.md").read_text())
    print("Earlier results, per model (reused when the checkpoint, images, view and precision match):")
    for key, notes in reuse.items():
        print(f"  {key}: " + "; ".join(notes))
    print("comparison written: " + ", ".join(str(p) for p in paths))
    return {"rows": rows, "bootstrap": bootstrap, "reuse": reuse}


def earlier_localization(earlier, boxes_sha256: str) -> tuple[dict | None, str]:
    """The localisation scores of an earlier result of the same checkpoint, images, view and precision (those
    Grad-CAM maps depend on) computed on the same box file (its sha256); else ``(None, why not)``. ``earlier``:
    the :class:`common.evaluation.scoring.EarlierResults` of the evaluation."""
    from common.explain.report import from_json_ready
    if earlier.logits is None:
        return None, "the logits were scored again"
    reasons = []
    for path, report in earlier.reports:
        recorded = report.get("localization")
        if not recorded:
            reasons.append(f"{path} has no localisation")
        elif recorded.get("bbox_sha256") is None:
            reasons.append(f"{path} does not record which box file it scored (written before the hash was)")
        elif recorded.get("bbox_sha256") != boxes_sha256:
            reasons.append(f"{path} scored another box file ({recorded.get('bbox_file')})")
        else:
            return from_json_ready(recorded), f"localisation reused from {path}"
    return None, "; ".join(reasons)


def seed_run_spread(args, data, results: dict, output_dir: Path) -> list[dict]:
    """Every model of every ``--seed-runs`` folder scored on the same test images (mean AUROC only), with this
    comparison's own models as one more run; returns :func:`common.evaluation.seed_spread.seed_spread` rows."""
    from common.commands._setup import scoring_settings
    from common.evaluation.scoring import evaluate_checkpoint, write_reusable_results
    from common.evaluation.seed_spread import seed_run_files, seed_spread
    quick = scoring_settings(args, n_boot=1, subgroup_boot=1)  # only the mean AUROC of each run is used
    runs = [{key: result.report["mean_auroc"] for key, result in results.items() if key.startswith("model")}]
    for root in args.seed_runs:
        run = {}
        # The seed run's models are stored for reuse too, under a name of their folder's own.
        store = output_dir / RESULTS_FOLDER / ("seed-" + hashlib.sha256(str(Path(root).resolve()).encode())
                                               .hexdigest()[:12])
        for key, path in seed_run_files(Path(root)).items():
            with contextlib.redirect_stdout(io.StringIO()):  # the per-model report is not needed here
                result = evaluate_checkpoint(path, None, data, quick, reuse_from=[store / key])
            print(f"== seed run {root}: {key}: {result.reuse.note} ==")
            if result.reuse.logits is None:
                write_reusable_results(result, store / key)
            run[key] = result.report["mean_auroc"]
        runs.append(run)
    return seed_spread(runs, baseline_key())


def check_same_pixels(present: list[dict], configs: dict, data, args, parts) -> None:
    """Every model is scored on ``data``; refuse when a model was trained on another copy of the images.

    Without ``--data-dir`` each model would be scored on the folder it was trained with; one folder for all
    keeps the bootstrap paired, so a model trained on images whose files differ (another copy, a resized set)
    is refused with what differs instead of being scored silently on pixels it never saw.
    """
    from common.data.fingerprint import data_identity
    if args.data_dir:
        return  # the user chose one folder for every model; every row records it
    names = [name for part in parts for name in data.split.parts[part].names]
    reference = data.identity(names)
    for entry in present:
        folder = configs[entry["key"]].get("data_dir")
        if folder is None or Path(folder) == Path(data.data_dir):
            continue
        other = data_identity(Path(folder), index_images(folder), names) if Path(folder).is_dir() else None
        if other is None or other["files_sha256"] != reference["files_sha256"]:
            raise UserError(f"{entry['path']} was trained on the images in {folder}, {present[0]['path']} on "
                            f"{data.data_dir}, and their test images differ (file names, sizes or times); pass "
                            "--data-dir to score every model on one folder")


# Recipe flags whose difference from the undistilled baseline the comparison reports for each student.
RECIPE_KEYS = ("epochs", "batch_size", "lr", "weight_decay", "warmup_epochs", "crop_scale", "img_size", "seed",
               "precision")


def recipe_differences(student, baseline) -> str:
    """How a student's training differed from the undistilled EEEA-Net-C2's, besides the teacher (a cell)."""
    if baseline is None:
        return "baseline missing"
    trained = student.report["identity"]["recipe"].get("trained") or {}
    base = baseline.report["identity"]["recipe"].get("trained") or {}
    if not trained or not base:
        return "unknown (a checkpoint records no identity)"
    ours, theirs = trained["recipe"], base["recipe"]
    notes = [f"{key} {ours.get(key)} vs {theirs.get(key)}" for key in RECIPE_KEYS if ours.get(key) != theirs.get(key)]
    start = ours.get("initial_weights") or {}
    baseline_sha = baseline.report["identity"]["recipe"]["checkpoint_sha256"]
    if start.get("sha256") == baseline_sha:
        notes.insert(0, f"starts from {Path(baseline.checkpoint).name} (+ its {theirs.get('epochs')} epochs)")
    elif start != (theirs.get("initial_weights") or {}):
        notes.insert(0, f"other initial weights ({start.get('source', 'random')})")
    return "; ".join(notes) if notes else "same recipe"


def _view_auroc(report: dict, view: str):
    """Mean AUROC on one view position's images, or None (no demographics, or fewer than two patients)."""
    return report.get("subgroups", {}).get("view", {}).get(view, {}).get("mean_auroc")


def _row(entry: dict, result) -> dict:
    from common.explain.report import mean_localization_accuracy
    row = {"model": entry["key"], "role": entry["role"], "teacher": entry["teacher"], "label": entry["label"],
           "file": str(entry["path"]), "status": "ok" if result else "missing"}
    if entry.get("distilled_from"):
        row["distilled_from"] = entry["distilled_from"]["text"]
        if entry["teacher"] == "ensemble":
            row["label"] = f"{entry['label']} of {entry['distilled_from']['short']}"
    if result:
        report = result.report
        at_half = report["threshold_0.5"]["macro"]
        at_val = report.get("threshold_val_max_f1", {}).get("macro", {})
        # Classes predicted positive for no test image: their F1 and accuracy are those of an all-negative rule.
        none_half = report["threshold_0.5"].get("no_positive_classes", [])
        none_val = report.get("threshold_val_max_f1", {}).get("no_positive_classes", [])
        calibration = report.get("calibration", {})
        loc = entry.get("localization")
        row.update({"params": entry.get("params"), "macs": entry.get("macs"), "img_size": entry.get("img_size"),
                    "mean_auroc": report["mean_auroc"], "mean_f1@0.5": at_half["f1"],
                    "accuracy@0.5": at_half["accuracy"], "mean_f1@val": at_val.get("f1"),
                    "accuracy@val": at_val.get("accuracy"),
                    "no_positive@0.5": len(none_half), "no_positive_classes@0.5": "|".join(none_half),
                    "no_positive@val": len(none_val) if at_val else None,
                    "no_positive_classes@val": "|".join(none_val),
                    "auroc_PA": _view_auroc(report, "PA"), "auroc_AP": _view_auroc(report, "AP"),
                    "mean_ece": calibration.get("mean_ece"), "mean_brier": calibration.get("mean_brier"),
                    "loc_acc_iobb0.1": mean_localization_accuracy(loc, "iobb", 0.1),
                    "loc_acc_iobb0.5": mean_localization_accuracy(loc, "iobb", 0.5),
                    "loc_boxes": loc["boxes_scored"] if loc else None})
    return row


def _bootstrap(entries, results, n_boot: int) -> list[dict]:
    """Each distilled student against the undistilled EEEA-Net-C2 (model1): paired patient-level bootstrap."""
    from common.evaluation.metrics import patient_bootstrap_auroc_diff
    baseline_name = baseline_key()
    baseline = results.get(baseline_name)
    rows = []
    for entry in entries:
        if entry["role"] != "student":
            continue
        student = results.get(entry["key"])
        row = {"student": entry["key"], "against": baseline_name}
        if baseline is None or student is None:
            row["status"] = "missing " + (baseline_name if baseline is None else entry["key"])
        else:
            row.update(patient_bootstrap_auroc_diff(baseline.targets, baseline.probs, student.probs,
                                                    baseline.patient_ids, n_boot=n_boot, seed=0))
            row["status"] = "ok"
        rows.append(row)
    return rows


def _degenerate_cells(row: dict, where: str) -> tuple[str, str]:
    """``mean F1`` and ``accuracy`` cells at ``where`` ("0.5" or "val"), flagged when some class has no image
    predicted positive there, so that an all-negative accuracy is not read as skill."""
    f1, accuracy = _fmt(row[f"mean_f1@{where}"]), _fmt(row[f"accuracy@{where}"])
    count = row.get(f"no_positive@{where}")
    if count:
        note = f" (no positive predicted for {count}/{len(CLASS_NAMES)} classes)"
        f1, accuracy = f1 + note, accuracy + note
    return f1, accuracy


def _pair_cell(teacher: dict | None, student: dict, key: str, digits: int = 3) -> str:
    """``teacher / student`` of one column; "missing" for an absent model, "n/a" for a value not computed. A
    localisation value carries the number of boxes it was scored on."""
    def one(row):
        if row is None:
            return "—"
        if row["status"] != "ok":
            return "missing"
        return "n/a" if row.get(key) is None else f"{row[key]:.{digits}f}"
    cell = f"{one(teacher)} / {one(student)}"
    if key.startswith("loc_"):
        counts = [row.get("loc_boxes") for row in (teacher, student) if row is not None and row.get(key) is not None]
        if counts and len(set(counts)) == 1:
            cell += f" ({counts[0]} boxes)"
        elif counts:
            cell = (f"{one(teacher)} ({teacher.get('loc_boxes')} boxes) / {one(student)} "
                    f"({student.get('loc_boxes')} boxes)")
    return cell


def _ensemble_label(row: dict) -> str:
    """The ensemble student's teachers and weights, for the tables' first column."""
    described = row.get("distilled_from")
    if described:
        return f"ensemble: {described}"
    return "ensemble" if row.get("status") != "ok" else "ensemble (teachers not recorded)"


def _side_by_side(by_key: dict, with_localization: bool) -> list[str]:
    """Markdown: each teacher and its student on the AUROC by view, calibration and (when scored) localisation."""
    from common.models import model_folders
    columns = [("auroc_PA", "AUROC PA"), ("auroc_AP", "AUROC AP"), ("mean_ece", "mean ECE"),
               ("mean_brier", "mean Brier")]
    if with_localization:
        columns += [("loc_acc_iobb0.1", "loc. Acc IoBB>0.1"), ("loc_acc_iobb0.5", "loc. Acc IoBB>0.5")]
    lines = ["", "## Subgroups, calibration and localisation: teacher / student", "",
             "| teacher | " + " | ".join(title for _, title in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for index in list(model_folders()) + ["ensemble"]:
        student = by_key[f"modeld{index}" if index != "ensemble" else "modeld-ensemble"]
        teacher = None if index == "ensemble" else by_key[f"model{index}"]
        label = _ensemble_label(student) if teacher is None else teacher["label"]
        lines.append(f"| {label} | " + " | ".join(_pair_cell(teacher, student, key) for key, _ in columns) + " |")
    for row in by_key.values():
        if row["role"] == "external":
            # An external model has no teacher: its one value per column.
            lines.append(f"| {row['label']} (predictions file) | "
                         + " | ".join(_pair_cell(None, row, key).split(" / ")[1] for key, _ in columns) + " |")
    lines += ["", "AUROC PA / AP: mean AUROC on the posteroanterior / anteroposterior images only (views from the "
              "Data_Entry file; n/a without one). ECE: 15 equal-width bins, mean over the 14 classes; Brier: mean "
              "squared error of the probabilities. Localisation: mean over the boxed classes of Wang et al.'s Acc. "
              "(Grad-CAM, heatmap thresholds 60/180), with the number of NIH boxes on this split's test images it "
              "was scored on; per-class tables are in the printed output and comparison.json."]
    return lines


def _interval(results: dict, key: str | None):
    """The patient-bootstrap 95% interval of a model's test mean AUROC, or None."""
    result = results.get(key) if key else None
    interval = (result.report.get("mean_auroc_ci95") or {}) if result else {}
    return None if interval.get("low") is None else (interval["low"], interval["high"])


def _csv_text(rows: list[dict]) -> str:
    fields = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _write(output_dir: Path, rows, entries, results, bootstrap, split_text, labels, crop, spread=()) -> list[Path]:
    from common.evaluation.plots import plot_before_after
    from common.models import model_folders
    by_key = {row["model"]: row for row in rows}
    lines = ["# Before / after distillation into EEEA-Net-C2", "",
             f"Test part of {split_text}. Evaluation: {crop}. Metrics from scikit-learn; "
             "F1 and accuracy macro-averaged over the 14 classes, at threshold 0.5 and at per-class thresholds "
             "chosen on the validation split (max F1). Parameters and MACs are those of each model as trained (14-class "
             "head, at its input size): Visformer's and AutoFormerV2's parameter counts depend on the input size, so "
             "they differ from para-test's 224-px, original-head figures. \"No positive predicted for k classes\": at "
             "that threshold the model calls no test image positive for k classes, whose F1 is then 0 and whose "
             "accuracy is the share of negatives (an all-negative rule scores it), so these values are not skill.", "",
             "| model | file | params | MACs | mean AUROC | mean F1@0.5 | accuracy@0.5 | mean F1@val | accuracy@val |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        if row["status"] != "ok":
            lines.append(f"| {row['label']} | {Path(row['file']).name} | missing | | | | | | |")
            continue
        size = ("— (predictions file)", "—") if row["params"] is None else \
            (f"{row['params'] / 1e6:.2f}M", f"{row['macs'] / 1e9:.2f}G @{row['img_size']}")
        half, val = _degenerate_cells(row, "0.5"), _degenerate_cells(row, "val")
        lines.append(f"| {row['label']} | {Path(row['file']).name} | {size[0]} | {size[1]} | "
                     f"{_fmt(row['mean_auroc'])} | {half[0]} | {half[1]} | {val[0]} | {val[1]} |")
    lines += ["", "## Each teacher before, and its EEEA-Net-C2 student after", "",
              "| teacher | teacher mean AUROC | student mean AUROC | student − teacher | student − EEEA-Net-C2 "
              f"({baseline_key()}) [95% patient bootstrap CI] | student's recipe vs {baseline_key()} |",
              "|---|---|---|---|---|---|"]
    boot = {b["student"]: b for b in bootstrap}
    baseline = by_key[baseline_key()].get("mean_auroc")
    chart_rows = []
    for index in list(model_folders()) + ["ensemble"]:
        student_key = f"modeld{index}" if index != "ensemble" else "modeld-ensemble"
        teacher_auroc = None if index == "ensemble" else by_key[f"model{index}"].get("mean_auroc")
        student_auroc = by_key[student_key].get("mean_auroc")
        label = _ensemble_label(by_key[student_key]) if index == "ensemble" else by_key[f"model{index}"]["label"]
        b = boot.get(student_key, {})
        ci = (f"{b['diff']:+.4f} [{b['ci_low']:+.4f}, {b['ci_high']:+.4f}]" if b.get("status") == "ok"
              else b.get("status", "missing"))
        gap = (f"{student_auroc - teacher_auroc:+.4f}" if None not in (student_auroc, teacher_auroc) else "")
        teacher_cell = "— (an ensemble)" if index == "ensemble" else _fmt(teacher_auroc)
        recipe = by_key[student_key].get("recipe_vs_baseline", "")
        lines.append(f"| {label} | {teacher_cell} | {_fmt(student_auroc)} | {gap} | {ci} | {recipe} |")
        chart_label = label
        if index == "ensemble":
            short = (by_key[student_key].get("label") or "").partition(" of ")[2]
            chart_label = f"ensemble of {short}" if short else "ensemble"
        chart_rows.append({"label": chart_label, "teacher": teacher_auroc, "student": student_auroc,
                           "no_teacher": index == "ensemble",
                           "teacher_ci": _interval(results, None if index == "ensemble" else f"model{index}"),
                           "student_ci": _interval(results, student_key)})
    lines += _side_by_side(by_key, any(row.get("loc_boxes") for row in rows))
    lines += ["", "## Per-class test AUROC", "",
              "| class | " + " | ".join(r["model"] for r in rows if r["status"] == "ok") + " |",
              "|---|" + "---|" * sum(r["status"] == "ok" for r in rows)]
    per_class = []
    for name in CLASS_NAMES:
        cells = {}
        for row in rows:
            if row["status"] == "ok":
                value = results[row["model"]].report["auroc"][name]
                cells[row["model"]] = "n/a" if value is None else f"{value:.4f}"
        per_class.append({"class": name, **cells})
        lines.append(f"| {name} | " + " | ".join(cells.values()) + " |")
    lines.append("| **mean** | " + " | ".join(_fmt(r["mean_auroc"]) for r in rows if r["status"] == "ok") + " |")
    lines += ["", "Bootstrap: patients resampled with replacement (paired: the same resamples for both models), "
              f"{bootstrap[0].get('n_boot', 0) if bootstrap else 0} resamples; the interval is the 2.5-97.5 "
              "percentile range of the mean-AUROC difference. It covers test-set sampling only: each model was "
              "trained once (one training seed), so training-to-training variation is not in it, and with several "
              "students compared at once some interval will exclude 0 by chance (no multiplicity correction). "
              f"A difference from {baseline_key()} is the effect of distillation only where the recipe column says "
              "'same recipe'; otherwise it mixes distillation with the recipe differences listed.", ""]
    if spread:
        runs = max(row["runs"] for row in spread)
        lines += [f"## Across {runs} training runs with different seeds (--seed-runs)", "",
                  f"| model | runs | test mean AUROC, mean ± sd | student − {baseline_key()}, mean ± sd |",
                  "|---|---|---|---|"]
        for row in spread:
            diff = (f"{row['diff_mean']:+.4f} ± {row['diff_sd']:.4f}" if row.get("diff_sd") is not None
                    else ("" if row.get("diff_mean") is None else f"{row['diff_mean']:+.4f} (one run)"))
            sd = "" if row["mean_auroc_sd"] is None else f" ± {row['mean_auroc_sd']:.4f}"
            lines.append(f"| {row['model']} | {row['runs']} | {_fmt(row['mean_auroc_mean'])}{sd} | {diff} |")
        lines += ["", "The spread across seeds is the training-to-training variation the bootstrap above leaves "
                  "out; a difference smaller than it is not a finding.", ""]
    paths = [output_dir / n for n in ("comparison.md", "comparison.csv", "comparison-per-class.csv",
                                      "comparison-bootstrap.csv", "comparison.json", "comparison-auroc.png")]
    write_text_atomic("\n".join(lines), paths[0])
    write_text_atomic(_csv_text(rows), paths[1])
    write_text_atomic(_csv_text(per_class), paths[2])
    write_text_atomic(_csv_text(bootstrap), paths[3])
    identities = {key: result.report["identity"] for key, result in results.items()}
    details = {key: {part: result.report[part] for part in ("subgroups", "calibration", "localization")
                     if part in result.report} for key, result in results.items()}
    write_text_atomic(json.dumps({"split": split_text, "labels": labels, "crop": crop, "models": rows,
                                  "bootstrap": bootstrap, "seed_spread": list(spread), "identities": identities,
                                  "details": details},
                                 indent=2, default=str), paths[4])
    plot_before_after(chart_rows, baseline, paths[5],
                      f"Test mean AUROC before and after distillation ({split_text.split(' (')[0]}, {labels})")
    return paths


def main(argv=None, *, folder: Path | None = None) -> int:
    """``python test-model.py`` of folder 6 (``folder``: the script's folder): the before/after comparison."""
    args = get_args_parser().parse_args(argv)
    # Imported after parsing: --help (and a bad flag) answer without loading torch.
    from common.runs.layout import output_dir_for, teachers_root
    make_paths_absolute(args)
    output_dir = output_dir_for(args.output_dir, folder)
    compare(args, teachers_root(args.teachers_root, output_dir), output_dir)
    return 0
