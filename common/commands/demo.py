"""The whole story on the embedded synthetic sample, on a CPU in minutes: ``python -m common.demo``.

Generates a synthetic CXR8-format data set, builds its image cache, trains folders 1-5 briefly, tests them, distils
each teacher and the ensemble into EEEA-Net-C2 (cached teacher logits), and writes the before/after comparison table
and chart. Every command reads the images from the cache (``--image-cache``), as the README's real-data story does.
Each test writes a Grad-CAM sheet and prints the localisation table on the synthetic box list. Everything
goes under ``--output-dir`` (default ``demo-run/``), laid out like the repository's numbered folders, so the real
folders' checkpoints are never touched.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from common.commands._cli import ArgumentParser, non_negative_int, positive_int, run_main
from common.constants import DISTILL_FOLDER
from common.data.images import eval_resize
from common.data.labels import read_labelled_list

# Grad-CAM sheet of each test: the CAM_K most probable test images per class.
CAM_K = 2
# Demo schedule per folder: epochs at the demo's small input size. The transformers are the slowest on a CPU.
DEMO_EPOCHS = {1: 6, 2: 5, 3: 6, 4: 4, 5: 3}
# The students' recipe, from the recipe study (tools/distillation_study.py, docs/guide/distillation-study.md).
# α 0.9 (T 2, 6 epochs, cached logits) had the best validation difference on the plain set; no recipe's test difference
# exceeded its seed spread on either set.
DISTILL_EPOCHS = 6
DISTILL_ALPHA = 0.9
DISTILL_TEMPERATURE = 2.0
DISTILL_TEACHER_MODE = "cached"
# Training seeds of the baseline and the single-teacher students: one seed moves a mean AUROC by as much as
# distillation does, so the verdict needs the spread.
DEMO_SEEDS = 3
# The synthetic sample's label structure (common.data.synthetic): "nih" = the Data_Entry file's co-occurrence and
# noisy training labels, "plain" = independent findings, exact labels.
DEMO_LABEL_STRUCTURE = "plain"


def get_args_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m common.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default="demo-run", help="where everything goes (default: demo-run)")
    parser.add_argument("--patients", type=positive_int, default=300, help="synthetic patients (default 300)")
    parser.add_argument("--img-size", type=positive_int, default=64, help="model input size (default 64)")
    parser.add_argument("--epoch-scale", type=float, default=1.0, help="multiply every epoch count (default 1)")
    parser.add_argument("--workers", type=non_negative_int, default=None,
                        help="DataLoader workers (default: chosen with the threads to share the cores)")
    parser.add_argument("--folders", default="1,2,3,4,5", help="which model folders to train (default 1,2,3,4,5)")
    parser.add_argument("--skip-distillation", action="store_true", help="stop after training and testing 1-5")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="random seed (default 0)")
    parser.add_argument("--device", default="cpu",
                        help="device of every step (default cpu, where the demo's numbers are reproducible); cuda, "
                             "cuda:N or auto check the GPU path (mixed precision, channels-last, the augmentation on "
                             "the device) in minutes before a long run")
    parser.add_argument("--label-structure", choices=("plain", "nih"), default=DEMO_LABEL_STRUCTURE,
                        help="synthetic labels: nih = findings co-occurring as in the packaged Data_Entry file and "
                             "training labels flipped at the published text-mining precision and recall (validation "
                             "and test labels clean; a model of label noise, not a claim about the real data); plain "
                             f"= independent findings, exact labels (default {DEMO_LABEL_STRUCTURE})")
    parser.add_argument("--seeds", type=positive_int, default=DEMO_SEEDS,
                        help="train the undistilled EEEA-Net-C2 and every single-teacher student with this many seeds "
                             "(--seed, --seed+1, ...; the teachers once) and report the spread across them beside the "
                             f"bootstrap interval (default {DEMO_SEEDS}; 1 is fastest)")
    return parser


def _loader_flags(args, cache_dir: Path) -> list[str]:
    # Without --workers each command chooses threads and workers together: on a small, shared CPU one thread per
    # busy process avoids OpenMP threads waiting for each other.
    workers = [] if args.workers is None else ["--workers", str(args.workers)]
    return [*workers, "--device", args.device, "--image-cache", str(cache_dir)]


def _common_flags(data_dir: Path, args, cache_dir: Path) -> list[str]:
    return ["--data-dir", str(data_dir / "images"), "--split", str(data_dir / "labels"),
            *_loader_flags(args, cache_dir)]


def _train_flags(args, epochs: int, seed: int | None = None) -> list[str]:
    return ["--epochs", str(max(1, round(epochs * args.epoch_scale))), "--batch-size", "32", "--lr", "2e-3",
            "--warmup-epochs", "0.5", "--img-size", str(args.img_size), "--crop-scale", "0.5",
            "--seed", str(args.seed if seed is None else seed), "--overwrite"]


def _distill_flags(args, seed: int | None = None) -> list[str]:
    return _train_flags(args, DISTILL_EPOCHS, seed=seed) + [
        "--teacher-mode", DISTILL_TEACHER_MODE, "--alpha", str(DISTILL_ALPHA), "--temperature", str(DISTILL_TEMPERATURE)]


def _synthetic_sample(data_dir: Path, args) -> None:
    """Generate the demo's synthetic sample, or keep the one already there when it was made the same way."""
    from common.data.synthetic import generate_synthetic_cxr8, read_manifest
    manifest = read_manifest(data_dir)
    wanted = {"label_structure": args.label_structure, "seed": args.seed, "num_patients": args.patients}
    if manifest is not None and all(manifest.get(key) == value for key, value in wanted.items()):
        return
    print(f"generating the synthetic CXR8 sample ({args.label_structure} labels) in {data_dir}")
    generate_synthetic_cxr8(data_dir, num_patients=args.patients, seed=args.seed, label_structure=args.label_structure)


