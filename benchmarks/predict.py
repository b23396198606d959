"""``predict.py`` throughput and memory on real PNGs: streaming against the model's forward-only rate, in one run.

    python benchmarks/predict.py [--images-from DIR ...] [--model eeea_c2] [--img-size 224] [--batch-size 16]
                                 [--small 50] [--large 400] [--rounds 3] [--threads N] [--workers N]

The real NIH PNGs of tests/data/images (and of every ``--images-from`` folder) are copied, under distinct names, to
``--small`` and ``--large`` files. With the thread rule of ``predict.py`` (``choose_threads_and_workers(kind=
"predict")``, or ``--threads``/``--workers``) and a random-weight network, it measures, in interleaved rounds on the
same ``--small`` files (the median of ``--rounds`` is printed):

- PyTorch forward-only: ``TorchPredictor.predict_array`` on batches decoded beforehand (the model's own rate);
- PyTorch path: ``predict_images`` (decoding threads ahead of the model, the code ``predict.py`` runs);
- onnxruntime forward-only and the ``--onnx`` path, likewise, on the same network exported with ``export_onnx``.

Then it runs ``1-EEEA-Net-C2/predict.py`` (with ``--checkpoint`` of that network) as a user would, once per path
and file count, each in a fresh process, and reads each process's peak RSS (its own ``VmHWM``) and wall
time.

Printed ratios (targets in issue 18 §1): PyTorch path / PyTorch forward-only (>= 0.8), ``--onnx`` path /
onnxruntime forward-only (>= 0.8), peak RSS of ``--large`` files / ``--small`` files for each path (<= 1.2).
Ratios come from one run on one machine and are comparable; absolute numbers are not comparable across machines.
"""
from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common.commands._cli import ArgumentParser, non_negative_int, positive_int, run_main
from common.constants import CLASS_NAMES, IMAGENET_MEAN, IMAGENET_STD
from common.errors import UserError
from common.inference.metadata import model_metadata
from common.inference.onnx import OnnxPredictor, export_onnx
from common.inference.predictor import TorchPredictor, predict_images, read_image_any
from common.models import create_model
from common.runtime.threads import available_cores, choose_threads_and_workers

REPO = Path(__file__).resolve().parents[1]
REAL_IMAGES = REPO / "tests" / "data" / "images"
SCRIPT = REPO / "1-EEEA-Net-C2" / "predict.py"


def get_args_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="benchmarks/predict.py", description=__doc__.split("\n")[0])
    parser.add_argument("--images-from", action="append", default=[], metavar="DIR",
                        help="another folder of real PNGs to copy from (besides tests/data/images); repeatable")
    parser.add_argument("--model", default="eeea_c2", help="network (default eeea_c2, folder 1's)")
    parser.add_argument("--img-size", type=positive_int, default=224)
    parser.add_argument("--batch-size", type=positive_int, default=16)
    parser.add_argument("--small", type=positive_int, default=50, help="files of the rate runs and of the small "
                                                                      "memory run (default 50)")
    parser.add_argument("--large", type=positive_int, default=400, help="files of the large memory run (default 400)")
    parser.add_argument("--rounds", type=positive_int, default=3, help="interleaved rounds of the rates (default 3)")
    parser.add_argument("--threads", type=positive_int, default=None, help="model threads (default: the rule)")
    parser.add_argument("--workers", type=non_negative_int, default=None, help="decoding threads (default: the rule)")
    return parser


