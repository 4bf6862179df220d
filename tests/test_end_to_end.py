import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from main import main
from tests.conftest import ROOT, tiny_args
from toolbox.configs import make_config
from toolbox.trainer import run_dir_for


def run_main(tmp_path, capsys=None, **over):
    args = tiny_args(tmp_path, **over)
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(args))
    assert main(["--config", str(path), "-q"]) == 0
    cfg = make_config(args)
    return [run_dir_for(cfg, s) for s in cfg.seeds()]


def load(run_dir):
    with open(os.path.join(run_dir, "results.json")) as f:
        return json.load(f)


def test_three_tasks_write_the_run_directory(tmp_path):
    (run_dir,) = run_main(tmp_path, epochs="auto", probe_max_epochs=2)
    assert sorted(n for n in os.listdir(run_dir) if n != ".run.lock") == ["checkpoint.pt", "config.json", "metrics.csv",
                                                                          "results.json", "run.log"]
    r = load(run_dir)
    for key in ("accuracy", "accuracy_matrix", "avg", "last", "forgetting", "bwt", "config", "seed", "timings",
                "epochs", "gap", "task_metrics"):
        assert key in r, key
    assert set(r["task_metrics"]) == {"text_accuracy", "visual_accuracy"}
    assert all(len(v) == 3 for v in r["task_metrics"].values())
    assert r["finished"] and r["nb_tasks"] == 3 and len(r["accuracy"]) == 3
    assert [len(row) for row in r["accuracy_matrix"]] == [1, 2, 3]
    assert all(0 <= a <= 100 for a in r["accuracy"] + sum(r["accuracy_matrix"], []))
    assert r["avg"] == pytest.approx(np.mean(r["accuracy"])) and r["last"] == r["accuracy"][-1]
    task_mean = [np.mean(row) for row in r["accuracy_matrix"]]  # both definitions of accuracy are recorded
    assert r["accuracy_task_mean"] == pytest.approx(task_mean)
    assert r["avg_task_mean"] == pytest.approx(np.mean(task_mean))
    assert r["last_task_mean"] == pytest.approx(task_mean[-1])
    assert r["epochs"]["mode"] == "probe" and 1 <= r["epochs"]["chosen"] <= 2
    assert [g["task"] for g in r["gap"]] == [0, 1, 2] and all("before" in g and "after" in g for g in r["gap"])
    assert r["gap"][0]["before"]["neg"] == r["epochs"]["neg0"]
    with open(os.path.join(run_dir, "config.json")) as f:
        assert json.load(f)["seed"] == 1993
    with open(os.path.join(run_dir, "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [int(x["classes"]) for x in rows] == [2, 4, 6]
    assert float(rows[-1]["accuracy"]) == pytest.approx(r["accuracy"][-1], abs=0.01)
    assert list(rows[0]) == ["task", "classes", "accuracy", "top5", "old", "new", "text_accuracy", "visual_accuracy",
                             "train_s", "eval_s"]  # the learner's task metrics are columns of their own
    assert float(rows[-1]["visual_accuracy"]) == pytest.approx(r["task_metrics"]["visual_accuracy"][-1], abs=0.01)
    # matrix row = accuracy on each task's classes; equal test sizes -> its mean is the accuracy
    assert np.mean(r["accuracy_matrix"][-1]) == pytest.approx(r["accuracy"][-1], abs=1e-6)


def test_without_compensation_fused_equals_text(tmp_path):
    (run_dir,) = run_main(tmp_path, compensation=False)
    r = load(run_dir)
    assert r["accuracy"] == pytest.approx(r["task_metrics"]["text_accuracy"])
    assert "visual_accuracy" not in r["task_metrics"]


def test_zero_shot_baseline_runs(tmp_path):
    (run_dir,) = run_main(tmp_path, model_name="zs_clip")
    r = load(run_dir)
    assert len(r["accuracy"]) == 3 and "epochs" not in r


def test_same_seed_same_results_and_seed_lists(tmp_path):
    a, b = run_main(tmp_path, seed=[3, 4])
    ra, rb = load(a), load(b)
    summary_path = os.path.join(os.path.dirname(a), "test_summary.json")
    with open(summary_path) as f:
        summary = json.load(f)
    assert summary["avg"]["mean"] == pytest.approx((ra["avg"] + rb["avg"]) / 2)
    assert summary["last"]["std"] == pytest.approx(np.std([ra["last"], rb["last"]]))
    (tmp_path / "again").mkdir()
    (again,) = run_main(tmp_path / "again", seed=3)
    ra2 = load(again)
    for key in ("accuracy", "accuracy_matrix", "gap", "task_metrics", "class_order"):
        assert ra2[key] == ra[key], key


def test_learning_on_easy_data_is_clearly_above_chance(tmp_path):
    # 30 colour/stripe classes, 3 tasks: chance after the last task is 3.3 %.
    (run_dir,) = run_main(tmp_path, synthetic_classes=30, synthetic_train_per_class=16, synthetic_test_per_class=8,
                          init_cls=10, increment=10, batch_size=32, visual_batch_size=32, epochs=5, lr=0.003)
    r = load(run_dir)
    chance = 100 / 30
    assert r["last"] > 5 * chance
    assert r["task_metrics"]["visual_accuracy"][-1] > 60


def test_bad_config_exits_cleanly(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"datset": "synthetic"}))
    out = subprocess.run([sys.executable, os.path.join(ROOT, "main.py"), "--config", str(path)],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 2
    assert "unknown config key 'datset'; did you mean 'dataset'" in out.stderr and "Traceback" not in out.stderr


def test_demo_config_is_offline_and_small():
    cfg = make_config(json.load(open(os.path.join(ROOT, "exps", "mgclip_demo.json"))))
    assert cfg.backbone == "tiny-random" and cfg.dataset == "synthetic" and cfg.device == "cpu"
    assert cfg.synthetic_classes // cfg.increment >= 3


@pytest.mark.parametrize("config, message", [
    ("mgclip_imagenet_r.json", "dataset 'imagenet_r' not found"),
    ("mgclip_cub.json", "dataset 'cub200' not found"),
    ("mgclip_imagenet100.json", "dataset 'imagenet100' not found"),
])
def test_paper_configs_fail_only_on_missing_data(tmp_path, capsys, released_cache, config, message):
    code = main(["--config", os.path.join(ROOT, "exps", config), "--set", f"data_path={tmp_path}",
                 "--set", f"logdir={tmp_path / 'logs'}", "--set", f"released_cache={released_cache}", "-q"])
    assert code == 2
    assert message in capsys.readouterr().err


def test_cifar_config_offline_names_data_path(tmp_path, capsys, monkeypatch):
    import torchvision

    def offline(*a, **k):
        raise RuntimeError("Dataset not found or corrupted.")

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", offline)
    code = main(["--config", os.path.join(ROOT, "exps", "mgclip_cifar.json"), "--set", f"data_path={tmp_path}",
                 "--set", f"logdir={tmp_path / 'logs'}", "-q"])
    assert code == 2
    err = capsys.readouterr().err
    assert str(tmp_path) in err and "'data_path'" in err


def test_missing_weights_offline_is_one_clear_error(tmp_path, capsys, monkeypatch):
    import urllib.error

    def no_network(*a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr("urllib.request.urlopen", no_network)
    code = main(["--config", os.path.join(ROOT, "exps", "zs_clip_demo.json"), "--set", "backbone=ViT-B/16",
                 "--set", f"clip_cache={tmp_path / 'cache'}", "--set", f"logdir={tmp_path / 'logs'}", "-q"])
    assert code == 2
    err = capsys.readouterr().err
    assert "ViT-B-16.pt" in err and "clip_cache" in err and "Traceback" not in err


@pytest.mark.parametrize("workers", [0, 1])
def test_undecodable_image_stops_the_run_naming_the_file(tmp_path, capsys, workers):
    from tests.test_data import write_jpeg_split

    write_jpeg_split(tmp_path / "imagenet-r", ["a", "b", "c", "d"])
    (tmp_path / "imagenet-r" / "train" / "b" / "1.jpg").write_bytes(b"broken")
    code = main(["--config", os.path.join(ROOT, "exps", "zs_clip_demo.json"), "--set", "dataset=imagenet_r",
                 "--set", f"data_path={tmp_path}", "--set", "init_cls=2", "--set", "increment=2",
                 "--set", "model_name=mgclip", "--set", "epochs=1", "--set", f"num_workers={workers}",
                 "--set", f"logdir={tmp_path / 'logs'}", "-q"])
    assert code == 2
    err = capsys.readouterr().err
    assert os.path.join("train", "b", "1.jpg") in err and "Traceback" not in err
    assert err.startswith("error: image file could not be read") and err.count("\n") == 1


def test_zero_shot_predictions_equal_a_hand_computation(tmp_path):
    import torch
    import torch.nn.functional as F

    from models.zs_clip import ZSCLIP
    from toolbox.data_manager import DataManager

    args = tiny_args(tmp_path, model_name="zs_clip")
    dm = DataManager("synthetic", True, 1993, 2, 2, args)
    learner = ZSCLIP(args)
    learner.incremental_train(dm)
    cnn, _ = learner.eval_task()
    net = learner._network
    prompts = [f"a good photo of a {n}." for n in dm.get_class_names(range(2))]
    text = F.normalize(net.encode_text(net.tokenize(prompts)), dim=1)
    correct = total = 0
    with torch.no_grad():
        for _, x, y in learner.test_loader:
            pred = (F.normalize(net.encode_image(x), dim=1) @ text.T).argmax(1)
            correct += int((pred == y).sum())
            total += len(y)
    assert cnn["top1"] == pytest.approx(100.0 * correct / total)


def test_durations_read_naturally_and_each_task_says_how_long_is_left(tmp_path, caplog):
    import logging

    from toolbox.trainer import _duration

    assert [_duration(s) for s in (0.42, 9.94, 42.4, 185, 7620)] == ["0.4 s", "9.9 s", "42 s", "3 min 05 s",
                                                                     "2 h 07 min"]
    path = tmp_path / "c.json"
    path.write_text(json.dumps(tiny_args(tmp_path)))
    with caplog.at_level(logging.INFO, logger="toolbox.trainer"):
        assert main(["--config", str(path)]) == 0
    lines = [r.getMessage() for r in caplog.records
             if r.name == "toolbox.trainer" and r.getMessage().startswith("task ")]
    assert [line.split(":")[0] for line in lines] == ["task 1/3", "task 2/3", "task 3/3"]
    assert all("for this task" in line for line in lines)
    assert "left" in lines[0] and "left" in lines[1] and "left" not in lines[2]


def test_a_side_by_side_run_ends_with_the_methods_in_one_table(tmp_path, caplog):
    import logging

    path = tmp_path / "c.json"
    path.write_text(json.dumps(tiny_args(tmp_path, model_name=["mgclip", "zs_clip"])))
    with caplog.at_level(logging.INFO, logger="main"):
        assert main(["--config", str(path)]) == 0
    (message,) = [r.getMessage() for r in caplog.records if r.name == "main"]
    rows = [line for line in message.splitlines() if line.startswith("| mgclip") or line.startswith("| zs_clip")]
    assert [r.split(" | ")[0] for r in rows] == ["| mgclip", "| zs_clip"]
    for row, model in zip(rows, ("mgclip", "zs_clip")):
        with open(tmp_path / "logs" / model / "synthetic" / "2" / "2" / "test_1993" / "results.json") as f:
            r = json.load(f)
        assert f"| {r['avg']:.2f} ± 0.00 | {r['last']:.2f} ± 0.00 |" in row
    assert message.endswith(f"python -m toolbox.report {tmp_path / 'logs'}")


@pytest.mark.parametrize("backbone", ["tiny-random", "openclip:tiny-random"])
def test_the_side_by_side_demo_runs_offline_and_reports_every_method(tmp_path, backbone):
    """exps/compare_demo.json, shortened (one epoch per method, one seed), on both backbone kinds:
    every method it lists is in the report, all on one class order, each run records its backbone."""
    import glob

    from toolbox.report import make_report

    if backbone.startswith("openclip:"):
        pytest.importorskip("open_clip", reason="pip install -e .[openclip] (CI installs it)")
    with open(os.path.join(ROOT, "exps", "compare_demo.json")) as f:
        demo = json.load(f)
    shorter = [f"{m}.epochs=1" for m in demo["model_name"] if isinstance(demo.get(m, {}).get("epochs"), int)]
    logdir = tmp_path / "logs"
    sets = [f"logdir={logdir}", "seed=1993", f"backbone={backbone}", "synthetic_classes=12", "init_cls=4",
            "increment=4", *shorter]
    assert main(["--config", "compare_demo", *[a for s in sets for a in ("--set", s)], "-q"]) == 0
    rows = make_report([str(logdir)], str(tmp_path / "report"))["rows"]
    assert sorted(r["method"] for r in rows) == sorted(demo["model_name"])
    orders = set()
    for run in glob.glob(str(logdir / "*" / "synthetic" / "4" / "4" / "compare_1993")):
        with open(os.path.join(run, "results.json")) as f:
            orders.add(tuple(json.load(f)["class_order"]))
        with open(os.path.join(run, "config.json")) as f:
            assert json.load(f)["backbone"] == backbone
    assert len(orders) == 1  # the same class order for every method


def test_a_run_of_a_published_protocol_ends_beside_its_published_figures(tmp_path, caplog, monkeypatch):
    import logging

    from toolbox import published

    # a stand-in protocol that this offline run matches (the real ones need CIFAR-100 and CLIP weights)
    monkeypatch.setattr(published, "PUBLISHED", published.PUBLISHED + (published.Published(
        "mgclip", "synthetic", 2, 2, "tiny-random", 50.0, 40.0, "a stand-in", published._MG),))
    path = tmp_path / "c.json"
    path.write_text(json.dumps(tiny_args(tmp_path)))
    with caplog.at_level(logging.INFO, logger="toolbox.trainer"):
        assert main(["--config", str(path)]) == 0
    (summary,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("summary:")]
    with open(tmp_path / "logs" / "mgclip" / "synthetic" / "2" / "2" / "test_1993" / "results.json") as f:
        r = json.load(f)
    assert "Against the published figures (ours under each figure's definition of accuracy):" in summary
    assert (f"| {r['avg']:.2f} | 50.00 | {r['avg'] - 50:+.2f} | {r['last']:.2f} | 40.00 | {r['last'] - 40:+.2f} "
            f"| a stand-in | accuracy over all seen test images |") in summary
