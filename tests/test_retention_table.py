"""The retention table (exps/tables/mgclip_retention.yaml, ``columns: retention``): MG-CLIP's
supplementary Table 6 (zero-shot top-1 on ImageNet-C, severity 3, after CIL on CIFAR-100):
its four runs and their held-out specs, the published figures in the dry run, the table
end to end on synthetic data and a tiny random CLIP, the ImageNet validation folder with
the released ImageNet-C names, and bad specs refused in one line."""
import csv
import json
import os

import numpy as np
import pytest
from PIL import Image

from toolbox.table import load_table_config, main, plan
from utils.config import ConfigError

CORRUPTIONS = ("defocus_blur", "contrast", "frost", "gaussian_noise")
# MG-CLIP supplementary, Table 6 (ViT-B/16, severity 3), typed from the paper: defocus, contrast, frost, gaussian
TABLE_6 = {"zs_clip": (41.95, 55.07, 38.23, 43.20), "magmax": (43.51, 52.10, 36.75, 41.43),
           "moe_adapters": (44.24, 54.82, 34.75, 36.09), "mgclip": (44.65, 56.02, 37.71, 42.47)}
NAMES = "released:mgclip/dataset_reqs/imagenet_c_classes.txt"


def test_the_table_plans_four_cifar_runs_with_the_four_corruption_specs(tmp_path):
    runs = plan(load_table_config("mgclip_retention"), [f"logdir={tmp_path}"])
    assert [r.method for r in runs] == ["zs_clip", "magmax", "moe_adapters", "mgclip"]
    for r in runs:
        c = r.config
        assert (c["dataset"], c["init_cls"], c["increment"], c["backbone"], r.seed) == ("cifar100", 10, 10,
                                                                                        "ViT-B/16", 1993)
        assert c["class_order"] == "released:mgclip" and c["prefix"] == "table_retention" and r.status == "start"
        specs = c["zero_shot_eval"]
        assert [s["corruption"] for s in specs] == list(CORRUPTIONS)
        assert {(s["dataset"], s["split"], s["class_names"], s["severity"]) for s in specs} == {
            ("folder", "imagenet/val", NAMES, 3)}
        assert not any("data_path" in s or "max_images" in s for s in specs)  # the run's data_path, every image
    mgclip = runs[-1].config
    assert (mgclip["memory_size"], mgclip["lora_rank"], mgclip["epochs"]) == (0, 8, 1)  # as released (mgclip_cifar)


