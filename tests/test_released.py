"""Issue 10: the paper configs are the released runs. Official data files fetched at a
pinned commit with SHA-256, paper configs equal to the released YAMLs key by key, probe
then exact restart, released numerics, gap statistic over a seeded shuffled order."""
import glob
import io
import json
import os
import urllib.error
import warnings

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from main import main
from tests.conftest import ROOT, SHARED_RELEASED, shared_released, tiny_args
from toolbox.configs import make_config
from toolbox.data_manager import DataManager
from toolbox.released import SHA256, ReleasedFileError, cache_path, fetch_released, url_of
from toolbox.trainer import run_dir_for
from utils.config import Config

CONFIGS = os.path.join(SHARED_RELEASED, "mgclip", "configs", "class")


# ----------------------------------------------------------------------------- configs
def released_yaml(name):
    path = os.path.join(CONFIGS, name)
    if not os.path.isfile(path):
        pytest.skip(f"needs {path} (../shared, absent outside the project)")
    with open(path) as f:
        raw = yaml.safe_load(f)
    # Hydra interpolation used by these files: ``increment: ${initial_increment}``
    return {k: raw[v[2:-1]] if isinstance(v, str) and v.startswith("${") else v for k, v in raw.items()}


# Released key -> (our key, how the released value reads in our terms). Keys the released
# code does not read for this method (hydra, paths, Adam's unused weight_decay/momentum,
# options that are off) are compared separately below.
DATASET_NAMES = {"cifar100": "cifar100", "imagenet100": "imagenet100", "imagenet_R": "imagenet_r"}
CLASS_COUNTS = {"cifar100": 100, "imagenet100": 100, "imagenet_r": 200}
PAIRS = [("cifar100_10-10.yaml", "mgclip_cifar.json"),
         ("imagenet100_10-10.yaml", "mgclip_imagenet100.json"),
         ("imagenet_r_20-20.yaml", "mgclip_imagenet_r.json")]


def expected_from_released(rel):
    lora_encoders = [e for e, tag in (("visual", "vision"), ("text", "text")) if tag in rel["lora_mode"].split("+")]
    return {
        "backbone": rel["model_name"], "prompt_template": rel["prompt_template"],
        "eval_batch_size": rel["batch_size"], "batch_size": rel["train_batch_size"],
        "init_cls": rel["initial_increment"], "increment": rel["increment"],
        "dataset": DATASET_NAMES[rel["dataset"]], "seed": rel["seed"], "epochs": rel["epochs"],
        "lora_rank": rel["lora_rank"], "lora_targets": ["k", "v"] if "only_kv" in rel["lora_mode"] else None,
        "lora_encoders": lora_encoders, "lr": rel["lr"], "compensation": rel["visual_agent"],
        "visual_lr": rel["visual_agent_lr"], "visual_batch_size": rel["visual_agent_batch_size"],
        "visual_epochs": rel["visual_agent_epochs"], "memory_size": 2000 if rel["real_replay"] else 0,
        "class_order": "released", "num_workers": rel["num_workers"],
    }


@pytest.mark.parametrize("released, ours", PAIRS)
def test_paper_config_equals_the_released_config_key_by_key(released, ours):
    rel = released_yaml(released)
    with open(os.path.join(ROOT, "exps", ours)) as f:
        cfg = make_config(json.load(f))
    flat = cfg.to_dict()  # shared keys and MG-CLIP's own options
    for key, value in expected_from_released(rel).items():
        assert flat[key] == value, f"{ours}: {key} = {flat[key]!r}, released {value!r}"
    assert rel["task_num"] == CLASS_COUNTS[cfg.dataset] // cfg.increment
    # released switches that stay off in this method's runs, and the method's fixed values
    assert not any(rel[k] for k in ("reset", "only_reset_B", "freeze_A", "all_test", "balance_ft"))
    o = cfg.options
    assert o.lora_alpha == 1.0 and o.fusion_beta == 4.0 and o.gap_alpha == 0.10
    assert o.visual_scale == 1.0 and o.min_lr_ratio == 0.01 and cfg.precision == "auto"
    if cfg.dataset != "cifar100":
        assert cfg.class_names == "released"


