"""A finished run is never lost to a later one (docs/reliability.md, "An earlier run is never
lost"). Without ``--overwrite`` a fresh run into a folder holding a run is refused before any
work. With it, the new run works in ``<run dir>/.attempt`` and every failure point of it
(data, first batch, mid-task, a bug, a full disk, Ctrl-C, SIGKILL, a kill while its files are
moved in) leaves the earlier run's files byte for byte as they were; ``--resume`` then
finishes the replacement, which ends equal to a clean run of the new config."""
import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from main import main
from tests.conftest import ROOT, write_cfg
from tests.test_data import write_jpeg_split
from tests.test_resume import read, snapshot, without_timings
from toolbox import report, trainer
from toolbox.run_lock import OWNER_NAME
from toolbox.trainer import ATTEMPT, REPLACING
from utils.clip_backbone import ClipBackbone


def run_files(run_dir):
    """The run folder's own files with their bytes: everything but the lock and its owner
    file (there while a process holds the folder) and a replacement's ``.attempt`` (the new
    run's files, not the earlier run's)."""
    return {k: v for k, v in snapshot(run_dir).items() if not k.startswith(ATTEMPT + os.sep) and k != OWNER_NAME}


@pytest.fixture
def finished(tmp_path):
    """A finished run (3 tasks), its config file and every byte of its folder."""
    cfg_path, run_dir = write_cfg(tmp_path, synthetic_train_per_class=12)
    assert main(["--config", str(cfg_path), "-q"]) == 0
    return cfg_path, run_dir, run_files(run_dir)


def clean_results(tmp_path, *overrides):
    """results.json (without timings and logdir) of an uninterrupted run of the finished
    fixture's config with ``overrides``, in a folder of its own."""
    folder = tmp_path / "clean"
    folder.mkdir()
    cfg_path, run_dir = write_cfg(folder, synthetic_train_per_class=12)
    assert main(["--config", str(cfg_path), "-q", *overrides]) == 0
    return comparable(run_dir)


def comparable(run_dir):
    r = without_timings(read(run_dir))
    r["config"] = {k: v for k, v in r["config"].items() if k != "logdir"}
    return r


def interrupt_in_task(monkeypatch, task, exc=KeyboardInterrupt):
    """The learner raises ``exc`` when it starts training task ``task`` (1-based)."""
    cls = _learner_class()
    real, calls = cls.incremental_train, {"n": 0}

    def train(self, dm):
        calls["n"] += 1
        if calls["n"] == task:
            raise exc()
        return real(self, dm)

    monkeypatch.setattr(cls, "incremental_train", train)


def _learner_class():
    from models.mgclip import MGCLIP

    return MGCLIP


NEW = ["--set", "lr=0.01"]  # the replacement changes a key that changes the results


