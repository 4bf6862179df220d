"""The benchmark scripts run end to end in smoke mode (tiny CLIP, CPU) and write their JSON.
Their figures are measured on a GPU, not asserted here."""
import json
import os

import pytest

from benchmarks import end_to_end, throughput


def test_throughput_smoke(tmp_path, capsys):
    out = tmp_path / "tp.json"
    assert throughput.main(["--smoke", "--profile", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    profiled = [r for r in data["rows"] if "profile" in r]
    assert {(r["what"], r["path"]) for r in profiled} == {(w, f"fast {p}") for w in ("train step", "eval")
                                                           for p in ("auto", "bf16")}
    for r in profiled:
        shares = [p["share"] for p in r["profile"]]
        assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 1 + 1e-9
    paths = {(r["what"].split(" ")[0], r["path"]) for r in data["rows"]}
    assert {("train", "fast auto"), ("train", "fast bf16"), ("train", "reference"), ("eval", "fast auto"),
            ("eval", "fast bf16"), ("eval", "reference"), ("preprocess", "fast"), ("preprocess", "reference")} <= paths
    assert all(r["images_per_s"] > 0 for r in data["rows"])
    printed = capsys.readouterr().out
    assert "speed-up" in printed and "top operators" in printed


def test_end_to_end_smoke(tmp_path, capsys):
    out = tmp_path / "e2e.json"
    assert end_to_end.main(["--smoke", "--data-dir", str(tmp_path / "data"), "--out", str(out),
                            "--reference-tasks", "1"]) == 0
    data = json.loads(out.read_text())
    for name in ("cifar", "imagenet_r"):
        res = data["workloads"][name]
        for path in ("fast", "reference"):
            r = res[path]
            assert set(end_to_end.PHASES) <= set(r["phases_s"]) and r["wall_s"] > 0
            assert r["epochs"] == (1 if name == "cifar" else 2)  # probe ran, then the fixed budget
            assert 0 <= r["last"] <= 100
            walls = [t["wall_s"] for t in r["per_task"]]
            assert walls == sorted(walls) and walls[-1] <= r["wall_s"]
            # timed phases never exceed the wall clock (the rest, "data", is not negative)
            assert all(min(t["phases_s"].values()) >= 0 for t in r["per_task"])
        assert res["fast"]["tasks"] == res["fast"]["nb_tasks"] == 2  # the fast path runs every task
        assert res["reference"]["tasks"] == 1  # --reference-tasks 1 stops the reference after task 1
        assert end_to_end.compare_at(res) == 1
    assert os.path.isdir(tmp_path / "data" / "smoke" / "imagenet-r" / "train")  # real JPEG folders
    printed = capsys.readouterr().out
    assert "### imagenet_r" in printed and "| first 1 of 2 tasks |" in printed


def test_jpeg_folders_are_the_same_written_in_parallel(tmp_path):
    serial = end_to_end.write_jpeg_folders(str(tmp_path / "a"), 3, 2, 1, 24, workers=0)
    parallel = end_to_end.write_jpeg_folders(str(tmp_path / "b"), 3, 2, 1, 24, workers=2)
    files = sorted(os.path.relpath(os.path.join(d, f), serial) for d, _, fs in os.walk(serial) for f in fs)
    assert len([f for f in files if f.endswith(".jpg")]) == 3 * (2 + 1)
    for f in files:
        with open(os.path.join(serial, f), "rb") as x, open(os.path.join(parallel, f), "rb") as y:
            assert x.read() == y.read(), f


@pytest.mark.parametrize("method", ["rapf", "proof", "l2p", "dualprompt", "coda"])
def test_methods_end_to_end_smoke(tmp_path, capsys, method):
    from benchmarks import methods_end_to_end

    out = tmp_path / f"{method}.json"
    assert methods_end_to_end.main(["--smoke", "--method", method, "--reference-tasks", "2", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    ours, ref = data["paths"]["ours"], data["paths"]["reference"]
    assert len(ours["accuracy"]) == 4 and len(ref["accuracy"]) == 2  # the reference stops after 2 tasks
    assert len(ref["task_end_s"]) == 2 and all(t > 0 for t in ours["task_end_s"])
    assert "speed-up" in capsys.readouterr().out
    if method in ("l2p", "dualprompt", "coda"):
        # ours: each of the 8 x 6 train and 8 x 3 test images once; the reference: every batch of 4 in
        # each of 2 epochs over a task's 12 images, then the seen test images, for 2 tasks
        assert ours["query_images"] == 48 + 24 and ref["query_images"] == 2 * 2 * 12 + (6 + 12)


def test_numerics_smoke(tmp_path, capsys):
    from benchmarks import numerics

    out = tmp_path / "numerics.json"
    assert numerics.main(["--smoke", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    # on the CPU the default numerics are strict fp32 (TF32 exists only on CUDA): identical features
    same = data["features"]["auto vs fp32"]
    assert same["max_abs_diff"] == 0.0 and same["cos_min"] == pytest.approx(1.0, abs=1e-6)
    bf16 = data["features"]["bf16 vs fp32"]
    assert 0.99 < bf16["cos_min"] < 1.0 and bf16["max_abs_diff"] > 0  # bf16 rounds: close, not equal
    for precision in ("auto", "bf16"):
        run = data["runs"][precision]
        assert 1 <= run["epochs"] <= 3 and len(run["accuracy"]) == 3
        # the probe stops at the first epoch whose gap moved more than alpha, else at its maximum
        assert [p["epoch"] for p in run["probe"]] == list(range(1, len(run["probe"]) + 1))
        assert all(abs(p["change"]) <= 0.10 for p in run["probe"][:-1])
    printed = capsys.readouterr().out
    assert "gap statistic" in printed and "| bf16 |" in printed


def test_summary_table_of_hand_made_measurements(tmp_path, capsys):
    from benchmarks import summarize

    def write(name, obj):
        (tmp_path / f"{name}.json").write_text(json.dumps({"device": "NVIDIA H100 80GB HBM3", **obj}))

    write("throughput", {"rows": [
        {"what": "train step", "path": "fast bf16", "batch": 128, "images_per_s": 3000.0, "peak_gb": 9.0},
        {"what": "eval", "path": "fast bf16", "batch": 512, "images_per_s": 7000.0, "peak_gb": 3.0},
        {"what": "eval", "path": "reference", "batch": 128, "images_per_s": 1000.0, "peak_gb": 2.0}]})
    fast = {"wall_s": 50.0, "tasks": 10, "nb_tasks": 10, "per_task": [{"wall_s": 5.0 * (t + 1)} for t in range(10)]}
    ref = {"wall_s": 120.0, "tasks": 3, "nb_tasks": 10, "per_task": [{"wall_s": 40.0 * (t + 1)} for t in range(3)]}
    write("end_to_end_cifar", {"workloads": {"cifar": {"fast": fast, "reference": ref}}})
    write("rapf_end_to_end", {"paths": {"ours": {"wall_s": 4.5, "task_end_s": [1.0, 2.0, 3.0, 4.0]},
                                        "reference": {"wall_s": 20.0, "task_end_s": [10.0, 20.0]}}})
    assert summarize.main([str(tmp_path)]) == 0
    text = (tmp_path / "summary.md").read_text()
    assert text.strip() == capsys.readouterr().out.strip()
    lines = text.splitlines()
    assert lines[0] == "Measured on: NVIDIA H100 80GB HBM3"
    assert "| train step (bf16), batch 128 | 3,000 img/s | >= 2500 | yes |" in lines
    assert "| eval (bf16), batch 512 | 7,000 img/s | >= 8000 | **no** |" in lines
    assert "| eval (reference), batch 128 | 1,000 img/s | - | - |" in lines
    assert "| cifar end to end, fast, all 10 tasks | 50.0 s | <= 60 | yes |" in lines
    # the reference's third task ends at 120 s, the fast run's at 15 s: 8.0x, the target exactly
    assert "| cifar speed-up over the reference, first 3 of 10 tasks | 8.0x | >= 8 | yes |" in lines
    assert "| RAPF speed-up over its official cost structure, first 2 tasks | 10.0x | - | - |" in lines
    assert lines[-1] == ("Not measured: throughput_compiled.json, end_to_end_imagenet_r.json, numerics.json, "
                         "proof_end_to_end.json")


def test_demo_timings_smoke(tmp_path, capsys):
    """benchmarks/demos.py: one real demo process timed; the JSON holds what the table prints."""
    from benchmarks import demos

    out = tmp_path / "demos.json"
    assert demos.main(["--smoke", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    row = record["demos"]["mgclip_demo"]
    assert len(row["wall_s"]) == 1 and row["wall_min_s"] == row["wall_max_s"] == row["wall_s"][0] > 0
    assert row["cpu_median_run_s"] > 0  # the child's CPU, not this process's
    assert "mgclip_demo" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        demos.main(["--only", "no_such_demo", "--out", str(out)])
