"""Never lose a run: every failing rerun leaves a finished run byte for byte as it was;
one process per run folder; Ctrl-C, full disks and read-only folders give one line."""
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
from tests.conftest import ROOT, tiny_args
from tests.test_data import write_jpeg_split
from tests.test_resume import snapshot
from toolbox.configs import make_config
from toolbox.report import ReportError, make_report
from toolbox.run_lock import OWNER_NAME
from toolbox.trainer import run_dir_for


def write_cfg(folder, name="cfg.json", **over):
    args = tiny_args(folder, **over)
    path = folder / name
    path.write_text(json.dumps(args))
    return path, run_dir_for(make_config(args), args["seed"] if isinstance(args["seed"], int) else args["seed"][0])


def subprocess_env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}


@pytest.fixture
def finished(tmp_path):
    """A finished run and a snapshot of every byte in its folder."""
    cfg_path, run_dir = write_cfg(tmp_path)
    assert main(["--config", str(cfg_path), "-q"]) == 0
    return cfg_path, run_dir, snapshot(run_dir)


def bad_class_order(tmp_path):
    path = tmp_path / "order.txt"
    path.write_text("\n".join(["0", "1", "2", "3", "4", "4"]))  # 4 twice, 5 missing
    return ["--set", f"class_order={path}"]


@pytest.mark.parametrize("make_overrides, message", [
    (lambda p: ["--set", "device=cuda"], "CUDA is not available"),
    (bad_class_order, "repeated ids [4]"),
    (lambda p: ["--set", "backbone=" + str(p / "no-such-weights.pt")], "no-such-weights.pt"),
    (lambda p: ["--set", "init_cls=99"], "init_cls"),
])
def test_a_failing_rerun_leaves_the_finished_run_byte_for_byte(finished, tmp_path, capsys, make_overrides, message):
    if "device=cuda" in make_overrides(tmp_path) and torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    cfg_path, run_dir, before = finished
    capsys.readouterr()
    code = main(["--config", str(cfg_path), "-q", *make_overrides(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert snapshot(run_dir) == before  # checkpoint, config, results, log: untouched


def test_a_rerun_refused_for_an_empty_class_folder_leaves_the_earlier_run(tmp_path, capsys):
    classes = ["a", "b", "c", "d"]
    write_jpeg_split(tmp_path / "imagenet-r", classes, per_split=(3, 2), size=16)
    cfg_path, run_dir = write_cfg(tmp_path, dataset="imagenet_r", data_path=str(tmp_path), class_order="default",
                                  synthetic_classes=4)
    assert main(["--config", str(cfg_path), "-q"]) == 0
    before = snapshot(run_dir)
    for split in ("train", "test"):
        folder = tmp_path / "imagenet-r" / split / "c"
        moved = tmp_path / f"c-{split}"
        folder.rename(moved)
        folder.mkdir()
        assert main(["--config", str(cfg_path), "-q"]) == 2
        err = capsys.readouterr().err
        assert str(folder) in err and "holds no images" in err and "Traceback" not in err
        assert snapshot(run_dir) == before
        folder.rmdir()
        moved.rename(folder)


def test_an_empty_class_in_an_in_memory_dataset_is_named(tmp_path):
    import numpy as np

    from toolbox.data import DatasetError, RawData
    from toolbox.data_manager import check_every_class_has_images

    raw = RawData(np.zeros((4, 8, 8, 3), np.uint8), np.array([0, 0, 2, 2]), np.zeros((3, 8, 8, 3), np.uint8),
                  np.array([0, 1, 2]), ["cat", "dog", "eel"])
    with pytest.raises(DatasetError, match=r"1 \(dog\) have no training images"):
        check_every_class_has_images(raw, "mine")


def test_duplicate_seeds_are_refused_before_any_run(tmp_path, capsys):
    cfg_path, run_dir = write_cfg(tmp_path)
    assert main(["--config", str(cfg_path), "-q", "--set", "seed=[1,1]"]) == 2
    assert "repeated: [1]" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "logs")


def start_run(cfg_path, cwd):
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "main.py"), "--config", str(cfg_path), "-q"],
                            env=subprocess_env(), cwd=cwd, stderr=subprocess.PIPE, text=True)


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
    proc = start_run(cfg_path, tmp_path)
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


