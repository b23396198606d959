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


# Until training.py is wired to run_folder/run_log (restart when no -last.pth exists yet, sweep temporaries), kills
# before the first checkpoint end in "nothing to resume" and leave temporaries; remove this marker with the wiring.
@pytest.mark.xfail(reason="training run not yet wired to run_folder/run_log", strict=False)
@pytest.mark.slow
def test_kill_and_resume_soak(tmp_path):
    lines = []
    started = time.monotonic()
    results = fault_soak.run_soak(("base", "cached"), trials=2, seed=0, max_kills=1, work=tmp_path,
                                  report=lines.append)
    print("\n".join(lines), f"\n{time.monotonic() - started:.0f}s")
    assert all(trial.identical and not trial.leftover_temporaries
               for trials in results.values() for trial in trials), "\n".join(lines)


# The script run as a user would, with the atomic writers' stream failing like a full disk at the nth write.
FULL_DISK = textwrap.dedent("""
    import errno, os, runpy, sys
    sys.path.insert(0, {repo!r})
    import common.checkpoint as checkpoint
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
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def assert_one_line_exit_2(result, *fragments):
    assert result.returncode == 2, (result.stdout[-2000:], result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert str(fragment) in lines[0], lines[0]


# Today the log row is appended before -last.pth is written, so a full disk at that write leaves a changed log;
# with TrainingLog wired (-last.pth first, then the log) this passes and strict=True flags the stale marker.
@pytest.mark.xfail(reason="training.py appends the log before writing -last.pth", strict=True)
def test_full_disk_during_training_is_one_line_and_keeps_earlier_files(synthetic, tmp_path):
    out = tmp_path / "run"
    script = str(REPO / "1-EEEA-Net-C2" / "train-model.py")
    flags = ["--data-dir", str(synthetic / "images"), "--split", str(synthetic / "labels"), *TINY,
             "--output-dir", str(out)]
    epochs2 = [*flags, "--epochs", "2"]  # the later --epochs wins in argparse
    assert subprocess.run([sys.executable, script, *epochs2], capture_output=True, text=True, env=QUIET).returncode == 0
    before = hashes(out)
    # The first write of the resumed run's first atomic file (its best or -last checkpoint) hits a full disk.
    result = subprocess.run([sys.executable, "-c", FULL_DISK.format(repo=str(REPO), nth=1, script=script),
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
