"""Issue 33.4: the names in the prompts. Every shipped config of a method that uses text
gets its method's official class names (PROOF's utils/labels.json, MG-CLIP's files and
torchvision's CIFAR-100 names elsewhere), never a folder id; class folders that are ids
without 'class_names' are refused before anything is written; readable folders pass."""
import dataclasses
import glob
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from main import main
from tests.conftest import ROOT, shared_released, tiny_args
from toolbox.configs import build_configs
from toolbox.data import DatasetError, is_class_id
from toolbox.data_manager import DataManager
from toolbox.registry import method_data, uses_text
from utils.class_names import CIFAR100_CLASSES

SHIPPED = sorted(glob.glob(os.path.join(ROOT, "exps", "*.json")))  # exps/tables/ excluded
PROOF_KEYS = {"cifar100": "cifar224", "imagenet_r": "imagenetr", "cub200": "cub",  # labels.json's lists
              **{d: d for d in ("aircraft", "cars", "food101", "objectnet", "sun", "ucf101")}}
# PROOF's other benchmark sets: its pre-split data_path/<dataset>/train + test folders, classes by sorted folder
PROOF_SETS = {"aircraft": 100, "cars": 100, "food101": 100, "objectnet": 200, "sun": 300, "ucf101": 100}
MGCLIP_TABLES = {"imagenet_r": "mgclip/dataset_reqs/imagenet_R_classes.txt",
                 "imagenet100": "mgclip/dataset_reqs/imagenet100_classes.txt",
                 "cub200": "mgclip/dataset_reqs/cub200_classes.txt"}


def table(name, field=-1):
    with open(shared_released(name), encoding="utf-8") as f:
        return [line.rstrip("\n").split("\t")[field] for line in f if line.strip()]


def labels_json(key):
    """PROOF's names read here, independently of the toolbox."""
    with open(shared_released("proof/utils/labels.json"), encoding="utf-8") as f:
        return json.load(f)[key]


def official_names(model, dataset):
    """The names the method's official code prompts with, by class id of our loaders."""
    if model == "proof":
        return labels_json(PROOF_KEYS[dataset])
    if dataset == "cifar100":
        return list(CIFAR100_CLASSES)  # torchvision's, as MG-CLIP's code (underscores kept)
    return table(MGCLIP_TABLES[dataset])


class FakeCIFAR100:
    """torchvision's CIFAR100 offline: one image per class, its names."""
    classes = list(CIFAR100_CLASSES)

    def __init__(self, root, train=True, download=False):
        self.data = np.zeros((100, 32, 32, 3), dtype=np.uint8)
        self.targets = list(range(100))


def write_folders(root, splits, classes):
    for split in splits:
        for c in classes:
            os.makedirs(root / split / c)
            Image.new("RGB", (8, 8)).save(root / split / c / "a.jpg")


@pytest.fixture(scope="module")
def fake_data(tmp_path_factory):
    """A released cache (copies of ../shared/released) and class folders for each dataset,
    named as the real ones: ImageNet-R and ImageNet-100 by wnid, CUB-200 as 001.Black_footed_Albatross."""
    from toolbox.released import SHA256, cache_path

    base = tmp_path_factory.mktemp("names")
    cache = base / "cache"
    for name in SHA256:
        target = cache_path(name, str(cache))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy(shared_released(name), target)
    write_folders(base / "imagenet-r", ("train", "test"), table(MGCLIP_TABLES["imagenet_r"], 1))
    write_folders(base / "imagenet", ("train", "val"), table(MGCLIP_TABLES["imagenet100"], 1))
    cub = table(MGCLIP_TABLES["cub200"])
    write_folders(base / "cub200", ("train", "test"), [f"{i + 1:03d}.{n}" for i, n in enumerate(cub)])
    for dataset, n in PROOF_SETS.items():
        write_folders(base / dataset, ("train", "test"), [f"{i:03d}" for i in range(n)])  # ids: names from labels.json
    return base, str(cache)


def data_manager(cfg, fake_data, monkeypatch):
    base, cache = fake_data
    monkeypatch.setattr("torchvision.datasets.CIFAR100", FakeCIFAR100)
    monkeypatch.setattr("urllib.request.urlopen", lambda *a, **k: pytest.fail("must not download"))
    # the split list names real images; the classes are its sorted wnids, as the folders'
    cfg = dataclasses.replace(cfg, data_path=str(base), released_cache=cache, imagenet_r_split=None)
    return DataManager(cfg.dataset, True, 1993, cfg.init_cls, cfg.increment, cfg, **method_data(cfg.model_name))


