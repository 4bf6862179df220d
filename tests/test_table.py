"""Tables in one command (toolbox/table.py): the expansion, what each run would do (start,
continue, skip, refuse), the table's numbers recomputed by hand from results.json files,
and the same small table through submitit's debug and local executors, including a job
killed mid-run and resubmitted."""
import json
import os
import re
import shutil
import time

import numpy as np
import pytest
import yaml

from tests.conftest import tiny_args
from toolbox.table import collect, execute, load_table_config, main, plan, table_markdown
from utils.config import ConfigError

TINY = {k: v for k, v in tiny_args().items() if k not in ("model_name", "seed", "prefix", "visual_batch_size")}


def write_table(tmp_path, **table):
    path = tmp_path / "table.yaml"
    path.write_text(yaml.safe_dump(table))
    return str(path)


def tiny_table(tmp_path, methods=("mgclip", "zs_clip"), seeds=(1, 2), **extra):
    """A table over a tiny protocol file (synthetic, 3 tasks of 2 classes)."""
    (tmp_path / "tiny.json").write_text(json.dumps(TINY))
    table = {"methods": list(methods), "seeds": list(seeds),
             "protocols": [{"tiny": {"configs": {m: str(tmp_path / "tiny.json") for m in methods}}}],
             "set": {"logdir": str(tmp_path / "logs"), "prefix": "t"}, **extra}
    return load_table_config(write_table(tmp_path, **table))


def test_the_demo_table_expands_into_methods_x_protocols_x_seeds():
    table = load_table_config("demo")
    runs = plan(table, ["logdir=/nonexistent/logs"])
    assert len(runs) == 3 * 2 * 2 and {r.status for r in runs} == {"start"}
    assert {(r.method, r.protocol) for r in runs} == {(m, p) for m in ("mgclip", "rapf", "zs_clip")
                                                      for p in ("demo", "demo_6x5")}
    rapf = [r for r in runs if r.method == "rapf"]
    assert {r.config["epochs"] for r in rapf} == {5}  # the method's section
    six = [r for r in runs if r.protocol == "demo_6x5"]
    assert {(r.config["init_cls"], r.config["increment"]) for r in six} == {(5, 5)}  # the protocol's keys
    assert {r.config["prefix"] for r in runs} == {"table_demo"} and {r.seed for r in runs} == {1993, 1994}
    assert runs[0].run_dir == "/nonexistent/logs/mgclip/synthetic/10/10/table_demo_1993"  # the --set key


def test_table_config_errors_name_what_to_fix(tmp_path):
    with pytest.raises(ConfigError, match="unknown key.*sedes"):
        load_table_config(write_table(tmp_path, methods=["mgclip"], protocols=["demo"], sedes=[1]))
    with pytest.raises(ConfigError, match="'protocols' must list"):
        load_table_config(write_table(tmp_path, methods=["mgclip"], protocols=[]))
    table = load_table_config(write_table(tmp_path, methods=["mgclip", "proof"], protocols=["cifar_5task"]))
    with pytest.raises(ConfigError, match="protocol 'cifar_5task', method proof: config file not found"):
        plan(table)
    twice = load_table_config(write_table(tmp_path, methods=["zs_clip"], protocols=[
        "demo", {"again": {"configs": "demo", "set": {"lr": 0.5}}}]))
    with pytest.raises(ConfigError, match="share the run folder"):
        plan(twice)


def test_skip_continue_and_refuse(tmp_path):
    table = tiny_table(tmp_path, methods=("zs_clip",), seeds=(1,))
    (run,) = plan(table)
    execute([run], {"name": "local"})
    (again,) = plan(table)
    assert again.status == "skip (finished)"
    with pytest.raises(ConfigError, match="another config .*prompt_template"):
        plan(table, ["prompt_template=a photo of a {}."])
    os.remove(os.path.join(run.run_dir, "results.json"))  # as if killed after its last checkpoint
    (resumable,) = plan(table)
    assert resumable.status == "continue after task 3"