def test_a_full_disk_gives_one_line_with_the_path(tmp_path, capsys, monkeypatch):
    cfg_path, run_dir = write_cfg(tmp_path)

    real_fsync, calls = os.fsync, []

    def full(fd):
        calls.append(fd)
        if len(calls) > 2:  # the lock's owner file and config.json fit; the results after task 1 do not
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full)
    assert main(["--config", str(cfg_path), "-q"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write ") and "No space left on device" in err
    assert run_dir in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    with open(os.path.join(run_dir, "run.log")) as f:
        assert "error: cannot write" in f.read()  # run.log is not fsynced, so it still got the line
    with open(os.path.join(run_dir, "config.json")) as f:
        assert json.load(f)["seed"] == 1993  # whole
    assert not [n for n in os.listdir(run_dir) if n.startswith(".tmp-")]


def test_a_read_only_log_folder_gives_one_line_before_any_work(tmp_path, capsys, monkeypatch):
    cfg_path, run_dir = write_cfg(tmp_path)
    real_mkdir = os.mkdir

    def read_only(path, *a, **k):
        if str(path).startswith(str(tmp_path / "logs")):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_mkdir(path, *a, **k)

    monkeypatch.setattr(os, "mkdir", read_only)  # as if logs/ were on a read-only file system
    assert main(["--config", str(cfg_path), "-q"]) == 1
    err = capsys.readouterr().err
    assert "Read-only file system" in err and "logdir" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_is_refused_before_any_work(tmp_path, capsys):
    logs = tmp_path / "logs"
    logs.mkdir()
    logs.chmod(0o555)
    cfg_path, _ = write_cfg(tmp_path)
    try:
        assert main(["--config", str(cfg_path), "-q"]) == 1
        assert "not writable" in capsys.readouterr().err
    finally:
        logs.chmod(0o755)


@pytest.mark.parametrize("text", ["", "null\n", "# only a comment\n", "{}\n"])
def test_an_empty_or_null_config_is_refused(tmp_path, capsys, text):
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    assert main(["--config", str(path), "-q"]) == 2
    assert "is empty" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "logs") and not os.path.exists("logs/mgclip/cifar100")


@pytest.mark.parametrize("item, expected", [
    ("lerning_rate=0.01", "did you mean 'lr'?"),
    ("learning_rate=0.01", "did you mean 'lr'?"),
    ("bach_size=4", "did you mean 'batch_size'?"),
    ("class_order=shufle", "did you mean 'shuffle'?"),
    ("seed=[1,2", "cannot be read"),
])
def test_typos_get_useful_suggestions(tmp_path, capsys, item, expected):
    cfg_path, _ = write_cfg(tmp_path)
    assert main(["--config", str(cfg_path), "-q", "--set", item]) == 2
    err = capsys.readouterr().err
    assert expected in err and "expected an integer" not in err


def test_free_text_values_with_yaml_characters_stay_strings():
    from toolbox.configs import parse_overrides

    assert parse_overrides(["prompt_template=a photo: {}."]) == {"prompt_template": "a photo: {}."}


def test_report_counts_a_run_once_and_never_pools_different_configs(tmp_path):
    root = tmp_path / "logs"
    for seed in (1, 2):
        cfg_path, _ = write_cfg(tmp_path, f"s{seed}.json", seed=seed)
        assert main(["--config", str(cfg_path), "-q"]) == 0
    cfg_path, other = write_cfg(tmp_path, "lr.json", seed=3, lr=0.01)
    assert main(["--config", str(cfg_path), "-q"]) == 0
    run_1 = run_dir_for(make_config(tiny_args(tmp_path)), 1)
    rows = make_report([str(root), run_1, os.path.dirname(run_1)], str(tmp_path / "out"))["rows"]
    by_prefix = {r["prefix"]: r for r in rows}
    assert set(by_prefix) == {"test [lr=0.001]", "test [lr=0.01]"}
    assert by_prefix["test [lr=0.001]"]["seeds"] == "1 2" and by_prefix["test [lr=0.01]"]["seeds"] == "3"
    copy = tmp_path / "copy_of_run_1"
    import shutil

    shutil.copytree(run_1, copy)
    with pytest.raises(ReportError, match="two runs of seed 1"):
        make_report([str(root), str(copy)], str(tmp_path / "out2"))


def test_shipped_configs_by_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # outside the clone: no exps/ here
    assert main(["--config", "mgclip_demo", "-q", "--set", "epochs=1", "--set", "synthetic_classes=4",
                 "--set", "init_cls=2", "--set", "increment=2", "--set", "backbone=tiny-random"]) == 0
    assert os.path.isdir(tmp_path / "logs")  # relative run folders go under the current folder


def test_a_last_task_of_one_class_runs_without_a_gap_statistic(tmp_path):
    # 5 classes in tasks of 2: the last task has one class, whose gap statistic (a mean over
    # non-target logits) does not exist; the run must not stop on a NaN there
    cfg_path, run_dir = write_cfg(tmp_path, synthetic_classes=5, epochs="auto", probe_max_epochs=2)
    assert main(["--config", str(cfg_path), "-q"]) == 0
    with open(os.path.join(run_dir, "results.json")) as f:
        r = json.load(f)
    assert r["finished"] and len(r["accuracy"]) == 3
    assert "after" in r["gap"][1] and r["gap"][2] == {"task": 2}


def test_the_probe_needs_two_classes_in_the_first_task(tmp_path, capsys):
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps(tiny_args(tmp_path, init_cls=1, epochs="auto")))
    assert main(["--config", str(cfg_path), "-q"]) == 2
    assert "'init_cls'" in capsys.readouterr().err


