"""The static folder of the browser export, without torch: the page's files, the onnxruntime-web runtime copied from
``web/node_modules`` and ``model.json`` (what the page shows besides the model's outputs).

- :func:`default_runtime_dir` / :func:`require_runtime`: where ``npm ci --prefix web`` puts onnxruntime-web, and a
  one-line :class:`UserError` when it is not there.
- :func:`card_facts`: the model card's key facts (network, data and split, test AUROC with its interval when
  ``<checkpoint stem>-test.json`` lies beside the checkpoint, thresholds, heatmap, out-of-distribution statistics).
- :func:`staged_folder`: build the folder under a temporary name and move it into place only when complete.
- :func:`write_page`: copy the page and the runtime, write ``model.json``.

The graph itself is written by :mod:`common.explain.browser_graph`; the whole export is
:func:`common.explain.browser_export.export_browser_folder`.
"""
from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import common
from common.atomic import write_text_atomic
from common.errors import UserError

#: The onnxruntime-web files the page loads: the WebAssembly build's ES module (its JavaScript glue bundled in) and
#: the SIMD + threads WebAssembly binary it fetches beside itself. WebGPU/WebGL builds are not copied.
RUNTIME_FILES = ("ort.wasm.bundle.min.mjs", "ort-wasm-simd-threaded.wasm")
PAGE_FILES = ("index.html", "app.mjs", "preprocess.mjs", "style.css")
PAGE_SOURCE = Path(__file__).resolve().parents[1] / "resources" / "web"
MODEL_FILE = "model.onnx"
META_FILE = "model.json"
NOTICE_FILE = "THIRD-PARTY.txt"
#: ``model.json`` says it is an export, so that a later export may replace the folder and nothing else.
EXPORT_MARKER = "dtforcxr8_browser_export"
RESEARCH_LINE = "Research use only, not a medical device."
_PART_WORDS = {"pre_logits": "pre-logit features", "input_8x8": "8×8 layout"}


def default_runtime_dir() -> Path:
    """``web/node_modules/onnxruntime-web/dist`` of the repository this package lives in."""
    return Path(common.__file__).resolve().parents[1] / "web" / "node_modules" / "onnxruntime-web" / "dist"


def require_runtime(runtime_dir: str | os.PathLike) -> str:
    """Check that the onnxruntime-web files are in ``runtime_dir`` and return its version (its package.json).

    Raises:
        UserError: a file is missing, with the command that installs them.
    """
    runtime_dir = Path(runtime_dir)
    missing = [name for name in RUNTIME_FILES if not (runtime_dir / name).is_file()]
    if missing:
        raise UserError(f"onnxruntime-web is not installed ({runtime_dir / missing[0]} is missing): run "
                        "`npm ci --prefix web` in the repository (Node.js and npm fetch the version pinned in "
                        "web/package-lock.json), or pass --onnxruntime-web DIR")
    package = runtime_dir.parent / "package.json"
    try:
        return str(json.loads(package.read_text())["version"])
    except (OSError, ValueError, KeyError):
        raise UserError(f"{package} is missing or unreadable: reinstall with `npm ci --prefix web`") from None


def _interval_text(report: dict) -> str:
    interval = report.get("mean_auroc_ci95") or {}
    if interval.get("low") is None or interval.get("high") is None:
        return ""
    return (f" (95% interval {interval['low']:.3f}–{interval['high']:.3f}, {interval.get('n_boot', '?')} patient "
            f"bootstrap resamples of {interval.get('n_patients', '?')} patients)")