def copy_images(sources: list[Path], folder: Path, count: int) -> list[Path]:
    """``count`` copies of the source PNGs in ``folder`` under distinct NIH-style names (real files, not links)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        target = folder / f"{index + 1:08d}_000.png"
        shutil.copyfile(sources[index % len(sources)], target)
        paths.append(target)
    return paths


def rate(run, count: int) -> float:
    start = time.perf_counter()
    run()
    return count / (time.perf_counter() - start)


# The child writes its own peak RSS (VmHWM of /proc/self/status) at exit: the rusage of a child (os.wait4,
# RUSAGE_CHILDREN) also counts the parent's memory copied at fork, so it would report this benchmark's size.
PEAK_WRITER = ("import atexit, runpy, sys\n"
               "target = sys.argv.pop(1)\n"
               "def record():\n"
               "    peak = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0].split()[1]\n"
               "    open(target, 'w').write(peak)\n"
               "atexit.register(record)\n"
               "sys.argv = sys.argv[1:]\n"
               "runpy.run_path(sys.argv[0], run_name='__main__')\n")


def run_command(args: list[str], scratch: Path) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one ``predict.py`` process."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore"}
    peak_file = scratch / "peak-kib"
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", PEAK_WRITER, str(peak_file), str(SCRIPT), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise UserError(f"predict.py {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()[-500:]}")
    return seconds, int(peak_file.read_text()) / 1024.0


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    sources = sorted(REAL_IMAGES.glob("*.png"))
    for folder in args.images_from:
        found = sorted(Path(folder).glob("*.png"))
        if not found:
            raise UserError(f"--images-from {folder} holds no PNG")
        sources += found
    cores = available_cores()
    threads, decoders = choose_threads_and_workers(args.workers, args.threads, cores=cores, kind="predict")
    onnx_threads, onnx_decoders = choose_threads_and_workers(args.workers, args.threads, cores=cores,
                                                             kind="predict_onnx")
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = create_model(args.model, img_size=args.img_size).eval()
    info = model_metadata(args.model, args.img_size)
    print(f"{len(sources)} source PNGs; {args.model} at {args.img_size} px, batch {args.batch_size}, {cores} core(s); "
          f"PyTorch: {threads} model + {decoders} decoding thread(s); onnxruntime: {onnx_threads} + {onnx_decoders}")
    with tempfile.TemporaryDirectory(prefix="predict-bench-") as scratch:
        scratch = Path(scratch)
        small = copy_images(sources, scratch / "small", args.small)
        copy_images(sources, scratch / "large", args.large)
        torch_predictor = TorchPredictor(model, info)
        onnx_path = export_onnx(model, args.img_size, scratch / "model.onnx", metadata=info)
        onnx_predictor = OnnxPredictor(onnx_path, threads=onnx_threads)
        views = np.stack([torch_predictor.preprocess(read_image_any(p)) for p in small])
        batches = [views[i:i + args.batch_size] for i in range(0, len(views), args.batch_size)]

        def forward(predictor):
            return lambda: [predictor.predict_array(batch) for batch in batches]

        def stream(predictor, count):
            return lambda: predict_images(predictor, None, small, batch_size=args.batch_size, decoders=count,
                                          show_progress=False)

        runs = {"torch forward": forward(torch_predictor), "torch path": stream(torch_predictor, decoders),
                "onnx forward": forward(onnx_predictor), "onnx path": stream(onnx_predictor, onnx_decoders)}
        for run in runs.values():  # warm-up: first-call allocations, onnxruntime's arena
            run()
        rates = {name: [] for name in runs}
        busy = {name: [] for name in runs}
        for _ in range(args.rounds):
            for name, run in runs.items():
                cpu = time.process_time()
                start = time.perf_counter()
                rates[name].append(rate(run, len(small)))
                busy[name].append((time.process_time() - cpu) / (time.perf_counter() - start))
        median = {name: statistics.median(values) for name, values in rates.items()}
        for name, value in median.items():
            # Cores used: this process's CPU seconds per wall second. Decoding can hide behind the model only when
            # the path gets more than the forward-only run's share of the machine.
            print(f"{name:<14} {value:7.1f} img/s, {statistics.median(busy[name]):.2f} cores used  "
                  f"(rounds: {', '.join(f'{v:.1f}' for v in rates[name])})")
        decode = rate(lambda: [torch_predictor.preprocess(read_image_any(p)) for p in small], len(small))
        print(f"{'decode+view':<14} {decode:7.1f} img/s on one thread (for the thread rule: decoding / forward "
              f"= {median['torch forward'] / decode:.2f} of the time per image)")

        checkpoint = scratch / "model.pth"
        torch.save({"model": model.state_dict(), "model_name": args.model, "num_classes": len(CLASS_NAMES),
                    "img_size": args.img_size, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}, checkpoint)
        memory = {}
        for path_name, extra in (("torch", ["--checkpoint", str(checkpoint), "--threads", str(threads), "--workers",
                                            str(decoders)]),
                                 ("onnx", ["--onnx", str(onnx_path), "--threads", str(onnx_threads), "--workers",
                                           str(onnx_decoders)])):
            for size_name, count in (("small", args.small), ("large", args.large)):
                common = [str(scratch / size_name), "--output", str(scratch / f"{path_name}-{size_name}.csv"),
                          "--print-limit", "0", "--batch-size", str(args.batch_size)]
                seconds, peak = run_command([*common, *extra], scratch)
                memory[path_name, size_name] = peak
                print(f"predict.py {path_name:<5} {count:4d} files: {seconds:6.1f} s wall ({count / seconds:5.1f} "
                      f"img/s with start-up), peak RSS {peak:7.1f} MiB")
    print("ratios (targets: issue 18 §1):")
    print(f"  PyTorch path / PyTorch forward-only     {median['torch path'] / median['torch forward']:.3f}  "
          "(target >= 0.8)")
    print(f"  --onnx path / onnxruntime forward-only  {median['onnx path'] / median['onnx forward']:.3f}  "
          "(target >= 0.8)")
    for path_name in ("torch", "onnx"):
        print(f"  peak RSS {args.large} / {args.small} files, {path_name:<5}         "
              f"{memory[path_name, 'large'] / memory[path_name, 'small']:.3f}  (target <= 1.2)")
    print(f"  onnxruntime forward / PyTorch forward   {median['onnx forward'] / median['torch forward']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, sys.argv[1:]))