def test_a_replacement_stopped_in_its_attempt_folder_is_continued_and_moved_in(tmp_path):
    """main.py --overwrite works in <run>/.attempt; a table over that folder continues it."""
    table = tiny_table(tmp_path, methods=("zs_clip",), seeds=(1,))
    (run,) = plan(table)
    execute([run], {"name": "local"})
    attempt = os.path.join(run.run_dir, ".attempt")
    os.mkdir(attempt)
    for name in ("config.json", "checkpoint.pt"):  # a replacement killed after its last checkpoint
        shutil.copy(os.path.join(run.run_dir, name), attempt)
    (again,) = plan(table)
    assert again.status == "continue after task 3 (the replacement in .attempt/)"
    with open(os.path.join(run.run_dir, "results.json")) as f:
        results = {**json.load(f), "marker": "the replacement's"}  # so that the moved-in file shows
    with open(os.path.join(attempt, "results.json"), "w") as f:
        json.dump(results, f)
    (again,) = plan(table)
    assert again.status == "continue (moves it in) (the replacement in .attempt/)"
    execute([again], {"name": "local"})
    assert not os.path.exists(attempt)
    with open(os.path.join(run.run_dir, "results.json")) as f:
        assert json.load(f)["marker"] == "the replacement's"
    (done,) = plan(table)
    assert done.status == "skip (finished)"


def test_the_table_numbers_by_hand_beside_the_published_ones(tmp_path):
    """Two seeds of MG-CLIP's CIFAR-100 protocol (results.json written by hand): mean and
    population std of Avg and Last, and the differences to 86.79 / 80.40."""
    table = load_table_config(write_table(tmp_path, methods=["mgclip"], protocols=["cifar"], seeds=[1, 2],
                                          set={"logdir": str(tmp_path / "logs")}))
    runs = plan(table)
    for r, (avg, last) in zip(runs, [(85.0, 79.0), (87.0, 82.0)]):
        os.makedirs(r.run_dir)
        with open(os.path.join(r.run_dir, "results.json"), "w") as f:
            json.dump({"finished": True, "seed": r.seed, "avg": avg, "last": last, "config": r.config}, f)
    assert {r.status for r in plan(table)} == {"skip (finished)"}
    (cell,) = collect(plan(table))
    assert (cell["avg_mean"], cell["last_mean"]) == (86.0, 80.5)
    assert cell["avg_std"] == pytest.approx(np.std([85.0, 87.0])) and cell["last_std"] == pytest.approx(1.5)
    assert (cell["avg_diff"], cell["last_diff"]) == (pytest.approx(86.0 - 86.79), pytest.approx(80.5 - 80.40))
    md = table_markdown([cell])
    assert "cifar100 10/10 (ViT-B/16) Avg" in md.splitlines()[0]
    assert "| mgclip | 86.00 ± 1.00 (86.79, -0.79) | 80.50 ± 1.50 (80.40, +0.10) |" in md
    assert "in parentheses the published figure and the difference" in md and "[" not in md  # every seed finished


