"""The fault table: every fault of docs/guide/faults.md, and the faults that already held, tried as a user would, one
row each: the case, the exit code, the one line the user saw (or TRACEBACK), and anything lost.

The scripts run in subprocesses with real faults: signals sent to the process (SIGTERM, SIGINT, SIGKILL to one rank
of a torchrun run), full disks on small tmpfs mounts (when run as root; otherwise those rows say they were skipped
and why), damaged files. Bad-input rows that need no signal run the command in this process through ``run_main``
(the same handling, without the seconds a fresh interpreter takes to import torch).

    python tools/fault_table.py [--work DIR] [--only SUBSTRING] [--no-torchrun]

``run_table`` is the importable entry (tests/test_fault_table.py). Exit code 0 when every row is as expected.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # `python tools/fault_table.py` from a checkout, without installing

BASE = "1-EEEA-Net-C2"
DISTIL = "6-Distilling-to-EEEA-Net-C2"
TINY = ["--batch-size", "8", "--img-size", "32", "--workers", "0", "--threads", "1", "--device", "cpu",
        "--lr", "1e-3", "--warmup-epochs", "0"]
FAST_TEST = ["--workers", "0", "--threads", "1", "--device", "cpu", "--n-boot", "10", "--subgroup-boot", "5"]


@dataclass
class Row:
    """One tried fault: what was expected and what happened."""
    group: str
    case: str
    expected: str
    code: int | None = None
    line: str = ""
    lost: str = ""
    ok: bool = False
    note: str = ""

    @property
    def verdict(self) -> str:
        if self.note.startswith("skipped"):
            return "skipped"
        return "ok" if self.ok else "FAILED"


# --------------------------------------------------------------------------------------------------------------------
# Running things
# --------------------------------------------------------------------------------------------------------------------
def environment() -> dict:
    # stderr must hold only our lines: no progress bars (tqdm reads TQDM_DISABLE) and no library warnings.
    return {**os.environ, "PYTHONWARNINGS": "ignore", "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def script(name: str) -> str:
    return str(REPO / name)


def run(args, timeout: float = 900, **kwargs) -> subprocess.CompletedProcess:
    """Run a command to its end (a script as ``[script(...), flags...]``, run with this interpreter)."""
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, env=environment(),
                          timeout=timeout, **kwargs)


def start(args, log: Path) -> subprocess.Popen:
    """Start a command writing stdout and stderr into ``log`` files (``log.out``, ``log.err``)."""
    return subprocess.Popen([sys.executable, *map(str, args)], stdout=open(f"{log}.out", "w"),  # noqa: SIM115
                            stderr=open(f"{log}.err", "w"), env=environment())  # noqa: SIM115


def wait_for(path: Path, text: str, process: subprocess.Popen, timeout: float = 600, poll: float = 0.2) -> bool:
    """Wait until ``text`` appears in the file ``path``, looking every ``poll`` seconds (False if the process ended
    first or time ran out)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return True
        if process.poll() is not None:
            return path.exists() and text in path.read_text(errors="replace")
        time.sleep(poll)
    return False


def our_lines(stderr: str) -> list[str]:
    """The lines a command says to the user (errors and stops; warnings apart). A progress bar redraws with carriage
    returns: each redraw counts as a line, so a line printed after a half-drawn bar does not start with ours."""
    return [line.strip() for line in re.split(r"[\r\n]", stderr) if line.strip().startswith(("error:", "stopped:"))]


def summary(stderr: str) -> str:
    """The one line, ``TRACEBACK: <last line>`` when a traceback was printed, or every line of ours joined."""
    if "Traceback (most recent call last)" in stderr:
        last = [line for line in stderr.splitlines() if line.strip()]
        return f"TRACEBACK: {last[-1] if last else ''}"
    lines = our_lines(stderr)
    return " | ".join(lines) if lines else "(no error line)"


def ours_traced(stderr: str) -> bool:
    """A traceback through this project's code (torchrun's launcher prints tracebacks of its own)."""
    return re.search(r'File "[^"]*(/common/|-model\.py)', stderr) is not None


def in_process(main, argv, **kwargs) -> tuple[int | None, str]:
    """Run a command's ``main`` through ``run_main`` here; ``(exit code, stderr)``, a traceback as text."""
    import traceback
    from common.commands._cli import run_main
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = run_main(main, [str(a) for a in argv], **kwargs)
        except BaseException:  # noqa: BLE001 - anything that escapes run_main is what this table looks for
            traceback.print_exc(file=err)
            code = None
    return code, err.getvalue()


def hashes(folder: Path) -> dict:
    """The files of a folder (not dot-files) by name, with their sha256."""
    if not folder.is_dir():
        return {}
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()
            and not p.name.startswith(".")}


def changed(before: dict, after: dict) -> str:
    """What differs between two ``hashes`` of a folder, in words ("" when nothing was lost or changed)."""
    gone = sorted(set(before) - set(after))
    altered = sorted(name for name in set(before) & set(after) if before[name] != after[name])
    parts = ([f"gone: {', '.join(gone)}"] if gone else []) + ([f"changed: {', '.join(altered)}"] if altered else [])
    return "; ".join(parts)


