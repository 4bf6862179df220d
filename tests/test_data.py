import glob
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from toolbox.configs import make_config
from toolbox.data import CIFAR100_CLASSES, DatasetError, make_synthetic, read_class_names
from toolbox.data_manager import DataManager, read_class_order, shuffled_order
from utils.clip_backbone import clip_transform


def dm_for(tmp_path=None, **over):
    args = {"dataset": "synthetic", "synthetic_classes": 10, "synthetic_train_per_class": 3,
            "synthetic_test_per_class": 2, **over}
    if tmp_path is not None:
        args.setdefault("data_path", str(tmp_path))
    return DataManager(args["dataset"], True, over.get("seed", 1993), over.get("init_cls", 4),
                       over.get("increment", 3), args)


def test_shuffle_matches_pycil_global_seed_permutation():
    state = np.random.get_state()
    np.random.seed(1993)
    pycil = np.random.permutation(100).tolist()  # what PyCIL's DataManager does
    np.random.set_state(state)
    assert shuffled_order(100, 1993) == pycil
    # The widely used PyCIL CIFAR-100 order (seed 1993) starts like this.
    assert pycil[:10] == [68, 56, 78, 8, 23, 84, 90, 65, 74, 76]
    before = np.random.get_state()[1].copy()
    shuffled_order(100, 1993)
    assert np.array_equal(before, np.random.get_state()[1])  # global RNG untouched


def test_increments_labels_and_names_follow_the_order():
    dm = dm_for(init_cls=4, increment=3)
    assert dm.nb_tasks == 3 and [dm.get_task_size(t) for t in range(3)] == [4, 3, 3]
    assert dm.get_total_classnum() == 10
    order = dm.class_order
    raw = make_synthetic(10, 3, 2, 32)
    assert dm.get_class_names() == [raw.class_names[c] for c in order]
    ds = dm.get_dataset(range(0, 4), source="train", mode="train")
    assert len(ds) == 4 * 3
    idx, img, label = ds[0]
    assert isinstance(img, torch.Tensor) and img.shape == (3, 224, 224) and 0 <= label < 4
    # remapped label i is original class order[i]: its images equal the raw images of that class
    raw_imgs = raw.train_images[raw.train_targets == order[label]]
    assert any(np.array_equal(ds.images[idx], r) for r in raw_imgs)


def test_uneven_last_task():
    dm = dm_for(init_cls=5, increment=4)
    assert [dm.get_task_size(t) for t in range(dm.nb_tasks)] == [5, 4, 1]


@pytest.mark.parametrize("fmt", ["yaml", "json", "txt", "config_list"])
def test_class_order_sources(tmp_path, fmt):
    order = [3, 1, 4, 0, 5, 9, 2, 6, 8, 7]
    if fmt == "yaml":
        path = tmp_path / "order.yaml"
        path.write_text("class_order: [" + ", ".join(map(str, order)) + "]\n")
        spec = str(path)
    elif fmt == "json":
        path = tmp_path / "order.json"
        path.write_text(json.dumps(order))
        spec = str(path)
    elif fmt == "txt":
        path = tmp_path / "order.txt"
        path.write_text("\n".join(map(str, order)) + "\n")
        spec = str(path)
    else:
        spec = order
    dm = dm_for(class_order=spec)
    assert dm.class_order == order


def test_default_order_is_identity():
    assert dm_for(class_order="default").class_order == list(range(10))


@pytest.mark.parametrize("order, message", [
    ([0, 1, 2, 3, 4, 5, 6, 7, 8], r"missing ids \[9\]"),
    ([0, 1, 2, 3, 4, 5, 6, 7, 8, 8], r"repeated ids \[8\]"),
    ([0, 1, 2, 3, 4, 5, 6, 7, 8, 10], r"outside 0..9"),
])
def test_bad_class_orders(tmp_path, order, message):
    path = tmp_path / "order.txt"
    path.write_text("\n".join(map(str, order)))
    with pytest.raises(DatasetError, match=message):
        dm_for(class_order=str(path))


