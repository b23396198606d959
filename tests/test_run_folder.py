"""The output folder: writability check, lock, stale temporaries, atomic writers under a full disk, the log."""
import errno
import hashlib
import os
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from conftest import REPO, full_disk_at

import common.atomic as atomic
import common.runs.checkpoint as checkpoint
import common.runs.folder as run_folder
from common.commands._cli import run_main
from common.engine.run_log import TrainingLog
from common.errors import UserError, filesystem_errors
from common.runs.folder import OutputLock, prepare_output_dir, remove_stale_temporaries


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- prepare_output_dir -------------------------------------------------------------------------------------------

def test_output_dir_is_created_and_probe_leaves_nothing(tmp_path):
    folder = prepare_output_dir(tmp_path / "a" / "b")
    assert folder.is_dir() and list(folder.iterdir()) == []


def test_output_dir_that_is_a_file_is_refused(tmp_path):
    target = tmp_path / "out"
    target.write_bytes(b"keep me")
    with pytest.raises(UserError, match=f"output folder {target} is a file"):
        prepare_output_dir(target)
    with pytest.raises(UserError, match=f"cannot create output folder {target / 'sub'}: not a directory"):
        prepare_output_dir(target / "sub")
    assert target.read_bytes() == b"keep me"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a 0o500 folder; the simulated test covers it")
def test_unwritable_output_dir_is_refused(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(UserError, match=f"output folder {folder} is not writable: permission denied"):
            prepare_output_dir(folder)
    finally:
        folder.chmod(0o700)


@pytest.mark.parametrize("code, words", [(errno.EACCES, "permission denied"), (errno.EROFS, "read-only file system")])
def test_unwritable_output_dir_is_refused_simulated(tmp_path, monkeypatch, code, words):
    # As root, permission bits never refuse a write and a read-only bind mount needs privileges the test does not
    # have, so the kernel's refusal is simulated at the probe's mkstemp.
    def refuse(*args, dir=None, **kwargs):
        raise OSError(code, os.strerror(code), os.path.join(dir, ".write-probe.x.tmp"))

    monkeypatch.setattr(run_folder.tempfile, "mkstemp", refuse)
    with pytest.raises(UserError) as caught:
        prepare_output_dir(tmp_path)
    assert str(caught.value) == f"output folder {tmp_path} is not writable: {words} (Errno {code})"


# --- OutputLock --------------------------------------------------------------------------------------------------

def test_second_lock_is_refused_naming_the_holder(tmp_path):
    with OutputLock(tmp_path, "model1") as lock:
        assert lock.path == tmp_path / ".model1.lock"
        with pytest.raises(UserError) as caught:
            OutputLock(tmp_path, "model1").acquire()
        message = str(caught.value)
        assert f"output folder {tmp_path} is in use by pid {os.getpid()}" in message
        assert "started 20" in message and "command " in message and "\n" not in message
        with OutputLock(tmp_path, "model2"):  # another prefix in the same folder is another run's files
            pass
    assert not (tmp_path / ".model1.lock").exists()
    with OutputLock(tmp_path, "model1"):  # released: free again
        pass


HOLDER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {repo!r})
    from common.runs.folder import OutputLock
    lock = OutputLock({folder!r}, "model1")
    lock.acquire()
    print("locked", flush=True)
    time.sleep(120)
