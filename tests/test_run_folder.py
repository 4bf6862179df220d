"""What protects a run folder: a fresh run into a folder holding a run is refused unless
``--overwrite``; a replacement that fails at any point (its checks, the data, the first
batch, mid-task, a full disk, Ctrl-C, SIGKILL, even while its files are moved in) leaves the
earlier run byte for byte as it was; a full disk or a read-only folder gives one line;
``--check`` makes every check and writes nothing, for every method of a side-by-side config."""
import errno
import json
import os

import pytest
import torch

from main import main
from tests.conftest import tiny_args, write_cfg
from tests.test_data import write_jpeg_split
from tests.test_resume import snapshot


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
    code = main(["--config", str(cfg_path), "-q", "--overwrite", *make_overrides(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert snapshot(run_dir) == before  # checkpoint, config, results, log: untouched, nothing added


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
        assert main(["--config", str(cfg_path), "-q", "--overwrite"]) == 2
        err = capsys.readouterr().err
        assert str(folder) in err and "holds no images" in err and "Traceback" not in err
        assert snapshot(run_dir) == before
        folder.rmdir()
        moved.rename(folder)


def test_duplicate_seeds_are_refused_before_any_run(tmp_path, capsys):
    cfg_path, run_dir = write_cfg(tmp_path)
    assert main(["--config", str(cfg_path), "-q", "--set", "seed=[1,1]"]) == 2
    assert "repeated: [1]" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "logs")


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
    assert main(["--config", str(cfg_path), "--check", "-q"]) == 2  # as the run would be: refused
    assert "holds a finished run (3/3 tasks" in capsys.readouterr().err
    assert main(["--config", str(cfg_path), "--check", "--overwrite", "-q"]) == 0
    last = json.loads(before["results.json"])["last"]
    assert capsys.readouterr().out.splitlines()[0].endswith(
        f"{run_dir} starts a replacement of a finished run (3/3 tasks, Last {last:.2f} %), which is kept until the "
        f"new run has finished")
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
