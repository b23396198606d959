"""A full-scale rehearsal of every CPU-side stage: the real 112,120 names with tiny synthetic pixels.

    nice -n 10 python benchmarks/rehearsal.py [--work-dir DIR] [--sizes quarter,half,full] [--image-size 32]
                                              [--train-steps 40] [--stages index,cache,train,test,compare,localization]

The set: every image name, patient, label, age, sex and view of the packaged Data_Entry_2017_v2020 (112,120 images,
30,805 patients), the official train_val/test lists and the 984 NIH boxes, with pixels drawn by the synthetic
generator's drawing (``common.data.synthetic.draw_chest_image``: each image shows its real findings) at
``--image-size`` px. The PNGs are written once into ``--work-dir`` (default: a folder in the temporary directory,
kept for the next run; about 1 KB each, 2 processes). The quarter and half sets are the images of the first 1/4 and
1/2 of the patients in a seeded order (hard links, nested: quarter within half within full), each with its own
filtered lists, Data_Entry file and box list.

At each size every stage runs as the user's command would, in a fresh subprocess (so each peak memory is its own):

- ``index``: the image index of the folder, the split with its leakage check and the missing-image check, and
  the pixel identity of every used file (``SplitData`` of train, val and test, as training and testing build it);
- ``cache``: ``python -m common.image_cache`` at the eval size of the input size (2 decoding processes);
- ``train``: folder 1's ``train-model.py`` (EEEA-Net-C2) for one epoch from the image cache, its training steps
  cut to ``--train-steps`` batches of 64 (everything else whole: data set-up, the validation pass over the whole
  validation part, thresholds, checkpoints);
- ``test``: folder 1's ``test-model.py`` on the official test part from the image cache (inference, metrics, the
  1000-resample interval, subgroups and calibration, result files);
- ``compare``: folder 6's ``test-model.py`` over eleven models (five teachers, five students and the ensemble; the
  trained checkpoint copied into each place) whose test predictions are there from an earlier run (each model
  its own logits: the trained model's plus seeded noise), so the comparison reuses them as a re-run does and
  scores, bootstraps and writes everything else;
- ``localization``: Grad-CAM of the trained model on every NIH box of the test part (Wang et al.'s protocol).

Printed per stage and size: wall time, CPU time (user + system, this process and its workers), peak resident
memory (the largest of the process and its workers) and its growth over the process's memory before the stage;
then each stage's growth exponent, the log-log slope of time from quarter to full (1.0 = linear). Targets
(issue 18): exponent <= 1.15 and, at full size on 2 cores, no stage above 10 minutes or 4 GB. On a shared machine
the wall times carry the other processes' load (printed); the CPU times and their exponents do not.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np

from common.commands._cli import ArgumentParser, positive_int, run_main
from common.constants import CLASS_NAMES, DISTILL_FOLDER
from common.data.labels import patient_id_from_name, read_text, resource_path
from common.errors import UserError

REPO = Path(__file__).resolve().parents[1]
SIZES = {"quarter": 0.25, "half": 0.5, "full": 1.0}
STAGES = ("index", "cache", "train", "test", "compare", "localization")
DATA_ENTRY = "Data_Entry_2017_v2020.csv"
BBOX = "BBox_List_2017.csv"
RESULT_MARK = "REHEARSAL-RESULT "
LIMIT_SECONDS, LIMIT_GB, LIMIT_EXPONENT = 600, 4.0, 1.15


def get_args_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="benchmarks/rehearsal.py", description=__doc__.split("\n")[0])
    parser.add_argument("--work-dir", default=str(Path(tempfile.gettempdir()) / "cxr8-rehearsal"),
                        help="where the images and every stage's output go (kept; default: %(default)s)")
    parser.add_argument("--sizes", default="quarter,half,full", help="sizes to run (default quarter,half,full)")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"stages to run (default {','.join(STAGES)})")
    parser.add_argument("--image-size", type=positive_int, default=32, help="PNG side in px (default 32)")
    parser.add_argument("--train-steps", type=positive_int, default=40,
                        help="training steps of the one epoch (default 40 batches of 64)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the pixels and of the patient order")
    parser.add_argument("--keep-done", action="store_true",
                        help="take the figures of a stage whose log in --work-dir already has them (an interrupted "
                             "rehearsal goes on where it stopped) instead of running it again")
    # The child side: one stage at one size, run by the parent in a fresh process.
    parser.add_argument("--scale", type=float, default=1.0,
                        help="share of the 30,805 patients the full size takes (default 1; 0.05 for a quick look)")
    parser.add_argument("--child", nargs=2, metavar=("STAGE", "SIZE"), default=None, help=argparse.SUPPRESS)
    return parser


# --------------------------------------------------------------------------------------------------------------------
# The set: real names and metadata, synthetic pixels
# --------------------------------------------------------------------------------------------------------------------
def _draw_patients(task) -> int:
    """Write the PNGs of a chunk of patients: ``(images folder, size, seed, [(patient, [(name, labels)])])``."""
    from PIL import Image

    from common.data.synthetic import draw_chest_image, random_anatomy

    folder, size, seed, patients = task
    written = 0
    for patient, images in patients:
        rng = np.random.default_rng([seed, patient])
        anatomy = random_anatomy(rng)
        for name, labels in images:
            Image.fromarray(draw_chest_image(size, labels, rng, anatomy), mode="L").save(Path(folder) / name)
            written += 1
    return written


def _data_entry_rows() -> tuple[list[str], list[list[str]]]:
    text = read_text(resource_path(f"{DATA_ENTRY}.gz"))
    rows = list(csv.reader(io.StringIO(text)))
    return rows[0], rows[1:]


def patient_order(rows: list[list[str]], patient_col: int, seed: int) -> np.ndarray:
    """Every patient id in a seeded order: a size takes the first share of it, so the sizes are nested."""
    return np.random.default_rng(seed).permutation(sorted({int(row[patient_col]) for row in rows}))


def size_patients(order: np.ndarray, size_name: str, scale: float) -> set:
    return set(order[:max(2, round(SIZES[size_name] * scale * order.size))].tolist())


def generate_images(root: Path, size: int, seed: int, scale: float) -> Path:
    """The PNGs of the full size (``scale`` of the patients) in ``root/full/images``, drawn once; a finished set is
    recorded in ``root/full/DONE.json``."""
    from concurrent.futures import ProcessPoolExecutor

    from common.data.labels import labels_from_findings

    done = root / "full" / "DONE.json"
    wanted = {"image_size": size, "seed": seed, "scale": scale}
    images = root / "full" / "images"
    if done.is_file() and json.loads(done.read_text()) == wanted:
        return images
    if images.exists():
        shutil.rmtree(images)
    images.mkdir(parents=True)
    header, rows = _data_entry_rows()
    name_col, findings_col, patient_col = (header.index(c) for c in ("Image Index", "Finding Labels", "Patient ID"))
    kept = size_patients(patient_order(rows, patient_col, seed), "full", scale)
    by_patient: dict[int, list] = {}
    for row in rows:
        if int(row[patient_col]) in kept:
            by_patient.setdefault(int(row[patient_col]), []).append(
                (row[name_col], labels_from_findings(row[findings_col], DATA_ENTRY)))
    patients = sorted(by_patient.items())
    total = sum(len(v) for _, v in patients)
    chunks = [patients[k:k + 500] for k in range(0, len(patients), 500)]
    start = time.perf_counter()
    print(f"drawing {total:,} PNGs of {size} px for {len(patients):,} patients into {images} (2 processes)")
    written = 0
    with ProcessPoolExecutor(max_workers=2) as pool:
        for count in pool.map(_draw_patients, [(str(images), size, seed, chunk) for chunk in chunks]):
            written += count
            print(f"  {written:,} / {total:,} images, {time.perf_counter() - start:.0f} s", end="\r", flush=True)
    print(f"\n  done in {time.perf_counter() - start:.0f} s")
    done.write_text(json.dumps(wanted))
    return images


def prepare_size(root: Path, size_name: str, seed: int, scale: float) -> dict:
    """The folder of one size: images (hard links to the full size's), official-style lists, Data_Entry, boxes."""
    folder = root / size_name
    paths = {"folder": folder, "images": folder / "images", "split": folder / "split",
             "label_file": folder / DATA_ENTRY, "bbox": folder / BBOX, "cache": folder / "image-cache",
             "runs": folder / "runs"}
    marker = folder / "PREPARED.json"
    wanted = {"seed": seed, "scale": scale}
    if marker.is_file() and json.loads(marker.read_text()) == wanted:
        return paths
    header, rows = _data_entry_rows()
    patient_col, name_col = header.index("Patient ID"), header.index("Image Index")
    kept = size_patients(patient_order(rows, patient_col, seed), size_name, scale)
    names = {row[name_col] for row in rows if int(row[patient_col]) in kept}
    if size_name != "full":
        if paths["images"].exists():
            shutil.rmtree(paths["images"])
        paths["images"].mkdir(parents=True)
        source = root / "full" / "images"
        for name in sorted(names):
            os.link(source / name, paths["images"] / name)
    paths["split"].mkdir(parents=True, exist_ok=True)
    for list_name in ("train_val_list.txt", "test_list.txt"):
        listed = read_text(resource_path(f"official_split/{list_name}.gz")).split()
        (paths["split"] / list_name).write_text("".join(f"{n}\n" for n in listed if n in names))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(row for row in rows if row[name_col] in names)
    paths["label_file"].write_text(buffer.getvalue())
    box_lines = read_text(resource_path("BBox_List_2017.csv.gz")).splitlines()
    paths["bbox"].write_text("\n".join([box_lines[0]] + [line for line in box_lines[1:]
                                                          if line.split(",")[0] in names]) + "\n")
    marker.write_text(json.dumps(wanted))
    return paths


# --------------------------------------------------------------------------------------------------------------------
# The stages (each runs in its own process)
# --------------------------------------------------------------------------------------------------------------------
def _data_flags(paths: dict) -> list[str]:
    return ["--data-dir", str(paths["images"]), "--split", str(paths["split"]), "--label-file",
            str(paths["label_file"])]


def _cache_flags(paths: dict) -> list[str]:
    return ["--image-cache", str(paths["cache"]), "--device", "cpu"]


def _model1(paths: dict) -> Path:
    return paths["runs"] / "1-EEEA-Net-C2" / "model1.pth"


def stage_index(paths: dict, options) -> callable:
    from common.data.split_data import SplitData

    def run():
        data = SplitData(paths["images"], str(paths["split"]), str(paths["label_file"]), 0.1, 0,
                         parts=("train", "val", "test"), workers=1)
        parts = data.split.parts
        data.identity(parts["train"].names + parts["val"].names)
        data.identity(parts["test"].names)
        print(data.split.describe())
    return run


def stage_cache(paths: dict, options) -> callable:
    from common.commands import image_cache
    from common.data.images import eval_resize

    def run():
        if paths["cache"].exists():
            shutil.rmtree(paths["cache"])
        image_cache.main(["--data-dir", str(paths["images"]), "--out", str(paths["cache"]), "--split",
                          str(paths["split"]), "--label-file", str(paths["label_file"]),
                          "--size", str(eval_resize(options.image_size)), "--workers", "2"])
    return run


class _FirstBatches:
    """A training loader cut to its first ``steps`` batches (the rehearsal's short epoch)."""

    def __init__(self, loader, steps: int):
        self.loader, self.steps, self.dataset = loader, min(steps, len(loader)), loader.dataset

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        iterator = iter(self.loader)
        for _ in range(self.steps):
            yield next(iterator)


def stage_train(paths: dict, options) -> callable:
    from common.commands import train
    from common.data.split_data import SplitData

    whole_batches = SplitData.batches

    def short_epoch(self, part, view, *rest, **keywords):
        loader, augment = whole_batches(self, part, view, *rest, **keywords)
        return (_FirstBatches(loader, options.train_steps), augment) if view == "train" else (loader, augment)

    def run():
        argv = [*_data_flags(paths), *_cache_flags(paths), "--epochs", "1", "--batch-size", "64", "--img-size",
                str(options.image_size), "--warmup-epochs", "0", "--lr", "1e-3", "--output-dir",
                str(_model1(paths).parent), "--overwrite"]
        with mock.patch.object(SplitData, "batches", short_epoch):
            train.main(argv, model="eeea_c2", index=1)
    return run


def stage_test(paths: dict, options) -> callable:
    from common.commands import evaluate

    def run():
        evaluate.main(["--checkpoint", str(_model1(paths)), *_cache_flags(paths), "--batch-size", "128",
                       "--overwrite"],
                      model="eeea_c2", index=1)
    return run


def _earlier_predictions(paths: dict) -> list[str]:
    """Eleven models' places, each with the trained checkpoint and an earlier result of its own logits (what a
    second comparison finds); returns the keys."""
    import gzip

    from common.commands.compare import RESULTS_FOLDER, model_entries
    from common.evaluation import scoring
    from common.evaluation.ood import ood_path
    from common.inference.prediction_files import label_column, logit_column

    model1 = _model1(paths)
    report = json.loads(Path(f"{model1.with_suffix('')}-test.json").read_text())
    with gzip.open(f"{model1.with_suffix('')}-test-predictions.csv.gz", "rt", newline="") as stream:
        rows = list(csv.DictReader(stream))
    names = [row["Image Index"] for row in rows]
    targets = np.asarray([[int(row[label_column(c)]) for c in CLASS_NAMES] for row in rows], dtype=np.uint8)
    logits = np.asarray([[float(row[logit_column(c)]) for c in CLASS_NAMES] for row in rows], dtype=np.float32)
    patients = np.asarray([patient_id_from_name(n) for n in names])
    student_dir = paths["runs"] / DISTILL_FOLDER
    keys = []
    for number, entry in enumerate(model_entries(paths["runs"], student_dir)):
        entry["path"].parent.mkdir(parents=True, exist_ok=True)
        if entry["path"] != model1:
            shutil.copyfile(model1, entry["path"])
            # Its out-of-distribution statistics too, as test-model.py fitted them for the same file.
            shutil.copyfile(ood_path(model1), ood_path(entry["path"]))
        noisy = (logits + np.random.default_rng(number).normal(0, 0.5, logits.shape)).astype(np.float32)
        result = scoring.TestResult(entry["path"], entry["key"], dict(report), scoring.sigmoid(noisy), targets,
                                    names, patients, logits=noisy)
        scoring.write_reusable_results(result, student_dir / RESULTS_FOLDER / entry["key"])
        keys.append(entry["key"])
    return keys


def stage_compare(paths: dict, options) -> callable:
    from common.commands import compare

    keys = _earlier_predictions(paths)

    def run():
        summary = compare.compare(_parsed_compare_flags(paths), paths["runs"], paths["runs"] / DISTILL_FOLDER)
        scored = [key for key, notes in summary["reuse"].items() if not notes[0].startswith("reused")]
        if scored or len(summary["reuse"]) != len(keys):
            raise UserError(f"the rehearsal's comparison scored {scored} again instead of reusing them")
    return run


def _parsed_compare_flags(paths: dict):
    from common.commands import compare
    from common.commands._flags import make_paths_absolute

    parsed = compare.get_args_parser().parse_args([*_cache_flags(paths), "--batch-size", "128", "--output-dir",
                                                   str(paths["runs"] / DISTILL_FOLDER)])
    make_paths_absolute(parsed)
    return parsed


def stage_localization(paths: dict, options) -> callable:
    import torch

    from common.data.split_data import SplitData
    from common.evaluation import scoring
    from common.explain.localization import box_list_sha256, read_boxes
    from common.explain.report import localization_report, localization_text
    from common.runs.checkpoint import load_model_from_checkpoint

    checkpoint, model = load_model_from_checkpoint(_model1(paths), "eeea_c2")
    model.eval()
    data = SplitData(paths["images"], str(paths["split"]), str(paths["label_file"]), 0.1, 0, parts=("test",),
                     workers=0, image_cache=paths["cache"])
    test = data.split.parts["test"]
    meta = {key: checkpoint[key] for key in ("model_name", "img_size", "mean", "std")}
    result = scoring.TestResult(_model1(paths), "eeea_c2", {"part": "test", "split": data.split.name},
                                np.zeros((len(test), len(CLASS_NAMES))), test.labels, list(test.names),
                                test.patient_ids, model, meta)
    torch.set_num_threads(1)

    def run():
        rows, name = read_boxes(str(paths["bbox"]))
        loc = localization_report(result, data, rows, name, batch_size=64,
                                  bbox_sha256=box_list_sha256(str(paths["bbox"])))
        print(localization_text(result, loc))
    return run


STAGE_FUNCTIONS = {"index": stage_index, "cache": stage_cache, "train": stage_train, "test": stage_test,
                   "compare": stage_compare, "localization": stage_localization}


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_child(options) -> None:
    """One stage at one size: prepare, then time it; prints one result line for the parent."""
    stage, size_name = options.child
    # The libraries every command loads (about 0.8 GB resident with torch) are in before the baseline, so that the
    # growth printed is what the stage's data costs.
    import pandas  # noqa: F401
    import sklearn.metrics  # noqa: F401
    import timm  # noqa: F401
    import torch  # noqa: F401
    paths = prepare_size(work_root(options), size_name, options.seed, options.scale)
    run = STAGE_FUNCTIONS[stage](paths, options)
    before_self = resource.getrusage(resource.RUSAGE_SELF)
    before_children = resource.getrusage(resource.RUSAGE_CHILDREN)
    baseline = _rss_mb()
    start = time.perf_counter()
    run()
    wall = time.perf_counter() - start
    after_self = resource.getrusage(resource.RUSAGE_SELF)
    after_children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = sum(getattr(after, f) - getattr(before, f) for after, before in
              ((after_self, before_self), (after_children, before_children)) for f in ("ru_utime", "ru_stime"))
    peak_self, peak_children = after_self.ru_maxrss / 1024, after_children.ru_maxrss / 1024
    print(RESULT_MARK + json.dumps({"stage": stage, "size": size_name, "wall": wall, "cpu": cpu,
                                    "peak_mb": max(peak_self, peak_children), "peak_self_mb": peak_self,
                                    "peak_workers_mb": peak_children, "baseline_mb": baseline,
                                    "load": os.getloadavg()[0]}), flush=True)


# --------------------------------------------------------------------------------------------------------------------
# The parent: every stage at every size, then the table
# --------------------------------------------------------------------------------------------------------------------
def work_root(options) -> Path:
    """``--work-dir``, or a folder in it of its own for a ``--scale`` below 1."""
    root = Path(options.work_dir)
    return root if options.scale == 1 else root / f"scale-{options.scale:g}"


def growth_mb(row: dict) -> float:
    """How much the stage's own process grew over its resident memory before the stage (its libraries loaded)."""
    return row["peak_self_mb"] - row["baseline_mb"]


def exponent(small: float, large: float, ratio: float) -> float:
    """log-log slope between two sizes ``ratio`` apart."""
    return math.log(large / small) / math.log(ratio) if small > 0 and large > 0 else float("nan")


def main(argv=None) -> None:
    args = get_args_parser().parse_args(argv)
    if args.child:
        run_child(args)
        return
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in sizes if s not in SIZES] + [s for s in stages if s not in STAGES]
    if unknown:
        raise UserError(f"unknown size or stage {unknown[0]!r} (sizes: {', '.join(SIZES)}; stages: "
                        f"{', '.join(STAGES)})")
    if not 0 < args.scale <= 1:
        raise UserError(f"--scale must be in (0, 1], got {args.scale}")
    root = work_root(args)
    root.mkdir(parents=True, exist_ok=True)
    generate_images(root, args.image_size, args.seed, args.scale)
    results = {}
    for size_name in sizes:
        paths = prepare_size(root, size_name, args.seed, args.scale)
        print(f"== {size_name}: {sum(1 for _ in paths['images'].iterdir()):,} images in {paths['images']} ==")
        for stage in stages:
            log = paths["folder"] / f"{stage}.log"
            done = [line for line in log.read_text().splitlines() if line.startswith(RESULT_MARK)] \
                if args.keep_done and log.is_file() else []
            if done:
                results[(stage, size_name)] = row = json.loads(done[-1][len(RESULT_MARK):])
                print(f"  {stage:<13}(kept from {log}) {row['wall']:.1f} s wall, {row['cpu']:.1f} s CPU")
                continue
            command = [sys.executable, str(Path(__file__).resolve()), "--child", stage, size_name,
                       "--work-dir", args.work_dir, "--image-size", str(args.image_size), "--train-steps",
                       str(args.train_steps), "--seed", str(args.seed), "--scale", str(args.scale)]
            env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
            with open(log, "w") as stream:
                finished = subprocess.run(command, stdout=stream, stderr=subprocess.STDOUT, env=env, cwd=REPO)
            lines = [line for line in log.read_text().splitlines() if line.startswith(RESULT_MARK)]
            if finished.returncode != 0 or not lines:
                raise UserError(f"stage {stage} at {size_name} failed (exit {finished.returncode}); see {log}")
            row = json.loads(lines[-1][len(RESULT_MARK):])
            results[(stage, size_name)] = row
            print(f"  {stage:<13}{row['wall']:>8.1f} s wall{row['cpu']:>8.1f} s CPU{row['peak_mb']:>8.0f} MB peak "
                  f"(+{growth_mb(row):.0f} MB over the process before it; workers {row['peak_workers_mb']:.0f} MB)"
                  f"  load {row['load']:.1f}")
    print_table(results, sizes, stages)
    (root / "rehearsal.json").write_text(json.dumps([{**row} for row in results.values()], indent=2))
    print(f"figures: {root / 'rehearsal.json'}")


