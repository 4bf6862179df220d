import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from main import main
from tests.conftest import ROOT, tiny_args
from toolbox import trainer
from toolbox.checkpoint import load_checkpoint, save_checkpoint
from toolbox.configs import make_config
from toolbox.trainer import run_dir_for


def without_timings(results):
    return {k: v for k, v in results.items() if k != "timings"}


def read(run_dir):
    with open(os.path.join(run_dir, "results.json")) as f:
        return json.load(f)


def write_cfg(tmp_path, **over):
    args = tiny_args(tmp_path, **{"synthetic_classes": 8, "init_cls": 2, "increment": 2, "epochs": "auto",
                                  "probe_max_epochs": 2, **over})
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(args))
    return path, run_dir_for(make_config(args), args["seed"])


def run_keeping_checkpoints(cfg_path, monkeypatch):
    """Run the config; return a copy of every checkpoint the run wrote, in order."""
    snapshots = []
    real_save = trainer.save_checkpoint

    def keep_copies(path, payload):
        real_save(path, payload)
        snapshots.append(str(path) + f".{len(snapshots)}")
        shutil.copy(path, snapshots[-1])

    monkeypatch.setattr(trainer, "save_checkpoint", keep_copies)
    assert main(["--config", str(cfg_path), "-q"]) == 0
    monkeypatch.setattr(trainer, "save_checkpoint", real_save)
    return snapshots


def resume_from_copy(run_dir, snapshot, other):
    """--resume a copy of ``run_dir`` holding ``snapshot`` as its checkpoint; its results."""
    other.mkdir()
    shutil.copy(os.path.join(run_dir, "config.json"), other / "config.json")
    shutil.copy(snapshot, other / "checkpoint.pt")
    assert main(["--resume", str(other), "-q"]) == 0
    return without_timings(read(str(other)))


def run_then_resume(args, tmp_path, monkeypatch, seed=1993):
    """Run the config ``args`` keeping its checkpoints, then --resume a copy of its run from the
    first one; (the uninterrupted run's results, the resumed run's), both without timings."""
    (tmp_path / "run.json").write_text(json.dumps(args))
    snapshots = run_keeping_checkpoints(tmp_path / "run.json", monkeypatch)
    run_dir = run_dir_for(make_config(args), seed)
    return without_timings(read(run_dir)), resume_from_copy(run_dir, snapshots[0], tmp_path / "resumed")


def test_resume_from_every_checkpoint_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    cfg_path, run_dir = write_cfg(tmp_path)
    snapshots = run_keeping_checkpoints(cfg_path, monkeypatch)
    reference = without_timings(read(run_dir))
    stages = [load_checkpoint(p)["completed_tasks"] for p in snapshots]
    assert stages == [0, 1, 2, 3, 4]  # after the probe, then after each of the 4 tasks
    for i, snap in enumerate(snapshots[:-1]):
        assert resume_from_copy(run_dir, snap, tmp_path / f"resumed_{i}") == reference, \
            f"resumed after stage {stages[i]}"


def _kill_when(proc, run_dir, completed, extra_delay=0.0, timeout=120):
    ckpt = os.path.join(run_dir, "checkpoint.pt")
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(ckpt):
            try:
                done = torch.load(ckpt, weights_only=True)["completed_tasks"]
            except Exception:
                done = -1  # being replaced right now; look again
            if done >= completed:
                time.sleep(extra_delay)
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return done
        time.sleep(0.01)
    raise AssertionError("the run ended before it could be killed")