def test_the_dry_run_prints_every_published_figure_of_table_6(tmp_path, capsys):
    assert main(["mgclip_retention", "--set", f"logdir={tmp_path / 'logs'}", "--out", str(tmp_path / "t"),
                 "--dry-run"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if " seed 1993: " in line}
    assert sorted(lines) == sorted(TABLE_6)
    for method, figures in TABLE_6.items():
        assert "(MG-CLIP supplementary, Table 6)" in lines[method]
        for corruption, figure in zip(CORRUPTIONS, figures):
            assert f"ImageNet-C {corruption}-3 {figure:.2f}" in lines[method], (method, corruption)
    assert "4 run(s); nothing was written" in out
    assert not (tmp_path / "logs").exists() and not (tmp_path / "t").exists()


def test_a_finished_run_without_zero_shot_eval_is_another_run(tmp_path):
    """zero_shot_eval is part of a run's config (what a table compares), so the CIFAR-100 runs
    of mgclip_main (no zero_shot_eval) cannot be this table's: a folder holding one is refused."""
    table = load_table_config("mgclip_retention")
    run = plan(table, [f"logdir={tmp_path}"])[0]
    os.makedirs(run.run_dir)
    with open(os.path.join(run.run_dir, "results.json"), "w") as f:
        json.dump({"finished": True, "seed": 1993, "config": {**run.config, "zero_shot_eval": []}}, f)
    with pytest.raises(ConfigError, match="another config .*differs in zero_shot_eval"):
        plan(table, [f"logdir={tmp_path}"])


def test_cells_by_hand_beside_table_6_with_the_runs_not_finished_listed_once(tmp_path):
    """results.json written by hand for two of the four runs: their cells are those figures
    beside Table 6's with the difference; the other two runs are listed once, not per column."""
    from toolbox.table import collect_retention, retention_table_markdown

    runs = plan(load_table_config("mgclip_retention"), [f"logdir={tmp_path}"])
    mine = {"mgclip": (45.0, 55.0, 38.0, 40.0), "magmax": (43.0, 53.0, 36.0, 41.0)}
    for r in runs:
        if r.method in mine:
            os.makedirs(r.run_dir)
            z = [{"name": f"ImageNet-C {c}-3", "images": 50000, "zero_shot_clip": 1.0, "model": v}
                 for c, v in zip(CORRUPTIONS, mine[r.method])]
            with open(os.path.join(r.run_dir, "results.json"), "w") as f:
                json.dump({"finished": True, "seed": r.seed, "config": r.config, "zero_shot_retention": z}, f)
    cells = {(c["method"], c["held_out"]): c for c in collect_retention(plan(load_table_config("mgclip_retention"),
                                                                             [f"logdir={tmp_path}"]))}
    assert len(cells) == 16
    for method, values in mine.items():
        for corruption, v, p in zip(CORRUPTIONS, values, TABLE_6[method]):
            c = cells[(method, f"ImageNet-C {corruption}-3")]
            assert (c["model_mean"], c["published"], c["images"]) == (v, p, "50000")
            assert c["diff"] == pytest.approx(v - p)
    md = retention_table_markdown(list(cells.values()))
    assert "| mgclip | 45.00 ± 0.00 (44.65, +0.35) | 55.00 ± 0.00 (56.02, -1.02) | 38.00 ± 0.00 (37.71, +0.29) | " \
           "40.00 ± 0.00 (42.47, -2.47) |" in md
    assert "| zs_clip | - [0 of 1 seeds] (41.95" not in md and "| zs_clip | - [0 of 1 seeds] |" in md
    assert md.count("zs_clip cifar seed 1993: not started") == 1 and md.count("moe_adapters cifar seed 1993") == 1


TINY = ["dataset=synthetic", "backbone=tiny-random", "device=cpu", "synthetic_classes=6",
        "synthetic_train_per_class=8", "synthetic_test_per_class=4", "synthetic_image_size=32", "init_cls=2",
        "increment=2", "epochs=1", "batch_size=8", "eval_batch_size=32", "class_order=default", "precision=fp32"]


def test_the_table_end_to_end_offline_equals_each_runs_results(tmp_path, capsys):
    specs = "[" + ", ".join(f"{{dataset: synthetic, corruption: {c}, severity: 3, synthetic_classes: 5, "
                            f"synthetic_test_per_class: 3, synthetic_image_size: 32}}" for c in CORRUPTIONS) + "]"
    overrides = TINY + [f"logdir={tmp_path / 'logs'}", f"zero_shot_eval={specs}"]
    argv = ["mgclip_retention", *sum((["--set", o] for o in overrides), []), "--out", str(tmp_path / "t")]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    runs = plan(load_table_config("mgclip_retention"), overrides)
    with open(tmp_path / "t" / "table.csv", newline="") as f:
        rows = {(r["method"], r["held_out"]): r for r in csv.DictReader(f)}
    md = (tmp_path / "t" / "table.md").read_text()
    assert md.splitlines()[0] == "| method | " + " | ".join(f"synthetic {c}-3" for c in CORRUPTIONS) + " |"
    assert len(rows) == 16
    for r in runs:
        with open(os.path.join(r.run_dir, "results.json")) as f:
            results = json.load(f)
        assert [z["name"] for z in results["zero_shot_retention"]] == [f"synthetic {c}-3" for c in CORRUPTIONS]
        assert [(z["spec"]["corruption"], z["spec"]["severity"]) for z in results["zero_shot_retention"]] == [
            (c, 3) for c in CORRUPTIONS]
        cells = []
        for z in results["zero_shot_retention"]:
            row = rows[(r.method, z["name"])]
            assert float(row["model_mean"]) == z["model"] and float(row["zero_shot_clip_mean"]) == z["zero_shot_clip"]
            assert (row["images"], row["runs"], row["published"], row["incomplete"]) == ("15", "1", "", "")
            cells.append(f"{z['model']:.2f} ± 0.00")
        assert f"| {r.method} | " + " | ".join(cells) + " |" in md
        if r.method == "zs_clip":  # trains nothing: after training is zero-shot CLIP
            assert all(z["model"] == z["zero_shot_clip"] for z in results["zero_shot_retention"])
    assert md in printed and not any(line.startswith("- published") for line in md.splitlines())  # none on synthetic
    assert "(" not in "".join(md.splitlines()[:6])  # so no cell has a published figure beside it


def test_the_imagenet_validation_folder_with_the_released_imagenet_c_names(tmp_path, released_cache):
    """The shipped spec (dataset folder, split imagenet/val, the released ImageNet-C names) on a
    folder of 1,000 wnid class folders under the run's data_path; no train/ is needed."""
    from toolbox.retention import held_out_images

    spec = plan(load_table_config("mgclip_retention"), [f"logdir={tmp_path}"])[0].config["zero_shot_eval"][0]
    rng = np.random.default_rng(0)
    wnids = [f"n{i:08d}" for i in range(1000)]
    for wnid in wnids[::-1]:  # created in reverse: classes are the folders' sorted order
        os.makedirs(tmp_path / "data" / "imagenet" / "val" / wnid)
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(
            tmp_path / "data" / "imagenet" / "val" / wnid / "a.JPEG")
    images, labels, names = held_out_images(spec, 16, released_cache, data_path=str(tmp_path / "data"))
    assert names[:3] == ["tench", "goldfish", "great white shark"] and len(names) == 1000
    assert images.shape == (1000, 16, 16, 3) and list(labels[:3]) == [0, 1, 2]
    with pytest.raises(Exception, match="held-out image folder .*imagenet/val not found"):
        held_out_images(spec, 16, released_cache, data_path=str(tmp_path / "elsewhere"))


@pytest.mark.parametrize("spec, key", [
    ("{dataset: folder, split: imagenet/val, severty: 3}", "'severty'; did you mean 'severity'"),
    ("{dataset: synthetic, split: imagenet/val}", "'split'"),
    ("{dataset: folder, corruption: frost, severity: 7}", "'severity' = 7"),
])
def test_a_bad_held_out_spec_is_one_line_naming_the_key(tmp_path, capsys, spec, key):
    argv = ["mgclip_retention", "--set", f"logdir={tmp_path}", "--set", f"zero_shot_eval=[{spec}]", "--dry-run",
            "--out", str(tmp_path / "t")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "config key 'zero_shot_eval'" in err and key in err, err


def test_a_retention_table_without_held_out_sets_is_refused(tmp_path, capsys):
    assert main(["mgclip_retention", "--set", f"logdir={tmp_path}", "--set", "zero_shot_eval=[]", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "need config key 'zero_shot_eval'" in err, err