def card_facts(checkpoint: dict, checkpoint_path: Path, test_report: Optional[dict], *, display_name: str,
               parameters: int, heatmap_text: str, ood: Optional[dict] = None,
               ood_note: str = "") -> list[tuple[str, str]]:
    """The model card's key facts as ``(label, text)`` rows, in the order the page shows them.

    Args:
        checkpoint: the checkpoint's metadata (``model_name``, ``img_size``, ``split_description``, ``label_file``,
            ``epoch``, ``val_mean_auroc``, ``val_thresholds``, ``distillation``, ``git_commit``).
        checkpoint_path: the file (named on the card).
        test_report: ``<stem>-test.json`` of ``test-model.py`` or None.
        display_name: the network's display name.
        parameters: its parameter count.
        heatmap_text: what the heatmap is and how close it was measured to be to ``predict.py --cam``.
        ood: the out-of-distribution statistics (:mod:`common.inference.ood`) or None, with ``ood_note`` saying
            where they came from or why there are none.
    """
    size = checkpoint["img_size"]
    facts = [("Network", f"{display_name} ({checkpoint['model_name']}), {parameters:,} parameters, "
                         f"{size}×{size} grey input")]
    trained = f"{checkpoint_path.name}"
    if checkpoint.get("epoch") is not None:
        trained += f", epoch {checkpoint['epoch']}"
    if checkpoint.get("val_mean_auroc") is not None:
        trained += f", chosen on validation mean AUROC {checkpoint['val_mean_auroc']:.4f}"
    facts.append(("Checkpoint", trained))
    data = checkpoint.get("split_description") or f"split {checkpoint.get('split', 'unknown')}"
    facts.append(("Training data", data))
    distillation = checkpoint.get("distillation")
    if distillation:
        teachers = ", ".join(f"{t.get('model_name', '?')} (model{t.get('index', '?')})"
                             for t in distillation.get("teachers", []))
        facts.append(("Distilled from", f"{teachers}; alpha {distillation.get('alpha')}, temperature "
                                        f"{distillation.get('temperature')}"))
    if test_report is not None and test_report.get("mean_auroc") is not None:
        facts.append(("Test result", f"mean AUROC {test_report['mean_auroc']:.3f}{_interval_text(test_report)} on "
                                     f"the {test_report.get('part', 'test')} part of split "
                                     f"{test_report.get('split', '?')}, {test_report.get('n_images', '?')} images, "
                                     f"{test_report.get('crop', 'centre crop')}; labels "
                                     f"{test_report.get('label_file', '?')}"))
    else:
        stem = checkpoint_path.with_suffix("").name
        facts.append(("Test result", f"none beside the checkpoint ({stem}-test.json, written by test-model.py)"))
    thresholds = checkpoint.get("val_thresholds")
    facts.append(("Thresholds", "per class, the maximum-F1 threshold on the validation part, chosen when the "
                                "checkpoint was saved" if thresholds else
                                "none in this checkpoint, so no finding is marked"))
    facts.append(("Heatmap", heatmap_text))
    if ood:
        ood_text = (f"Mahalanobis distances of the image's {' and '.join(_PART_WORDS.get(n, n) for n in ood['parts'])} "
                    f"to the training images' (Ledoit-Wolf), each divided by its {float(ood['percentile']):g}th "
                    f"percentile on the validation images; flagged above {float(ood['threshold']):.2f} ({ood_note})")
    else:
        ood_text = f"no out-of-distribution statistics in this checkpoint ({ood_note})" if ood_note else \
            "no out-of-distribution statistics in this checkpoint"
    facts.append(("Out-of-distribution score", ood_text))
    facts.append(("Preprocessing", f"grey; shorter side resized to {int(round(size * 256 / 224))} px (Pillow's "
                                   f"bilinear filter, reproduced exactly), centre crop {size}×{size}; as predict.py"))
    facts.append(("Intended use", "research on chest X-ray classification with frontal radiographs like those of "
                                  "NIH ChestX-ray14. Not for diagnosis or treatment; not validated on other "
                                  "populations or devices; a heatmap is an aid to inspection, not proof."))
    if checkpoint.get("git_commit"):
        facts.append(("Code", f"git commit {checkpoint['git_commit']} (training)"))
    return facts


@contextmanager
def staged_folder(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``out_dir``; on success it replaces ``out_dir``, on an error it is
    removed and ``out_dir`` is left as it was.

    ``out_dir`` may be absent, empty, or a previous export (its ``model.json`` carries :data:`EXPORT_MARKER`); any
    other folder or file is refused, so an export never deletes the user's files.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir} is a file; give a folder to export the page into")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not _is_export(out_dir):
        raise UserError(f"{out_dir} holds other files; give an empty or new folder (a previous export is replaced)")
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = out_dir.parent / f".{out_dir.name}.export-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
    except OSError as err:
        raise UserError(f"cannot create the export folder beside {out_dir}: {err.strerror or err}") from None
    try:
        yield staging
        previous = out_dir.parent / f".{out_dir.name}.previous-{os.getpid()}"
        if out_dir.exists():
            os.replace(out_dir, previous)
        os.replace(staging, out_dir)
        shutil.rmtree(previous, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _is_export(folder: Path) -> bool:
    try:
        return bool(json.loads((folder / META_FILE).read_text()).get(EXPORT_MARKER))
    except (OSError, ValueError, AttributeError):
        return False


def write_page(folder: Path, meta: dict, runtime_dir: str | os.PathLike) -> None:
    """Copy the page's files and the onnxruntime-web runtime into ``folder``, write its licence notice and
    ``model.json`` from ``meta``. The ONNX file must be in ``folder`` already."""
    runtime_dir = Path(runtime_dir)
    try:
        for name in PAGE_FILES:
            shutil.copyfile(PAGE_SOURCE / name, folder / name)
        for name in RUNTIME_FILES:
            shutil.copyfile(runtime_dir / name, folder / name)
    except OSError as err:
        raise UserError(f"cannot copy the page into {folder}: {err.strerror or err}") from None
    package = json.loads((runtime_dir.parent / "package.json").read_text())
    write_text_atomic(f"{RUNTIME_FILES[0]} and {RUNTIME_FILES[1]} are from {package.get('name', 'onnxruntime-web')} "
                      f"{package.get('version', '?')} (ONNX Runtime, Microsoft), licence "
                      f"{package.get('license', 'see its package.json')}, installed from the npm registry with "
                      "`npm ci --prefix web`.\n", folder / NOTICE_FILE)
    write_text_atomic(json.dumps({EXPORT_MARKER: True, **meta}, indent=1), folder / META_FILE)
