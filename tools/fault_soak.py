"""Fault-injection soak: kill tiny training runs with SIGKILL, or stop them with SIGTERM, at seeded random moments,
resume them, and check the result is bit-identical to an uninterrupted run.

For each mode (``base``: folder 1's train-model.py; ``cached``: folder 6's with ``--teacher 1 --teacher-mode
cached``) one reference run goes uninterrupted; then each trial starts the same command in a fresh output folder,
interrupts it 1..--max-kills times at random moments (each restart is the same command with ``--resume``), and
finally reruns with ``--resume`` until it exits. One interruption in three (--term-share) is a SIGTERM, as a cluster
sends to preempt a job: the run must stop by itself within --term-wait seconds with exit code 143 and one
``stopped:`` line (saving its state mid-epoch); the others are SIGKILL. Any other non-zero exit of a run is a
failure (reported with its stderr line; a ``--resume`` refused because no ``-last.pth`` existed yet is reported as
``no-checkpoint-yet``).
A finished trial is compared with the reference: every tensor of the weights and optimizer state (``torch.equal``),
the best checkpoint's weights and epoch, and the log rows except the timing columns. Leftover ``*.tmp`` files in
the output folder are reported too.

    python tools/fault_soak.py --trials 20 [--modes base,cached] [--seed 0] [--max-kills 3] [--term-share 0.33]
                               [--work DIR]

``run_soak`` is the importable entry (tests/test_faults.py). Exit code 0 when every trial is identical.
"""
from __future__ import annotations

import argparse
import csv
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # `python tools/fault_soak.py` from a checkout, without installing

import torch  # noqa: E402

from common.data.synthetic import generate_synthetic_cxr8  # noqa: E402

TINY = ["--epochs", "3", "--batch-size", "16", "--img-size", "32", "--workers", "0", "--threads", "1", "--device", "cpu",
        "--lr", "1e-3", "--warmup-epochs", "0"]
TIMING_COLUMNS = ("img_per_s", "epoch_seconds")
MODES = ("base", "cached")
BASE_FOLDER = "1-EEEA-Net-C2"
DISTILL_FOLDER = "6-Distilling-to-EEEA-Net-C2"
PREFIX = {"base": "model1", "cached": "modeld1"}


@dataclass
class Trial:
    """What happened to one trial: the kill moments, each run's exit, and the verdict."""
    mode: str
    index: int
    kill_times: list[float]
    kill_signals: list[str] = field(default_factory=list)  # "KILL" or "TERM", one per kill time
    kills_done: int = 0
    runs: int = 0
    epochs_at_kills: list = field(default_factory=list)
    failure: str | None = None      # a run ended non-zero by itself: its category and stderr line
    differences: list[str] = field(default_factory=list)
    leftover_temporaries: list[str] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return self.failure is None and not self.differences

    def describe(self) -> str:
        signals = self.kill_signals or ["KILL"] * len(self.kill_times)
        kills = ", ".join(f"{name}@{t:.1f}s" for t, name in zip(self.kill_times[:self.kills_done], signals)) \
            or "none (finished first)"
        epochs = ", ".join("-" if e is None else str(e) for e in self.epochs_at_kills)
        text = f"{self.mode} trial {self.index}: killed at {kills} (last epoch saved: {epochs or '-'}), {self.runs} run(s)"
        if self.failure:
            text += f" -> FAILED: {self.failure}"
        elif self.differences:
            text += f" -> DIFFERENT: {'; '.join(self.differences[:5])}"
            if len(self.differences) > 5:
                text += f" (+{len(self.differences) - 5} more)"
        else:
            text += " -> identical"
        if self.leftover_temporaries:
            text += f"; leftover temporaries: {', '.join(self.leftover_temporaries)}"
        return text


def _environment() -> dict:
    # One thread everywhere: the reference and the trials must reduce floats in the same order to be bit-identical.
    return {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def command_for(mode: str, data: Path, output: Path, teachers_root: Path) -> list[str]:
    """The training command of ``mode`` writing into ``output``."""
    flags = ["--data-dir", str(data / "images"), "--split", str(data / "labels"), *TINY, "--output-dir", str(output)]
    if mode == "base":
        return [sys.executable, str(REPO / BASE_FOLDER / "train-model.py"), *flags]
    if mode == "cached":
        return [sys.executable, str(REPO / DISTILL_FOLDER / "train-model.py"), *flags, "--teacher", "1",
                "--teacher-mode", "cached", "--teachers-root", str(teachers_root)]
    raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")


def _run_to_end(command: list[str], log_file: Path) -> tuple[int, float]:
    start = time.monotonic()
    with open(log_file, "a") as log:
        code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=_environment()).returncode
    return code, time.monotonic() - start


