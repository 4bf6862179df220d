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


@pytest.mark.parametrize("method", ["rapf", "proof"])
def test_methods_end_to_end_smoke(tmp_path, capsys, method):
    from benchmarks import methods_end_to_end

    out = tmp_path / f"{method}.json"
    assert methods_end_to_end.main(["--smoke", "--method", method, "--reference-tasks", "2", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    ours, ref = data["paths"]["ours"], data["paths"]["reference"]
    assert len(ours["accuracy"]) == 4 and len(ref["accuracy"]) == 2  # the reference stops after 2 tasks
    assert len(ref["task_end_s"]) == 2 and all(t > 0 for t in ours["task_end_s"])
    assert "speed-up" in capsys.readouterr().out