def side_by_side_cfg(folder, **over):
    path = folder / "cfg.json"
    path.write_text(json.dumps(tiny_args(folder, model_name=["mgclip", "rapf"], **over)))
    return path


def test_check_makes_every_check_and_writes_nothing(tmp_path, capsys):
    cfg_path = side_by_side_cfg(tmp_path, seed=[1, 2])
    assert main(["--config", str(cfg_path), "--check", "-q"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[1].strip() for line in lines[:-1]] == ["mgclip seed 1", "mgclip seed 2", "rapf seed 1",
                                                                   "rapf seed 2"]
    assert "3 tasks of [2, 2, 2] classes on synthetic, tiny-random on cpu" in lines[0] and lines[0].endswith("starts")
    for line, (model, seed) in zip(lines, [("mgclip", 1), ("mgclip", 2), ("rapf", 1), ("rapf", 2)]):
        assert line.endswith(f"{os.path.join(str(tmp_path / 'logs'), model, 'synthetic', '2', '2', f'test_{seed}')} "
                             f"starts")
    assert lines[-1].startswith("all checks passed: nothing was written")
    assert not os.path.exists(tmp_path / "logs")
    # a check that fails says why, as the run would, and still writes nothing
    assert main(["--config", str(cfg_path), "--check", "-q", "--set", "backbone=no-such-model"]) == 2
    assert "no-such-model" in capsys.readouterr().err and not os.path.exists(tmp_path / "logs")


def test_check_says_what_a_run_would_do_with_an_earlier_one(finished, capsys):
    cfg_path, run_dir, before = finished
    capsys.readouterr()
    assert main(["--config", str(cfg_path), "--check", "-q"]) == 0
    assert capsys.readouterr().out.splitlines()[0].endswith(f"{run_dir} starts over (replacing its results)")
    assert main(["--config", str(cfg_path), "--check", "--resume", "-q"]) == 0
    assert capsys.readouterr().out.splitlines()[0].endswith(f"{run_dir} continues after task 3/3")
    assert main(["--resume", run_dir, "--check", "-q"]) == 0
    assert capsys.readouterr().out.splitlines()[0].endswith(f"{run_dir} continues after task 3/3")
    assert snapshot(run_dir) == before


def test_side_by_side_checks_every_methods_folder_before_the_first_method_starts(tmp_path, capsys):
    cfg_path = side_by_side_cfg(tmp_path)
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "rapf").write_text("a file where rapf's run folders would go")
    assert main(["--config", str(cfg_path), "-q"]) == 1
    assert "is a file, not a folder" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "logs" / "mgclip")  # MG-CLIP never started