@pytest.mark.parametrize("path", SHIPPED, ids=[os.path.basename(p) for p in SHIPPED])
def test_every_shipped_config_prompts_with_its_methods_official_names(path, fake_data, monkeypatch):
    for cfg in build_configs(path):
        if cfg.dataset == "synthetic":
            continue
        dm = data_manager(cfg, fake_data, monkeypatch)  # a method without text is never refused
        if not uses_text(cfg.model_name):
            continue
        names = dm.get_class_names()
        expected = official_names(cfg.model_name, cfg.dataset)
        assert names == [expected[c] for c in dm.class_order], f"{os.path.basename(path)}: not the official names"
        assert not [n for n in names if is_class_id(n)]


def test_which_methods_use_text():
    from toolbox.registry import LEARNERS

    text = {m for m in LEARNERS if uses_text(m)}  # a learner added later declares its own
    assert {"mgclip", "proof", "rapf", "zs_clip", "moe_adapters"} <= text
    assert not text & {"simplecil", "aper_adapter", "l2p", "dualprompt", "coda_prompt"}


def test_proof_cifar100_names_are_labels_json(fake_data, monkeypatch):
    expected = labels_json("cifar224")  # read here, not by the toolbox
    for name in ("proof_cifar.json", "proof_cifar_openai.json"):
        cfg = build_configs(os.path.join(ROOT, "exps", name))[0]
        assert cfg.class_names == "released:proof"
        dm = data_manager(dataclasses.replace(cfg, class_order="default"), fake_data, monkeypatch)
        assert dm.get_class_names() == expected
    assert "aquarium fish" in expected and "aquarium_fish" not in dm.get_class_names()
    assert sum(a != b for a, b in zip(expected, CIFAR100_CLASSES)) == 9  # MG-CLIP's (torchvision's) differ on 9


def test_proof_imagenet_r_prompts_names_not_wnids(fake_data, monkeypatch):
    cfg = build_configs(os.path.join(ROOT, "exps", "proof_imagenet_r.json"))[0]
    names = data_manager(dataclasses.replace(cfg, class_order="default"), fake_data, monkeypatch).get_class_names()
    assert names[:2] == ["goldfish", "great_white_shark"] and len(names) == 200  # PROOF's spelling


@pytest.mark.parametrize("folders, refused", [
    (["n01443537", "n01484850"], True), (["001", "002"], True), (["12.", "13."], True),
    (["red", "green"], False), (["001.Black_footed_Albatross", "002.Laysan_Albatross"], False),
    (["n0144", "tench"], False)])
def test_id_folders_are_refused_for_text_methods_only(tmp_path, folders, refused):
    write_folders(tmp_path, ("train", "test"), folders)
    args = {"data_path": str(tmp_path), "class_order": "default", "model_name": "zs_clip"}
    if refused:
        with pytest.raises(DatasetError, match="config key 'class_names'"):
            DataManager("folder", False, 0, 1, 1, args, **method_data("zs_clip"))
    else:
        assert DataManager("folder", False, 0, 1, 1, args, **method_data("zs_clip")).get_total_classnum() == 2
    # no text, no names needed: the folder names are kept as they are
    assert DataManager("folder", False, 0, 1, 1, {**args, "model_name": "simplecil"},
                       **method_data("simplecil")).get_total_classnum() == 2


def folder_args(tmp_path, data):
    args = tiny_args(tmp_path, model_name="zs_clip", dataset="folder", data_path=str(data), init_cls=1, increment=1)
    return {k: v for k, v in args.items() if not k.startswith("synthetic_")}


def test_a_wnid_folder_dataset_without_class_names_is_refused_in_one_line_before_anything_is_written(
        tmp_path, capsys):
    data = tmp_path / "data"
    write_folders(data, ("train", "test"), ["n01443537", "n01484850", "n01494475"])
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(folder_args(tmp_path, data)))
    assert main(["--config", str(cfg), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "config key 'class_names'" in err and "n01443537" in err
    assert not os.path.exists(tmp_path / "logs")
    # with names it runs
    (tmp_path / "names.txt").write_text("goldfish\ngreat white shark\nhammerhead\n")
    assert main(["--config", str(cfg), "-q", "--set", f"class_names={tmp_path / 'names.txt'}"]) == 0


def test_readable_folder_names_run(tmp_path):
    data = tmp_path / "data"
    write_folders(data, ("train", "test"), ["red", "green"])
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(folder_args(tmp_path, data)))
    assert main(["--config", str(cfg), "-q"]) == 0


def test_a_json_name_file_needs_its_entry(tmp_path):
    from toolbox.data import read_class_names

    path = tmp_path / "labels.json"
    path.write_text(json.dumps({"a": ["x", "y"], "b": ["z"]}))
    assert read_class_names(f"{path}#a") == ["x", "y"]
    with pytest.raises(DatasetError, match="#<name>.*it has: a, b"):
        read_class_names(str(path))
    (tmp_path / "list.json").write_text(json.dumps(["p", "q"]))
    assert read_class_names(str(tmp_path / "list.json"), expected=2) == ["p", "q"]