def test_class_order_file_errors(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        read_class_order(str(tmp_path / "nope.yaml"))
    p = tmp_path / "o.yaml"
    p.write_text("order: [1, 2]\n")
    with pytest.raises(DatasetError, match="no 'class_order' key"):
        read_class_order(str(p))


def test_class_name_files(tmp_path):
    plain = tmp_path / "names.txt"
    plain.write_text("cat\ndog\n\nsweet pepper\n")
    assert read_class_names(str(plain)) == ["cat", "dog", "sweet pepper"]
    tabbed = tmp_path / "tabbed.txt"
    tabbed.write_text("n01443537\t0\tgoldfish\nn01484850\t1\tgreat white shark\n")
    assert read_class_names(str(tabbed)) == ["goldfish", "great white shark"]
    with pytest.raises(DatasetError, match="has 2 names but the dataset has 3 classes"):
        read_class_names(str(tabbed), expected=3)


def test_cifar100_names_keep_underscores():
    assert len(CIFAR100_CLASSES) == 100 and CIFAR100_CLASSES == sorted(CIFAR100_CLASSES)
    assert "aquarium_fish" in CIFAR100_CLASSES and "maple_tree" in CIFAR100_CLASSES


def test_cifar100_offline_error_names_path_and_key(tmp_path, monkeypatch):
    import torchvision

    def offline(*a, **k):
        raise RuntimeError("Dataset not found or corrupted.")

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", offline)
    with pytest.raises(DatasetError, match=r"data_path.*internet|internet.*"):
        DataManager("cifar100", True, 1993, 10, 10, {"data_path": str(tmp_path)})


def test_synthetic_classes_are_distinguishable():
    raw = make_synthetic(8, 10, 10, 16)
    # each image's mean colour, nearest class-mean colour
    def colour(imgs):
        return imgs.reshape(len(imgs), -1, 3).mean(1)
    means = np.stack([colour(raw.train_images[raw.train_targets == c]).mean(0) for c in range(8)])
    test = colour(raw.test_images)
    pred = np.argmin(((test[:, None, :] - means[None]) ** 2).sum(-1), axis=1)
    assert (pred == raw.test_targets).mean() > 0.9
    assert raw.train_images.dtype == np.uint8 and raw.train_images.shape == (80, 16, 16, 3)
    assert len(set(raw.class_names)) == 8


def test_clip_transform_matches_hand_pil_pipeline():
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(30, 40, 3), dtype=np.uint8)
    out = clip_transform(24)(Image.fromarray(arr))
    # by hand: shorter side 30 -> 24, so 40 -> 32 (bicubic), center crop 24x24, /255, CLIP normalize
    im = Image.fromarray(arr).resize((32, 24), Image.BICUBIC)
    im = np.asarray(im.crop((4, 0, 28, 24)), dtype=np.float32) / 255.0
    mean = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
    std = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)
    expected = torch.from_numpy(((im - mean) / std).transpose(2, 0, 1))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def write_jpeg_split(root, classes, per_split=(3, 2), size=20):
    rng = np.random.default_rng(0)
    for split, n in zip(("train", "test"), per_split):
        for c in classes:
            os.makedirs(root / split / c, exist_ok=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / c / f"{i}.jpg")


def test_imagenet_r_folders_with_class_names(tmp_path):
    classes = ["n01443537", "n01484850", "n01494475"]
    write_jpeg_split(tmp_path / "imagenet-r", classes)
    names = tmp_path / "names.txt"
    names.write_text("n01443537\tgoldfish\nn01484850\tgreat_white_shark\nn01494475\thammerhead\n")
    dm = DataManager("imagenet_r", False, 0, 2, 1,
                     {"data_path": str(tmp_path), "class_names": str(names), "class_order": "default"})
    assert dm.get_class_names() == ["goldfish", "great_white_shark", "hammerhead"]
    ds = dm.get_dataset([0, 1], source="test", mode="test")
    assert len(ds) == 4 and ds[0][1].shape == (3, 224, 224)


def test_missing_dataset_names_path_and_key(tmp_path):
    with pytest.raises(DatasetError) as e:
        DataManager("imagenet_r", True, 0, 2, 1, {"data_path": str(tmp_path)})
    assert str(tmp_path) in str(e.value) and "data_path" in str(e.value) and "docs/data.md" in str(e.value)


def test_undecodable_image_names_the_file(tmp_path):
    write_jpeg_split(tmp_path / "imagenet-r", ["a", "b"])
    bad = tmp_path / "imagenet-r" / "train" / "a" / "0.jpg"
    bad.write_bytes(b"not a jpeg")
    dm = DataManager("imagenet_r", False, 0, 1, 1, {"data_path": str(tmp_path), "class_order": "default"})
    ds = dm.get_dataset([0], source="train", mode="train")
    with pytest.raises(DatasetError, match="0.jpg"):
        ds[0]


def test_cub_official_layout(tmp_path):
    root = tmp_path / "CUB_200_2011"
    (root / "images" / "001.Black_footed_Albatross").mkdir(parents=True)
    (root / "images" / "002.Laysan_Albatross").mkdir(parents=True)
    files = ["001.Black_footed_Albatross/a.jpg", "001.Black_footed_Albatross/b.jpg",
             "002.Laysan_Albatross/c.jpg", "002.Laysan_Albatross/d.jpg"]
    for f in files:
        Image.new("RGB", (8, 8)).save(root / "images" / f)
    (root / "images.txt").write_text("".join(f"{i + 1} {f}\n" for i, f in enumerate(files)))
    (root / "image_class_labels.txt").write_text("1 1\n2 1\n3 2\n4 2\n")
    (root / "train_test_split.txt").write_text("1 1\n2 0\n3 1\n4 0\n")
    (root / "classes.txt").write_text("1 001.Black_footed_Albatross\n2 002.Laysan_Albatross\n")
    dm = DataManager("cub200", False, 0, 1, 1, {"data_path": str(tmp_path), "class_order": "default"})
    assert dm.get_class_names() == ["Black_footed_Albatross", "Laysan_Albatross"]
    assert len(dm.get_dataset([0, 1], "train", "train")) == 2 and len(dm.get_dataset([1], "test", "test")) == 1


