import csv
import json
import os

import numpy as np
import pytest
from PIL import Image

from main import main as run_main
from tests.conftest import tiny_args, write_cfg
from toolbox.configs import make_config
from toolbox.report import FIG_DPI, FIG_SIZE, ReportError, main, make_report
from toolbox.trainer import run_dir_for


def fake_run(root, model, seed, acc, matrix, prefix="p", epochs=None, gap=None, text=None, visual=None,
             total_s=10.0, progress=None, **config):
    """A results.json written by hand; ``progress``: nb_tasks, completed_tasks, finished (none: an older file)."""
    d = root / f"{model}_{prefix}_{seed}"
    d.mkdir(parents=True)
    r = {"model_name": model, "dataset": "cifar100", "seed": seed, "accuracy": acc, "accuracy_matrix": matrix,
         "avg": float(np.mean(acc)), "last": acc[-1], "forgetting": 5.0 + seed, "bwt": -seed,
         "config": {"prefix": prefix, "init_cls": 10, "increment": 10, "gap_alpha": 0.1, "dataset": "cifar100",
                    **config},
         "timings": {"total_s": total_s}}
    if epochs is not None:
        r["epochs"] = epochs
    if gap is not None:
        r["gap"] = gap
    if text is not None:
        r["task_metrics"] = {"text_accuracy": text, "visual_accuracy": visual}
    if progress is not None:
        r.update(progress)
    (d / "results.json").write_text(json.dumps(r))
    return d


@pytest.fixture
def runs(tmp_path):
    M1 = [[90.0], [80.0, 70.0]]
    M2 = [[94.0], [84.0, 72.0]]
    def ep(e):
        return {"mode": "probe", "chosen": e, "neg0": -20.0, "alpha": 0.1,
                        "probe": [{"epoch": 1, "neg": -21.0}, {"epoch": 2, "neg": -23.0}]}
    gap = [{"task": 0, "before": {"neg": -20.0}, "after": {"neg": -21.0}},
           {"task": 1, "before": {"neg": -19.0}, "after": {"neg": -20.5}}]
    a = fake_run(tmp_path / "logs", "mgclip", 1, [90.0, 76.0], M1, epochs=ep(1), gap=gap, text=[80, 60],
                 visual=[85, 70])
    b = fake_run(tmp_path / "logs", "mgclip", 2, [94.0, 80.0], M2, epochs=ep(1), gap=gap, text=[82, 64],
                 visual=[87, 72], total_s=20.0)
    c = fake_run(tmp_path / "logs", "zs_clip", 1, [70.0, 60.0], [[70.0], [65.0, 55.0]])
    return tmp_path, [a, b, c]


def test_summary_means_and_stds_by_hand(runs):
    tmp_path, dirs = runs
    out = tmp_path / "out"
    written = make_report([str(tmp_path / "logs")], str(out))
    rows = {r["method"]: r for r in written["rows"]}
    mg = rows["mgclip"]
    # Avg per seed: (90+76)/2 = 83 and (94+80)/2 = 87 -> mean 85, population std 2
    assert mg["avg_mean"] == pytest.approx(85.0) and mg["avg_std"] == pytest.approx(2.0)
    assert mg["last_mean"] == pytest.approx(78.0) and mg["last_std"] == pytest.approx(2.0)
    assert mg["forgetting_mean"] == pytest.approx((6.0 + 7.0) / 2) and mg["bwt_mean"] == pytest.approx(-1.5)
    assert mg["metrics"] == pytest.approx({"text_accuracy": 62.0, "visual_accuracy": 71.0})
    assert mg["wall_s_mean"] == pytest.approx(15.0) and mg["epochs"] == "1" and mg["seeds"] == "1 2"
    assert rows["zs_clip"]["avg_std"] == 0.0 and rows["zs_clip"]["metrics"] == {}
    with open(out / "summary.csv") as f:
        csv_rows = {r["method"]: r for r in csv.DictReader(f)}
    assert float(csv_rows["mgclip"]["avg_mean"]) == pytest.approx(85.0)
    assert float(csv_rows["mgclip"]["visual_last_mean"]) == pytest.approx(71.0)
    assert csv_rows["zs_clip"]["text_last_mean"] == ""
    md = (out / "summary.md").read_text()
    assert "85.00 ± 2.00" in md and "78.00 ± 2.00" in md
    assert md.splitlines()[0].endswith("| wall s | text Last | visual Last |")  # a column per task metric
    tex = (out / "summary.tex").read_text().splitlines()
    assert tex[0] == "\\begin{tabular}{lllcc}" and tex[-1] == "\\end{tabular}"
    assert "mgclip & cifar100 & 10/10 & $85.00 \\pm 2.00$ & $78.00 \\pm 2.00$ \\\\" in tex
    assert any(line.startswith("zs\\_clip & ") for line in tex)  # LaTeX's special characters escaped


