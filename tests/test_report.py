import csv
import json
import os

import numpy as np
import pytest
from PIL import Image

from utils.report import FIG_DPI, FIG_SIZE, ReportError, main, make_report


def fake_run(root, model, seed, acc, matrix, prefix="p", epochs=None, gap=None, text=None, visual=None,
             total_s=10.0):
    d = root / f"{model}_{seed}"
    d.mkdir(parents=True)
    r = {"model_name": model, "dataset": "cifar100", "seed": seed, "accuracy": acc, "accuracy_matrix": matrix,
         "avg": float(np.mean(acc)), "last": acc[-1], "forgetting": 5.0 + seed, "bwt": -seed,
         "config": {"prefix": prefix, "init_cls": 10, "increment": 10, "gap_alpha": 0.1},
         "timings": {"total_s": total_s}}
    if epochs is not None:
        r["epochs"] = epochs
    if gap is not None:
        r["gap"] = gap
    if text is not None:
        r["text_accuracy"], r["visual_accuracy"] = text, visual
    (d / "results.json").write_text(json.dumps(r))
    return d


@pytest.fixture
def runs(tmp_path):
    M1 = [[90.0], [80.0, 70.0]]
    M2 = [[94.0], [84.0, 72.0]]
    ep = lambda e: {"mode": "probe", "chosen": e, "neg0": -20.0, "alpha": 0.1,
                    "probe": [{"epoch": 1, "neg": -21.0}, {"epoch": 2, "neg": -23.0}]}
    gap = [{"task": 0, "before": {"neg": -20.0}, "after": {"neg": -21.0}},
           {"task": 1, "before": {"neg": -19.0}, "after": {"neg": -20.5}}]
    a = fake_run(tmp_path / "logs", "mgclip", 1, [90.0, 76.0], M1, epochs=ep(1), gap=gap, text=[80, 60], visual=[85, 70])
    b = fake_run(tmp_path / "logs", "mgclip", 2, [94.0, 80.0], M2, epochs=ep(1), gap=gap, text=[82, 64], visual=[87, 72],
                 total_s=20.0)
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
    assert mg["text_last_mean"] == pytest.approx(62.0) and mg["visual_last_mean"] == pytest.approx(71.0)
    assert mg["wall_s_mean"] == pytest.approx(15.0) and mg["epochs"] == "1" and mg["seeds"] == "1 2"
    assert rows["zs_clip"]["avg_std"] == 0.0 and rows["zs_clip"]["text_last_mean"] is None
    with open(out / "summary.csv") as f:
        csv_rows = {r["method"]: r for r in csv.DictReader(f)}
    assert float(csv_rows["mgclip"]["avg_mean"]) == pytest.approx(85.0)
    md = (out / "summary.md").read_text()
    assert "85.00 ± 2.00" in md and "78.00 ± 2.00" in md


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
    assert sorted(os.listdir(tmp_path / "o")) == ["summary.csv", "summary.md"]
    assert "pip install -e .[plots]" in capsys.readouterr().out


def test_bad_run_directories_are_named(tmp_path, capsys):
    assert main([str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "missing: no such run directory" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(empty)]) == 2
    assert "no results.json" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "results.json").write_text("{not json")
    assert main([str(bad)]) == 2
    assert "bad/results.json: cannot be read as JSON" in capsys.readouterr().err
    (bad / "results.json").write_text(json.dumps({"model_name": "x"}))
    assert main([str(bad)]) == 2
    assert "missing dataset" in capsys.readouterr().err


def test_report_on_real_runs(tmp_path):
    from tests.conftest import tiny_args
    from utils.config import Config
    from utils.trainer import run

    run(Config.from_dict(tiny_args(tmp_path, epochs="auto", probe_max_epochs=2, seed=[1, 2])))
    written = make_report([str(tmp_path / "logs")], str(tmp_path / "rep"))
    (row,) = written["rows"]
    results = [json.load(open(os.path.join(root, "results.json")))
               for root, _, files in os.walk(tmp_path / "logs") if "results.json" in files]
    assert row["avg_mean"] == pytest.approx(np.mean([r["avg"] for r in results]))