def test_imagenet100_class_list(tmp_path):
    write_jpeg_split(tmp_path, ["n1", "n2", "n3"])
    os.rename(tmp_path / "test", tmp_path / "val")
    ids = tmp_path / "ids.txt"
    ids.write_text("n3\nn1\n")
    dm = DataManager("imagenet100", False, 0, 1, 1, {"data_path": str(tmp_path), "imagenet100_classes": str(ids),
                                                     "class_order": "default"})
    assert dm.get_total_classnum() == 2 and dm.get_class_names() == ["n3", "n1"]
    with pytest.raises(DatasetError, match="imagenet100_classes"):
        DataManager("imagenet100", False, 0, 1, 1, {"data_path": str(tmp_path)})


def test_few_shot_keeps_k_images_per_class():
    full = dm_for()
    a, b = dm_for(shots_per_class=2), dm_for(shots_per_class=2)
    for dm in (a, b):
        assert np.bincount(dm._train_targets).tolist() == [2] * 10
    assert np.array_equal(a._train_data, b._train_data)  # same seed, same subset
    other = dm_for(shots_per_class=2, seed=5)
    full_rows = {r.tobytes() for r in full._train_data}
    assert all(r.tobytes() in full_rows for r in a._train_data)  # a subset of the real images
    assert len(a._test_targets) == len(full._test_targets)
    assert not np.array_equal(np.sort(a._train_data.reshape(20, -1), 0), np.sort(other._train_data.reshape(20, -1), 0))


def test_split_comes_from_the_arguments_not_config_defaults():
    # default init_cls (10) would exceed 5 classes; the positional init_cls=2 is what counts
    dm = DataManager("synthetic", True, 0, 2, 2, {"synthetic_classes": 5, "synthetic_train_per_class": 2,
                                                  "synthetic_test_per_class": 1})
    assert [dm.get_task_size(t) for t in range(dm.nb_tasks)] == [2, 2, 1]
    with pytest.raises(Exception, match="init_cls"):
        DataManager("synthetic", True, 0, 6, 2, {"synthetic_classes": 5})


def test_in_memory_images_are_served_without_worker_processes_and_the_same_batches(tmp_path):
    """Workers only slow in-memory uint8 batches (start-up, copies between processes);
    a loader over JPEG paths keeps them. A run's figures do not depend on the workers."""
    from main import main
    from tests.conftest import tiny_args
    from toolbox.data_manager import DataManager
    from utils.clip_ops import make_loader, task_data

    cfg = make_config(tiny_args(tmp_path, num_workers=2))
    dm = DataManager(cfg.dataset, True, 1993, cfg.init_cls, cfg.increment, cfg)
    loader = make_loader(task_data(dm, range(2), "train", 32, cfg, torch.device("cpu")), 4, True, 2,
                         torch.device("cpu"))
    assert loader.loader.num_workers == 0
    write_jpeg_split(tmp_path / "imagenet-r", ["a", "b"])
    jpeg = make_config(tiny_args(tmp_path, dataset="imagenet_r", data_path=str(tmp_path), cache_images="false",
                                      init_cls=2, increment=2, num_workers=2))
    jdm = DataManager(jpeg.dataset, True, 1993, 2, 2, jpeg)
    assert make_loader(task_data(jdm, range(2), "train", 32, jpeg, torch.device("cpu")), 4, True, 2,
                       torch.device("cpu")).loader.num_workers == 2
    accuracies = []
    for workers in (0, 2):
        path = tmp_path / f"w{workers}.json"
        path.write_text(json.dumps(tiny_args(tmp_path / f"w{workers}", num_workers=workers, preprocess="pil")))
        assert main(["--config", str(path), "-q"]) == 0
        (results,) = glob.glob(str(tmp_path / f"w{workers}" / "logs" / "**" / "results.json"), recursive=True)
        with open(results) as f:
            accuracies.append(json.load(f)["accuracy_matrix"])
    assert accuracies[0] == accuracies[1]


def test_an_empty_class_in_an_in_memory_dataset_is_named(tmp_path):
    import numpy as np

    from toolbox.data import DatasetError, RawData
    from toolbox.data_manager import check_every_class_has_images

    raw = RawData(np.zeros((4, 8, 8, 3), np.uint8), np.array([0, 0, 2, 2]), np.zeros((3, 8, 8, 3), np.uint8),
                  np.array([0, 1, 2]), ["cat", "dog", "eel"])
    with pytest.raises(DatasetError, match=r"1 \(dog\) have no training images"):
        check_every_class_has_images(raw, "mine")
