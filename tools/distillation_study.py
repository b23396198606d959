"""Does distillation into EEEA-Net-C2 help, and with which recipe? A one-factor-at-a-time study over seeds.

Around a base recipe (α = 0.5, T = 2, 6 epochs, cached teacher logits, random initialisation: the demo's recipe
before this study) one factor at a time is changed: α, T, epochs, teacher mode (cached / online), and the student's
start (random, as the baseline starts, or the trained teacher-free baseline's weights). Each recipe is distilled
from one teacher (CheXNet, folder 3, trained once per set and seed) into EEEA-Net-C2 for every training seed, on the
plain and on the NIH-structured synthetic sets (``common.data.synthetic``, ``label_structure``), and compared with
the teacher-free baseline trained identically (same seed, epochs and start; α = 1).

The comparison of each recipe is folder 6's ``test-model.py`` itself (:mod:`common.commands.compare`): the paired
patient-level bootstrap of student − baseline on seed 0's run and the spread across the seeds (``--seed-runs``).
This tool only lays out the trained files as the comparison expects them (symbolic links) and collects its
``comparison.json`` into one table: ``study.md`` and ``study.csv`` in ``--out``.

Every run is kept under ``--out`` and skipped when found finished, so an interrupted study continues where it
stopped and ``--report`` rebuilds the table from what is there. Two invocations with different ``--sets`` can run
side by side (one core each) and a final ``--report`` joins them.

    nice -n 10 python tools/distillation_study.py --out distillation-study          # the study of the guide
    python tools/distillation_study.py --out distillation-study --report           # the table only

Sized for a shared 2-core CPU: 150 patients, 32-px inputs, one torch thread per process, 200 bootstrap resamples
(on 2 cores shared with other jobs, load 10-19, each set took about 85 minutes of training and 25 of comparisons; on a
quiet core a fraction of that). Recipes are compared on the test part, and the recipe the demo takes is read off the
validation column (docs/distillation.md §3: choose on validation, never on test).
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
if str(REPOSITORY) not in sys.path:
    sys.path.insert(0, str(REPOSITORY))

from common.atomic import write_text_atomic  # noqa: E402
from common.constants import DISTILL_FOLDER  # noqa: E402
from common.data.synthetic import LABEL_STRUCTURES, read_manifest  # noqa: E402

TEACHER_INDEX = 3  # CheXNet: the teacher the issue measured
TEACHER_MODEL = "chexnet"
STUDENT_INDEX = 1  # EEEA-Net-C2, folder 1: the baseline
STUDENT_MODEL = "eeea_c2"
TEACHER_EPOCHS = 6  # the demo's CheXNet schedule
DATA_SEED = 0  # one synthetic sample per label structure (the demo's); the seeds vary the training


@dataclass(frozen=True)
class Recipe:
    """One distillation recipe; ``init``: "random" (the baseline's own start) or "baseline" (its trained weights)."""

    alpha: float = 0.5
    temperature: float = 2.0
    epochs: int = 6
    teacher_mode: str = "cached"
    init: str = "random"

    def name(self) -> str:
        return (f"a{self.alpha:g}-T{self.temperature:g}-e{self.epochs}-{self.teacher_mode}"
                + ("-from-baseline" if self.init == "baseline" else ""))

    def describe(self) -> str:
        start = ", from the baseline's weights" if self.init == "baseline" else ""
        return f"α {self.alpha:g}, T {self.temperature:g}, {self.epochs} ep, {self.teacher_mode}{start}"


BASE = Recipe()
# (factor, recipe): the base and one change at a time.
VARIANTS = (
    ("base", BASE),
    ("alpha", replace(BASE, alpha=0.9)),  # α = 1 is the baseline itself
    ("temperature", replace(BASE, temperature=1.0)),
    ("temperature", replace(BASE, temperature=4.0)),
    ("epochs", replace(BASE, epochs=12)),
    ("teacher mode", replace(BASE, teacher_mode="online")),
    ("student init", replace(BASE, init="baseline")),
)


@dataclass(frozen=True)
class Settings:
    """The study's scale (``--patients`` ...)."""

    out: Path
    patients: int
    img_size: int
    epoch_scale: float
    n_boot: int

    def epochs(self, epochs: int) -> int:
        return max(1, round(epochs * self.epoch_scale))


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


@contextlib.contextmanager
def captured(path: Path):
    """Send a command's output (progress bars included) to ``path`` instead of the terminal."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as stream, contextlib.redirect_stdout(stream), \
            contextlib.redirect_stderr(stream):
        yield


def prepare_data(settings: Settings, structure: str) -> tuple[Path, Path]:
    """The synthetic set of ``structure`` and its image cache (made once; reused when the manifest matches)."""
    from common.data.cache_build import build_image_cache
    from common.data.images import eval_resize
    from common.data.splits import build_split
    from common.data.synthetic import generate_synthetic_cxr8

    root = settings.out / structure
    data_dir = root / "data"
    manifest = read_manifest(data_dir)
    wanted = {"label_structure": structure, "seed": DATA_SEED, "num_patients": settings.patients}
    if manifest is None or any(manifest.get(key) != value for key, value in wanted.items()):
        log(f"{structure}: generating {settings.patients} patients in {data_dir}")
        with captured(root / "logs" / "data.log"):
            generate_synthetic_cxr8(data_dir, num_patients=settings.patients, seed=DATA_SEED,
                                    label_structure=structure)
    cache_dir = root / f"image-cache-{eval_resize(settings.img_size)}"  # one size per cache folder
    split = build_split(str(data_dir / "labels"), None, 0.1, DATA_SEED)
    with captured(root / "logs" / "data.log"):
        build_image_cache(data_dir / "images", sorted({n for part in split.parts.values() for n in part.names}),
                          cache_dir, size=eval_resize(settings.img_size), workers=1)
    return data_dir, cache_dir


def common_flags(data_dir: Path, cache_dir: Path) -> list[str]:
    # One torch thread and no loader worker: the thread rule's choice for a busy shared CPU.
    return ["--data-dir", str(data_dir / "images"), "--split", str(data_dir / "labels"), "--device", "cpu",
            "--threads", "1", "--workers", "0", "--image-cache", str(cache_dir)]


def train_flags(settings: Settings, epochs: int, seed: int) -> list[str]:
    """The demo's training recipe (common.commands.demo) at the study's input size."""
    return ["--epochs", str(settings.epochs(epochs)), "--batch-size", "32", "--lr", "2e-3", "--warmup-epochs", "0.5",
            "--img-size", str(settings.img_size), "--crop-scale", "0.5", "--seed", str(seed), "--overwrite"]


def run_once(marker: Path, what: str, log_path: Path, action) -> None:
    """Run ``action`` unless ``marker`` says it finished; the marker records how long it took."""
    if marker.is_file():
        return
    log(f"{what} ...")
    start = time.perf_counter()
    with captured(log_path):
        action()
    seconds = time.perf_counter() - start
    write_text_atomic(json.dumps({"what": what, "seconds": round(seconds, 1)}), marker)
    log(f"{what}: {seconds:.0f} s")


def train_runs(settings: Settings, structure: str, seed: int, data_dir: Path, cache_dir: Path,
               variants) -> Path:
    """Teacher, baselines and every recipe's student of one set and seed; returns the seed's folder."""
    from common.commands import distill, train
    from common.models import model_folders

    root = settings.out / structure / f"seed-{seed}"
    logs = settings.out / structure / "logs"
    flags = common_flags(data_dir, cache_dir)
    teacher_folder = root / "teacher" / model_folders()[TEACHER_INDEX][0]
    run_once(teacher_folder / "study-done.json", f"{structure} seed {seed}: teacher {TEACHER_MODEL}",
             logs / f"seed-{seed}-teacher.log",
             lambda: train.main(flags + train_flags(settings, TEACHER_EPOCHS, seed), model=TEACHER_MODEL,
                                index=TEACHER_INDEX, folder=teacher_folder))
    for epochs in sorted({recipe.epochs for _, recipe in variants}):
        folder = baseline_folder(root, epochs)
        run_once(folder / "study-done.json", f"{structure} seed {seed}: baseline {STUDENT_MODEL}, {epochs} ep",
                 logs / f"seed-{seed}-baseline-e{epochs}.log",
                 lambda folder=folder, epochs=epochs: train.main(flags + train_flags(settings, epochs, seed),
                                                                 model=STUDENT_MODEL, index=STUDENT_INDEX,
                                                                 folder=folder))
    for recipe in student_recipes(variants):
        folder = root / recipe.name() / DISTILL_FOLDER
        extra = []
        if recipe.init == "baseline":
            extra = ["--student-init", str(baseline_folder(root, BASE.epochs) / f"model{STUDENT_INDEX}.pth")]
        argv = (flags + train_flags(settings, recipe.epochs, seed)
                + ["--teacher", str(TEACHER_INDEX), "--teachers-root", str(root / "teacher"),
                   "--teacher-mode", recipe.teacher_mode, "--alpha", str(recipe.alpha),
                   "--temperature", str(recipe.temperature), "--cache-dir", str(root / "teacher-cache"), *extra])
        run_once(folder / "study-done.json", f"{structure} seed {seed}: student {recipe.describe()}",
                 logs / f"seed-{seed}-{recipe.name()}.log",
                 lambda argv=argv, folder=folder: distill.main(argv, folder=folder))
    return root


def baseline_folder(seed_root: Path, epochs: int) -> Path:
    from common.models import model_folders
    return seed_root / f"baseline-e{epochs}" / model_folders()[STUDENT_INDEX][0]


def control_recipe(recipe: Recipe) -> Recipe | None:
    """The teacher-free run a student from the baseline's weights is compared with: the same start and epochs, α = 1
    (folder 6 with hard labels only). None for a randomly initialised student (its baseline is folder 1's run)."""
    return replace(recipe, alpha=1.0) if recipe.init == "baseline" else None


def student_recipes(variants) -> list[Recipe]:
    recipes = []
    for _, recipe in variants:
        for one in (recipe, control_recipe(recipe)):
            if one is not None and one not in recipes:
                recipes.append(one)
    return recipes


def student_file(seed_root: Path, recipe: Recipe) -> Path:
    return seed_root / recipe.name() / DISTILL_FOLDER / f"modeld{TEACHER_INDEX}.pth"


def baseline_file(seed_root: Path, recipe: Recipe) -> tuple[Path, str]:
    """The teacher-free run ``recipe``'s student is compared with, and its description."""
    control = control_recipe(recipe)
    if control is not None:
        return (student_file(seed_root, control),
                f"baseline's weights + {control.epochs} ep α 1 (no teacher)")
    return baseline_folder(seed_root, recipe.epochs) / f"model{STUDENT_INDEX}.pth", f"EEEA-Net-C2, {recipe.epochs} ep"


def link(target: Path, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink() or path.exists():
        path.unlink()
    path.symlink_to(target.resolve())


def compare_recipe(settings: Settings, structure: str, seeds: list[int], recipe: Recipe, data_dir: Path,
                   cache_dir: Path) -> dict:
    """Folder 6's comparison of one recipe's students with their baselines over the seeds; its comparison.json."""
    from common.commands import compare
    from common.models import model_folders

    folders = model_folders()
    base = settings.out / structure / "compare" / recipe.name()
    roots, inputs = [], {}
    for seed in seeds:
        seed_root = settings.out / structure / f"seed-{seed}"
        root = base / f"seed-{seed}"
        files = {root / folders[STUDENT_INDEX][0] / f"model{STUDENT_INDEX}.pth": baseline_file(seed_root, recipe)[0],
                 root / folders[TEACHER_INDEX][0] / f"model{TEACHER_INDEX}.pth":
                     seed_root / "teacher" / folders[TEACHER_INDEX][0] / f"model{TEACHER_INDEX}.pth",
                 root / DISTILL_FOLDER / f"modeld{TEACHER_INDEX}.pth": student_file(seed_root, recipe)}
        for path, target in files.items():
            link(target, path)
            inputs[str(path)] = target.stat().st_mtime
        roots.append(root)
    output = roots[0] / DISTILL_FOLDER
    marker = output / "study-compared.json"
    result = output / "comparison.json"
    inputs["n_boot"] = settings.n_boot
    if marker.is_file() and result.is_file() and json.loads(marker.read_text()) == inputs:
        return json.loads(result.read_text())
    argv = (["--teachers-root", str(roots[0]), "--output-dir", str(output), "--data-dir", str(data_dir / "images"),
             "--image-cache", str(cache_dir), "--device", "cpu", "--threads", "1", "--workers", "0",
             "--n-boot", str(settings.n_boot), "--subgroup-boot", "1"]
            + (["--seed-runs", *map(str, roots[1:])] if len(roots) > 1 else []))
    log(f"{structure}: comparing {recipe.describe()} over seeds {seeds} ...")
    with captured(settings.out / structure / "logs" / f"compare-{recipe.name()}.log"):
        compare.main(argv)
    write_text_atomic(json.dumps(inputs), marker)
    return json.loads(result.read_text())


def checkpoint_val_auroc(path: Path) -> float | None:
    from common.runs.checkpoint import load_checkpoint
    return load_checkpoint(path).get("val_mean_auroc")


def table_row(structure: str, factor: str, recipe: Recipe, comparison: dict, seeds: list[int],
              settings: Settings) -> dict:
    """One line of the study: student − baseline on test (seed mean ± sd, seed 0's paired bootstrap) and on val."""
    student_key, baseline_key, teacher_key = f"modeld{TEACHER_INDEX}", f"model{STUDENT_INDEX}", f"model{TEACHER_INDEX}"
    boot = next(row for row in comparison["bootstrap"] if row["student"] == student_key)
    spread = {row["model"]: row for row in comparison.get("seed_spread", [])}
    models = {row["model"]: row for row in comparison["models"]}
    val_diffs = []
    for seed in seeds:
        seed_root = settings.out / structure / f"seed-{seed}"
        student, baseline = (checkpoint_val_auroc(student_file(seed_root, recipe)),
                             checkpoint_val_auroc(baseline_file(seed_root, recipe)[0]))
        if None not in (student, baseline):
            val_diffs.append(student - baseline)
    if spread:
        diff_mean, diff_sd = spread[student_key]["diff_mean"], spread[student_key]["diff_sd"]
        student_auroc = spread[student_key]["mean_auroc_mean"]
        baseline_auroc = spread[baseline_key]["mean_auroc_mean"]
        teacher_auroc = spread[teacher_key]["mean_auroc_mean"]
    else:  # one seed: the comparison reports no spread
        diff_mean, diff_sd = boot.get("diff"), None
        student_auroc, baseline_auroc = models[student_key]["mean_auroc"], models[baseline_key]["mean_auroc"]
        teacher_auroc = models[teacher_key]["mean_auroc"]
    student_row, baseline_row = models[student_key], models[baseline_key]
    return {
        "set": structure, "factor": factor, "recipe": recipe.describe(), "recipe_name": recipe.name(),
        "baseline": baseline_file(settings.out, recipe)[1], "seeds": len(seeds),
        "test_diff_mean": diff_mean, "test_diff_sd": diff_sd,
        "seed0_diff": boot.get("diff"), "seed0_ci_low": boot.get("ci_low"), "seed0_ci_high": boot.get("ci_high"),
        "seed0_p": boot.get("p_value_two_sided"),
        "val_diff_mean": sum(val_diffs) / len(val_diffs) if val_diffs else None,
        "student_test_auroc": student_auroc, "baseline_test_auroc": baseline_auroc, "teacher_test_auroc": teacher_auroc,
        "student_f1@0.5_seed0": student_row.get("mean_f1@0.5"),
        "student_no_positive_classes_seed0": student_row.get("no_positive@0.5"),
        "baseline_f1@0.5_seed0": baseline_row.get("mean_f1@0.5"),
        "baseline_no_positive_classes_seed0": baseline_row.get("no_positive@0.5"),
    }


def _num(value, digits=4, sign=True) -> str:
    if value is None:
        return "n/a"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def _f1_cell(value, no_positive) -> str:
    """Mean F1 at 0.5, with how many classes had no test image predicted positive (an all-negative rule's F1)."""
    text = _num(value, 3, sign=False)
    return text + (f" (no positive for {no_positive}/14)" if no_positive else "")


def write_table(settings: Settings, rows: list[dict], command: str) -> None:
    """``study.md`` (the guide's table) and ``study.csv`` in ``--out``."""
    lines = ["# Distillation recipe study: student − teacher-free baseline, test mean AUROC", "",
             f"Teacher CheXNet (folder 3, {settings.epochs(TEACHER_EPOCHS)} epochs) → EEEA-Net-C2; "
             f"{settings.patients} synthetic patients, {settings.img_size}-px inputs, centre crop. Made by "
             f"`{command}`.", "",
             "| set | factor | recipe | compared with | student − baseline, mean ± sd over seeds | seed 0 [95% paired "
             "patient bootstrap] | val diff (mean) | student / baseline / teacher test AUROC | F1@0.5 student / "
             "baseline (seed 0) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        sd = "" if row["test_diff_sd"] is None else f" ± {row['test_diff_sd']:.4f}"
        ci = (f"{_num(row['seed0_diff'])} [{_num(row['seed0_ci_low'])}, {_num(row['seed0_ci_high'])}]"
              if row["seed0_ci_low"] is not None else "n/a")
        f1 = " / ".join(_f1_cell(row[f"{who}_f1@0.5_seed0"], row.get(f"{who}_no_positive_classes_seed0"))
                        for who in ("student", "baseline"))
        lines.append(f"| {row['set']} | {row['factor']} | {row['recipe']} | {row['baseline']} | "
                     f"{_num(row['test_diff_mean'])}{sd} ({row['seeds']} seeds) | {ci} | {_num(row['val_diff_mean'])} | "
                     f"{_num(row['student_test_auroc'], 3, False)} / {_num(row['baseline_test_auroc'], 3, False)} / "
                     f"{_num(row['teacher_test_auroc'], 3, False)} | {f1} |")
    lines += ["", "Differences are student − baseline of the test mean AUROC; the baseline is EEEA-Net-C2 trained "
              "without a teacher with the same seed, epochs and start. The bootstrap interval covers test-set "
              "sampling of seed 0's pair only; the seed spread covers retraining. The NIH-structured set is a model "
              "of label noise (co-occurrence of the Data_Entry file, training labels flipped at Wang et al. 2017's "
              "text-mining precision and recall, clean validation and test labels), not a claim about the real data.",
              ""]
    write_text_atomic("\n".join(lines), settings.out / "study.md")
    fields = list(rows[0]) if rows else []
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(buffer.getvalue(), settings.out / "study.csv")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tools/distillation_study.py", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="distillation-study", help="study folder (default distillation-study)")
    parser.add_argument("--sets", default=",".join(LABEL_STRUCTURES),
                        help="label structures to run, comma-separated (default plain,nih)")
    parser.add_argument("--seeds", default="0,1,2", help="training seeds, comma-separated (default 0,1,2)")
    parser.add_argument("--patients", type=int, default=150, help="synthetic patients per set (default 150)")
    parser.add_argument("--img-size", type=int, default=32, help="model input size (default 32)")
    parser.add_argument("--epoch-scale", type=float, default=1.0, help="multiply every epoch count (default 1)")
    parser.add_argument("--n-boot", type=int, default=200,
                        help="patient bootstrap resamples of each comparison (default 200: on a busy 2-core machine "
                             "1000 made one comparison take 13 minutes)")
    parser.add_argument("--variants", default=None,
                        help="only these factors, comma-separated (base, alpha, temperature, epochs, teacher mode, "
                             "student init); default all")
    parser.add_argument("--report", action="store_true",
                        help="train nothing: compare what is there and write the table")
    return parser


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    structures = [s for s in args.sets.split(",") if s]
    unknown = [s for s in structures if s not in LABEL_STRUCTURES]
    if unknown:
        print(f"error: --sets: unknown label structure {', '.join(unknown)} (use {', '.join(LABEL_STRUCTURES)})",
              file=sys.stderr)
        return 2
    seeds = [int(s) for s in args.seeds.split(",") if s]
    wanted = None if args.variants is None else {v.strip() for v in args.variants.split(",")}
    variants = [(f, r) for f, r in VARIANTS if wanted is None or f in wanted]
    settings = Settings(Path(args.out).resolve(), args.patients, args.img_size, args.epoch_scale, args.n_boot)
    import torch
    torch.set_num_threads(1)  # the thread rule's choice on a busy shared CPU; each command sets it again
    # The study that made the files (also when only --report runs): its settings, not the flags of this call.
    command = (f"python tools/distillation_study.py --out {args.out} --seeds {args.seeds} --patients {args.patients} "
               f"--img-size {args.img_size} --n-boot {args.n_boot}"
               + (f" --epoch-scale {args.epoch_scale:g}" if args.epoch_scale != 1 else ""))
    start = time.perf_counter()
    if args.report:
        structures = [s for s in structures if (settings.out / s / "data").is_dir()]
    prepared = {s: prepare_data(settings, s) for s in structures}
    if not args.report:
        for seed in seeds:
            for structure in structures:
                train_runs(settings, structure, seed, *prepared[structure], variants)
    rows = []
    for structure in structures:
        for factor, recipe in variants:
            present = [seed for seed in seeds
                       if student_file(settings.out / structure / f"seed-{seed}", recipe).is_file()
                       and baseline_file(settings.out / structure / f"seed-{seed}", recipe)[0].is_file()]
            if not present:
                log(f"{structure}: {recipe.describe()} has no finished seed yet; left out of the table")
                continue
            comparison = compare_recipe(settings, structure, present, recipe, *prepared[structure])
            rows.append(table_row(structure, factor, recipe, comparison, present, settings))
        manifest = read_manifest(prepared[structure][0])
        if manifest and manifest.get("label_noise"):
            write_text_atomic(json.dumps(manifest["label_noise"], indent=2),
                              settings.out / structure / "label-noise.json")
    write_table(settings, rows, command)
    log(f"study table: {settings.out / 'study.md'} ({(time.perf_counter() - start) / 60:.1f} min)")
    print((settings.out / "study.md").read_text())
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    raise SystemExit(main())