def distillation_verdict(comparison: dict) -> list[str]:
    """The demo's last word on distillation, from the comparison's ``comparison.json``: every student's paired
    bootstrap difference from the undistilled EEEA-Net-C2 and, with several seeds, its spread; then one line that
    says whether distillation helped on this sample."""
    labels = {row["model"]: row["label"] for row in comparison["models"]}
    spread = {row["model"]: row for row in comparison.get("seed_spread", [])}
    rows = [row for row in comparison["bootstrap"] if row.get("status") == "ok"]
    if not rows:
        return ["distillation: no student and baseline pair to compare"]
    against = rows[0]["against"]
    lines = [f"distillation on this sample: test mean AUROC of each student - the undistilled "
             f"{labels.get(against, against)} ({against}), paired patient bootstrap 95% interval"
             + ("; mean ± sd over training seeds" if spread else "")]
    better = worse = 0
    for row in rows:
        text = f"  {labels.get(row['student'], row['student'])}: {row['diff']:+.4f} [{row['ci_low']:+.4f}, " \
               f"{row['ci_high']:+.4f}]"
        seeds = spread.get(row["student"], {})
        if seeds.get("diff_sd") is not None:
            text += f"; over {seeds['diff_runs']} seeds {seeds['diff_mean']:+.4f} ± {seeds['diff_sd']:.4f}"
        lines.append(text)
        better += row["ci_low"] > 0
        worse += row["ci_high"] < 0
    mean_diff = sum(row["diff"] for row in rows) / len(rows)
    spread_note = ("" if spread else " (one training seed: --seeds 3 measures the seed spread, which the interval "
                   "leaves out)")
    seeds = [spread[row["student"]] for row in rows if spread.get(row["student"], {}).get("diff_sd") is not None]
    if seeds:
        above = sum(one["diff_mean"] - one["diff_sd"] > 0 for one in seeds)
        below = sum(one["diff_mean"] + one["diff_sd"] < 0 for one in seeds)
        spread_note = (f"; over {max(one['diff_runs'] for one in seeds)} training seeds {above} of {len(seeds)} "
                       f"students are above the baseline by more than their seed sd, {below} below by more, "
                       f"{len(seeds) - above - below} within it")
    if better and not worse:
        verdict = f"distillation helped on this sample: {better} of {len(rows)} students above the baseline with an " \
                  f"interval above 0, none below"
    elif worse and not better:
        verdict = f"distillation did not help on this sample: {worse} of {len(rows)} students below the baseline with " \
                  f"an interval below 0, none above"
    elif better and worse:
        verdict = f"distillation helped some students and hurt others on this sample: {better} of {len(rows)} above " \
                  f"the baseline, {worse} below (intervals excluding 0)"
    else:
        verdict = f"distillation made no clear difference on this sample: every interval of the {len(rows)} " \
                  "students includes 0"
    lines.append(f"{verdict}; mean difference over the students {mean_diff:+.4f}{spread_note}")
    return lines