@contextlib.contextmanager
def tmpfs(folder: Path, size: str):
    """A tmpfs of ``size`` mounted on ``folder``; yields None (with the reason) when it cannot be mounted."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        yield "skipped: mounting a tmpfs needs root"
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        yield f"skipped: mount refused ({mounted.stderr.strip()[:80]})"
        return
    try:
        yield None
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def torch_load(path: Path):
    import torch
    return torch.load(path, map_location="cpu", weights_only=True)


def same_training_state(reference: Path, candidate: Path) -> str:
    """"" when the two -last.pth hold the same epoch, weights and optimizer state, bit for bit."""
    sys.path.insert(0, str(REPO / "tools"))
    import fault_soak
    if not candidate.is_file():
        return f"{candidate.name} missing"
    ref, got = torch_load(reference), torch_load(candidate)
    found = []
    for key in ("epoch", "model", "optimizer", "best_epoch"):
        found += fault_soak.compare_states(ref.get(key), got.get(key), key)
    return "" if not found else f"differs from the uninterrupted run: {', '.join(found[:3])}"


# --------------------------------------------------------------------------------------------------------------------
# The bench: one synthetic data set, one finished reference run, one image cache
# --------------------------------------------------------------------------------------------------------------------
class Bench:
    """What the cases share, made once: data, a finished 2-epoch run of folder 1 (the reference and the teacher)."""

    def __init__(self, work: Path):
        from common.data.synthetic import generate_synthetic_cxr8
        self.work = work
        self.data = work / "data"
        if not (self.data / "labels").is_dir():
            generate_synthetic_cxr8(self.data, num_patients=30, image_size=48, seed=1)
        self.images, self.labels = self.data / "images", self.data / "labels"
        self.repo = work / "repo"  # a teachers root: repo/1-EEEA-Net-C2/model1.pth
        self.reference = self.repo / BASE
        if not (self.reference / "model1-last.pth").is_file():
            done = run([script(f"{BASE}/train-model.py"), *self.flags(self.reference, epochs=2)])
            if done.returncode != 0:
                raise RuntimeError(f"the reference run failed: {summary(done.stderr)}")

    def flags(self, out: Path, epochs: int = 2, *extra) -> list:
        return ["--data-dir", self.images, "--split", self.labels, "--epochs", str(epochs), *TINY,
                "--output-dir", out, *extra]

    def folder(self, name: str) -> Path:
        path = self.work / name
        if path.exists():
            shutil.rmtree(path)
        return path

    def copy_reference(self, name: str) -> Path:
        target = self.folder(name)
        shutil.copytree(self.reference, target)
        return target


# --------------------------------------------------------------------------------------------------------------------
# The cases
# --------------------------------------------------------------------------------------------------------------------
def case_divergence_without_clipping(bench: Bench) -> Row:
    row = Row("stop", "divergence that stays finite: --lr 100 --clip-grad 0", "2, 'training diverged', nothing saved")
    out = bench.folder("diverge")
    done = run([script(f"{BASE}/train-model.py"), *bench.flags(out, 2, "--lr", "100", "--clip-grad", "0")])
    row.code, row.line = done.returncode, summary(done.stderr)
    leftovers = sorted(hashes(out))
    row.lost = f"written: {', '.join(leftovers)}" if leftovers else ""
    row.ok = done.returncode == 2 and "training diverged" in row.line and not leftovers
    return row


def case_divergence_overwrite_keeps_the_old_run(bench: Bench) -> Row:
    row = Row("stop", "divergence with clipping, --overwrite over a finished run", "2, diverged, old run unchanged")
    out = bench.copy_reference("diverge-overwrite")
    before = hashes(out)
    done = run([script(f"{BASE}/train-model.py"), *bench.flags(out, 2, "--lr", "100", "--overwrite")])
    row.code, row.line, row.lost = done.returncode, summary(done.stderr), changed(before, hashes(out))
    row.ok = done.returncode == 2 and "training diverged" in row.line and not row.lost
    return row


def _signal_mid_epoch(bench: Bench, name: str, number: int, resume: bool) -> Row:
    label = signal.Signals(number).name
    row = Row("stop", f"{label} in the second epoch" + (", then --resume" if resume else ""),
              f"{128 + number}, one 'stopped:' line naming -last.pth, lock released"
              + ("; the resumed run equals the uninterrupted one" if resume else ""))
    log = bench.work / name
    # The tiny epoch is 12 steps, a fraction of a second on a quiet machine: a run that finishes before the signal
    # arrives (exit 0, no line) tested nothing, and is tried again.
    for _attempt in range(3):
        out = bench.folder(name)
        process = start([script(f"{BASE}/train-model.py"), *bench.flags(out, 2)], log)
        # The bar of the second epoch's training is drawn when it starts: the signal lands in its first steps.
        if not wait_for(Path(f"{log}.err"), "epoch 2/2 train", process, poll=0.01):
            process.kill()
            row.note = "the run ended before its second epoch"
            return row
        process.send_signal(number)
        try:
            row.code = process.wait(timeout=300)
        except subprocess.TimeoutExpired:
            process.kill()
            row.line = f"did not stop within 300 s of {label}"
            return row
        stderr = Path(f"{log}.err").read_text()
        if not (row.code == 0 and not our_lines(stderr)):
            break
    row.line = summary(stderr)
    lock_left = (out / ".model1.lock").exists()
    if (out / "model1-last.pth").is_file():
        partial = torch_load(out / "model1-last.pth").get("partial_epoch")
        row.note = (f"saved after step {partial['steps']} of {partial['steps_per_epoch']} of epoch {partial['epoch']}"
                    if partial else "saved between epochs")
    ok = (row.code == 128 + number and len(our_lines(stderr)) == 1 and row.line.startswith(f"stopped: {label}")
          and "model1-last.pth" in row.line and not lock_left)
    row.lost = "the lock file was left behind" if lock_left else ""
    if resume and ok:
        # "rerun the same command with --resume": the same threads too, so the floats add up in the same order.
        resumed = run([script(f"{BASE}/train-model.py"), *bench.flags(out, 2), "--resume"])
        if resumed.returncode != 0:
            row.lost = f"--resume failed: {summary(resumed.stderr)}"
            ok = False
        else:
            row.lost = same_training_state(bench.reference / "model1-last.pth", out / "model1-last.pth")
            ok = not row.lost
    row.ok = ok
    return row


def case_sigterm_mid_epoch(bench: Bench) -> Row:
    return _signal_mid_epoch(bench, "sigterm", signal.SIGTERM, resume=True)


def case_sigint_mid_epoch(bench: Bench) -> Row:
    return _signal_mid_epoch(bench, "sigint", signal.SIGINT, resume=False)


# The script run as a user would, with a real SIGINT sent to it the moment its command starts to import pandas (the
# slowest module of its start-up): a Ctrl-C while the modules load, at a moment that does not depend on the load.
SIGINT_AT_IMPORT = textwrap.dedent("""
    import os, runpy, signal, sys
    sys.path.insert(0, {repo!r})

    class InterruptAtPandas:
        def find_spec(self, name, path=None, target=None):
            if name == "pandas":
                sys.meta_path.remove(self)
                os.kill(os.getpid(), signal.SIGINT)
            return None

    sys.meta_path.insert(0, InterruptAtPandas())
    sys.argv = [{script!r}, *sys.argv[1:]]
    runpy.run_path({script!r}, run_name="__main__")