def test_a_cell_with_a_missing_and_a_partial_seed_is_marked_and_its_runs_listed(tmp_path):
    """Four seeds planned: 1 and 2 finished, 3 stopped after its first task, 4 never
    started, 5 started but no task done; the cell is over seeds 1 and 2 alone, marked."""
    from toolbox.table import table_csv, table_latex

    table = load_table_config(write_table(tmp_path, methods=["mgclip"], protocols=["cifar"], seeds=[1, 2, 3, 4, 5],
                                          set={"logdir": str(tmp_path / "logs")}))
    runs = plan(table)
    by_seed = {r.seed: r for r in runs}
    for seed, results in ((1, {"finished": True, "avg": 85.0, "last": 79.0}),
                          (2, {"finished": True, "avg": 87.0, "last": 82.0}),
                          (3, {"finished": False, "nb_tasks": 10, "completed_tasks": 1, "avg": 99.0, "last": 99.0})):
        os.makedirs(by_seed[seed].run_dir)
        with open(os.path.join(by_seed[seed].run_dir, "results.json"), "w") as f:
            json.dump({**results, "seed": seed, "config": by_seed[seed].config}, f)
    os.makedirs(by_seed[5].run_dir)
    with open(os.path.join(by_seed[5].run_dir, "config.json"), "w") as f:
        json.dump(by_seed[5].config, f)
    (cell,) = collect(runs)
    # seeds 1 and 2: Avg (85 + 87) / 2 = 86 ± 1, Last (79 + 82) / 2 = 80.5 ± 1.5 (seed 3's 99 is not in it)
    assert (cell["avg_mean"], cell["avg_std"], cell["last_mean"], cell["last_std"]) == (86.0, 1.0, 80.5, 1.5)
    assert (cell["runs"], cell["planned"], cell["incomplete"], cell["seeds"]) == (2, 5, "2 of 5 seeds", "1 2")
    md = table_markdown([cell])
    assert "| mgclip | 86.00 ± 1.00 [2 of 5 seeds] (86.79, -0.79) | 80.50 ± 1.50 [2 of 5 seeds] (80.40, +0.10) |" in md
    for seed, why in ((3, "partial, 1 of 10 tasks"), (4, "not started"), (5, "no task finished yet")):
        assert f"- mgclip cifar seed {seed}: {why} ({by_seed[seed].run_dir})" in md
    csv_text = table_csv([cell]).splitlines()
    assert csv_text[0].startswith("method,protocol,dataset,split,backbone,seeds,runs,planned,incomplete,left_out,")
    assert "1 2,2,5,2 of 5 seeds,seed 3: partial, 1 of 10 tasks; seed 4: not started; seed 5: no task finished yet," \
        in csv_text[1].replace('"', "")
    tex = table_latex([cell])
    assert "mgclip & $86.00 \\pm 1.00$ [2 of 5 seeds] & $80.50 \\pm 1.50$ [2 of 5 seeds] \\\\" in tex
    assert "% in no cell: mgclip cifar seed 4: not started" in tex


def _results(run_dirs):
    out = {}
    for d in run_dirs:
        with open(os.path.join(d, "results.json")) as f:
            r = json.load(f)
        r.pop("timings")
        r["config"].pop("logdir")
        out[d.split("logs", 1)[1]] = r
    return out


def test_submitit_debug_and_local_executors_give_the_local_table(tmp_path):
    pytest.importorskip("submitit", reason="pip install -e .[cluster] (CI installs it)")
    tables = {}
    for name, executor in (("here", {"name": "local"}), ("debug", {"name": "submitit", "cluster": "debug"}),
                           ("local", {"name": "submitit", "cluster": "local"})):
        folder = tmp_path / name
        folder.mkdir()
        table = tiny_table(folder, executor={**executor, "folder": str(folder / "jobs")})
        runs = plan(table)
        execute(runs, table["executor"])
        tables[name] = (table_markdown(collect(runs)), _results([r.run_dir for r in runs]))
    assert tables["debug"] == tables["here"] and tables["local"] == tables["here"]


def test_a_job_killed_mid_run_and_resubmitted_ends_as_an_uninterrupted_run(tmp_path):
    submitit = pytest.importorskip("submitit", reason="pip install -e .[cluster] (CI installs it)")
    from toolbox.table import _Job

    slow = {"synthetic_classes": 8, "synthetic_train_per_class": 40, "init_cls": 2, "increment": 2, "epochs": 3}
    (tmp_path / "ref").mkdir()
    reference = tiny_table(tmp_path / "ref", methods=("mgclip",), seeds=(1,),
                           set={"logdir": str(tmp_path / "ref" / "logs"), "prefix": "t", **slow})
    (ref_run,) = plan(reference)
    execute([ref_run], {"name": "local"})

    (tmp_path / "job").mkdir()
    table = tiny_table(tmp_path / "job", methods=("mgclip",), seeds=(1,),
                       set={"logdir": str(tmp_path / "job" / "logs"), "prefix": "t", **slow})
    (run,) = plan(table)
    ex = submitit.AutoExecutor(folder=str(tmp_path / "jobs"), cluster="local")
    ex.update_parameters(timeout_min=10)
    job = ex.submit(_Job(), run.config)
    ckpt = os.path.join(run.run_dir, "checkpoint.pt")
    deadline = time.time() + 300
    while not os.path.exists(ckpt) and time.time() < deadline and not job.done():
        time.sleep(0.05)
    assert os.path.exists(ckpt) and not job.done(), "the job ended before its first checkpoint"
    job.cancel()  # the machine takes the job away mid-run
    while not job.done():
        time.sleep(0.05)
    assert not os.path.exists(os.path.join(run.run_dir, "results.json")) or \
        not json.load(open(os.path.join(run.run_dir, "results.json")))["finished"]
    (again,) = plan(table)
    assert again.status.startswith("continue after task")
    execute([again], {"name": "submitit", "cluster": "local", "folder": str(tmp_path / "jobs")})  # resubmitted
    assert _results([run.run_dir]) == _results([ref_run.run_dir])
    requeue = _Job().checkpoint(run.config)  # what submitit submits again on preemption or timeout
    assert isinstance(requeue.function, _Job) and requeue.args == (run.config,)


