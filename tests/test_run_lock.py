"""One process per run folder (``toolbox/run_lock.py``): a second run stops at once naming
the holder, a killed holder blocks nothing, and Ctrl-C says where and how to resume."""
import json
import os
import signal
import subprocess
import sys
import time

from main import main
from tests.conftest import ROOT, write_cfg
from toolbox.run_lock import OWNER_NAME


def subprocess_env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}


def start_run(cfg_path, cwd, **env):
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "main.py"), "--config", str(cfg_path), "-q"],
                            env={**subprocess_env(), **env}, cwd=cwd, stderr=subprocess.PIPE, text=True)


def wait_for(condition, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        if proc.poll() is not None:
            raise AssertionError(f"the run ended first: {proc.stderr.read()}")
        time.sleep(0.02)
    raise AssertionError("timed out")


def test_a_second_run_into_a_busy_folder_stops_at_once_naming_folder_and_process(tmp_path, capsys):
    long = dict(synthetic_classes=16, synthetic_train_per_class=24, epochs=3)
    cfg_a, run_dir = write_cfg(tmp_path, "a.json", lr=1e-3, **long)
    cfg_b, _ = write_cfg(tmp_path, "b.json", lr=5e-4, **long)
    proc = start_run(cfg_a, tmp_path)
    try:
        wait_for(lambda: os.path.exists(os.path.join(run_dir, OWNER_NAME)), proc)
        began = time.time()
        assert main(["--config", str(cfg_b), "-q"]) == 2
        assert time.time() - began < 30  # at once, not after A
        err = capsys.readouterr().err
        assert run_dir in err and f"process {proc.pid}" in err and "Traceback" not in err
    finally:
        assert proc.wait(timeout=300) == 0
    with open(os.path.join(run_dir, "results.json")) as f:
        results = json.load(f)
    assert results["finished"] and results["config"]["lr"] == 1e-3  # A's run, whole
    assert not os.path.exists(os.path.join(run_dir, OWNER_NAME))


def test_a_killed_holder_leaves_no_lock_that_blocks_resume(tmp_path):
    cfg_path, run_dir = write_cfg(tmp_path)
    os.makedirs(run_dir)
    holder = ("import os, signal, sys; from toolbox.run_lock import RunLock; "
              "lock = RunLock(sys.argv[1]); lock.__enter__(); os.kill(os.getpid(), signal.SIGKILL)")
    proc = subprocess.run([sys.executable, "-c", holder, run_dir], env=subprocess_env(), cwd=ROOT)
    assert proc.returncode == -signal.SIGKILL
    assert os.path.exists(os.path.join(run_dir, OWNER_NAME))  # it died holding the folder
    assert main(["--config", str(cfg_path), "-q", "--resume"]) == 0
    with open(os.path.join(run_dir, "results.json")) as f:
        assert json.load(f)["finished"]


def test_ctrl_c_says_where_and_how_to_resume_and_logs_it(tmp_path):
    cfg_path, run_dir = write_cfg(tmp_path, synthetic_classes=16, synthetic_train_per_class=24, epochs=2)
    # one compute thread in the run: on 2 cores its spinning OpenMP threads could starve this process's
    # polling until the run had finished (seen once in CI: exit 0, the Ctrl-C came too late)
    proc = start_run(cfg_path, tmp_path, OMP_NUM_THREADS="1")
    ckpt = os.path.join(run_dir, "checkpoint.pt")
    wait_for(lambda: os.path.exists(ckpt), proc)
    proc.send_signal(signal.SIGINT)
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 130
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "interrupted in task" in err and f"python main.py --resume {run_dir}" in err
    with open(os.path.join(run_dir, "run.log")) as f:
        assert "error: interrupted in task" in f.read()
    assert main(["--resume", run_dir, "-q"]) == 0


def test_a_folder_in_use_is_named_as_such_even_when_its_run_has_written_results(tmp_path, capsys):
    """A run still going may already have results.json (after its first task). A second run of
    the same config is told the folder is in use by that process, not that it holds an earlier
    run to --overwrite or --resume (neither can help until the first ends)."""
    cfg_path, run_dir = write_cfg(tmp_path)
    assert main(["--config", str(cfg_path), "-q"]) == 0  # a folder with results, as a going run leaves it
    holder = ("import sys, time; from toolbox.run_lock import RunLock; lock = RunLock(sys.argv[1]); "
              "lock.__enter__(); print('holding', flush=True); time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", holder, run_dir], env=subprocess_env(), cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "holding"
        capsys.readouterr()
        for extra in ([], ["--overwrite"], ["--check"]):
            assert main(["--config", str(cfg_path), "-q", *extra]) == 2
            err = capsys.readouterr().err
            assert f"is in use by process {proc.pid}" in err and "--overwrite" not in err, (extra, err)
    finally:
        proc.kill()
        proc.wait()
    assert main(["--config", str(cfg_path), "-q"]) == 2  # the holder gone: the earlier run is named again
    assert "holds a finished run" in capsys.readouterr().err
