"""Model cards (``<stem>-card.md``) and the shareable model folder built from a tested checkpoint.

- :func:`model_card`: the Markdown card of one evaluated checkpoint: architecture and size, training data (split,
  label release, images and patients), recipe (and for a student what it was distilled from), test results with
  intervals, subgroups, calibration, thresholds, the out-of-distribution threshold, intended and out-of-scope use,
  and the run identity. ``test-model.py`` writes one per model, folder 6 one per student.
- :func:`export_model_folder`: ``predict.py --export-hub DIR`` (:mod:`common.models.model_folder`), with the card
  written beside the checkpoint as its ``README.md``.
"""
from __future__ import annotations

import json
from pathlib import Path

from common.atomic import write_text_atomic
from common.constants import CLASS_NAMES
from common.data.fingerprint import file_sha256
from common.models import model_info
from common.models.model_folder import folder_config, write_model_folder

RESEARCH_NOTICE = ("Research model, not a medical device: it is not for clinical diagnosis, triage or any decision "
                   "about a patient.")
INTENDED_USE = [
    "Research on chest X-ray classification and knowledge distillation: comparing models, studying what "
    "distillation changes, on-device speed experiments.",
    "Frontal (PA/AP) adult chest radiographs like those of NIH ChestX-ray14 (one hospital, the NIH Clinical Center, "
    "1992-2015), given as PNG, JPEG or DICOM.",
]
OUT_OF_SCOPE = [
    "Clinical diagnosis, screening, triage or reporting, with or without a clinician: the labels were mined from "
    "radiology reports by text processing and are noisy, and the model has not been evaluated prospectively.",
    "Populations and images not in NIH ChestX-ray14: other hospitals and scanners, children, lateral views, "
    "portable images of other protocols, CT, photographs of films. The out-of-distribution score flags images far "
    "from the training images but cannot prove that an image is in distribution.",
    "Reading the Grad-CAM heatmaps as proof of where a finding is: they are an aid to inspection, not a "
    "localisation (see the localisation score where it was measured).",
    "Using the thresholds as operating points for patients: they maximise F1 on validation images and transfer "
    "imperfectly to another case mix.",
]


def card_path(checkpoint_path) -> Path:
    """``<stem>-card.md`` beside a checkpoint."""
    return Path(f"{Path(checkpoint_path).with_suffix('')}-card.md")