def _run_and_kill(command: list[str], kill_after: float, log_file: Path, how: str = "KILL",
                  term_wait: float = 120.0) -> int | None | str:
    """Run ``command``; after ``kill_after`` seconds SIGKILL it (``how="KILL"``) or send SIGTERM and wait up to
    ``term_wait`` seconds for it to stop by itself. None when it was interrupted as it should be; its exit code
    when it ended before the signal; a string describing what went wrong with a SIGTERM (no clean stop)."""
    with open(log_file, "a") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=_environment())
        try:
            return process.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            pass
        if how == "KILL":
            process.send_signal(signal.SIGKILL)
            process.wait()
            return None
        log.flush()
        position = log_file.stat().st_size
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=term_wait)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.wait()
            return f"SIGTERM: still running after {term_wait:.0f} s"
    tail = log_file.read_text(errors="replace")[position:]
    if code == 0:
        return 0  # it was finishing anyway (the signal came during the last epoch's saves)
    # -15: the signal came before Python could install any handler (the first instants of start-up).
    if code not in (143, -signal.SIGTERM):
        return f"SIGTERM: exit {code}: {_last_line(tail)}"
    if "Traceback" in tail:
        return f"SIGTERM: a traceback: {_last_line(tail)}"
    if code == 143 and not any(line.startswith("stopped:") for line in re.split(r"[\r\n]", tail)):
        return f"SIGTERM: exit 143 without a 'stopped:' line: {_last_line(tail)}"
    return None


def _last_line(text: str) -> str:
    lines = [line.strip() for line in re.split(r"[\r\n]", text) if line.strip()]
    return lines[-1] if lines else "(no output)"


def _last_error_line(log_file: Path) -> str:
    # Progress bars redraw with carriage returns; each redraw counts as a line here.
    lines = [line for line in re.split(r"[\r\n]", log_file.read_text(errors="replace")) if line.strip()]
    errors = [line for line in lines if line.startswith("error:") or "Error" in line]
    return (errors or lines or ["(no output)"])[-1].strip()


def _saved_epoch(last: Path):
    if not last.is_file():
        return None
    try:
        return torch.load(last, map_location="cpu", weights_only=True)["epoch"]
    except (RuntimeError, OSError, KeyError, EOFError) as err:  # a damaged -last.pth is itself a finding
        return f"unreadable ({type(err).__name__})"


def compare_states(reference, candidate, where: str = "") -> list[str]:
    """Paths (``optimizer.state.3.exp_avg``) where two nested checkpoint values differ; tensors by torch.equal."""
    if isinstance(reference, torch.Tensor) or isinstance(candidate, torch.Tensor):
        same = (isinstance(reference, torch.Tensor) and isinstance(candidate, torch.Tensor)
                and reference.dtype == candidate.dtype and reference.shape == candidate.shape
                and torch.equal(reference, candidate))
        return [] if same else [where or "<root>"]
    if isinstance(reference, dict) and isinstance(candidate, dict):
        differences = [f"{where}.{key}".lstrip(".") + " missing" for key in reference.keys() - candidate.keys()]
        differences += [f"{where}.{key}".lstrip(".") + " extra" for key in candidate.keys() - reference.keys()]
        for key in reference.keys() & candidate.keys():
            differences += compare_states(reference[key], candidate[key], f"{where}.{key}".lstrip("."))
        return differences
    if isinstance(reference, (list, tuple)) and isinstance(candidate, (list, tuple)):
        if len(reference) != len(candidate):
            return [f"{where} length {len(reference)} vs {len(candidate)}"]
        differences = []
        for index, (a, b) in enumerate(zip(reference, candidate)):
            differences += compare_states(a, b, f"{where}.{index}".lstrip("."))
        return differences
    return [] if reference == candidate else [f"{where}: {reference!r} vs {candidate!r}"[:200]]


def _log_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as stream:
        return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in csv.DictReader(stream)]


def compare_outputs(reference: Path, candidate: Path, prefix: str) -> list[str]:
    """Differences between two finished output folders: -last.pth weights/optimizer, best weights, log rows."""
    differences = []
    ref_last = torch.load(reference / f"{prefix}-last.pth", map_location="cpu", weights_only=True)
    last_path = candidate / f"{prefix}-last.pth"
    if not last_path.is_file():
        return [f"{last_path.name} missing"]
    last = torch.load(last_path, map_location="cpu", weights_only=True)
    for key in ("epoch", "model", "optimizer", "best_epoch", "best_val_mean_auroc"):
        differences += [f"last.{d}" for d in compare_states(ref_last.get(key), last.get(key), key)]
    ref_best = torch.load(reference / f"{prefix}.pth", map_location="cpu", weights_only=True)
    best_path = candidate / f"{prefix}.pth"
    if not best_path.is_file():
        differences.append(f"{best_path.name} missing")
    else:
        best = torch.load(best_path, map_location="cpu", weights_only=True)
        for key in ("epoch", "model"):
            differences += [f"best.{d}" for d in compare_states(ref_best.get(key), best.get(key), key)]
    ref_rows, rows = _log_rows(reference / f"{prefix}-log.csv"), _log_rows(candidate / f"{prefix}-log.csv")
    if ref_rows != rows:
        differences.append(f"log rows differ: epochs {[r.get('epoch') for r in ref_rows]} vs "
                           f"{[r.get('epoch') for r in rows]}" + ("" if [r.get("epoch") for r in ref_rows] !=
                                                                   [r.get("epoch") for r in rows] else
                                                                   " (values differ)"))
    return differences