""")


def case_sigint_during_start_up(bench: Bench) -> Row:
    row = Row("stop", "SIGINT while the command's modules load", "130, one 'stopped:' line, no traceback")
    out = bench.folder("sigint-start")
    done = run(["-c", SIGINT_AT_IMPORT.format(repo=str(REPO), script=script(f"{BASE}/train-model.py")),
                *bench.flags(out, 2)])
    row.code, row.line = done.returncode, summary(done.stderr)
    row.lost = f"written: {', '.join(sorted(hashes(out)))}" if hashes(out) else ""
    row.ok = (done.returncode == 130 and len(our_lines(done.stderr)) == 1 and row.line.startswith("stopped: SIGINT")
              and not row.lost)
    return row


def case_sigint_before_any_step(bench: Bench) -> Row:
    row = Row("stop", "SIGINT before the first epoch ends, no earlier run", "130, says nothing of the run was saved "
              "or names the step state it saved")
    out = bench.folder("sigint-early")
    log = bench.work / "sigint-early"
    process = start([script(f"{BASE}/train-model.py"), *bench.flags(out, 2)], log)
    if not wait_for(Path(f"{log}.out"), "training eeea_c2", process):
        process.kill()
        row.note = "the run never reached its training"
        return row
    process.send_signal(signal.SIGINT)
    row.code = process.wait(timeout=300)
    stderr = Path(f"{log}.err").read_text()
    row.line = summary(stderr)
    said_saved = "is saved in" in row.line and (out / "model1-last.pth").is_file()
    said_nothing = "nothing of this run was saved" in row.line and not (out / "model1-last.pth").exists()
    row.ok = row.code == 130 and len(our_lines(stderr)) == 1 and (said_saved or said_nothing) \
        and "last completed epoch" not in row.line
    return row


def case_torchrun_rank_dies(bench: Bench) -> Row:
    row = Row("stop", "torchrun: rank 1 killed (SIGKILL) mid-epoch", "rank 0 prints one line naming rank 1 and "
              "--resume; torchrun reports ChildFailedError; -last.pth intact")
    out = bench.folder("torchrun")
    log = bench.work / "torchrun"
    command = ["-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", script(f"{BASE}/train-model.py"),
               *bench.flags(out, 3)]
    process = start(command, log)
    if not wait_for(Path(f"{log}.out"), "Epoch 1/3", process):
        process.kill()
        row.note = "the run ended before its first epoch"
        return row
    rank1 = None
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            command_line = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"RANK=1" in environ and str(out).encode() in command_line:
            rank1 = int(entry.name)
    if rank1 is None:
        process.kill()
        row.note = "rank 1 not found"
        return row
    before = hashes(out)
    os.kill(rank1, signal.SIGKILL)
    row.code = process.wait(timeout=300)
    stderr = Path(f"{log}.err").read_text()
    ours = [line for line in our_lines(stderr) if line.startswith("error:")]
    row.line = " | ".join(ours) or "(no line of ours)"
    row.lost = changed({k: v for k, v in before.items() if k != "model1-curves.png"},
                       {k: v for k, v in hashes(out).items() if k != "model1-curves.png"})
    torchrun_report = "ChildFailedError" in stderr and "Root Cause" in stderr
    row.ok = (len(ours) == 1 and f"rank 1 of 2 (pid {rank1}) has ended" in ours[0] and "--resume" in ours[0]
              and torchrun_report and row.code != 0)
    row.note = "torchrun's own ChildFailedError report follows our line" if torchrun_report else ""
    return row


def case_torchrun_preempted(bench: Bench) -> Row:
    row = Row("stop", "torchrun preempted: SIGTERM to torchrun in epoch 2, then --resume", "one 'stopped:' line; "
              "every rank stops after the same step; the resumed run equals an uninterrupted torchrun run")
    out, whole = bench.folder("torchrun-term"), bench.folder("torchrun-whole")
    log = bench.work / "torchrun-term"
    launcher = ["-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", script(f"{BASE}/train-model.py")]
    # Batches of 2: 12 steps an epoch, so that the ranks agree to stop at step 10, mid-epoch.
    flags = lambda folder: bench.flags(folder, 2, "--batch-size", "2")  # noqa: E731
    reference = run([*launcher, *flags(whole)])
    if reference.returncode != 0:
        row.code, row.line, row.note = reference.returncode, summary(reference.stderr), "the reference run failed"
        return row
    process = start([*launcher, *flags(out)], log)
    if not wait_for(Path(f"{log}.err"), "epoch 2/2 train", process):
        process.kill()
        row.note = "the run ended before its second epoch"
        return row
    process.send_signal(signal.SIGTERM)
    row.code = process.wait(timeout=300)
    stderr = Path(f"{log}.err").read_text()
    ours = our_lines(stderr)
    row.line = " | ".join(ours) or summary(stderr)
    state = torch_load(out / "model1-last.pth") if (out / "model1-last.pth").is_file() else {}
    partial = state.get("partial_epoch")
    row.note = (f"saved after step {partial['steps']} of {partial['steps_per_epoch']} of epoch {partial['epoch']}, "
                f"{len(partial['ranks'])} ranks' random states" if partial else f"saved: epoch {state.get('epoch')}")
    resumed = run([*launcher, *flags(out), "--resume"])
    row.lost = (same_training_state(whole / "model1-last.pth", out / "model1-last.pth") if resumed.returncode == 0
                else f"--resume: exit {resumed.returncode}, {summary(resumed.stderr)}")
    row.ok = len(ours) == 1 and ours[0].startswith("stopped: SIGTERM") and not row.lost and not ours_traced(stderr)
    return row


# A run whose loader workers are busy (each image takes 1 s) when the main process meets an error at its second step.
SLOW_WORKERS = textwrap.dedent("""
    import os, runpy, sys, time
    sys.path.insert(0, {repo!r})
    import common.data.datasets as datasets
    import common.engine.loop as loop
    from common.errors import UserError
    main, load, to_device, steps = os.getpid(), datasets.load_png, loop.batch_to_device, [0]

    def slow_load(path):
        if os.getpid() != main:
            time.sleep(1.0)
        return load(path)

    def failing(*args, **kwargs):
        steps[0] += 1
        if steps[0] == 2:
            raise UserError("a fault met at the second step (injected)")
        return to_device(*args, **kwargs)

    datasets.load_png, loop.batch_to_device = slow_load, failing
    sys.argv = [{script!r}, *sys.argv[1:]]
    runpy.run_path({script!r}, run_name="__main__")