# ----------------------------------------------------------------------------- refused without --overwrite
def test_a_fresh_run_into_a_finished_folder_is_refused_before_any_work(finished, capsys):
    cfg_path, run_dir, before = finished
    capsys.readouterr()
    assert main(["--config", str(cfg_path), "-q", *NEW]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    last = json.loads(before["results.json"])["last"]
    assert f"run folder {run_dir} holds a finished run (3/3 tasks, Last {last:.2f} %)" in err
    assert "--set prefix=" in err and "--overwrite" in err and "--resume" not in err  # nothing to continue
    assert run_files(run_dir) == before and not os.path.exists(os.path.join(run_dir, ATTEMPT))


def test_an_unfinished_run_is_refused_too_and_a_run_with_nothing_to_lose_is_not(tmp_path, capsys, monkeypatch):
    cfg_path, run_dir = write_cfg(tmp_path)
    interrupt_in_task(monkeypatch, 2)
    assert main(["--config", str(cfg_path), "-q"]) == 130
    monkeypatch.undo()
    before = run_files(run_dir)
    capsys.readouterr()
    assert main(["--config", str(cfg_path), "-q"]) == 2
    err = capsys.readouterr().err
    assert "holds an unfinished run (1 of 3 tasks completed)" in err and "continue it (--resume)" in err
    assert run_files(run_dir) == before
    # stopped inside its first task: no results, no checkpoint -> nothing to lose, a new run just starts
    other = tmp_path / "other"
    other.mkdir()
    cfg2, run2 = write_cfg(other)
    interrupt_in_task(monkeypatch, 1)
    assert main(["--config", str(cfg2), "-q"]) == 130
    monkeypatch.undo()
    assert sorted(os.listdir(run2)) == [".run.lock", "config.json", "run.log"]
    assert main(["--config", str(cfg2), "-q"]) == 0 and read(run2)["finished"]


def test_resume_and_overwrite_exclude_each_other(finished):
    cfg_path, run_dir, before = finished
    with pytest.raises(SystemExit) as e:
        main(["--config", str(cfg_path), "--resume", "--overwrite"])
    assert e.value.code == 2 and run_files(run_dir) == before


# ----------------------------------------------------------------------------- --overwrite
def test_overwrite_replaces_the_run_only_once_the_new_one_has_finished(finished, tmp_path, monkeypatch):
    cfg_path, run_dir, before = finished
    real_save, seen = trainer.save_checkpoint, []

    def save(path, payload):  # at every checkpoint of the replacement the earlier run is still whole
        assert os.path.dirname(path) == os.path.join(run_dir, ATTEMPT)
        seen.append(run_files(run_dir) == before)
        real_save(path, payload)

    monkeypatch.setattr(trainer, "save_checkpoint", save)
    assert main(["--config", str(cfg_path), "-q", "--overwrite", *NEW]) == 0
    monkeypatch.undo()
    assert seen == [True, True, True]
    assert not os.path.exists(os.path.join(run_dir, ATTEMPT)) and not os.path.exists(os.path.join(run_dir, REPLACING))
    assert comparable(run_dir) == clean_results(tmp_path, *NEW) != comparable_of(before)
    with open(os.path.join(run_dir, "config.json")) as f:
        assert json.load(f)["lr"] == 0.01
    with open(os.path.join(run_dir, "run.log")) as f:
        log = f.read()
    assert "replacing the earlier run once finished" in log and "done in" in log
    assert torch.load(os.path.join(run_dir, "checkpoint.pt"), weights_only=True)["config"]["lr"] == 0.01


def comparable_of(files):
    r = json.loads(files["results.json"])
    r.pop("timings")
    r["config"] = {k: v for k, v in r["config"].items() if k != "logdir"}
    return r


def poison_first_training_step(monkeypatch):
    real = ClipBackbone.encode_image

    def poisoned(self, images):
        out = real(self, images)
        return out * float("nan") if torch.is_grad_enabled() else out

    monkeypatch.setattr(ClipBackbone, "encode_image", poisoned)


def full_disk_after(monkeypatch, run_dir, writes):
    """Every fsync in the replacement's folder after its first ``writes`` fails with ENOSPC."""
    real_fsync, calls = os.fsync, []

    def fsync(fd):
        calls.append(fd)
        if len(calls) > writes:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.parametrize("point, code, message", [
    ("first batch", 3, "non-finite loss"),
    ("mid-task", 130, "interrupted in task 2/3"),
    ("disk full", 1, "No space left on device"),
])
def test_a_replacement_that_fails_leaves_the_earlier_run_and_resume_finishes_it(finished, tmp_path, capsys,
                                                                                 monkeypatch, point, code, message):
    cfg_path, run_dir, before = finished
    if point == "first batch":
        poison_first_training_step(monkeypatch)
    elif point == "mid-task":
        interrupt_in_task(monkeypatch, 2)
    else:
        full_disk_after(monkeypatch, run_dir, 4)  # owner file, config.json, task 1's results and metrics fit
    capsys.readouterr()
    assert main(["--config", str(cfg_path), "-q", "--overwrite", *NEW]) == code
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert run_files(run_dir) == before  # byte for byte; the replacement's files are all in .attempt
    with open(os.path.join(run_dir, ATTEMPT, "run.log")) as f:
        assert "error: " in f.read()
    if point == "mid-task":
        assert f"the earlier run in {run_dir} is untouched" in err and f"--resume {run_dir}" in err
        assert main(["--resume", run_dir, "-q"]) == 0  # continues the replacement after its task 1
        assert comparable(run_dir) == clean_results(tmp_path, *NEW)
        assert not os.path.exists(os.path.join(run_dir, ATTEMPT))


def test_a_bug_in_a_replacement_leaves_the_earlier_run(finished, monkeypatch):
    cfg_path, run_dir, before = finished
    interrupt_in_task(monkeypatch, 2, exc=lambda: ZeroDivisionError("a bug"))
    with pytest.raises(ZeroDivisionError):
        main(["--config", str(cfg_path), "-q", "--overwrite", *NEW])
    assert run_files(run_dir) == before


def test_an_image_that_fails_to_decode_in_a_replacement_leaves_the_earlier_run(tmp_path, capsys):
    """The issue's own case: a finished run on good images, rerun on a copy with a broken one."""
    classes = ["red", "green", "blue", "gray"]
    write_jpeg_split(tmp_path / "ds", classes, per_split=(4, 2), size=16)
    cfg_path, run_dir = write_cfg(tmp_path, dataset="folder", data_path=str(tmp_path / "ds"), class_order="default",
                                  synthetic_classes=4)
    assert main(["--config", str(cfg_path), "-q"]) == 0
    before = run_files(run_dir)
    broken = tmp_path / "ds" / "train" / "gray" / "3.jpg"  # a class of the last task: read mid-run
    broken.write_bytes(broken.read_bytes()[:100])
    capsys.readouterr()
    assert main(["--config", str(cfg_path), "-q", "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert str(broken) in err and "could not be read" in err
    assert run_files(run_dir) == before


def test_sigkill_during_a_replacement_keeps_the_earlier_run_and_resume_completes_it(finished, tmp_path):
    cfg_path, run_dir, before = finished
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, os.path.join(ROOT, "main.py"), "--config", str(cfg_path), "-q", "--overwrite", *NEW]
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stderr=subprocess.DEVNULL)
    ckpt = os.path.join(run_dir, ATTEMPT, "checkpoint.pt")
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline:
        try:
            if torch.load(ckpt, weights_only=True)["completed_tasks"] >= 1:
                break
        except Exception:  # not there yet, or being replaced right now
            pass
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the replacement ended before it could be killed"
    assert run_files(run_dir) == before
    assert main(["--resume", run_dir, "-q"]) == 0
    assert comparable(run_dir) == clean_results(tmp_path, *NEW)


class Killed(BaseException):
    """What SIGKILL would do to the process, here between two renames."""


def test_a_process_killed_while_moving_the_replacement_in_is_completed_by_the_next(finished, tmp_path, monkeypatch,
                                                                                  capsys):
    cfg_path, run_dir, before = finished
    real_replace, moved = os.replace, []

    def replace(src, dst):
        if os.path.dirname(src) == os.path.join(run_dir, REPLACING):
            if len(moved) == 2:
                raise Killed()
            moved.append(os.path.basename(src))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(Killed):
        main(["--config", str(cfg_path), "-q", "--overwrite", *NEW])
    monkeypatch.undo()
    assert moved == ["checkpoint.pt", "config.json"]  # results.json is moved last
    assert run_files(run_dir)["results.json"] == before["results.json"]  # what the folder reports: still whole
    capsys.readouterr()
    assert main(["--config", str(cfg_path), "-q", *NEW]) == 2  # it already holds a (finished) run: refused
    assert "holds a finished run" in capsys.readouterr().err
    assert main(["--resume", run_dir, "-q"]) == 0  # takes the folder, completes the move, nothing left to do
    assert not os.path.exists(os.path.join(run_dir, REPLACING))
    assert comparable(run_dir) == clean_results(tmp_path, *NEW)


# ----------------------------------------------------------------------------- Ctrl-C after the end
def sigint_while_the_summary_is_logged(monkeypatch):
    """Sends SIGINT to this process right after a run's last result is written."""
    real = report.run_summary

    def summary(results):
        os.kill(os.getpid(), signal.SIGINT)
        return real(results)

    monkeypatch.setattr(report, "run_summary", summary)  # main hands it to the trainer, which calls it last


def test_ctrl_c_after_the_run_finished_exits_0(tmp_path, capsys, monkeypatch):
    cfg_path, run_dir = write_cfg(tmp_path)
    sigint_while_the_summary_is_logged(monkeypatch)
    assert main(["--config", str(cfg_path), "-q"]) == 0
    assert "note: Ctrl-C arrived after the run had finished" in capsys.readouterr().err
    assert read(run_dir)["finished"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # main gave the handler back


def test_ctrl_c_after_one_seed_finished_stops_before_the_next(tmp_path, capsys, monkeypatch):
    cfg_path, run_dir = write_cfg(tmp_path, seed=[1993, 1994])
    sigint_while_the_summary_is_logged(monkeypatch)
    assert main(["--config", str(cfg_path), "-q"]) == 130
    err = capsys.readouterr().err
    assert "interrupted before a run started: nothing of it was written" in err and "--resume" in err
    assert read(run_dir)["finished"]
    assert not os.path.exists(run_dir.replace("_1993", "_1994"))


def test_a_command_interrupted_after_done_exits_0(tmp_path):
    """The issue's case, as a user meets it: Ctrl-C (several) once the run has logged "done
    in", while the process finishes and exits, never turns a finished run into exit 130."""
    cfg_path, run_dir = write_cfg(tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "main.py"), "--config", str(cfg_path)], env=env,
                            cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if "done in" in line:
            break
    while proc.poll() is None:  # keep pressing until the process is gone
        proc.send_signal(signal.SIGINT)
        time.sleep(0.002)
    rest = proc.stderr.read()
    assert proc.wait() == 0, rest
    assert "Traceback" not in rest and "error:" not in rest
    assert read(run_dir)["finished"]