def print_table(results: dict, sizes: list[str], stages: list[str]) -> None:
    """Per stage: wall, CPU and peak memory at each size, and the growth exponents from the smallest size to
    the largest."""
    print()
    head = f"{'stage':<13}" + "".join(f"{s + ' wall':>12}{'CPU':>8}{'peak':>8}" for s in sizes)
    ends = (sizes[0], sizes[-1]) if len(sizes) > 1 else None
    if ends:
        head += f"{'exp wall':>10}{'exp CPU':>9}{'exp mem':>9}"
    print(head)
    print("-" * len(head))
    failing = []
    for stage in stages:
        cells = ""
        for size_name in sizes:
            row = results[(stage, size_name)]
            cells += f"{row['wall']:>11.1f}s{row['cpu']:>7.1f}s{row['peak_mb'] / 1024:>6.2f}GB"
        if ends:
            small, large = results[(stage, ends[0])], results[(stage, ends[1])]
            ratio = SIZES[ends[1]] / SIZES[ends[0]]
            slopes = [exponent(small[k], large[k], ratio) for k in ("wall", "cpu")]
            growth = exponent(growth_mb(small), growth_mb(large), ratio)
            cells += f"{slopes[0]:>10.2f}{slopes[1]:>9.2f}{growth:>9.2f}"
            if slopes[1] > LIMIT_EXPONENT:
                failing.append(f"{stage}: CPU-time exponent {slopes[1]:.2f} > {LIMIT_EXPONENT}")
        largest = results[(stage, sizes[-1])]
        if largest["wall"] > LIMIT_SECONDS or largest["peak_mb"] > LIMIT_GB * 1024:
            failing.append(f"{stage} at {sizes[-1]}: {largest['wall']:.0f} s, {largest['peak_mb'] / 1024:.2f} GB")
        print(f"{stage:<13}{cells}")
    print("exp: log-log slope of wall time, CPU time and memory growth (peak over the process before the stage) "
          f"from {sizes[0]} to {sizes[-1]}" if ends else "")
    print(f"targets: exponent <= {LIMIT_EXPONENT}; at full size <= {LIMIT_SECONDS // 60} min and <= {LIMIT_GB:g} GB "
          "per stage on 2 cores")
    print("all targets met" if not failing else "short of the targets: " + "; ".join(failing))


if __name__ == "__main__":
    sys.exit(run_main(main))