""")


def case_prompt_exit(bench: Bench) -> Row:
    row = Row("stop", "an error while 2 loader workers are busy", "2, the process ends within 3 s of its line")
    out = bench.folder("prompt-exit")
    log = bench.work / "prompt-exit"
    code = SLOW_WORKERS.format(repo=str(REPO), script=script(f"{BASE}/train-model.py"))
    flags = [str(f) for f in bench.flags(out, 1)]
    flags[flags.index("--workers") + 1] = "2"
    process = start(["-c", code, *flags], log)
    err = Path(f"{log}.err")
    if not wait_for(err, "error:", process):
        process.kill()
        row.line = summary(err.read_text())
        return row
    seen = time.monotonic()
    row.code = process.wait(timeout=300)
    seconds = time.monotonic() - seen
    row.line = summary(err.read_text())
    row.note = f"exited {seconds:.1f} s after its error line"
    row.ok = row.code == 2 and seconds < 3.0 and "injected" in row.line
    return row


def case_cache_build_full_disk(bench: Bench) -> Row:
    row = Row("disk", "image cache build on a full disk (1 MB tmpfs)", "2, names the file and the space, before "
              "decoding; nothing left")
    mount = bench.folder("full-cache")
    with tmpfs(mount, "1m") as refused:
        if refused:
            row.note = refused
            return row
        done = run(["-m", "common.image_cache", "--data-dir", bench.images, "--split", bench.labels,
                    "--out", mount / "cache", "--size", "256", "--workers", "1"])
        row.code, row.line = done.returncode, summary(done.stderr)
        left = sorted(p.name for p in (mount / "cache").glob("*")) if (mount / "cache").exists() else []
        row.lost = f"left behind: {', '.join(left)}" if left else ""
        row.ok = (done.returncode == 2 and "cannot reserve" in row.line and "no space left on device" in row.line
                  and "nothing was decoded" in row.line and not left and "caching" not in done.stderr)
    return row


def case_overwrite_full_disk(bench: Bench) -> Row:
    row = Row("disk", "--overwrite on a full disk (tmpfs holding the old run)", "2, the folder holds the old run "
              "whole, and the line says so")
    mount = bench.folder("full-overwrite")
    sizes = sum(p.stat().st_size for p in bench.reference.iterdir() if p.is_file())
    best = (bench.reference / "model1.pth").stat().st_size
    # Room for the old run and the new best checkpoint, not for the new -last.pth as well.
    with tmpfs(mount, str(sizes + best + (best // 2))) as refused:
        if refused:
            row.note = refused
            return row
        for path in bench.reference.iterdir():
            if path.is_file():
                shutil.copy2(path, mount / path.name)
        before = hashes(mount)
        done = run([script(f"{BASE}/train-model.py"), *bench.flags(mount, 2, "--overwrite")])
        row.code, row.line, row.lost = done.returncode, summary(done.stderr), changed(before, hashes(mount))
        row.ok = (done.returncode == 2 and "no space left on device" in row.line and "nothing of epoch 1 was "
                  "written" in row.line and "earlier run's files" in row.line and not row.lost)
    return row


def case_resume_full_disk(bench: Bench) -> Row:
    row = Row("disk", "a resumed run on a full disk (already held)", "2, one line, earlier files unchanged")
    mount = bench.folder("full-resume")
    state = torch_load(bench.reference / "model1-last.pth")
    with tmpfs(mount, str(2 * (bench.reference / "model1-last.pth").stat().st_size)) as refused:
        if refused:
            row.note = refused
            return row
        import torch
        state["epoch"], state["log_rows"] = 1, state["log_rows"][:1]
        torch.save(state, mount / "model1-last.pth")
        shutil.copy2(bench.reference / "model1.pth", mount / "model1.pth")
        before = hashes(mount)
        done = run([script(f"{BASE}/train-model.py"), "--output-dir", mount, "--resume"])
        row.code, row.line, row.lost = done.returncode, summary(done.stderr), changed(before, hashes(mount))
        row.ok = done.returncode == 2 and "no space left on device" in row.line and not row.lost
    return row


def case_damaged_teacher_cache(bench: Bench) -> Row:
    row = Row("files", "a truncated teacher-logit cache", "0, one warning line, the cache rebuilt")
    out = bench.folder("distil-cache") / DISTIL
    flags = [*bench.flags(out, 1), "--teacher", "1", "--teacher-mode", "cached", "--teachers-root", bench.repo]
    first = run([script(f"{DISTIL}/train-model.py"), *flags])
    caches = sorted((out / "teacher-cache").glob("*.pt"))
    if first.returncode != 0 or not caches:
        row.code, row.line = first.returncode, summary(first.stderr)
        row.note = "the first distillation run failed"
        return row
    data = caches[0].read_bytes()
    caches[0].write_bytes(data[: len(data) // 3])
    done = run([script(f"{DISTIL}/train-model.py"), *flags, "--overwrite"])
    warnings = [line.strip() for line in re.split(r"[\r\n]", done.stderr)
                if line.strip().startswith("warning:") and "teacher cache" in line]
    row.code = done.returncode
    row.line = " | ".join(warnings) or summary(done.stderr)
    rebuilt = caches[0].is_file() and caches[0].stat().st_size == len(data)
    row.lost = "" if rebuilt else "the cache was not rebuilt"
    row.ok = done.returncode == 0 and len(warnings) == 1 and "damaged" in warnings[0] and rebuilt \
        and "Traceback" not in done.stderr
    return row


def case_duplicate_list_line(bench: Bench) -> Row:
    from common.commands import train
    row = Row("files", "an image listed twice in train_list.txt", "2, the file, the name and both line numbers")
    split = bench.folder("dup-split")
    shutil.copytree(bench.labels, split)
    lines = (split / "train_list.txt").read_text().splitlines()
    (split / "train_list.txt").write_text("\n".join([*lines, lines[2]]) + "\n")
    code, stderr = in_process(train.main, ["--data-dir", bench.images, "--split", split, "--epochs", "1", *TINY,
                                           "--output-dir", bench.folder("dup-out")], model="eeea_c2", index=1)
    row.code, row.line = code, summary(stderr)
    name = lines[2].split()[0]
    row.ok = code == 2 and f"line {len(lines) + 1}: image {name} is listed again (first on line 3)" in row.line
    return row


def case_png_as_teacher(bench: Bench) -> Row:
    from common.commands import distill
    row = Row("files", "a PNG given as --teacher-checkpoint", "2, says the file is not a checkpoint")
    png = sorted(bench.images.glob("*.png"))[0]
    code, stderr = in_process(distill.main, [*bench.flags(bench.folder("png-teacher"), 1), "--teacher", "1",
                                             "--teacher-checkpoint", png])
    row.code, row.line = code, summary(stderr)
    row.ok = code == 2 and "is not a checkpoint" in row.line and "PNG image" in row.line
    return row


def case_two_cache_sizes(bench: Bench) -> Row:
    from common.commands import evaluate
    row = Row("folders", "a cache folder with two sizes (37 and 74 px)", "0: train and test-model read the size "
              "their model needs; --cache-size picks another")
    cache = bench.folder("two-sizes")
    for size in ("37", "74"):  # 37: eval_resize(32), what a 32-px model is evaluated at
        built = run(["-m", "common.image_cache", "--data-dir", bench.images, "--split", bench.labels, "--out", cache,
                     "--size", size, "--workers", "1"])
        if built.returncode != 0:
            row.code, row.line = built.returncode, summary(built.stderr)
            return row
    out = bench.folder("two-sizes-run")
    trained = run([script(f"{BASE}/train-model.py"), *bench.flags(out, 1, "--image-cache", cache)])
    read = re.findall(r"reading images from ImageCache\(\S+images-(\d+)\.npy", trained.stdout)
    code, stderr = in_process(evaluate.main, ["--checkpoint", out / "model1.pth", *FAST_TEST, "--image-cache", cache,
                                              "--cache-size", "74"], model="eeea_c2", index=1)
    row.code = trained.returncode
    row.line = f"train read {', '.join(read) or 'nothing'} px; test-model --cache-size 74: exit {code}"
    row.ok = trained.returncode == 0 and read == ["37"] and code == 0
    if not row.ok:
        row.line += f" ({summary(trained.stderr)}; {summary(stderr)})"
    return row


def case_second_test_model_run(bench: Bench) -> Row:
    from common.commands import evaluate
    row = Row("folders", "a second test-model.py run with other options", "2 naming what differs, results "
              "unchanged; --overwrite replaces them")
    out = bench.copy_reference("retest")
    argv = ["--checkpoint", out / "model1.pth", *FAST_TEST]
    first, _ = in_process(evaluate.main, argv, model="eeea_c2", index=1)
    before = hashes(out)
    code, stderr = in_process(evaluate.main, [*argv, "--tencrop"], model="eeea_c2", index=1)
    row.code, row.line, row.lost = code, summary(stderr), changed(before, hashes(out))
    again, _ = in_process(evaluate.main, [*argv, "--tencrop", "--overwrite"], model="eeea_c2", index=1)
    report = json.loads((out / "model1-test.json").read_text())
    row.ok = (first == 0 and code == 2 and "--tencrop off then, on now" in row.line and not row.lost and again == 0
              and report["options"]["tencrop"] is True)
    return row


KILL_AFTER_SECOND_PROGRESS = textwrap.dedent("""
    import os, runpy, signal, sys
    sys.path.insert(0, {repo!r})
    import common.data.cache_build as build
    save, calls = build._save_progress, [0]

    def save_then_die(*args, **kwargs):
        save(*args, **kwargs)
        calls[0] += 1
        if calls[0] == 2:  # the first decoded chunks are recorded
            os.kill(os.getpid(), signal.SIGKILL)

    build._save_progress, build.PROGRESS_EVERY = save_then_die, 0.0
    sys.argv = ["common.image_cache", *sys.argv[1:]]
    runpy.run_module("common.image_cache", run_name="__main__")