def test_pngs_are_valid_images_of_the_expected_size(runs):
    pytest.importorskip("matplotlib")
    tmp_path, dirs = runs
    out = tmp_path / "custom_out"
    assert main([str(d) for d in dirs] + ["--out", str(out)]) == 0
    pngs = sorted(p for p in os.listdir(out) if p.endswith(".png"))
    assert "accuracy_curve.png" in pngs and "gap.png" in pngs
    assert len([p for p in pngs if p.startswith("accuracy_matrix_")]) == 3
    for p in pngs:
        with Image.open(out / p) as im:
            im.verify()
        with Image.open(out / p) as im:
            assert im.format == "PNG" and im.size == (int(FIG_SIZE[0] * FIG_DPI), int(FIG_SIZE[1] * FIG_DPI))
    assert not os.path.exists(tmp_path / "report")  # --out respected


def test_no_matplotlib_still_writes_tables(runs, monkeypatch, capsys):
    import builtins

    real_import = builtins.__import__

    def no_mpl(name, *a, **k):
        if name.startswith("matplotlib"):
            raise ImportError("no matplotlib")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_mpl)
    tmp_path, dirs = runs
    assert main([str(tmp_path / "logs"), "--out", str(tmp_path / "o")]) == 0
    assert sorted(os.listdir(tmp_path / "o")) == ["left_out.csv", "summary.csv", "summary.md", "summary.tex"]
    assert (tmp_path / "o" / "left_out.csv").read_text().splitlines() == ["run_dir,reason,completed_tasks,nb_tasks"]
    assert "pip install -e .[plots]" in capsys.readouterr().out


def test_bad_run_directories_are_named(tmp_path, capsys):
    assert main([str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "missing: no such run directory" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(empty)]) == 2  # no usable run is left: an error naming why
    assert "empty: no run folder in it or below it (no results.json" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "results.json").write_text("{not json")
    assert main([str(bad)]) == 2
    assert "bad: results.json unreadable: cannot be read as JSON" in capsys.readouterr().err
    (bad / "results.json").write_text(json.dumps({"model_name": "x"}))
    assert main([str(bad)]) == 2
    assert "missing dataset" in capsys.readouterr().err


def test_report_on_real_runs(tmp_path):
    from tests.conftest import tiny_args
    from toolbox.trainer import run

    run(make_config(tiny_args(tmp_path, epochs="auto", probe_max_epochs=2, seed=[1, 2])))
    written = make_report([str(tmp_path / "logs")], str(tmp_path / "rep"))
    (row,) = written["rows"]
    results = [json.load(open(os.path.join(root, "results.json")))
               for root, _, files in os.walk(tmp_path / "logs") if "results.json" in files]
    assert row["avg_mean"] == pytest.approx(np.mean([r["avg"] for r in results]))