def test_every_paper_config_uses_the_released_class_order_and_names():
    for path in glob.glob(os.path.join(ROOT, "exps", "mgclip_*.json")):
        cfg = make_config(json.load(open(path)))
        if cfg.dataset in ("cifar100", "imagenet100", "imagenet_r"):
            assert cfg.class_order == "released", path
            if cfg.dataset != "cifar100":
                assert cfg.class_names == "released", path
            if cfg.backbone == "ViT-B/16":  # the released E of the dataset's config
                assert cfg.epochs == {"cifar100": 1, "imagenet100": 2, "imagenet_r": 2}[cfg.dataset], path


# ----------------------------------------------------------------------------- fetching
def test_pinned_checksums_are_those_of_the_shared_copies():
    import hashlib

    for name, sha in SHA256.items():
        with open(shared_released(name), "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == sha, name


def fake_imagenet_r(root, wnids):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for w in wnids:
            os.makedirs(root / "imagenet-r" / split / w)
            pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "imagenet-r" / split / w / "0.jpg")


def released_wnids(name):
    with open(shared_released(name)) as f:
        return [line.split("\t")[1] for line in f.read().splitlines() if line.strip()]


def test_released_class_order_and_names_with_a_local_copy(tmp_path, released_cache, monkeypatch):
    monkeypatch.setattr("urllib.request.urlopen", lambda *a, **k: pytest.fail("must not download"))
    wnids = released_wnids("mgclip/dataset_reqs/imagenet_R_classes.txt")
    fake_imagenet_r(tmp_path, wnids)
    args = {"data_path": str(tmp_path), "class_order": "released", "class_names": "released",
            "released_cache": released_cache}
    with pytest.raises(ReleasedFileError, match="pass release="):  # 'released': the method's, which the caller says
        DataManager("imagenet_r", True, 0, 20, 20, args)
    dm = DataManager("imagenet_r", True, 0, 20, 20, args, release="mgclip")
    with open(shared_released("mgclip/class_orders/imagenet_R.yaml")) as f:
        order = yaml.safe_load(f)["class_order"]
    assert dm.class_order == order and dm.nb_tasks == 10
    with open(shared_released("mgclip/dataset_reqs/imagenet_R_classes.txt")) as f:
        names = [line.split("\t")[-1] for line in f.read().splitlines()]
    assert dm.get_class_names() == [names[c] for c in order]  # names follow the released order


def test_a_released_name_file_that_does_not_match_the_folders_is_refused(tmp_path, released_cache):
    from toolbox.data import DatasetError

    wnids = released_wnids("mgclip/dataset_reqs/imagenet_R_classes.txt")
    fake_imagenet_r(tmp_path, wnids[:199] + ["n99999999"])
    with pytest.raises(DatasetError, match="line 200 is for .* class folder 200 is n99999999"):
        DataManager("imagenet_r", True, 0, 20, 20, {"data_path": str(tmp_path), "class_order": "default",
                                                    "class_names": "released", "released_cache": released_cache},
                    release="mgclip")


def test_released_imagenet100_class_file_is_accepted_as_it_is(tmp_path, released_cache):
    wnids = released_wnids("mgclip/dataset_reqs/imagenet100_classes.txt")
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for w in wnids:
            os.makedirs(tmp_path / "imagenet" / split / w)
            pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "imagenet" / split / w / "a.JPEG")
    dm = DataManager("imagenet100", True, 0, 10, 10, {
        "data_path": str(tmp_path), "class_order": "released", "imagenet100_classes": "released",
        "class_names": "released", "released_cache": released_cache}, release="mgclip")
    with open(shared_released("mgclip/dataset_reqs/imagenet100_classes.txt")) as f:
        names = [line.split("\t")[2] for line in f.read().splitlines()]
    with open(shared_released("mgclip/class_orders/imagenet100.yaml")) as f:
        order = yaml.safe_load(f)["class_order"]
    assert dm.class_order == order and dm.get_class_names()[:3] == [names[c] for c in order[:3]]
    assert names[0] == "tench" and "great white shark" in dm.get_class_names()


