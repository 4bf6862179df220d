"""The benchmark scripts run end to end in smoke mode (tiny CLIP, CPU) and write their JSON.
Their figures are measured on a GPU, not asserted here."""
import json
import os

from benchmarks import end_to_end, throughput


def test_throughput_smoke(tmp_path, capsys):
    out = tmp_path / "tp.json"
    assert throughput.main(["--smoke", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    paths = {(r["what"].split(" ")[0], r["path"]) for r in data["rows"]}
    assert {("train", "fast"), ("train", "reference"), ("eval", "fast"), ("eval", "reference"),
            ("preprocess", "fast"), ("preprocess", "reference")} <= paths
    assert all(r["images_per_s"] > 0 for r in data["rows"])
    assert "speed-up" in capsys.readouterr().out


def test_end_to_end_smoke(tmp_path, capsys):
    out = tmp_path / "e2e.json"
    assert end_to_end.main(["--smoke", "--data-dir", str(tmp_path / "data"), "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    for name in ("cifar", "imagenet_r"):
        res = data["workloads"][name]
        for path in ("fast", "reference"):
            r = res[path]
            assert set(end_to_end.PHASES) <= set(r["phases_s"]) and r["wall_s"] > 0
            assert r["epochs"] == (1 if name == "cifar" else 2)  # probe ran, then the fixed budget
            assert 0 <= r["last"] <= 100
    assert os.path.isdir(tmp_path / "data" / "smoke" / "imagenet-r" / "train")  # real JPEG folders
    assert "### imagenet_r" in capsys.readouterr().out