def test_the_command_dry_run_writes_nothing(tmp_path, capsys):
    path = write_table(tmp_path, methods=["zs_clip"], protocols=["demo"], seeds=[7],
                       set={"logdir": str(tmp_path / "logs")})
    assert main([path, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "zs_clip" in out and "seed 7: start" in out and "1 run(s); nothing was written" in out
    assert not (tmp_path / "logs").exists()
    assert main([path, "--out", str(tmp_path / "tbl")]) == 0
    assert sorted(os.listdir(tmp_path / "tbl")) == ["table.csv", "table.json", "table.md", "table.tex"]
    assert main([write_table(tmp_path, methods=["nope"], protocols=["demo"])]) == 2
    assert "unknown model_name 'nope'" in capsys.readouterr().err


def test_every_shipped_table_expands_offline(tmp_path):
    import glob

    from tests.conftest import ROOT

    for path in glob.glob(os.path.join(ROOT, "exps", "tables", "*.yaml")):
        runs = plan(load_table_config(path), [f"logdir={tmp_path}"])
        assert runs and len({r.run_dir for r in runs}) == len(runs), path


def test_the_more_specific_key_wins(tmp_path):
    (tmp_path / "tiny.json").write_text(json.dumps(TINY))
    table = load_table_config(write_table(
        tmp_path, methods=["mgclip"], seeds=[1], set={"lr": 0.1, "logdir": str(tmp_path)},
        protocols=[{"p": {"configs": {"mgclip": str(tmp_path / "tiny.json")}, "set": {"lr": 0.2, "batch_size": 3}}}],
        mgclip={"batch_size": 5}))
    (run,) = plan(table)
    assert (run.config["lr"], run.config["batch_size"]) == (0.2, 5)  # protocol over table, method over protocol
    (run,) = plan(table, ["batch_size=7"])
    assert run.config["batch_size"] == 7  # the command line over everything


def test_a_failing_job_is_one_line_naming_its_run_and_log(tmp_path, capsys):
    pytest.importorskip("submitit", reason="pip install -e .[cluster] (CI installs it)")
    path = write_table(tmp_path, methods=["zs_clip"], protocols=["demo"], seeds=[1],
                       set={"logdir": str(tmp_path / "logs"), "backbone": str(tmp_path / "missing.pt")},
                       executor={"name": "submitit", "cluster": "local", "folder": str(tmp_path / "jobs")})
    assert main([path, "--out", str(tmp_path / "out")]) == 3  # the job fails: its weights are missing
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "1 of 1 run(s) failed" in err and "missing.pt" in err
    assert str(tmp_path / "logs") in err and "log " in err and "Traceback" not in err
    ok = write_table(tmp_path, methods=["zs_clip"], protocols=["demo"], seeds=[1],
                     set={"logdir": str(tmp_path / "logs2"), "synthetic_classes": 4, "init_cls": 2, "increment": 2,
                          "lr": -1.0},
                     executor={"name": "submitit", "cluster": "debug", "folder": str(tmp_path / "jobs")})
    assert main([ok]) == 2 and "'lr'" in capsys.readouterr().err  # a bad value: one line, nothing submitted


def _files(folder):
    return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))}