def test_runs_of_a_published_protocol_are_set_beside_its_figures(tmp_path, capsys):
    logs = tmp_path / "logs"
    M = [[90.0], [80.0, 70.0]]
    fake_run(logs, "mgclip", 1, [90.0, 76.0], M, backbone="ViT-B/16")
    fake_run(logs, "mgclip", 2, [94.0, 80.0], M, backbone="ViT-B/16")
    fake_run(logs, "mgclip", 1, [92.0, 84.0], M, prefix="replay", backbone="ViT-B/16", memory_size=2000)
    fake_run(logs, "mgclip", 1, [50.0, 40.0], M, prefix="fewshot", backbone="ViT-B/16", shots_per_class=5)
    fake_run(logs, "mgclip", 1, [50.0, 40.0], M, prefix="shots7", backbone="ViT-B/16", shots_per_class=7)
    fake_run(logs, "rapf", 1, [88.0, 80.0], M, backbone="ViT-B/16")
    fake_run(logs, "proof", 1, [88.0, 80.0], M, backbone="ViT-L/14")  # no published PROOF run on ViT-L/14
    fake_run(logs, "zs_clip", 1, [70.0, 60.0], M, backbone="ViT-B/16")
    assert main([str(logs), "--out", str(tmp_path / "out")]) == 0
    rows = {(r["method"], r["prefix"]): r for r in make_report([str(logs)], str(tmp_path / "out"))["published"]}
    assert set(rows) == {("mgclip", "p"), ("mgclip", "replay"), ("mgclip", "fewshot"), ("rapf", "p")}
    few = rows[("mgclip", "fewshot")]  # 5 shots per class: a Last was published, no Avg
    assert few["published_avg"] is None and few["avg_diff"] is None and few["last_diff"] == pytest.approx(40 - 75.10)
    # MG-CLIP CIFAR-100 10x10: Avg (83 + 87) / 2 = 85 vs 86.79, Last (76 + 80) / 2 = 78 vs 80.40
    mg = rows[("mgclip", "p")]
    assert (mg["published_avg"], mg["published_last"]) == (86.79, 80.40)
    assert mg["avg_diff"] == pytest.approx(85 - 86.79) and mg["last_diff"] == pytest.approx(78 - 80.40)
    assert rows[("mgclip", "replay")]["published_last"] == 82.58  # the replay protocol's figure
    assert rows[("rapf", "p")]["published_avg"] == 86.19
    md = (tmp_path / "out" / "summary.md").read_text()
    line = ("| mgclip | p | cifar100 | 10/10 | ViT-B/16 | 1 2 | 85.00 | 86.79 | -1.79 | 78.00 | 80.40 | -2.40 | "
            "MG-CLIP supplementary | accuracy over all seen test images |")
    assert line in md and line in capsys.readouterr().out


def test_a_published_figure_is_compared_under_its_own_definition_of_accuracy(tmp_path, monkeypatch):
    """A figure published as the mean over tasks (CODA-Prompt's trainer) is set beside our
    runs' task-mean Avg and Last, not their accuracy over all seen images; both are named."""
    from toolbox import published

    logs = tmp_path / "logs"
    M = [[90.0], [80.0, 60.0]]  # task-mean accuracies: 90 and (80 + 60) / 2 = 70
    d = fake_run(logs, "coda_prompt", 1, [90.0, 76.0], M, backbone="ViT-B/16")
    r = json.loads((d / "results.json").read_text())
    r.update({"avg_task_mean": (90 + 70) / 2, "last_task_mean": 70.0})
    (d / "results.json").write_text(json.dumps(r))
    monkeypatch.setattr(published, "PUBLISHED", published.PUBLISHED + (
        published.Published("coda_prompt", "cifar100", 10, 10, "ViT-B/16", 81.0, 72.0, "a stand-in", {},
                            "task_mean"),))
    (row,) = make_report([str(logs)], str(tmp_path / "out"))["published"]
    assert row["avg_mean"] == pytest.approx(80.0) and row["last_mean"] == pytest.approx(70.0)  # not 83 / 76
    assert row["avg_diff"] == pytest.approx(80 - 81) and row["last_diff"] == pytest.approx(70 - 72)
    md = (tmp_path / "out" / "summary.md").read_text()
    assert ("| 80.00 | 81.00 | -1.00 | 70.00 | 72.00 | -2.00 | a stand-in | mean over seen tasks of each task's "
            "accuracy |") in md
    assert "| coda_prompt | p | cifar100 | 10/10 | 1 | 83.00 ± 0.00 | 76.00 ± 0.00 |" in md  # the summary: all seen


def test_the_config_tables_of_the_docs_give_the_figures_the_report_uses():
    """Every single-config row of docs/configs.md's config tables: its published Avg / Last are
    what toolbox/published.py gives for that config (and a row without figures has none)."""
    import re

    from tests.conftest import ROOT
    from toolbox.configs import build_config
    from toolbox.published import published_for

    def number(cell):
        found = re.match(r"\s*(\d+(?:\.\d+)?)", cell)
        return float(found.group(1)) if found else None

    header, checked = None, 0
    with open(os.path.join(ROOT, "docs", "configs.md"), encoding="utf-8") as f:
        for line in f:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if line.startswith("| config |"):
                header = cells
                continue
            names = re.findall(r"`exps/([a-z0-9_]+\.json)`", cells[0]) if line.startswith("| `exps/") else []
            if header is None or len(names) != 1:
                continue
            if "paper Avg" in header:
                avg, last = number(cells[header.index("paper Avg")]), number(cells[header.index("paper Last")])
            else:
                both = (cells[header.index("published Avg / Last")].split("/") + ["-"])[:2]
                avg, last = number(both[0]), number(both[1])
            cfg = build_config(os.path.join(ROOT, "exps", names[0]))
            pub = published_for(cfg.model_name, cfg.to_dict())
            if avg is None and last is None:
                assert pub is None, names[0]
                continue
            assert pub is not None and (pub.avg, pub.last) == (avg, last), names[0]
            checked += 1
    # 11 MG-CLIP, 4 RAPF, 19 PROOF, 3 MoE-Adapters, 6 MagMax, 2 APER-Adapter, 2 SLCA, 6 prompt methods, 4 CLAP4CLIP
    assert checked == 57


