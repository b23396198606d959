"""Faults met by the real scripts: SIGKILL at random moments then --resume, a full disk, a bad output folder."""
import hashlib
import os
import subprocess
import sys
import textwrap
import time

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "tools"))
import fault_soak  # noqa: E402

TINY = fault_soak.TINY
# stderr must hold only the error line: no progress bars (tqdm reads TQDM_DISABLE) and no AUROC warnings.
QUIET = {**os.environ, "PYTHONWARNINGS": "ignore", "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "2"}

# Every test here runs the scripts as subprocesses, several times.
pytestmark = pytest.mark.slow


@pytest.mark.slow
def test_kill_and_resume_soak(tmp_path):
    lines = []
    started = time.monotonic()
    # Seed 1 with up to 2 interruptions draws both kinds: SIGTERM then SIGKILL, SIGTERM alone, SIGKILL alone.
    results = fault_soak.run_soak(("base", "cached"), trials=2, seed=1, max_kills=2, work=tmp_path,
                                  report=lines.append, term_share=0.5)
    print("\n".join(lines), f"\n{time.monotonic() - started:.0f}s")
    assert all(trial.identical and not trial.leftover_temporaries
               for trials in results.values() for trial in trials), "\n".join(lines)
    drawn = {name for trials in results.values() for trial in trials for name in trial.kill_signals}
    assert drawn == {"TERM", "KILL"}, drawn


# The script run as a user would, with the atomic writers' stream failing like a full disk at the nth write.
FULL_DISK = textwrap.dedent("""
    import errno, os, runpy, sys
    sys.path.insert(0, {repo!r})
    import common.atomic as checkpoint
    real, left = checkpoint._open_temporary, [{nth}]

    class Full:
        def __init__(self, stream): self._stream = stream
        def write(self, data):
            left[0] -= 1
            if left[0] == 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self._stream.write(data)
        def __getattr__(self, name): return getattr(self._stream, name)
        def __enter__(self): return self
        def __exit__(self, *exc): self._stream.close()

    checkpoint._open_temporary = lambda handle, mode: Full(real(handle, mode))
    sys.argv = [{script!r}, *sys.argv[1:]]
    runpy.run_path({script!r}, run_name="__main__")
""")


def hashes(folder):
    """The run's files (not the dot-files: a killed run's lock file is replaced by the next run's)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())
            if p.is_file() and not p.name.startswith(".")}


def assert_one_line_exit_2(result, *fragments):
    assert result.returncode == 2, (result.stdout[-2000:], result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert str(fragment) in lines[0], lines[0]


# The script with a SIGKILL right after its second epoch's files are written: an interrupted run to resume.
KILL_AFTER_EPOCH_2 = textwrap.dedent("""
    import os, runpy, signal, sys
    sys.path.insert(0, {repo!r})
    import common.engine.loop as engine
    draw, calls = engine.plot_training_curves, [0]

    def draw_then_die(*args, **kwargs):
        draw(*args, **kwargs)
        calls[0] += 1
        if calls[0] == 2:
            os.kill(os.getpid(), signal.SIGKILL)

    engine.plot_training_curves = draw_then_die
    sys.argv = [{script!r}, *sys.argv[1:]]
    runpy.run_path({script!r}, run_name="__main__")
""")


@pytest.mark.parametrize("nth", [1, 2, 3])
def test_full_disk_during_training_is_one_line_and_keeps_earlier_files(synthetic, tmp_path, nth):
    out = tmp_path / "run"
    script = str(REPO / "1-EEEA-Net-C2" / "train-model.py")
    flags = ["--data-dir", str(synthetic / "images"), "--split", str(synthetic / "labels"), *TINY,
             "--output-dir", str(out)]
    killed = subprocess.run([sys.executable, "-c", KILL_AFTER_EPOCH_2.format(repo=str(REPO), script=script), *flags],
                            capture_output=True, text=True, env=QUIET)
    assert killed.returncode == -9, killed.stderr
    before = hashes(out)
    # The nth write of the resumed run's atomic files (log, best or -last checkpoint) hits a full disk.
    result = subprocess.run([sys.executable, "-c", FULL_DISK.format(repo=str(REPO), nth=nth, script=script),
                             *flags, "--resume"], capture_output=True, text=True, env=QUIET)
    assert_one_line_exit_2(result, "no space left on device (Errno 28)", out)
    assert hashes(out) == before


def test_output_dir_that_is_a_file_is_one_line(synthetic, tmp_path):
    target = tmp_path / "out"
    target.write_bytes(b"not a folder")
    result = subprocess.run([sys.executable, str(REPO / "1-EEEA-Net-C2" / "train-model.py"), "--data-dir",
                             str(synthetic / "images"), "--split", str(synthetic / "labels"), *TINY,
                             "--output-dir", str(target)], capture_output=True, text=True, env=QUIET)
    assert_one_line_exit_2(result, target)
    assert target.read_bytes() == b"not a folder"