def prepare(work: Path, patients: int = 30) -> tuple[Path, Path]:
    """The synthetic data set and a teachers root holding ``1-EEEA-Net-C2/model1.pth`` (the base reference).
    More patients make longer epochs, so that more kills land inside them rather than in start-up."""
    data = work / "data"
    if not (data / "labels").is_dir():
        generate_synthetic_cxr8(data, num_patients=patients, image_size=48, seed=1)
    return data, work / "teachers"


def run_reference(mode: str, data: Path, teachers_root: Path, work: Path) -> tuple[Path, float]:
    """The uninterrupted run of ``mode``; returns its output folder and wall time. The base reference is the
    cached mode's teacher."""
    output = teachers_root / BASE_FOLDER if mode == "base" else work / f"reference-{mode}"
    log_file = work / f"reference-{mode}.log"
    if output.exists():
        shutil.rmtree(output)
    code, seconds = _run_to_end(command_for(mode, data, output, teachers_root), log_file)
    if code != 0:
        raise RuntimeError(f"the {mode} reference run failed (exit {code}): {_last_error_line(log_file)}; "
                           f"see {log_file}")
    return output, seconds


def training_seconds(reference: Path, mode: str) -> float:
    """Seconds the reference run spent in its epochs (training, validation, saving), from its log CSV."""
    logs = sorted(reference.glob("*-log.csv"))
    if not logs:
        raise RuntimeError(f"the {mode} reference run in {reference} wrote no log")
    with open(logs[0], newline="") as stream:
        # epoch_seconds counts training only; validation and the saves add about a third on these tiny runs.
        return 1.3 * sum(float(row["epoch_seconds"]) for row in csv.DictReader(stream))


@dataclass
class Pace:
    """How long a whole run takes now, as a multiple of the reference run's time. The kill moments are drawn against
    the reference run; a shared machine whose load changes makes later runs slower or faster, so every trial whose
    first run ended before its kill updates the factor, and later kills land inside the runs again."""
    factor: float = 1.0

    def learn(self, run_seconds: float, reference_seconds: float) -> None:
        self.factor = 0.5 * self.factor + 0.5 * run_seconds / max(reference_seconds, 1e-9)


def run_trial(mode: str, index: int, kill_times: list[float], data: Path, teachers_root: Path, reference: Path,
              work: Path, max_runs: int = 20, kill_signals: list[str] | None = None, pace: Pace | None = None,
              reference_seconds: float | None = None) -> Trial:
    """One trial: interrupt at each of ``kill_times`` (seconds after each start, scaled by ``pace``) with the
    matching ``kill_signals`` (default SIGKILL), then resume to the end; compare."""
    pace = pace or Pace()
    kill_times = [round(t * pace.factor, 2) for t in kill_times]
    trial = Trial(mode, index, kill_times, list(kill_signals or ["KILL"] * len(kill_times)))
    output = work / f"{mode}-trial{index}"
    if output.exists():
        shutil.rmtree(output)
    log_file = work / f"{mode}-trial{index}.log"
    log_file.unlink(missing_ok=True)
    command = command_for(mode, data, output, teachers_root)
    last = output / f"{PREFIX[mode]}-last.pth"
    while trial.runs < max_runs:
        this = command if trial.runs == 0 else [*command, "--resume"]
        trial.runs += 1
        if trial.kills_done < len(kill_times):
            started = time.monotonic()
            code = _run_and_kill(this, kill_times[trial.kills_done], log_file, trial.kill_signals[trial.kills_done])
            if code == 0 and trial.runs == 1 and reference_seconds:
                pace.learn(time.monotonic() - started, reference_seconds)  # a whole run, faster than the kill
            if isinstance(code, str):
                trial.failure = code
                return trial
            if code is None:
                trial.kills_done += 1
                trial.epochs_at_kills.append(_saved_epoch(last))
                continue
        else:
            code, _ = _run_to_end(this, log_file)
        if code == 0:
            break
        line = _last_error_line(log_file)
        category = "no-checkpoint-yet" if "nothing to resume" in line else f"exit {code}"
        trial.failure = f"{category}: {line}"
        return trial
    else:
        trial.failure = f"did not finish in {max_runs} runs"
        return trial
    trial.differences = compare_outputs(reference, output, PREFIX[mode])
    trial.leftover_temporaries = sorted(p.name for p in output.glob(".*.tmp"))
    return trial