""")


def case_killed_cache_build(bench: Bench) -> Row:
    row = Row("held", "kill -9 during the image cache build, then the build again", "the resumed build's array "
              "equals an uninterrupted build's, byte for byte")
    whole, killed = bench.folder("cache-whole"), bench.folder("cache-killed")
    flags = ["--data-dir", bench.images, "--split", bench.labels, "--size", "40", "--workers", "1"]
    run(["-m", "common.image_cache", *flags, "--out", whole])
    first = run(["-c", KILL_AFTER_SECOND_PROGRESS.format(repo=str(REPO)), *flags, "--out", killed])
    done = run(["-m", "common.image_cache", *flags, "--out", killed])
    row.code, row.line = done.returncode, summary(done.stderr) if done.returncode else "resumed: " + (
        "yes" if "resuming the image cache build" in done.stdout else "no")
    same = (whole / "images-40.npy").read_bytes() == (killed / "images-40.npy").read_bytes() \
        if (killed / "images-40.npy").is_file() else False
    row.lost = "" if same else "the arrays differ"
    row.ok = first.returncode == -signal.SIGKILL and done.returncode == 0 and same
    return row


def case_kill_and_resume(bench: Bench) -> Row:
    row = Row("held", "kill -9 in the second epoch, then --resume", "0; the result equals the uninterrupted run")
    out = bench.folder("kill9")
    log = bench.work / "kill9"
    process = start([script(f"{BASE}/train-model.py"), *bench.flags(out, 2)], log)
    wait_for(Path(f"{log}.out"), "Epoch 1/2", process)
    time.sleep(0.5)
    process.kill()
    process.wait()
    done = run([script(f"{BASE}/train-model.py"), *bench.flags(out, 2), "--resume"])
    row.code, row.line = done.returncode, summary(done.stderr) if done.returncode else "(resumed to the end)"
    row.lost = same_training_state(bench.reference / "model1-last.pth", out / "model1-last.pth")
    row.ok = done.returncode == 0 and not row.lost
    return row


def case_folder_lock(bench: Bench) -> Row:
    row = Row("held", "a second run in a folder in use", "2, names the holder's pid; the first run goes on")
    out = bench.folder("locked")
    log = bench.work / "locked"
    first = start([script(f"{BASE}/train-model.py"), *bench.flags(out, 50)], log)  # long enough to still run
    if not wait_for(Path(f"{log}.out"), "split ", first):
        first.kill()
        row.note = "the first run did not start"
        return row
    second = run([script(f"{BASE}/train-model.py"), *bench.flags(out, 1)])
    row.code, row.line = second.returncode, summary(second.stderr)
    still_running = first.poll() is None
    first.send_signal(signal.SIGTERM)  # done with it: it stops cleanly
    first_code = first.wait(timeout=600)
    row.note = f"the first run was {'still running' if still_running else 'over'}; SIGTERM then ended it ({first_code})"
    row.ok = (second.returncode == 2 and f"is in use by pid {first.pid}" in row.line and still_running
              and first_code == 143)
    return row


def _tamper_rows(bench: Bench) -> list[Row]:
    """The image cache tamperings (already held): each refused by test-model.py with one line."""
    from common.commands import evaluate
    base = bench.folder("tamper-base")
    built = run(["-m", "common.image_cache", "--data-dir", bench.images, "--split", bench.labels, "--out", base,
                 "--size", "37", "--workers", "1"])
    if built.returncode != 0:
        return [Row("held", "image cache tamperings", "", built.returncode, summary(built.stderr))]
    images = bench.folder("tamper-images")
    shutil.copytree(bench.images, images, copy_function=shutil.copy2)

    def fresh(number):
        copy = bench.folder(f"tamper-{number}")
        shutil.copytree(base, copy)
        return copy

    def truncate(copy):
        with open(copy / "images-37.npy", "r+b") as handle:
            handle.truncate(1000)

    def edit_table(copy):
        table = copy / "files-37.tsv"
        table.write_text(table.read_text().replace("\t", "\t1", 1))

    test_names = [line.split()[0] for line in (bench.labels / "test_list.txt").read_text().splitlines() if line]
    tamperings = [
        ("the manifest removed", lambda c: (c / "manifest-37.json").unlink(), "not an image cache"),
        ("the array renamed back to .partial", lambda c: ((c / "manifest-37.json").unlink(),
                                                          (c / "images-37.npy").rename(c / "images-37.npy.partial")),
         "unfinished"),
        ("the array truncated", truncate, "images-37.npy"),
        ("the files table edited", edit_table, "fingerprint"),
        ("a manifest of another format", lambda c: (c / "manifest-37.json").write_text(
            (c / "manifest-37.json").read_text().replace('"format": 1', '"format": 99')), "format-1"),
    ]
    rows = []
    checkpoint = bench.reference / "model1.pth"
    for number, (what, tamper, expected) in enumerate(tamperings):
        copy = fresh(number)
        tamper(copy)
        code, stderr = in_process(evaluate.main, ["--checkpoint", checkpoint, *FAST_TEST, "--image-cache", copy,
                                                  "--overwrite"], model="eeea_c2", index=1)
        rows.append(Row("held", f"image cache: {what}", f"2, '{expected}'", code, summary(stderr),
                        ok=code == 2 and expected in summary(stderr)))
    # The source images changed or moved since the build (each change undone before the next).
    target = images / test_names[0]
    content, times = target.read_bytes(), (target.stat().st_atime_ns, target.stat().st_mtime_ns)

    def grow():
        with open(target, "ab") as handle:
            handle.write(b"\0")
        os.utime(target, ns=times)

    changes = [
        ("an image touched since the build", lambda: os.utime(target, ns=(times[0], times[1] + 10**9)),
         "modification time"),
        ("an image grown since the build (same time)", grow, "size"),
        ("an image deleted since the build", target.unlink, "no longer under"),
    ]
    rebuilt = bench.folder("tamper-source")
    run(["-m", "common.image_cache", "--data-dir", images, "--split", bench.labels, "--out", rebuilt, "--size", "37",
         "--workers", "1"])
    for what, change, expected in changes:
        change()
        code, stderr = in_process(evaluate.main, ["--checkpoint", checkpoint, *FAST_TEST, "--image-cache", rebuilt,
                                                  "--data-dir", images, "--overwrite"], model="eeea_c2", index=1)
        rows.append(Row("held", f"image cache: {what}", f"2, '{expected}'", code, summary(stderr),
                        ok=code == 2 and expected in summary(stderr)))
        target.write_bytes(content)
        os.utime(target, ns=times)
    code, stderr = in_process(evaluate.main, ["--checkpoint", checkpoint, *FAST_TEST, "--image-cache", base,
                                              "--data-dir", images, "--overwrite"], model="eeea_c2", index=1)
    rows.append(Row("held", "image cache: built from another folder", "2, 'built from'", code, summary(stderr),
                    ok=code == 2 and "built from" in summary(stderr)))
    return rows


def _predictions_rows(bench: Bench) -> list[Row]:
    """Bad predictions files given to test-model.py --predictions (already held): one line each."""
    from common.commands import evaluate
    from common.constants import CLASS_NAMES
    names = [line.split()[0] for line in (bench.labels / "test_list.txt").read_text().splitlines() if line]
    header = ["Image Index", *CLASS_NAMES]
    good = [[name, *["0.5"] * len(CLASS_NAMES)] for name in names]
    folder = bench.folder("predictions")
    folder.mkdir()

    def table(rows, columns=header):
        return "\n".join(",".join(map(str, r)) for r in [columns, *rows]) + "\n"

    files = [
        ("an empty file", b"", "is empty"),
        ("no Image Index column", table(good, ["Name", *CLASS_NAMES]).encode(), "no 'Image Index' column"),
        ("a class column missing", table([r[:-1] for r in good], header[:-1]).encode(), "no column for class Hernia"),
        ("logits instead of probabilities", table([[r[0], *["2.5"] * 14] for r in good]).encode(), "[0, 1]"),
        ("test images missing", table(good[:-2]).encode(), "2 missing"),
        ("a row with too few fields", table([*good[:-1], good[-1][:5]]).encode(), "fields, the header has"),
        ("a value that is not a number", table([[good[0][0], "high", *good[0][2:]], *good[1:]]).encode(), "line 2"),
        ("not UTF-8 text", b"\xff\xfe\x00\x01" * 20, "UTF-8"),
    ]
    rows = []
    for number, (what, content, expected) in enumerate(files):
        path = folder / f"bad-{number}.csv"
        path.write_bytes(content)
        code, stderr = in_process(evaluate.main, ["--predictions", path, "--split", bench.labels, *FAST_TEST[-4:]],
                                  model="eeea_c2", index=1)
        rows.append(Row("held", f"predictions file: {what}", f"2, '{expected}'", code, summary(stderr),
                        ok=code == 2 and expected in summary(stderr)))
    return rows


def _decompression_bomb(path: Path, side: int = 20000) -> Path:
    """A valid 1-bit PNG of side x side pixels (past twice Pillow's MAX_IMAGE_PIXELS), a few kB on disk."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    compressor = zlib.compressobj(9)
    row = bytes(1 + (side + 7) // 8)
    data = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


def _jpeg_ls_dicom(path: Path) -> Path:
    """A DICOM whose pixels are JPEG-LS compressed (a decoder plugin is needed to read them)."""
    import numpy as np
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGLSLossless, SecondaryCaptureImageStorage, generate_uid
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    meta.TransferSyntaxUID = JPEGLSLossless
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.Rows, ds.Columns, ds.SamplesPerPixel = "DX", 8, 8, 1
    ds.PhotometricInterpretation, ds.BitsAllocated, ds.BitsStored, ds.HighBit = "MONOCHROME2", 16, 12, 11
    ds.PixelRepresentation = 0
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xf7" + bytes(20) + b"\xff\xd9"])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    del np
    return path


def _predict_rows(bench: Bench) -> list[Row]:
    """predict.py's faults of issue 16 (handled in the predict branch; tried here so that the table has them all)."""
    folder = bench.folder("predict")
    folder.mkdir()
    predict = [script(f"{BASE}/predict.py"), "--checkpoint", bench.reference / "model1.pth", "--device", "cpu"]
    good = sorted(bench.images.glob("*.png"))[0]
    truncated = folder / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:200])
    rows = []
    done = run([*predict, truncated, "--output", folder / "never.csv"])
    rows.append(Row("files", "predict.py given only an unreadable PNG", "2, one line after the file's warning",
                    done.returncode, summary(done.stderr), "" if not (folder / "never.csv").exists() else
                    "a CSV was written", ok=done.returncode == 2 and "could be read" in summary(done.stderr)
                    and not (folder / "never.csv").exists()))
    bomb = _decompression_bomb(folder / "00009999_000.png")
    done = run([*predict, bomb, good, "--output", folder / "bomb.csv"])
    warned = [line for line in done.stderr.splitlines() if line.startswith("warning: cannot read image")]
    rows.append(Row("files", "a decompression bomb given with a good image", "1 (one image skipped), a warning, "
                    "the good image predicted", done.returncode, " | ".join(warned) or summary(done.stderr),
                    "" if (folder / "bomb.csv").is_file() else "no CSV", ok=done.returncode == 1 and len(warned) == 1
                    and "decompression bomb" in warned[0] and (folder / "bomb.csv").is_file()
                    and "Traceback" not in done.stderr))
    dicom = _jpeg_ls_dicom(folder / "jpegls.dcm")
    done = run([*predict, dicom, "--output", folder / "dicom.csv"])
    rows.append(Row("files", "a JPEG-LS DICOM without a decoder", "names the package to install", done.returncode,
                    summary(done.stderr) + " | " + " | ".join(l for l in done.stderr.splitlines()
                                                             if l.startswith("warning:")),
                    ok=done.returncode == 2 and "pip install" in done.stderr and "Traceback" not in done.stderr))
    exported = folder / "model.onnx"
    done = run([*predict, "--export-onnx", exported])
    if done.returncode != 0:
        rows.append(Row("files", "ONNX metadata that is not JSON", "", done.returncode,
                        f"the export failed: {summary(done.stderr)}"))
        return rows
    import onnx
    graph = onnx.load(str(exported))
    for entry in graph.metadata_props:
        if entry.key == "dtforcxr8":
            entry.value = "{'img_size': 64"
    onnx.save(graph, str(folder / "broken.onnx"))
    done = run([script(f"{BASE}/predict.py"), good, "--onnx", folder / "broken.onnx", "--output",
                folder / "onnx.csv"])
    rows.append(Row("files", "ONNX metadata that is not JSON", "2, one line naming the file", done.returncode,
                    summary(done.stderr), ok=done.returncode == 2 and "broken.onnx" in summary(done.stderr)
                    and "not JSON" in summary(done.stderr)))
    return rows