@pytest.mark.parametrize("completed, delay", [(1, 0.0), (2, 0.15)])  # right after a task / inside the next
def test_sigkill_then_resume_is_identical(tmp_path, completed, delay):
    cfg_path, run_dir = write_cfg(tmp_path, synthetic_classes=16, synthetic_train_per_class=24)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, os.path.join(ROOT, "main.py"), "--config", str(cfg_path), "-q"]
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stderr=subprocess.DEVNULL)
    killed_after = _kill_when(proc, run_dir, completed, delay)
    assert killed_after >= completed
    first = read(run_dir)  # a kill during a write may leave a temp file, never a half-written result
    assert not first["finished"]  # really interrupted
    stale = os.path.join(run_dir, ".tmp-results.json-stale")
    with open(stale, "w") as f:  # as if the kill had landed in a write
        f.write('{"half": ')
    assert main(["--resume", run_dir, "-q"]) == 0
    assert not [n for n in os.listdir(run_dir) if n.startswith(".tmp-")]  # the resumed run cleared it
    resumed = without_timings(read(run_dir))
    clean_dir = tmp_path / "clean"
    clean_dir.mkdir()
    clean_cfg, clean_run = write_cfg(clean_dir, synthetic_classes=16, synthetic_train_per_class=24)
    assert main(["--config", str(clean_cfg), "-q"]) == 0
    clean = without_timings(read(clean_run))
    resumed.pop("config"), clean.pop("config")  # logdir differs
    assert resumed == clean


def test_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = str(tmp_path / "checkpoint.pt")
    save_checkpoint(path, {"completed_tasks": 1, "x": torch.ones(3)})

    def half_then_fail(obj, f):
        f.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"completed_tasks": 2, "x": torch.zeros(3)})
    monkeypatch.undo()
    state = load_checkpoint(path)
    assert state["completed_tasks"] == 1 and torch.equal(state["x"], torch.ones(3))
    assert os.listdir(tmp_path) == ["checkpoint.pt"]  # no temp file left behind


def test_changed_config_is_refused_naming_keys_and_run_only_keys_may_differ(tmp_path, capsys):
    cfg_path, run_dir = write_cfg(tmp_path)
    assert main(["--config", str(cfg_path), "-q"]) == 0
    assert main(["--resume", run_dir, "--set", "lr=0.5", "--set", "lora_rank=4", "-q"]) == 2
    err = capsys.readouterr().err
    assert "lora_rank: was 8, now 4" in err and "lr: was" in err
    assert main(["--resume", run_dir, "--set", "num_workers=1", "--set", "device=cpu", "-q"]) == 0


def test_resume_with_config_continues_each_seed(tmp_path):
    cfg_path, _ = write_cfg(tmp_path, seed=[1, 2])
    assert main(["--config", str(cfg_path), "-q", "--resume"]) == 0  # nothing to resume: starts
    cfg = make_config(json.loads(cfg_path.read_text()))
    assert all(read(run_dir_for(cfg, s))["finished"] for s in (1, 2))


@pytest.mark.parametrize("content, message", [
    (None, "no checkpoint at"),
    (b"garbage", "unreadable or corrupt"),
])
def test_missing_or_corrupt_checkpoint(tmp_path, capsys, content, message):
    cfg_path, run_dir = write_cfg(tmp_path)
    os.makedirs(run_dir)
    shutil.copy(cfg_path, os.path.join(run_dir, "config.json"))
    with open(os.path.join(run_dir, "results.json"), "w") as f:  # a run that had completed tasks
        f.write("{}")
    if content is not None:
        with open(os.path.join(run_dir, "checkpoint.pt"), "wb") as f:
            f.write(content)
    before = snapshot(run_dir)
    assert main(["--resume", run_dir, "-q"]) == 2
    err = capsys.readouterr().err
    assert message in err and "checkpoint.pt" in err and "Traceback" not in err
    assert snapshot(run_dir) == before  # refused before anything in the folder was touched
    assert main(["--resume", str(tmp_path / "nope"), "-q"]) == 2
    assert "no such run directory" in capsys.readouterr().err


def test_resume_of_a_run_stopped_before_its_first_checkpoint_starts_it(tmp_path):
    cfg_path, run_dir = write_cfg(tmp_path)
    os.makedirs(run_dir)
    shutil.copy(cfg_path, os.path.join(run_dir, "config.json"))  # all a run leaves before its probe ends
    assert main(["--resume", run_dir, "-q"]) == 0
    assert read(run_dir)["finished"]