def test_published_ablations_and_few_shot_runs_are_matched_by_their_options():
    from toolbox.published import published_for

    base = {"dataset": "imagenet100", "init_cls": 10, "increment": 10, "backbone": "ViT-B/16"}
    assert published_for("mgclip", base).last == 78.38  # the method as released
    assert published_for("mgclip", {**base, "lora_rank": 16}).last == 78.32
    assert published_for("mgclip", {**base, "fusion_beta": 2.0}).last == 77.92
    assert published_for("mgclip", {**base, "gap_alpha": 0.3}).last == 76.90
    assert published_for("mgclip", {**base, "lora_rank": 16, "fusion_beta": 2.0}) is None  # never published
    assert published_for("mgclip", {**base, "lora_ema": 0.2}) is None
    assert published_for("mgclip", {**base, "memory_size": 2000}).last == 80.74
    cifar = {**base, "dataset": "cifar100"}
    assert published_for("mgclip", {**cifar, "shots_per_class": 5}).last == 75.10
    assert published_for("mgclip", {**cifar, "shots_per_class": 7}) is None
    assert published_for("zs_clip", cifar) is None


def test_runs_that_differ_only_in_where_they_ran_are_one_group(tmp_path):
    """The keys a resumed run may change (where it reads and writes, how fast it runs;
    utils.config.PLACEMENT_KEYS) never split a group; anything else does."""
    from utils.config import PLACEMENT_KEYS

    M = [[90.0], [80.0, 70.0]]
    places = {"device": "cpu", "released_cache": "/a", "clip_cache": "/c", "data_path": "/d", "num_workers": 0}
    fake_run(tmp_path / "logs", "mgclip", 1, [90.0, 75.0], M, lora_rank=8, **places)
    fake_run(tmp_path / "logs", "mgclip", 2, [90.0, 75.0], M, lora_rank=8, device="cuda", released_cache="/b",
             clip_cache="/e", data_path="/f", num_workers=4)
    fake_run(tmp_path / "logs", "mgclip", 3, [90.0, 75.0], M, lora_rank=4)
    rows = make_report([str(tmp_path / "logs")], str(tmp_path / "out"))["rows"]
    assert sorted((r["prefix"], r["seeds"]) for r in rows) == [("p [lora_rank=4]", "3"), ("p [lora_rank=8]", "1 2")]
    assert set(places) <= PLACEMENT_KEYS


def test_report_counts_a_run_once_and_never_pools_different_configs(tmp_path):
    root = tmp_path / "logs"
    for seed in (1, 2):
        cfg_path, _ = write_cfg(tmp_path, f"s{seed}.json", seed=seed)
        assert run_main(["--config", str(cfg_path), "-q"]) == 0
    cfg_path, other = write_cfg(tmp_path, "lr.json", seed=3, lr=0.01)
    assert run_main(["--config", str(cfg_path), "-q"]) == 0
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


def three_task_runs(logs):
    """MG-CLIP seeds 1 and 2 finished (3 of 3 tasks), seed 3 stopped after its first task;
    zero-shot CLIP from an older results.json without nb_tasks / completed_tasks / finished."""
    done = {"nb_tasks": 3, "completed_tasks": 3, "finished": True}
    M = [[90.0], [85.0, 75.0], [80.0, 70.0, 60.0]]
    fake_run(logs, "mgclip", 1, [90.0, 80.0, 70.0], M, progress=done)
    fake_run(logs, "mgclip", 2, [94.0, 84.0, 74.0], M, progress=done)
    partial = fake_run(logs, "mgclip", 3, [92.0], [[92.0]],
                       progress={"nb_tasks": 3, "completed_tasks": 1, "finished": False})
    fake_run(logs, "zs_clip", 1, [70.0, 60.0], [[70.0], [65.0, 55.0]])
    return partial