def run_soak(modes=MODES, trials: int = 20, seed: int = 0, max_kills: int = 3, work: Path | None = None,
             report=print, patients: int = 30, term_share: float = 1 / 3) -> dict[str, list[Trial]]:
    """Run the soak; ``report`` gets each trial's line and the closing summary. Returns the trials per mode."""
    own_work = work is None
    work = Path(tempfile.mkdtemp(prefix="fault-soak-")) if own_work else Path(work)
    work.mkdir(parents=True, exist_ok=True)
    data, teachers_root = prepare(work, patients)
    results: dict[str, list[Trial]] = {}
    # The base reference is also the cached mode's teacher, so it always runs first.
    references = {"base": run_reference("base", data, teachers_root, work)}
    for mode in modes:
        if mode not in references:
            references[mode] = run_reference(mode, data, teachers_root, work)
        reference, seconds = references[mode]
        report(f"{mode}: reference run {seconds:.1f}s -> {reference}")
        results[mode] = []
        pace = Pace()
        for index in range(1, trials + 1):
            rng = random.Random(f"{seed}-{mode}-{index}")
            # Two kills in three land in the epochs (from the reference log's epoch times: mid-epoch, between the
            # checkpoint writes, during a save), the rest anywhere in start-up, the cache build and training. A kill
            # after the run has finished tests nothing, so none is drawn in the last 5 %.
            epochs_start = max(0.2, seconds - training_seconds(reference, mode))
            kill_times = [round(rng.uniform(epochs_start, 0.95 * seconds) if rng.random() < 2 / 3
                                else rng.uniform(0.2, 0.9 * seconds), 2) for _ in range(rng.randint(1, max_kills))]
            # Drawn from a generator of their own, so that the kill moments stay those of the SIGKILL-only soak.
            signals = random.Random(f"{seed}-{mode}-{index}-signals")
            kill_signals = ["TERM" if signals.random() < term_share else "KILL" for _ in kill_times]
            trial = run_trial(mode, index, kill_times, data, teachers_root, reference, work, kill_signals=kill_signals,
                              pace=pace, reference_seconds=seconds)
            report(trial.describe())
            results[mode].append(trial)
    for mode, done in results.items():
        identical = sum(t.identical for t in done)
        failures = {}
        for t in done:
            if t.failure:
                failures[t.failure.split(":")[0]] = failures.get(t.failure.split(":")[0], 0) + 1
        terms = sum(name == "TERM" for t in done for name in t.kill_signals[:t.kills_done])
        extra = [f"{n} {kind}" for kind, n in failures.items()]
        extra += [f"{n} different" for n in [sum(bool(t.differences) for t in done)] if n]
        extra += [f"{n} left temporaries" for n in [sum(bool(t.leftover_temporaries) for t in done)] if n]
        report(f"{mode}: {identical}/{len(done)} identical" + (f" ({', '.join(extra)})" if extra else "")
               + f"; {sum(t.kills_done for t in done)} interruptions, {terms} of them SIGTERM")
    if own_work:
        report(f"work folder (logs of every run): {work}")
    return results


def main(argv=None) -> int:
    """``python tools/fault_soak.py --trials 20``: exit 0 when every trial is bit-identical to the reference."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20, help="trials per mode (default 20)")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated: base, cached (default both)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments (default 0)")
    parser.add_argument("--max-kills", type=int, default=3, help="kills per trial are drawn from 1..this (default 3)")
    parser.add_argument("--work", default=None, help="working folder (default: a new temporary folder, kept)")
    parser.add_argument("--term-share", type=float, default=1 / 3,
                        help="share of the interruptions that are SIGTERM rather than SIGKILL (default 1/3)")
    parser.add_argument("--patients", type=int, default=30,
                        help="synthetic patients (default 30; more make longer epochs and more kills inside them)")
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown or args.trials < 1 or args.max_kills < 1:
        parser.error(f"--modes must be from {MODES}, --trials and --max-kills >= 1 (got {args.modes}, "
                     f"{args.trials}, {args.max_kills})")
    results = run_soak(modes, args.trials, args.seed, args.max_kills, args.work, patients=args.patients,
                       term_share=args.term_share)
    return 0 if all(t.identical for done in results.values() for t in done) else 1


if __name__ == "__main__":
    sys.exit(main())