def _seed_runs(args, data_dir: Path, cache_dir: Path, root: Path) -> list[str]:
    """More training runs of the baseline and the single-teacher students, one folder per extra seed; returns the
    folders for the comparison's --seed-runs. Each uses the same split (carved with --seed) and the same teachers."""
    from common.commands import distill, train
    from common.models import model_folders
    runs = []
    baseline_index = min(model_folders())
    for seed in range(args.seed + 1, args.seed + args.seeds):
        run = root / f"seed-{seed}"
        folder, model_name = model_folders()[baseline_index]
        flags = _common_flags(data_dir, args, cache_dir)
        print(f"\n===== seed {seed}: training {model_name} and distilling every teacher into it =====")
        train.main(flags + _train_flags(args, DEMO_EPOCHS[baseline_index], seed=seed), model=model_name,
                      index=baseline_index, folder=run / folder)
        distill.main(flags + _distill_flags(args, seed=seed) + ["--teacher", "all", "--teachers-root", str(root)],
                     folder=run / DISTILL_FOLDER)
        runs.append(str(run))
    return runs


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    # Imported after parsing: --help (and a bad flag) answer without loading torch.
    from common.commands import compare, distill, evaluate, train
    from common.data.cache_build import build_image_cache
    from common.data.splits import build_split
    from common.data.synthetic import BBOX_NAME
    from common.explain.localization import read_bbox_list
    from common.models import model_folders
    from common.runtime.device import resolve_device
    resolve_device(args.device)  # a device this machine lacks is one line now, not after the data set is made
    start = time.perf_counter()
    root = Path(args.output_dir)
    data_dir = root / "data"
    _synthetic_sample(data_dir, args)
    # One cache at the eval size of the demo's input size, so that the cached eval view is the PNG path's.
    cache_dir = root / "image-cache"
    split = build_split(str(data_dir / "labels"), None, 0.1, args.seed)
    build_image_cache(data_dir / "images", sorted({n for part in split.parts.values() for n in part.names}),
                      cache_dir, size=eval_resize(args.img_size), workers=max(1, args.workers or 1))
    folders = [int(k) for k in args.folders.split(",") if k.strip()]
    # The synthetic generator boxes its drawn findings like the NIH list; the split of the demo (labels/) is another
    # partition than the boxed test list, so the tables say how many of the boxes fall on its test images.
    boxed = {row.image for row in read_bbox_list(data_dir / BBOX_NAME)}
    tested = set(read_labelled_list(data_dir / "labels" / "test_list.txt")[0])
    # --bbox-file also for the sheets: the boxes drawn on them must be the synthetic ones, not NIH boxes of images
    # that happen to share a synthetic image's name.
    localization = ["--bbox-file", str(data_dir / BBOX_NAME)] + (["--localization"] if boxed & tested else [])
    if not boxed & tested:
        # A very small set can leave no boxed image in the demo's test part; say so rather than fail the demo.
        print(f"no image of {BBOX_NAME} is in the demo's test part: the localisation tables are left out")
    summary = {}
    for index in folders:
        folder, model_name = model_folders()[index]
        out = root / folder
        print(f"\n===== {folder}: training {model_name} =====")
        train.main(_common_flags(data_dir, args, cache_dir) + _train_flags(args, DEMO_EPOCHS[index]),
                      model=model_name, index=index, folder=out)
        print(f"\n===== {folder}: testing model{index}.pth =====")
        evaluate.main(_loader_flags(args, cache_dir) + ["--cam", str(CAM_K), *localization],
                        model=model_name, index=index, folder=out)
        report = json.loads((out / f"model{index}-test.json").read_text())
        summary[f"model{index}"] = report["mean_auroc"]
    student_dir = root / DISTILL_FOLDER
    if not args.skip_distillation:
        flags = _common_flags(data_dir, args, cache_dir) + _distill_flags(args)
        print("\n===== 6: distilling every teacher into EEEA-Net-C2 =====")
        distill.main(flags + ["--teacher", "all"], folder=student_dir)
        print("\n===== 6: distilling the ensemble of teachers into EEEA-Net-C2 =====")
        distill.main(flags + ["--teacher", "ensemble", "--ensemble-weights", "auroc"], folder=student_dir)
        seed_runs = _seed_runs(args, data_dir, cache_dir, root) if args.seeds > 1 else []
        print("\n===== 6: before / after comparison =====")
        compare.main(_loader_flags(args, cache_dir) + localization + (["--seed-runs", *seed_runs] if seed_runs else []),
                     folder=student_dir)
    minutes = (time.perf_counter() - start) / 60
    print(f"\ndemo finished in {minutes:.1f} min; test mean AUROC: "
          + ", ".join(f"{k} {v:.3f}" for k, v in summary.items()))
    print(f"results: {root}/<folder>/modelK-test.json, modelK-test-cam-sheet.png, modelK-test-localization.txt, "
          f"{student_dir}/comparison.md and comparison-auroc.png")
    comparison = student_dir / "comparison.json"
    if not args.skip_distillation and comparison.is_file():
        for line in distillation_verdict(json.loads(comparison.read_text())):
            print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
