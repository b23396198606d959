"""The browser export of one checkpoint: a static folder (``index.html``, ``model.onnx``, onnxruntime-web, the page's
scripts and ``model.json``) that runs the model on the user's image in the browser, nothing fetched from elsewhere.

:func:`export_browser_folder` loads the checkpoint, writes the graph (:mod:`common.explain.browser_graph`), checks
it against PyTorch on two test crops (probabilities; heatmaps against :func:`common.explain.gradcam.gradcam_maps`,
the maps of ``predict.py --cam``; the OOD score against a float64 computation) and writes the folder
(:mod:`common.inference.web_page`). ``python -m common.commands.web_export`` and ``predict.py --export-web`` call it.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from common.constants import CLASS_NAMES
from common.errors import UserError
from common.evaluation.ood import load_ood_statistics
from common.explain.browser_graph import (
    CROP_INPUT,
    HEATMAPS_OUTPUT,
    OOD_OUTPUT,
    PROBABILITIES_OUTPUT,
    export_browser_onnx,
)
from common.explain.gradcam import gradcam_maps
from common.inference import web_page
from common.inference.ood import INPUT_PART, OOD_LAYER, input_blocks, ood_scores
from common.models import model_info
from common.runs.checkpoint import load_model_from_checkpoint

#: A graph whose probabilities differ from PyTorch's by more than this is a bug, not rounding (the ONNX exports of
#: the five networks agree to <= 1e-4, Visformer with random weights to ~1e-4).
PROBABILITY_TOLERANCE = 1e-3


@dataclass(frozen=True)
class BrowserExport:
    """What an export wrote and measured."""

    folder: Path
    model_name: str
    heatmaps: bool
    ood: bool
    check: dict          # probability / heatmap / OOD differences from PyTorch on the two test crops
    runtime_version: str

    def summary(self) -> str:
        """The lines an export prints: the folder, what the page offers, the measured agreement, how to serve it."""
        check = self.check
        lines = [f"wrote the browser page of {self.model_name} to {self.folder} (onnxruntime-web "
                 f"{self.runtime_version})",
                 f"  probabilities: within {check['max_probability_difference']:.1e} of PyTorch on the export check"]
        if self.heatmaps:
            lines.append(f"  heatmaps: Grad-CAM in the graph, within {check['max_heatmap_difference']:.1e} of "
                         "predict.py --cam (0-1 scale)")
        else:
            lines.append("  heatmaps: none for this network in the page (predict.py --cam draws them)")
        lines.append("  out-of-distribution score: " + (f"in the graph (relative difference "
                                                         f"{check['max_ood_relative_difference']:.1e})" if self.ood
                                                         else "no statistics in this checkpoint"))
        lines.append(f"serve it with: python -m http.server 8000 --bind 127.0.0.1 --directory {self.folder}  "
                     "(then open http://127.0.0.1:8000/)")
        return "\n".join(lines)


def check_crops(img_size: int) -> np.ndarray:
    """Two deterministic uint8 crops ``[2, 1, s, s]`` for the export check: a smooth radial pattern with
    structure at several scales, and seeded noise blurred by a box filter (neither is a constant image, whose
    heatmaps would be zero)."""
    y, x = np.mgrid[0:img_size, 0:img_size] / max(1, img_size - 1)
    radial = 0.5 + 0.35 * np.cos(9 * np.hypot(x - 0.4, y - 0.55)) + 0.15 * np.sin(23 * x * y)
    noise = np.random.default_rng(0).random((img_size + 4, img_size + 4))
    blurred = sum(noise[i:i + img_size, j:j + img_size] for i in range(5) for j in range(5)) / 25
    blurred = (blurred - blurred.min()) / max(1e-9, blurred.max() - blurred.min())
    crops = np.stack([radial, blurred])
    return np.clip(np.rint(crops * 255), 0, 255).astype(np.uint8)[:, None]


def check_browser_graph(path: Path, model, model_name: str, mean, std, ood: Optional[dict],
                        crops: np.ndarray) -> dict:
    """Run the exported graph with onnxruntime on ``crops`` and compare with PyTorch.

    Returns:
        ``max_probability_difference``; with heatmaps ``max_heatmap_difference`` (against ``gradcam_maps``, all
        classes) and ``mean_heatmap_difference``; with OOD ``max_ood_relative_difference`` (against float64).

    Raises:
        RuntimeError: the probabilities differ by more than :data:`PROBABILITY_TOLERANCE` (a wrong graph).
    """
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    got = dict(zip(names, session.run(None, {CROP_INPUT: crops})))
    mean_t = torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1)
    images = (torch.from_numpy(crops).float() / 255.0).expand(-1, 3, -1, -1)
    images = ((images - mean_t) / std_t).to(next(model.parameters()).device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            expected = torch.sigmoid(model(images)).cpu().numpy()
            pre_logits = (model.forward_head(model.forward_features(images), pre_logits=True).flatten(1).cpu()
                          .double().numpy() if ood is not None else None)
    finally:
        model.train(was_training)
    check = {"max_probability_difference": float(np.abs(got[PROBABILITIES_OUTPUT] - expected).max())}
    if check["max_probability_difference"] > PROBABILITY_TOLERANCE:
        raise RuntimeError(f"the browser graph's probabilities differ from PyTorch's by "
                           f"{check['max_probability_difference']:.3g} (> {PROBABILITY_TOLERANCE})")
    if HEATMAPS_OUTPUT in got:
        classes = list(range(len(CLASS_NAMES)))
        differences = [np.abs(gradcam_maps(model, model_name, images[i:i + 1].expand(len(classes), -1, -1, -1),
                                           classes) - got[HEATMAPS_OUTPUT][i]) for i in range(len(images))]
        check["max_heatmap_difference"] = float(max(d.max() for d in differences))
        check["mean_heatmap_difference"] = float(np.mean([d.mean() for d in differences]))
    if ood is not None:
        reference = ood_scores({OOD_LAYER: pre_logits, INPUT_PART: input_blocks(images.cpu().numpy())}, ood)
        check["max_ood_relative_difference"] = float(np.max(np.abs(got[OOD_OUTPUT] - reference)
                                                            / np.maximum(np.abs(reference), 1e-12)))
    return check


def _test_report(checkpoint_path: Path) -> Optional[dict]:
    path = Path(f"{checkpoint_path.with_suffix('')}-test.json")
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read the test results {path}: {err}") from None


def export_browser_folder(checkpoint_path: str | os.PathLike, out_dir: str | os.PathLike,
                          runtime_dir: str | os.PathLike | None = None,
                          expected_model: str | None = None) -> BrowserExport:
    """Write the browser page of a checkpoint into ``out_dir`` (absent, empty or a previous export).

    Args:
        checkpoint_path: a checkpoint of this project (any of the five networks or a student).
        out_dir: the folder to write; it appears complete or not at all.
        runtime_dir: onnxruntime-web's ``dist`` folder (default: ``web/node_modules/onnxruntime-web/dist``).
        expected_model: refuse a checkpoint of another network (``predict.py`` of a numbered folder).

    Raises:
        UserError: onnxruntime-web is not installed, the folder holds other files, the checkpoint is unreadable or
            its OOD statistics are malformed.
    """
    runtime_dir = Path(runtime_dir) if runtime_dir else web_page.default_runtime_dir()
    version = web_page.require_runtime(runtime_dir)   # before the slow part: the likeliest missing piece
    checkpoint_path = Path(checkpoint_path)
    checkpoint, model = load_model_from_checkpoint(checkpoint_path, expected_model=expected_model)
    model.eval()
    info = model_info(checkpoint["model_name"])
    mean, std = checkpoint["mean"], checkpoint["std"]
    class_names = list(checkpoint.get("class_names") or CLASS_NAMES)
    ood, ood_note = load_ood_statistics(checkpoint_path, checkpoint)   # checkpoint["ood"] or <stem>-ood.json
    report = _test_report(checkpoint_path)
    with web_page.staged_folder(out_dir) as folder:
        graph = export_browser_onnx(model, checkpoint["model_name"], int(checkpoint["img_size"]),
                                    folder / web_page.MODEL_FILE, mean=mean, std=std, class_names=class_names,
                                    ood=ood, source=str(checkpoint_path))
        check = check_browser_graph(folder / web_page.MODEL_FILE, model, checkpoint["model_name"], mean, std, ood,
                                    check_crops(int(checkpoint["img_size"])))
        if graph["heatmaps"]:
            heatmap_text = (f"Grad-CAM at {info.display_name}'s last feature stage, the class weights computed in "
                            f"the graph; at export it differed from predict.py --cam by at most "
                            f"{check['max_heatmap_difference']:.1e} (mean {check['mean_heatmap_difference']:.1e}) "
                            "on a 0–1 scale")
        else:
            heatmap_text = f"none in the page for {info.display_name} (use predict.py --cam)"
        thresholds = checkpoint.get("val_thresholds")
        meta = {**graph, "thresholds": [float(t) for t in thresholds] if thresholds else None,
                "card": web_page.card_facts(checkpoint, checkpoint_path, report, display_name=info.display_name,
                                            parameters=sum(p.numel() for p in model.parameters()),
                                            heatmap_text=heatmap_text, ood=ood, ood_note=ood_note),
                "ood_note": ood_note,
                "card_network": info.display_name,
                "heatmap_note": "its head after the last feature stage is not written as graph operations; "
                                "predict.py --cam draws it" if not graph["heatmaps"] else None,
                "export_check": check, "onnxruntime_web": version, "research_line": web_page.RESEARCH_LINE,
                "checkpoint": checkpoint_path.name}
        web_page.write_page(folder, meta, runtime_dir)
    return BrowserExport(Path(out_dir), checkpoint["model_name"], graph["heatmaps"], ood is not None, check, version)