def test_tables_with_different_overrides_go_to_different_folders(tmp_path, monkeypatch, capsys):
    from toolbox.table import overrides_slug

    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.json").write_text(json.dumps(TINY))
    path = write_table(tmp_path, methods=["zs_clip"], seeds=[1], set={"logdir": str(tmp_path / "logs")},
                       protocols=[{"tiny": {"configs": {"zs_clip": str(tmp_path / "tiny.json")}}}])
    assert main([path, "--set", "prefix=a"]) == 0
    first = _files(tmp_path / "tables" / "table_prefix-a")
    assert main([path, "--set", "prefix=b"]) == 0
    assert "wrote table.json, table.md, table.csv, table.tex to tables/table_prefix-b" in capsys.readouterr().out
    assert _files(tmp_path / "tables" / "table_prefix-a") == first  # the first table untouched
    with open(tmp_path / "tables" / "table_prefix-b" / "table.json") as f:
        recorded = json.load(f)
    assert recorded["config"] == path and recorded["set"] == ["prefix=b"] and recorded["overrides"] == {"prefix": "b"}
    assert recorded["runs"] == [str(tmp_path / "logs" / "zs_clip" / "synthetic" / "2" / "2" / "b_1")]
    assert main([path, "--set", "prefix=a"]) == 0  # the same table again: regenerated in its own folder
    assert sorted(os.listdir(tmp_path / "tables")) == ["table_prefix-a", "table_prefix-b"]
    # readable, stable (order of --set does not matter) and distinct, with a hash where a name would be lossy
    assert overrides_slug([]) == "" and overrides_slug(["lr=0.01", "prefix=x"]) == "lr-0.01_prefix-x"
    assert overrides_slug(["prefix=x", "lr=0.01"]) == overrides_slug(["lr=0.01", "prefix=x"])
    lossy = [["prefix=a/b"], ["prefix=a_b"], ["prefix=a-b"], ["prefix='1'"], ["prefix=1"], ["prefix=a", "b=c"],
             ["prefix=a_b-c"], ["data_path=/data"], ["prefix=" + "x" * 100], ["prefix=" + "x" * 101]]
    slugs = [overrides_slug(o) for o in lossy]
    assert len(set(slugs)) == len(slugs) and all(re.fullmatch(r"[A-Za-z0-9_.+-]+", s) for s in slugs)
    assert overrides_slug(["data_path=/data"]).startswith("data_path-data_") and len(slugs[-1]) <= 70


def test_a_folder_holding_another_table_is_refused_before_any_run(tmp_path, capsys):
    (tmp_path / "tiny.json").write_text(json.dumps(TINY))
    path = write_table(tmp_path, methods=["zs_clip"], seeds=[1], set={"logdir": str(tmp_path / "logs")},
                       protocols=[{"tiny": {"configs": {"zs_clip": str(tmp_path / "tiny.json")}}}])
    out = tmp_path / "out"
    assert main([path, "--set", "prefix=a", "--out", str(out)]) == 0
    before = _files(out)
    capsys.readouterr()
    for argv in ([path, "--set", "prefix=b", "--out", str(out)], [path, "--set", "prefix=b", "--out", str(out),
                                                                  "--dry-run"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"table folder {out} holds another table ({path}, --set prefix=a)" in err
        assert "--out" in err and f"remove {out}" in err
    assert not os.path.exists(tmp_path / "logs" / "zs_clip" / "synthetic" / "2" / "2" / "b_1")  # nothing ran
    assert _files(out) == before  # byte for byte
    (tmp_path / "other").mkdir()
    other = write_table(tmp_path / "other", methods=["zs_clip"], seeds=[1], set={"logdir": str(tmp_path / "logs")},
                        protocols=[{"tiny": {"configs": {"zs_clip": str(tmp_path / "tiny.json")}}}])
    assert main([other, "--set", "prefix=a", "--out", str(out)]) == 2  # the same overrides, another config
    assert "holds another table" in capsys.readouterr().err and _files(out) == before
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "table.md").write_text("a table of an earlier version\n")
    assert main([path, "--out", str(tmp_path / "old"), "--dry-run"]) == 2
    assert "holds table.md without a table.json" in capsys.readouterr().err