""")


def test_lock_of_a_killed_process_does_not_block(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER.format(repo=str(REPO), folder=str(tmp_path))],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match=f"in use by pid {holder.pid} "):
            OutputLock(tmp_path, "model1").acquire()
    finally:
        holder.kill()
        holder.wait()
    assert (tmp_path / ".model1.lock").exists()  # SIGKILL left the file, but not the lock
    started = time.monotonic()
    with OutputLock(tmp_path, "model1", stale_wait_s=0):
        assert str(os.getpid()) in (tmp_path / ".model1.lock").read_text()
    assert time.monotonic() - started < 2


# --- remove_stale_temporaries ------------------------------------------------------------------------------------

def test_stale_temporaries_are_removed(tmp_path, capsys):
    stale = {".model1-last.pth.k2j3.tmp": 3000, ".model1.pth.aaaa.tmp": 500, ".model1-log.csv.b.tmp": 10,
             ".model1-curves.png.c.tmp": 490}
    kept = ["model1-last.pth", ".model10-last.pth.x.tmp", ".modeld1-last.pth.y.tmp", ".model1.lock",
            "model1-log.csv"]
    for name, size in stale.items():
        (tmp_path / name).write_bytes(b"x" * size)
    for name in kept:
        (tmp_path / name).write_bytes(b"keep")
    assert remove_stale_temporaries(tmp_path, "model1") == (4, 4000)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)
    assert capsys.readouterr().out == (f"removed 4 temporary file(s) (4.0 kB) left by an interrupted run in "
                                       f"{tmp_path}\n")
    assert remove_stale_temporaries(tmp_path, "model1") == (0, 0)
    assert capsys.readouterr().out == ""


# --- atomic writers under a full disk ----------------------------------------------------------------------------

@pytest.mark.parametrize("nth", [1, 3, 20])
def test_full_disk_during_checkpoint_write_keeps_the_previous_file(tmp_path, monkeypatch, nth):
    path = tmp_path / "model1-last.pth"
    checkpoint.save_atomic({"model": {"w": torch.zeros(10)}, "epoch": 1}, path)
    before = digest(path)
    full_disk_at(monkeypatch, nth)
    with pytest.raises(UserError) as caught:
        checkpoint.save_atomic({"model": {"w": torch.ones(50_000)}, "epoch": 2}, path)
    assert str(caught.value) == (f"cannot write {path}: no space left on device (Errno 28); "
                                 "the previous file is unchanged")
    assert digest(path) == before
    assert [p.name for p in tmp_path.iterdir()] == ["model1-last.pth"]


def test_full_disk_for_a_new_file_and_for_text_and_csv(tmp_path, monkeypatch):
    full_disk_at(monkeypatch, 1)
    with pytest.raises(UserError, match="no space left on device .Errno 28.; no partial file was left"):
        checkpoint.save_atomic({"a": 1}, tmp_path / "new.pth")
    with pytest.raises(UserError, match="cannot write .*report.json: no space left"):
        atomic.write_text_atomic("{}", tmp_path / "report.json")
    with pytest.raises(UserError, match="cannot write .*log.csv: no space left"):
        atomic.write_csv_atomic(tmp_path / "log.csv", ["epoch"], [{"epoch": 1}])
    assert list(tmp_path.iterdir()) == []


def test_torch_part_way_failure_is_one_line(tmp_path):
    def torch_fails(stream):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 28072192 vs 28072084")

    with pytest.raises(UserError) as caught:
        atomic.write_atomic(tmp_path / "m.pth", torch_fails)
    assert str(caught.value) == (f"cannot write {tmp_path / 'm.pth'}: the write stopped part-way (torch: unexpected "
                                 "pos 28072192 vs 28072084), most often because the disk is full; no partial file "
                                 "was left")
    assert list(tmp_path.iterdir()) == []


def test_other_errors_are_not_converted(tmp_path):
    with pytest.raises(RuntimeError, match="shape mismatch"), filesystem_errors(tmp_path):
        raise RuntimeError("shape mismatch")
    with pytest.raises(ConnectionRefusedError), filesystem_errors(tmp_path):
        raise ConnectionRefusedError(errno.ECONNREFUSED, "refused")


def test_run_main_full_disk_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    path = tmp_path / "model1-last.pth"
    checkpoint.save_atomic({"epoch": 1}, path)
    before = digest(path)
    full_disk_at(monkeypatch, 2)
    assert run_main(lambda argv: checkpoint.save_atomic({"epoch": 2, "w": torch.ones(1000)}, path)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"error: cannot write {path}: no space left on device (Errno 28)")
    assert digest(path) == before


def test_run_main_turns_only_file_system_oserrors_into_one_line(capsys):
    def full(argv):
        raise OSError(errno.ENOSPC, "No space left on device", "/x/model1-log.csv")

    assert run_main(full) == 2
    assert capsys.readouterr().err == "error: /x/model1-log.csv: no space left on device (Errno 28)\n"

    def denied(argv):
        raise PermissionError(errno.EACCES, "Permission denied", "/x/out")

    assert run_main(denied) == 2
    assert capsys.readouterr().err == "error: /x/out: permission denied (Errno 13)\n"

    def network(argv):
        raise ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")

    with pytest.raises(ConnectionResetError):  # not the file system: a bug or the network, keeps its traceback
        run_main(network)

    def interrupted(argv):
        raise KeyboardInterrupt

    assert run_main(interrupted) == 130


# --- plots -------------------------------------------------------------------------------------------------------

def test_plot_temporaries_are_unique_and_removed(tmp_path, monkeypatch):
    from common.evaluation.plots import plot_training_curves
    log = tmp_path / "log.csv"
    log.write_text("epoch,train_loss,val_mean_auroc\n1,0.5,0.6\n2,0.4,0.7\n")
    names = []
    real = atomic.tempfile.mkstemp

    def spy(*args, **kwargs):
        handle, name = real(*args, **kwargs)
        names.append(name)
        return handle, name

    monkeypatch.setattr(atomic.tempfile, "mkstemp", spy)
    png = tmp_path / "curves.png"
    plot_training_curves(log, png)
    plot_training_curves(log, png)
    assert len(names) == 2 and names[0] != names[1]
    assert all(os.path.dirname(n) == str(tmp_path) and os.path.basename(n).startswith(".curves.png.")
               and n.endswith(".tmp") for n in names)
    assert png.read_bytes().startswith(b"\x89PNG")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png", "log.csv"]


# --- TrainingLog -------------------------------------------------------------------------------------------------

COLUMNS = ("epoch", "train_loss", "img_per_s")


def row(epoch, loss="0.5"):
    return {"epoch": epoch, "train_loss": loss, "img_per_s": "10.0"}


def test_overwrite_keeps_the_old_log_until_the_first_new_epoch(tmp_path):
    path = tmp_path / "model1-log.csv"
    old = TrainingLog(path, COLUMNS)
    old.start_over()
    for epoch in (1, 2, 3):
        old.append(row(epoch, "0.9"))
    before = digest(path)

    new = TrainingLog(path, COLUMNS)
    new.start_over()
    assert digest(path) == before and new.rows() == []
    new.append(row(1, "0.1"))
    assert TrainingLog(path, COLUMNS).read() == [{"epoch": "1", "train_loss": "0.1", "img_per_s": "10.0"}]


def test_resume_truncates_or_restores_atomically(tmp_path):
    path = tmp_path / "model1-log.csv"
    log = TrainingLog(path, COLUMNS)
    log.start_over()
    for epoch in (1, 2, 3):
        log.append(row(epoch))
    resumed = TrainingLog(path, COLUMNS)
    assert resumed.truncate_to(2) == 2
    assert [r["epoch"] for r in TrainingLog(path, COLUMNS).read()] == ["1", "2"]
    resumed.append(row(3, "0.2"))
    with pytest.raises(ValueError, match="epoch 3 after epoch 3"):
        resumed.append(row(3))
    saved = resumed.rows()
    other = TrainingLog(path, COLUMNS)
    other.restore(saved[:1])
    assert [r["epoch"] for r in other.read()] == ["1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model1-log.csv"]


def test_log_misuse_and_foreign_files(tmp_path):
    path = tmp_path / "log.csv"
    with pytest.raises(RuntimeError, match="before start_over"):
        TrainingLog(path, COLUMNS).append(row(1))
    path.write_text("epoch,something_else\n1,2\n")
    with pytest.raises(UserError, match="is not a training log with columns epoch,train_loss,img_per_s"):
        TrainingLog(path, COLUMNS).truncate_to(1)
    path.write_text("epoch,train_loss,img_per_s\n1,0.5,10\n2,0.4\n")
    with pytest.raises(UserError, match=r"log.csv, line 3: damaged row"):
        TrainingLog(path, COLUMNS).read()
    log = TrainingLog(tmp_path / "fresh.csv", COLUMNS)
    log.start_over()
    with pytest.raises(ValueError, match="differ from the columns"):
        log.append({"epoch": 1})