def test_a_partial_run_is_left_out_and_listed_by_default(tmp_path, capsys):
    logs, out = tmp_path / "logs", tmp_path / "out"
    partial = three_task_runs(logs)
    assert main([str(logs), "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    written = make_report([str(logs)], str(out))
    rows = {r["method"]: r for r in written["rows"]}
    mg = rows["mgclip"]
    # seeds 1 and 2 only: Avg (90+80+70)/3 = 80 and (94+84+74)/3 = 84 -> 82 ± 2; Last 70, 74 -> 72 ± 2
    assert mg["seeds"] == "1 2" and mg["tasks"] == "3/3"
    assert (mg["avg_mean"], mg["avg_std"], mg["last_mean"], mg["last_std"]) == (82.0, 2.0, 72.0, 2.0)
    assert rows["zs_clip"]["tasks"] == "2/2"  # an older file: len(accuracy) tasks, counted as finished
    assert written["left_out"] == [{"run_dir": str(partial), "reason": "partial, 1 of 3 tasks",
                                    "completed_tasks": 1, "nb_tasks": 3}]
    line = f"- {partial}: partial, 1 of 3 tasks"
    md = (out / "summary.md").read_text()
    assert line in stdout and line in md and md.index("Left out") > md.index("| mgclip |")
    assert "| tasks |" not in md and "82.00 ± 2.00" in md and "72.00 ± 2.00" in md
    with open(out / "summary.csv") as f:
        table = list(csv.DictReader(f))
    assert "tasks" not in table[0] and [r["seeds"] for r in table] == ["1 2", "1"]
    with open(out / "left_out.csv") as f:
        assert list(csv.DictReader(f)) == [{"run_dir": str(partial), "reason": "partial, 1 of 3 tasks",
                                            "completed_tasks": "1", "nb_tasks": "3"}]
    assert "left_out.csv" in written["files"]
    if written["plots"]:  # no accuracy matrix of the partial run
        assert sorted(p for p in os.listdir(out) if p.startswith("accuracy_matrix_mgclip")) == [
            "accuracy_matrix_mgclip_cifar100_p_1.png", "accuracy_matrix_mgclip_cifar100_p_2.png"]


def test_include_partial_reports_and_marks_a_partial_run(tmp_path, capsys):
    logs, out = tmp_path / "logs", tmp_path / "out"
    three_task_runs(logs)
    assert main([str(logs), "--out", str(out), "--include-partial"]) == 0
    stdout = capsys.readouterr().out
    written = make_report([str(logs)], str(out), include_partial=True)
    mg = {r["method"]: r for r in written["rows"]}["mgclip"]
    # Avg 80, 84 and 92 (the partial run's one task): mean 256/3 = 85.33, population std
    # sqrt(((80-85.33)^2 + (84-85.33)^2 + (92-85.33)^2) / 3) = sqrt(24.89) = 4.99;
    # Last 70, 74, 92: mean 78.67, std sqrt((75.11 + 21.78 + 177.78) / 3) = sqrt(91.56) = 9.57
    assert mg["seeds"] == "1 2 3" and mg["tasks"] == "3/3, 1/3 (seed 3)" and mg["partial_seeds"] == [3]
    assert mg["avg_mean"] == pytest.approx(85.3333, abs=1e-4) and mg["avg_std"] == pytest.approx(4.98888, abs=1e-4)
    assert mg["last_mean"] == pytest.approx(78.6667, abs=1e-4) and mg["last_std"] == pytest.approx(9.56847, abs=1e-4)
    assert written["left_out"] == []
    md = (out / "summary.md").read_text()
    assert md.splitlines()[0].startswith("| method | prefix | dataset | split | seeds | tasks | Avg |")
    row = "| mgclip | p | cifar100 | 10/10 | 1 2 3 | 3/3, 1/3 (seed 3) | 85.33 ± 4.99 | 78.67 ± 9.57 |"
    assert row in md and row in stdout and "| zs_clip | p | cifar100 | 10/10 | 1 | 2/2 | 65.00 ± 0.00 |" in md
    assert "Left out" not in md
    with open(out / "summary.csv") as f:
        table = {r["method"]: r for r in csv.DictReader(f)}
    assert table["mgclip"]["tasks"] == "3/3, 1/3 (seed 3)" and table["zs_clip"]["tasks"] == "2/2"
    assert float(table["mgclip"]["avg_mean"]) == pytest.approx(85.3333, abs=1e-4)
    tex = (out / "summary.tex").read_text()
    assert "Method & Dataset & Split & Tasks & Avg & Last" in tex
    assert "mgclip & cifar100 & 10/10 & 3/3, 1/3 (seed 3) & $85.33 \\pm 4.99$ & $78.67 \\pm 9.57$" in tex
    if written["plots"]:
        assert len([p for p in os.listdir(out) if p.startswith("accuracy_matrix_mgclip")]) == 3


def test_folders_without_usable_results_are_listed_and_hidden_folders_never_read(tmp_path, capsys):
    logs = tmp_path / "logs"
    M = [[90.0], [80.0, 70.0]]
    good = fake_run(logs, "mgclip", 1, [90.0, 76.0], M)
    started = logs / "mgclip_p_2"  # a run that has not finished its first task
    started.mkdir()
    (started / "config.json").write_text("{}")
    (started / "run.log").write_text("")
    broken = logs / "mgclip_p_3"
    broken.mkdir()
    (broken / "results.json").write_text('{"model_name": "mgclip", "acc')  # cut off mid-write
    foreign = logs / "other"
    foreign.mkdir()
    (foreign / "results.json").write_text(json.dumps({"score": 1}))
    # a replacement run in the good run's folder, and one waiting to be swapped in: never runs
    fake_run(good / ".attempt", "mgclip", 7, [10.0, 10.0], M)
    fake_run(good / ".replacing", "mgclip", 8, [20.0, 20.0], M)
    fake_run(logs / ".trash", "mgclip", 9, [30.0, 30.0], M)
    assert main([str(logs), "--out", str(tmp_path / "out")]) == 0
    stdout = capsys.readouterr().out
    written = make_report([str(logs)], str(tmp_path / "out"))
    (row,) = written["rows"]
    assert row["seeds"] == "1" and row["avg_mean"] == 83.0  # (90 + 76) / 2, the good run alone
    reasons = {x["run_dir"]: x["reason"] for x in written["left_out"]}
    assert reasons[str(started)] == "no task finished yet"
    assert reasons[str(broken)].startswith("results.json unreadable: cannot be read as JSON")
    assert reasons[str(foreign)] == "results.json unreadable: not a results file of this toolbox (missing " \
                                    "model_name, dataset, seed, accuracy, accuracy_matrix, avg, last, config)"
    assert len(reasons) == 3
    attempt_dir = good / ".attempt"
    notes = [f"- {good}: replacement pending: `python main.py --resume {good}` completes it",
             f"- {good}: a replacement run is in progress or stopped in {attempt_dir}"]
    md = (tmp_path / "out" / "summary.md").read_text()
    for line in [f"- {started}: no task finished yet", f"- {broken}: results.json unreadable: "] + notes:
        assert line in md and line in stdout
    if written["plots"]:  # the good run's matrix alone
        assert [p for p in os.listdir(tmp_path / "out") if p.startswith("accuracy_matrix_")] == [
            "accuracy_matrix_mgclip_cifar100_p_1.png"]
    # the run folder named itself: its .attempt is not read either
    assert [r["seeds"] for r in make_report([str(good)], str(tmp_path / "o2"))["rows"]] == ["1"]
    # only unusable folders: an error naming each and why
    assert main([str(started), str(broken), "--out", str(tmp_path / "o3")]) == 2
    err = capsys.readouterr().err
    assert f"{started}: no task finished yet" in err and f"{broken}: results.json unreadable" in err


def test_only_partial_runs_is_an_error_that_names_the_flag(tmp_path, capsys):
    run = fake_run(tmp_path / "logs", "mgclip", 1, [90.0], [[90.0]],
                   progress={"nb_tasks": 3, "completed_tasks": 1, "finished": False})
    assert main([str(tmp_path / "logs"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{run}: partial, 1 of 3 tasks" in err and "--include-partial" in err
    assert not (tmp_path / "out").exists()
    assert main([str(tmp_path / "logs"), "--out", str(tmp_path / "out"), "--include-partial"]) == 0
    assert "| mgclip | p | cifar100 | 10/10 | 1 | 1/3 (seed 1) | 90.00 ± 0.00 |" in capsys.readouterr().out