CASES = [case_divergence_without_clipping, case_divergence_overwrite_keeps_the_old_run, case_sigterm_mid_epoch,
         case_sigint_mid_epoch, case_sigint_during_start_up, case_sigint_before_any_step, case_torchrun_rank_dies,
         case_torchrun_preempted,
         case_prompt_exit, case_cache_build_full_disk, case_overwrite_full_disk, case_resume_full_disk,
         case_damaged_teacher_cache, case_duplicate_list_line, case_png_as_teacher, case_two_cache_sizes,
         case_second_test_model_run, case_killed_cache_build, case_kill_and_resume, case_folder_lock,
         _tamper_rows, _predictions_rows, _predict_rows]


def format_table(rows: list[Row]) -> str:
    """The rows as a fixed-width text table (case, exit, verdict, line, lost and notes)."""
    lines = [f"{'group':7} {'case':60} {'exit':>5} {'verdict':8} line / lost / note", "-" * 150]
    for row in rows:
        extra = "; ".join(filter(None, [f"lost: {row.lost}" if row.lost else "", row.note]))
        text = row.line + (f"  [{extra}]" if extra else "")
        lines.append(f"{row.group:7} {row.case[:60]:60} {'-' if row.code is None else row.code:>5} "
                     f"{row.verdict:8} {text}")
    done = [r for r in rows if r.verdict != "skipped"]
    lines.append("-" * 150)
    lines.append(f"{sum(r.ok for r in done)}/{len(done)} as expected"
                 + (f", {len(rows) - len(done)} skipped" if len(rows) > len(done) else ""))
    return "\n".join(lines)