def snapshot(folder):
    """Every file below ``folder`` with its bytes (the lock file aside)."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            if name != ".run.lock":
                with open(os.path.join(root, name), "rb") as f:
                    out[os.path.relpath(os.path.join(root, name), folder)] = f.read()
    return out


def test_non_finite_loss_stops_with_where_and_checkpoint_survives(tmp_path, capsys, monkeypatch):
    from utils.clip_backbone import ClipBackbone

    cfg_path, run_dir = write_cfg(tmp_path, epochs=1)
    real = ClipBackbone.encode_image
    calls = {"n": 0}

    def poisoned(self, images):
        out = real(self, images)
        if torch.is_grad_enabled():  # training steps only
            calls["n"] += 1
            if calls["n"] == 4:  # task 1 has 2 steps; this is task 2's second step
                return out * float("nan")
        return out

    monkeypatch.setattr(ClipBackbone, "encode_image", poisoned)
    assert main(["--config", str(cfg_path), "-q"]) == 3
    err = capsys.readouterr().err
    assert "non-finite loss" in err and "in task 1" in err and "epoch 1, step 2" in err
    assert "after 1 completed task(s)) is intact" in err
    monkeypatch.undo()
    assert load_checkpoint(os.path.join(run_dir, "checkpoint.pt"))["completed_tasks"] == 1
    assert main(["--resume", run_dir, "-q"]) == 0
    assert read(run_dir)["finished"]


def test_a_checkpoint_from_before_task_metrics_resumes_with_aligned_metrics():
    from toolbox.trainer import _Progress

    old = {"accuracies": [50.0, 40.0], "matrix": [[50.0], [45.0, 35.0]], "rows": [{}, {}], "task_timings": [{}, {}],
           "grouped": [{}, {}], "top5": [None, None]}  # no "task_metrics": written by an earlier version
    progress = _Progress(old)
    progress.accuracies.append(30.0)
    progress.task_metrics.append({"text_accuracy": 20.0})
    assert progress.metrics_by_name() == {"text_accuracy": [None, None, 20.0]}  # the third task's, not the first's


@pytest.mark.parametrize("method", ["magmax", "slca", "clap4clip"])
def test_the_newer_learners_killed_after_a_task_resume_to_the_uninterrupted_run(tmp_path, method):
    """SIGKILL of a real process once a task's checkpoint is written (MagMax: the running merge,
    SLCA: the class statistics, CLAP4CLIP: the memory and the per-task adapters), then --resume:
    the results equal those of a run never interrupted."""
    from tests.test_clap4clip import clap_args
    from tests.test_magmax import magmax_args
    from tests.test_slca import slca_args

    build = {"magmax": magmax_args, "slca": slca_args, "clap4clip": clap_args}[method]
    shape = {"synthetic_classes": 12, "synthetic_train_per_class": 16, "init_cls": 2, "increment": 2}  # 6 tasks

    def write(folder):
        args = build(folder, **shape)
        (folder / "cfg.json").write_text(json.dumps(args))
        return folder / "cfg.json", run_dir_for(make_config(args), args["seed"])

    cfg_path, run_dir = write(tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "main.py"), "--config", str(cfg_path), "-q"],
                            env=env, cwd=tmp_path, stderr=subprocess.DEVNULL)
    assert _kill_when(proc, run_dir, 1) >= 1
    assert not read(run_dir)["finished"]  # really interrupted
    assert main(["--resume", run_dir, "-q"]) == 0
    resumed = without_timings(read(run_dir))
    clean_dir = tmp_path / "clean"
    clean_dir.mkdir()
    clean_cfg, clean_run = write(clean_dir)
    assert main(["--config", str(clean_cfg), "-q"]) == 0
    clean = without_timings(read(clean_run))
    resumed.pop("config"), clean.pop("config")  # logdir differs
    assert resumed["finished"] and resumed == clean