def test_a_local_copy_with_a_wrong_checksum_is_refused_and_kept(tmp_path, monkeypatch):
    name = "mgclip/class_orders/cifar100.yaml"
    target = cache_path(name, str(tmp_path))
    os.makedirs(os.path.dirname(target))
    with open(target, "w") as f:
        f.write("class_order: [1, 0]\n")  # someone's edited copy
    monkeypatch.setattr("urllib.request.urlopen", lambda *a, **k: pytest.fail("must not download over it"))
    with pytest.raises(ReleasedFileError, match="expected 4fbdb278"):
        fetch_released(name, str(tmp_path))
    with open(target) as f:
        assert f.read() == "class_order: [1, 0]\n"


class FakeResponse(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def test_download_is_verified_cached_and_a_tampered_one_leaves_nothing(tmp_path, monkeypatch):
    name = "mgclip/class_orders/cifar100.yaml"
    with open(shared_released(name), "rb") as f:
        good = f.read()
    urls = []
    monkeypatch.setattr("urllib.request.urlopen", lambda url, **k: urls.append(url) or FakeResponse(good))
    path = fetch_released(name, str(tmp_path))
    assert urls == ["https://raw.githubusercontent.com/linlany/MindtheGap/"
                    "f40bfceae67395c54c75f5504841200cd217d4a0/class_orders/cifar100.yaml"]
    assert open(path, "rb").read() == good
    assert fetch_released(name, str(tmp_path)) == path and len(urls) == 1  # cached: no second download
    other = tmp_path / "other"
    monkeypatch.setattr("urllib.request.urlopen", lambda url, **k: FakeResponse(good + b"# tampered\n"))
    with pytest.raises(ReleasedFileError, match="SHA-256 .* expected 4fbdb278"):
        fetch_released(name, str(other))
    assert [f for _, _, files in os.walk(other) for f in files] == []


def test_offline_fails_in_one_line_naming_url_and_path(tmp_path, capsys, monkeypatch):
    def no_network(*a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr("urllib.request.urlopen", no_network)
    args = tiny_args(tmp_path, dataset="imagenet_r", data_path=str(tmp_path), class_order="released",
                     released_cache=str(tmp_path / "cache"))
    fake_imagenet_r(tmp_path, [f"n{i:08d}" for i in range(200)])
    (tmp_path / "names.txt").write_text("".join(f"class {i}\n" for i in range(200)))  # wnid folders need names
    args["class_names"] = str(tmp_path / "names.txt")
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(args))
    assert main(["--config", str(path), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    name = "mgclip/class_orders/imagenet_R.yaml"
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert url_of(name) in err and cache_path(name, str(tmp_path / "cache")) in err and SHA256[name] in err
    assert not os.path.exists(tmp_path / "logs")


def test_released_for_a_dataset_without_such_a_file_is_refused():
    from utils.config import ConfigError

    with pytest.raises(ConfigError, match="'class_order'.*'released' only for datasets"):
        make_config({"dataset": "synthetic", "class_order": "released"})


# ----------------------------------------------------------------------------- probe and numerics
def results_without(run_dir, *drop):
    with open(os.path.join(run_dir, "results.json")) as f:
        r = json.load(f)
    for key in ("timings", "config") + drop:
        r.pop(key)
    return r


@pytest.mark.parametrize("track_gap", [True, False])
def test_auto_epochs_that_pick_e_equal_a_run_given_e_bit_for_bit(tmp_path, monkeypatch, track_gap):
    from tests.test_resume import resume_from_copy, run_keeping_checkpoints

    common = dict(synthetic_classes=8, synthetic_train_per_class=12, init_cls=2, increment=2, probe_max_epochs=4,
                  lr=0.02, seed=7, track_gap=track_gap)
    args = tiny_args(tmp_path / "auto", epochs="auto", **common)
    (tmp_path / "auto.json").write_text(json.dumps(args))
    snapshots = run_keeping_checkpoints(tmp_path / "auto.json", monkeypatch)  # the first is right after the probe
    auto_dir = run_dir_for(make_config(args), 7)
    with open(os.path.join(auto_dir, "results.json")) as f:
        chosen = json.load(f)["epochs"]["chosen"]
    assert 1 <= chosen < 4  # the probe stopped at a violation, so E is really chosen
    args = tiny_args(tmp_path / "fixed", epochs=chosen, **common)
    (tmp_path / "fixed.json").write_text(json.dumps(args))
    assert main(["--config", str(tmp_path / "fixed.json"), "-q"]) == 0
    fixed = results_without(run_dir_for(make_config(args), 7), "epochs")
    auto = results_without(auto_dir, "epochs")
    resumed = resume_from_copy(auto_dir, snapshots[0], tmp_path / "resumed_after_probe")
    for key in ("config", "epochs"):
        resumed.pop(key)
    for r in (auto, resumed):  # the first task's "before" is neg0 (LoRA off) vs the B = 0 gap: equal in value
        if track_gap:
            assert r["gap"][0]["before"] == pytest.approx(fixed["gap"][0]["before"], rel=1e-6)
        r["gap"][0].pop("before", None)
    fixed["gap"][0].pop("before", None)
    assert auto == fixed  # accuracies, matrix, every later gap, text/visual accuracies: identical
    assert resumed == fixed  # and across --resume right after the probe


def test_gap_statistic_over_a_seeded_shuffled_order_by_hand():
    from utils.gap import gap_order, gap_statistic

    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(7, 4, generator=g), dim=1)
    txt = torch.nn.functional.normalize(torch.randn(3, 4, generator=g), dim=1)
    y = torch.tensor([0, 0, 0, 1, 1, 2, 2])  # dataset order: the short last batch would be one class
    before = torch.get_rng_state()
    order = gap_order(7, seed=5, task=1)
    assert torch.equal(torch.get_rng_state(), before)  # the global random stream is untouched
    assert sorted(order.tolist()) == list(range(7)) and order.tolist() != list(range(7))
    assert torch.equal(order, gap_order(7, seed=5, task=1)) and not torch.equal(order, gap_order(7, seed=5, task=2))
    neg, pos = gap_statistic(img, y, txt, 100.0, 3, order)
    logits = (100 * img @ txt.T).tolist()
    idx = order.tolist()
    negs, poss = [], []
    for b in (idx[0:3], idx[3:6], idx[6:7]):
        negs.append(np.mean([np.mean([logits[i][c] for c in range(3) if c != y[i]]) for i in b]))
        poss.append(np.mean([logits[i][int(y[i])] for i in b]))
    assert neg == pytest.approx(np.mean(negs), rel=1e-5) and pos == pytest.approx(np.mean(poss), rel=1e-5)


def test_default_numerics_are_fp32_and_tf32_on_cuda_bf16_is_the_option():
    from utils.clip_backbone import autocast, set_matmul_precision

    cuda = torch.device("cuda")  # building the context needs no GPU
    assert type(autocast(cuda, "auto")).__name__ == "nullcontext"
    assert type(autocast(cuda, "fp32")).__name__ == "nullcontext"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "CUDA is not available": the context is only built here
        assert isinstance(autocast(cuda, "bf16"), torch.autocast)
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        set_matmul_precision(cuda, "fp32")
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        set_matmul_precision(cuda, "auto")
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    assert Config().precision == "auto"