def run_table(work: Path | None = None, only: str | None = None, torchrun: bool = True, report=print) -> list[Row]:
    """Run every case (those whose function name contains ``only``); ``report`` gets each row as it is done."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the in-process rows; restored at the end (pytest runs this in its own process)
    try:
        return _run_cases(Path(work or tempfile.mkdtemp(prefix="fault-table-")), only, torchrun, report)
    finally:
        torch.set_num_threads(threads)


def _run_cases(work: Path, only: str | None, torchrun: bool, report) -> list[Row]:
    work.mkdir(parents=True, exist_ok=True)
    bench = Bench(work)
    rows = []
    for case in CASES:
        if only and not any(part in case.__name__ for part in only.split(",")):
            continue
        if not torchrun and "torchrun" in case.__name__:
            continue
        started = time.monotonic()
        try:
            made = case(bench)
        except Exception as err:  # noqa: BLE001 - a case that breaks is a row, not the end of the table
            made = Row("?", case.__name__, "", None, f"the case itself failed: {type(err).__name__}: {err}")
        for row in made if isinstance(made, list) else [made]:
            rows.append(row)
            report(f"[{time.monotonic() - started:5.0f}s] {row.verdict:8} {row.case}: {row.line}")
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default=None, help="working folder (default: a new temporary folder, kept)")
    parser.add_argument("--only", default=None, help="run only the cases whose name contains one of these (comma-separated)")
    parser.add_argument("--no-torchrun", action="store_true", help="leave out the torchrun case (2 processes)")
    args = parser.parse_args(argv)
    rows = run_table(args.work, args.only, torchrun=not args.no_torchrun)
    print(format_table(rows))
    return 0 if all(r.ok or r.verdict == "skipped" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