def _number(value, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _model_section(result, checkpoint: dict, size: dict) -> list[str]:
    info = model_info(checkpoint["model_name"])
    built = (f"timm `{info.timm_name}`" if info.timm_name
             else "`common.models.ofa_mobilenetv3` (an OFA MobileNetV3 subnet)")
    img_size = checkpoint["img_size"]
    lines = ["## Model", "", "| | |", "|---|---|",
             f"| architecture | {info.display_name} (registry name `{info.name}`, built by {built}) |",
             f"| parameters | {size['params'] / 1e6:.2f} M |"]
    if size.get("macs") is not None:
        lines.append(f"| multiply-accumulates | {size['macs'] / 1e9:.2f} G per image at {img_size} px |")
    lines += [f"| input | {img_size} x {img_size}: the grey image resized (bilinear) so its shorter side is "
              f"{int(round(img_size * 256 / 224))}, centre-cropped, repeated to 3 channels, normalised with mean "
              f"{list(checkpoint['mean'])} and std {list(checkpoint['std'])} |",
              f"| output | {len(CLASS_NAMES)} independent probabilities (sigmoid of the logits): "
              f"{', '.join(CLASS_NAMES)} |",
              f"| checkpoint | `{Path(result.checkpoint).name}`, sha256 `{result.report['identity']['recipe']['checkpoint_sha256']}`; "
              f"epoch {checkpoint.get('epoch')} chosen on the validation mean AUROC "
              f"({_number(checkpoint.get('val_mean_auroc'))}) |", ""]
    return lines


def _training_section(result, checkpoint: dict) -> list[str]:
    report = result.report
    identity = checkpoint.get("identity") or {}
    data = identity.get("data") or {}
    recipe = identity.get("recipe") or {}
    lines = ["## Training data", "",
             f"- Split: {report['split_description']} (patient-wise: no patient is in two parts; the checkpoint "
             "was chosen on the validation part).",
             f"- Label release: {report['label_file']}.",
             f"- Images read: {data.get('images', 'n/a')} training and validation files from `{data.get('data_dir')}` "
             f"(fingerprint of names, sizes and times `{data.get('files_sha256')}`).", "",
             "## Recipe", ""]
    if recipe:
        keys = ("epochs", "batch_size", "lr", "weight_decay", "warmup_epochs", "clip_grad", "crop_scale", "img_size",
                "pos_weight", "seed", "precision")
        lines.append("- " + ", ".join(f"{key} {recipe.get(key)}" for key in keys if key in recipe) + ".")
        start = recipe.get("initial_weights")
        lines.append(f"- Initial weights: {'random initialisation' if not start else start.get('source')}"
                     + (f" (sha256 `{start['sha256']}`)" if start and start.get("sha256") else "") + ".")
    else:
        lines.append("- Not recorded (a checkpoint made before run identities were recorded).")
    lines += _distillation_lines(checkpoint.get("distillation"))
    lines.append("")
    return lines


def _distillation_lines(distillation: dict | None) -> list[str]:
    if not distillation:
        return []
    teachers = distillation.get("teachers") or []
    names = "; ".join(f"teacher {t.get('index')}: {model_info(t['model_name']).display_name} (`{Path(t['path']).name}`, "
                      f"sha256 `{str(t.get('sha256'))[:12]}...`, validation mean AUROC "
                      f"{_number(t.get('val_mean_auroc'))})" for t in teachers)
    weights = distillation.get("ensemble_weights")
    lines = [f"- Distilled from {len(teachers)} teacher(s): {names}."]
    if len(teachers) > 1:
        lines.append(f"- Ensemble weights: {weights} ("
                     + ("the teachers' probabilities averaged equally" if weights == "uniform"
                        else "per class, proportional to each teacher's validation AUROC above chance") + ").")
    lines.append(f"- Loss: {distillation.get('alpha')} x BCE on the labels + {1 - float(distillation.get('alpha', 0)):g}"
                 f" x KD at temperature {distillation.get('temperature')}; teacher logits {distillation.get('teacher_mode')}"
                 + (f"; student started from `{distillation['student_init']}`" if distillation.get("student_init")
                    else "") + ".")
    return lines


def _results_section(result) -> list[str]:
    report = result.report
    interval = report.get("mean_auroc_ci95") or {}
    lines = ["## Test results", "",
             f"On the {report['part']} part of {report['split_description']}; labels {report['label_file']}; "
             f"{report['crop']} at {report['img_size']} px.", "",
             f"- Mean AUROC over {report['n_auroc_classes']} classes: **{_number(report['mean_auroc'])}**"
             + (f", 95% interval [{_number(interval.get('low'))}, {_number(interval.get('high'))}] "
                f"({interval.get('n_boot')} bootstrap resamples of the {interval.get('n_patients'):,} test patients)"
                if interval.get("low") is not None else "") + "."]
    at_val = report.get("threshold_val_max_f1")
    header = "| class | positives | AUROC |"
    if at_val:
        header += " threshold | F1 | sensitivity | specificity |"
    lines += ["", header, "|---|---|---|" + ("---|---|---|---|" if at_val else "")]
    for name in CLASS_NAMES:
        cells = [name, str(report["positives"][name]), _number(report["auroc"][name])]
        if at_val:
            cells += [_number(at_val["thresholds"][name], 3)] + [_number(at_val[m][name], 3)
                                                                for m in ("f1", "sensitivity", "specificity")]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if at_val:
        lines += [f"Thresholds: per class, the one with the highest F1 on the validation part "
                  f"({report['threshold_view']}). {report['threshold_note']}", ""]
    else:
        lines += ["No validation thresholds were recorded with this checkpoint.", ""]
    lines += _subgroup_lines(report) + _calibration_lines(report) + _localization_lines(report)
    return lines


def _subgroup_lines(report: dict) -> list[str]:
    subgroups = report.get("subgroups") or {}
    if "note" in subgroups or not subgroups:
        return ["### Subgroups", "", f"Not computed: {subgroups.get('note', 'no demographics')}.", ""]
    lines = ["### Subgroups", "",
             f"Mean AUROC by sex, age and view position (from `{Path(subgroups['source']).name}`; 95% intervals from "
             f"{subgroups['n_boot']} patient resamples):", "",
             "| group | images | patients | mean AUROC | 95% interval |", "|---|---|---|---|---|"]
    for grouping in ("sex", "age", "view"):
        for group, entry in subgroups.get(grouping, {}).items():
            interval = ("" if entry.get("ci_low") is None
                        else f"[{entry['ci_low']:.3f}, {entry['ci_high']:.3f}]")
            lines.append(f"| {grouping} {group} | {entry['n_images']} | {entry['n_patients']} | "
                         f"{_number(entry['mean_auroc'], 3)} | {interval} |")
    return lines + [""]


def _calibration_lines(report: dict) -> list[str]:
    cal = report.get("calibration")
    if not cal:
        return []
    worst = max(cal["per_class"], key=lambda c: cal["per_class"][c]["ece"])
    return ["### Calibration", "",
            f"Mean expected calibration error {cal['mean_ece']:.4f} ({cal['n_bins']} equal-width bins), mean Brier "
            f"score {cal['mean_brier']:.4f}; the largest ECE is {worst}'s ({cal['per_class'][worst]['ece']:.4f}). "
            "The reliability diagrams are in the `-test-reliability.png` beside the results.", ""]


def _localization_lines(report: dict) -> list[str]:
    loc = report.get("localization")
    if not loc:
        return []
    iobb = loc["scores"]["iobb"].get("0.1", {})
    mean = sum(v["acc"] for v in iobb.values()) / len(iobb) if iobb else None
    return ["### Localisation (Grad-CAM on the NIH boxes)", "",
            f"{loc['boxes_scored']} of the {loc['boxes_in_file']} boxes of {loc['bbox_file']} were on test images; "
            f"mean Acc. at IoBB > 0.1 over the boxed classes {_number(mean, 3)} (Wang et al.'s protocol, heatmap "
            f"thresholds {'/'.join(str(t) for t in loc['heatmap_thresholds'])}); {loc['empty_maps']} of the "
            f"{loc['pairs_scored']} heatmaps were constant.", ""]


def _ood_section(ood: dict | None) -> list[str]:
    lines = ["## Out-of-distribution score", ""]
    if not ood or "threshold" not in ood:
        note = (ood or {}).get("note", "not fitted")
        return lines + [f"Not available: {note}.", ""]
    described = {"pre_logits": "its pre-logits features (what the network makes of it; Lee et al., NeurIPS 2018)",
                 "input_8x8": "the 8 x 8 block means of its input crop (the overall layout of the image)"}
    parts = ood.get("parts", {})
    lines += [f"`predict.py` scores every image by its Mahalanobis distance to the {ood['n_fit']:,} training images "
              f"({ood.get('fit_part', 'train')}; means and Ledoit-Wolf shrunk covariances) on "
              + " and on ".join(described[name] for name in parts)
              + "; each distance is divided by its 99th percentile on the validation images and the larger one is "
              f"the score. An image scoring above **{ood['threshold']:.2f}**, the {ood['percentile']:g}th percentile "
              f"of the {ood['n_threshold']:,} validation images' scores, is reported as \"unlike the training "
              "images: the probabilities may not mean anything\". About 1% of genuine in-distribution images are "
              "flagged by construction, and an image below the threshold is not thereby shown to be a chest X-ray "
              "like the training ones.", ""]
    for name, reason in (ood.get("omitted") or {}).items():
        lines += [f"Left out: {name}, because {reason}.", ""]
    return lines


def _identity_section(result, checkpoint: dict) -> list[str]:
    identity = result.report.get("identity") or {}
    trained = checkpoint.get("identity") or {}
    return ["## Run identity", "",
            f"- Test: split `{json.dumps(identity.get('split'))}`, test images fingerprint "
            f"`{(identity.get('data') or {}).get('files_sha256')}`, {identity.get('recipe', {}).get('crop')}, "
            f"{identity.get('recipe', {}).get('precision')}.",
            f"- Training: split `{json.dumps(trained.get('split'))}`, package {trained.get('package_version')}, "
            f"git commit `{trained.get('git_commit') or checkpoint.get('git_commit')}`.",
            f"- The full record is the `identity` entry of `{Path(result.checkpoint).with_suffix('').name}-test.json`.",
            ""]


def model_card(result, checkpoint: dict, ood: dict | None, size: dict) -> str:
    """The Markdown model card of an evaluated checkpoint.

    Args:
        result: the :class:`~common.evaluation.scoring.TestResult` of its test part.
        checkpoint: the checkpoint dict (metadata, ``identity``, ``distillation`` for a student).
        ood: :func:`common.evaluation.ood.ood_summary` of its OOD statistics.
        size: ``{"params": int, "macs": int or None}``.
    """
    info = model_info(checkpoint["model_name"])
    title = f"# Model card: {info.display_name}"
    distillation = checkpoint.get("distillation")
    if distillation:
        title += " distilled from " + ", ".join(model_info(t["model_name"]).display_name
                                               for t in distillation.get("teachers") or [])
    lines = [title + f" (`{Path(result.checkpoint).name}`)", "", f"> {RESEARCH_NOTICE}", ""]
    lines += _model_section(result, checkpoint, size) + _training_section(result, checkpoint)
    lines += _results_section(result) + _ood_section(ood)
    lines += ["## Intended use", ""] + [f"- {line}" for line in INTENDED_USE] + [""]
    lines += ["## Out of scope", ""] + [f"- {line}" for line in OUT_OF_SCOPE] + [""]
    lines += _identity_section(result, checkpoint)
    return "\n".join(lines)


def write_model_card(result, checkpoint: dict, ood: dict | None) -> Path:
    """Write :func:`model_card` to ``<stem>-card.md`` beside the checkpoint; returns the path."""
    from common.models.profile import count_parameters, macs
    size = {"params": count_parameters(result.model), "macs": macs(result.model, int(checkpoint["img_size"]))}
    path = card_path(result.checkpoint)
    write_text_atomic(model_card(result, checkpoint, ood, size), path)
    return path


def export_model_folder(checkpoint_path: Path, checkpoint: dict, model, ood: dict | None, folder: Path,
                        license_name: str = "other") -> Path:
    """``predict.py --export-hub DIR``: the model folder of a checkpoint (:mod:`common.models.model_folder`).

    The card is ``<stem>-card.md`` beside the checkpoint (``test-model.py`` writes it); without it the folder's
    README.md says the model was not tested, and a note is printed. The thresholds are the checkpoint's validation
    thresholds; the test summary and identity come from ``<stem>-test.json`` when it is there.
    """
    checkpoint_path = Path(checkpoint_path)
    card = card_path(checkpoint_path)
    test_json = Path(f"{checkpoint_path.with_suffix('')}-test.json")
    test = json.loads(test_json.read_text()) if test_json.is_file() else None
    if card.is_file():
        card_text = card.read_text()
    else:
        print(f"note: {card.name} not found: run test-model.py first so the folder's README.md has the test "
              "results; it says the model is untested for now")
        info = model_info(checkpoint["model_name"])
        card_text = "\n".join([f"# Model card: {info.display_name} (`{checkpoint_path.name}`)", "",
                               f"> {RESEARCH_NOTICE}", "", "This model has not been tested: no test results, "
                               "subgroups or calibration are known.", "", "## Out of scope", ""]
                              + [f"- {line}" for line in OUT_OF_SCOPE]) + "\n"
    if license_name == "other":
        card_text = ("---\nlicense: other\nlicense_name: see-card\ntags:\n- chest-x-ray\n- image-classification\n"
                     "- research-only\n---\n\n" + card_text + "\n## License\n\nWeights trained on NIH ChestX-ray14 "
                     "(released by the NIH Clinical Center for unrestricted use; cite Wang et al., CVPR 2017). The "
                     "initial weights, if any, carry their own terms (docs/architectures.md §13).\n")
    else:
        card_text = f"---\nlicense: {license_name}\ntags:\n- chest-x-ray\n- research-only\n---\n\n" + card_text
    thresholds = checkpoint.get("val_thresholds")
    section = {
        "thresholds": None if thresholds is None else dict(zip(CLASS_NAMES, map(float, thresholds))),
        "threshold_rule": "per class, maximum F1 on the validation part (centre crop); above it a finding is "
                          "reported positive",
        "ood": ood, "identity": checkpoint.get("identity"), "training_flags": checkpoint.get("config"),
        "epoch": checkpoint.get("epoch"), "val_mean_auroc": checkpoint.get("val_mean_auroc"),
        "distillation": checkpoint.get("distillation"),
        "exported_from": {"checkpoint": checkpoint_path.name,
                          "sha256": None if checkpoint_path.is_dir() else file_sha256(checkpoint_path)},
        "test": None if test is None else {"mean_auroc": test.get("mean_auroc"), "ci95": test.get("mean_auroc_ci95"),
                                          "split": test.get("split"), "part": test.get("part"),
                                          "label_file": test.get("label_file"), "identity": test.get("identity")},
        "research_notice": RESEARCH_NOTICE,
    }
    config = folder_config(model, checkpoint["model_name"], int(checkpoint["img_size"]), checkpoint["mean"],
                           checkpoint["std"], CLASS_NAMES, license_name, section)
    return write_model_folder(folder, model, config, card_text)
