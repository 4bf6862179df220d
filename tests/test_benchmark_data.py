"""PROOF's benchmark datasets (toolbox/benchmark_data.py): a tiny tree laid out as each real
dataset is (PROOF's pre-split folders, or the original archive's metadata files), read into the
classes, counts, names and split expected from how the tree was written; each bad layout
refused in one line naming the key and what to do."""
import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from toolbox import data_manager  # noqa: F401  (registers the loaders, as a run does)
from toolbox.benchmark_data import BENCHMARKS, CALTECH_SPLIT_SEED, load_benchmark
from toolbox.data import DatasetError, build_raw_data
from toolbox.released import PROOF_FILES, PROOF_TEMPLATE_KEYS
from utils.config import DATASET_CLASSES, DATASETS, Config

RELEASED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "released")
LABELS = os.path.join(RELEASED, "proof", "utils", "labels.json")
NEW = ["aircraft", "cars", "food101", "objectnet", "sun", "ucf101", "caltech101", "flowers", "imagenet_a"]
PROOF_COUNTS = {"aircraft": 100, "cars": 100, "food101": 100, "objectnet": 200, "sun": 300, "ucf101": 100,
                "caltech101": 100, "flowers": 100, "imagenet_a": 200}  # PROOF's utils/data.py np.arange(N)

_buf = io.BytesIO()
Image.new("RGB", (4, 4), (200, 30, 30)).save(_buf, "JPEG")
JPEG = _buf.getvalue()


def put(path, data=JPEG):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def write(path, lines):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))


def one_line(e):
    text = str(e.value)
    assert "\n" not in text
    return text


def test_every_new_dataset_is_a_config_value_with_proofs_class_count():
    for key in NEW:
        assert key in DATASETS and DATASET_CLASSES[key] == PROOF_COUNTS[key] == BENCHMARKS[key].num_classes


# ----------------------------------------------------------------------------- PROOF's folders
@pytest.mark.parametrize("key", NEW)
def test_proofs_pre_split_folders_read_in_sorted_folder_order(tmp_path, key):
    n = PROOF_COUNTS[key]
    # written in reverse order, with unequal class sizes: the label is the sorted position
    classes = [f"class {chr(97 + i // 26)}{chr(97 + i % 26)}" for i in range(n)]
    sub = tmp_path / BENCHMARKS[key].subfolders[0]
    for i, c in enumerate(reversed(classes)):
        for j in range(1 + i % 3):
            put(str(sub / "train" / c / f"{j}.jpg"))
        put(str(sub / "test" / c / "t.jpg"))
    raw = load_benchmark(key, str(tmp_path), None, needs_names="")
    assert raw.class_names == classes
    sizes = {c: 1 + i % 3 for i, c in enumerate(reversed(classes))}
    assert np.bincount(raw.train_targets).tolist() == [sizes[c] for c in classes]
    assert np.bincount(raw.test_targets).tolist() == [1] * n
    assert all(os.path.basename(os.path.dirname(p)) == classes[y] for p, y in zip(raw.train_images, raw.train_targets))


def make_proof_folders(root, n, names=None):
    names = names or [f"c{i:03d}" for i in range(n)]
    for c in names:
        put(os.path.join(root, "train", c, "a.jpg"))
        put(os.path.join(root, "test", c, "b.jpg"))
    return names


def test_a_names_file_replaces_folder_names_and_labels_json_of_cars_gives_its_first_100(tmp_path):
    make_proof_folders(str(tmp_path / "cars"), 100)
    names = [f"car model {i}" for i in range(102)]  # PROOF's cars list: 102 names for 100 classes
    with open(tmp_path / "labels.json", "w") as f:
        json.dump({"cars": names, "food101": names[:99]}, f)
    raw = load_benchmark("cars", str(tmp_path), str(tmp_path / "labels.json") + "#cars")
    assert raw.class_names == names[:100]
    make_proof_folders(str(tmp_path / "food101"), 100)
    with pytest.raises(DatasetError) as e:
        load_benchmark("food101", str(tmp_path), str(tmp_path / "labels.json") + "#food101")
    assert "99 names" in one_line(e) and "'class_names'" in one_line(e)


def test_wrong_class_count_and_empty_class_folder_are_refused(tmp_path):
    make_proof_folders(str(tmp_path / "aircraft"), 99)
    with pytest.raises(DatasetError) as e:
        load_benchmark("aircraft", str(tmp_path), None)
    assert "99 classes" in one_line(e) and "100" in one_line(e) and "'data_path'" in one_line(e)
    make_proof_folders(str(tmp_path / "ucf101"), 100)
    os.remove(tmp_path / "ucf101" / "test" / "c042" / "b.jpg")
    with pytest.raises(DatasetError) as e:
        load_benchmark("ucf101", str(tmp_path), None)
    assert "c042" in one_line(e) and "holds no images" in one_line(e)


@pytest.mark.parametrize("key", ["objectnet", "ucf101", "imagenet_a", "cars"])
def test_no_download_datasets_say_where_to_get_them(tmp_path, key):
    with pytest.raises(DatasetError) as e:
        load_benchmark(key, str(tmp_path), None)
    text = one_line(e)
    assert f"dataset '{key}' not found" in text and "'data_path'" in text and "docs/data.md" in text
    assert str(tmp_path / BENCHMARKS[key].subfolders[0]) in text


def test_a_misplaced_folder_is_named_with_the_data_path_to_set(tmp_path):
    make_proof_folders(str(tmp_path / "downloads" / "objectnet"), 200)
    with pytest.raises(DatasetError) as e:
        load_benchmark("objectnet", str(tmp_path), None)
    assert f"set data_path to {tmp_path / 'downloads'}" in one_line(e)
    assert len(load_benchmark("objectnet", str(tmp_path / "downloads"), None, needs_names="").class_names) == 200
    make_proof_folders(str(tmp_path / "ucf"), 100)
    os.rename(tmp_path / "ucf" / "test", tmp_path / "ucf" / "val")
    with pytest.raises(DatasetError) as e:
        load_benchmark("ucf101", str(tmp_path), None)
    assert f"{tmp_path / 'ucf'} holds train/ but no test/" in one_line(e)


def test_templates_released_on_imagenet_a_is_refused_naming_the_key(tmp_path):
    from toolbox.released import released_templates
    from utils.config import ConfigError
    with pytest.raises(ConfigError) as e:
        released_templates("imagenet_a", str(tmp_path))
    assert "'templates'" in one_line(e) and "imagenet_a" in one_line(e)


def test_build_raw_data_dispatches_to_the_benchmarks(tmp_path):
    make_proof_folders(str(tmp_path / "flowers"), 100, [f"flower {i:03d}" for i in range(100)])
    cfg = Config(dataset="flowers", data_path=str(tmp_path), model_name="zs_clip", init_cls=10, increment=10)
    raw = build_raw_data(cfg, needs_names=True)
    assert raw.num_classes == 100 and raw.class_names[7] == "flower 007"


# ----------------------------------------------------------------------------- original archives
def test_aircraft_archive_keeps_the_first_100_variants_in_file_order_trainval_vs_test(tmp_path):
    data = tmp_path / "fgvc-aircraft-2013b" / "data"
    variants = [f"V-{(i * 37) % 102:03d}" for i in range(102)]  # not sorted: file order counts
    write(str(data / "variants.txt"), variants)
    train, test = [], []
    for i, v in enumerate(variants):
        for j in range(2 + i % 2):
            train.append(f"{i:04d}{j:03d} {v}")
            put(str(data / "images" / f"{i:04d}{j:03d}.jpg"))
        test.append(f"{i:04d}900 {v}")
        put(str(data / "images" / f"{i:04d}900.jpg"))
    write(str(data / "images_variant_trainval.txt"), train)
    write(str(data / "images_variant_test.txt"), test)
    raw = load_benchmark("aircraft", str(tmp_path), None, download=False)
    assert raw.class_names == variants[:100]
    assert np.bincount(raw.train_targets).tolist() == [2 + i % 2 for i in range(100)]
    assert len(raw.test_images) == 100 and raw.test_images[5].endswith("0005900.jpg") and raw.test_targets[5] == 5
    write(str(data / "images_variant_test.txt"), test[:3] + ["broken-line"])
    with pytest.raises(DatasetError) as e:
        load_benchmark("aircraft", str(tmp_path), None, download=False)
    assert "images_variant_test.txt is corrupt" in one_line(e) and "broken-line" in one_line(e)


def make_food(tmp_path, classes):
    base = tmp_path / "food-101"
    write(str(base / "meta" / "classes.txt"), classes)
    train, test = [], []
    for i, c in enumerate(classes):
        for j in range(1 + i % 4):
            train.append(f"{c}/{i}{j}")
            put(str(base / "images" / c / f"{i}{j}.jpg"))
        test.append(f"{c}/9{i}")
        put(str(base / "images" / c / f"9{i}.jpg"))
    write(str(base / "meta" / "train.txt"), train)
    write(str(base / "meta" / "test.txt"), test)
    return base


def test_food101_keeps_the_first_100_sorted_classes_and_its_meta_split(tmp_path):
    classes = [f"dish_{chr(97 + i // 26)}{chr(97 + i % 26)}" for i in range(101)]
    base = make_food(tmp_path, classes[::-1])  # classes.txt in any order: torchvision sorts
    raw = load_benchmark("food101", str(tmp_path), None, download=False)
    assert raw.class_names == [c.replace("_", " ") for c in classes[:100]]
    rev = {c: i for i, c in enumerate(classes[::-1])}
    assert np.bincount(raw.train_targets).tolist() == [1 + rev[c] % 4 for c in classes[:100]]
    assert len(raw.test_images) == 100
    os.remove(base / "images" / classes[3] / f"9{rev[classes[3]]}.jpg")
    with pytest.raises(DatasetError) as e:
        load_benchmark("food101", str(tmp_path), None, download=False)
    assert "is missing" in one_line(e) and "'data_path'" in one_line(e)


def test_an_incomplete_archive_names_what_is_lacking(tmp_path):
    make_food(tmp_path, [f"d{i:03d}" for i in range(101)])
    os.remove(tmp_path / "food-101" / "meta" / "test.txt")
    with pytest.raises(DatasetError) as e:
        load_benchmark("food101", str(tmp_path), None, download=False)
    assert "meta/test.txt" in one_line(e) and "complete the archive" in one_line(e)


def test_a_names_file_that_is_not_for_the_archives_classes_is_refused(tmp_path):
    classes = [f"d{i:03d}" for i in range(101)]
    make_food(tmp_path, classes)
    names = [c for c in classes[:100]]
    path = tmp_path / "names.txt"
    write(str(path), names)
    assert load_benchmark("food101", str(tmp_path), str(path), download=False).class_names == names
    write(str(path), names[:10] + ["something else"] + names[11:])
    with pytest.raises(DatasetError) as e:
        load_benchmark("food101", str(tmp_path), str(path), download=False)
    assert "class 10" in one_line(e) and "'class_names'" in one_line(e)


def test_sun397_first_300_categories_and_partition_01(tmp_path):
    base = tmp_path / "SUN397"
    cats = [f"/{chr(97 + i // 26)}/{chr(97 + i // 26)}place_{i % 26}" for i in range(310)]
    cats[1] = cats[1] + "/indoor"  # a two-level category
    write(str(base / "ClassName.txt"), cats)
    train, test = [], []
    for i, c in enumerate(cats):
        for j in range(2):
            f = f"{c}/sun_{i}_{j}.jpg"
            (train if j == 0 else test).append(f)
            put(str(base) + f)
        put(str(base) + f"{c}/sun_{i}_unlisted.jpg")  # in no partition: not read
    write(str(base / "Partitions" / "Training_01.txt"), train)
    write(str(base / "Partitions" / "Testing_01.txt"), test)
    raw = load_benchmark("sun", str(tmp_path), None, download=False)
    assert raw.num_classes == 300 and raw.class_names[1] == "aplace 1 indoor" and raw.class_names[0] == "aplace 0"
    assert raw.train_targets.tolist() == list(range(300)) == raw.test_targets.tolist()
    assert raw.train_images[1].endswith(os.path.join("a", "aplace_1", "indoor", "sun_1_0.jpg"))
    # PROOF-style names: the category without its qualifier is accepted; another category is not
    names = [n.replace(" indoor", "") for n in raw.class_names]
    write(str(tmp_path / "n.txt"), names)
    assert load_benchmark("sun", str(tmp_path), str(tmp_path / "n.txt"), download=False).class_names == names
    write(str(base / "ClassName.txt"), ["abbey"] + cats[1:])
    with pytest.raises(DatasetError) as e:
        load_benchmark("sun", str(tmp_path), None, download=False)
    assert "ClassName.txt is corrupt" in one_line(e)


def test_sun397_without_partitions_says_so_before_any_download(tmp_path, monkeypatch):
    import toolbox.benchmark_data as bd

    def no_download(*a, **k):
        raise AssertionError("nothing may be downloaded without the partitions")
    monkeypatch.setattr(bd, "_torchvision_download", no_download)
    with pytest.raises(DatasetError) as e:
        load_benchmark("sun", str(tmp_path), None)
    assert "Partitions/Training_01.txt" in one_line(e) and "Partitions.zip" in one_line(e)
    write(str(tmp_path / "SUN397" / "ClassName.txt"), ["/a/abbey"])
    with pytest.raises(DatasetError) as e:
        load_benchmark("sun", str(tmp_path), None, download=False)
    assert "Partitions/Training_01.txt" in one_line(e) and "Partitions.zip" in one_line(e)
    # with a names file (proof_sun*.json's released:proof names) the archive could only be refused
    # after its download: PROOF's folder is what is asked for, and nothing is downloaded
    write(str(tmp_path / "names.txt"), ["abbey"])
    with pytest.raises(DatasetError) as e:
        load_benchmark("sun", str(tmp_path / "fresh"), str(tmp_path / "names.txt"))
    assert "only PROOF's sun folder can be used" in one_line(e) and "data_path/sun/train/<class>/" in one_line(e)


def test_flowers_labels_1_to_100_train_plus_val_vs_test(tmp_path):
    from scipy.io import savemat
    base = tmp_path / "flowers-102"
    labels = np.repeat(np.arange(1, 103), 3)[np.random.default_rng(0).permutation(306)]  # 3 per label, mixed
    ids = np.arange(1, 307)
    base.mkdir()
    savemat(str(base / "imagelabels.mat"), {"labels": labels})
    split = np.zeros(306, dtype=int)  # per label: its 1st image to train, 2nd to val, 3rd to test
    for lab in range(1, 103):
        split[np.flatnonzero(labels == lab)] = [0, 1, 2]
    savemat(str(base / "setid.mat"), {"trnid": ids[split == 0], "valid": ids[split == 1], "tstid": ids[split == 2]})
    for i in ids:
        put(str(base / "jpg" / f"image_{i:05d}.jpg"))
    raw = load_benchmark("flowers", str(tmp_path), None, needs_names="", download=False)
    keep = labels <= 100
    assert np.bincount(raw.train_targets).tolist() == [2] * 100 and sorted(raw.test_targets) == list(range(100))
    assert sorted(raw.test_images) == sorted(str(base / "jpg" / f"image_{i:05d}.jpg") for i in ids[keep & (split == 2)])
    first = raw.train_images.index(str(base / "jpg" / "image_00001.jpg"))
    assert raw.train_targets[first] == labels[0] - 1
    with pytest.raises(DatasetError) as e:  # the label ids are not names: a method with text is refused
        load_benchmark("flowers", str(tmp_path), None, needs_names="proof", download=False)
    assert "'class_names'" in one_line(e)
    put(str(base / "setid.mat"), b"not a mat file")
    with pytest.raises(DatasetError) as e:
        load_benchmark("flowers", str(tmp_path), None, needs_names="", download=False)
    assert "setid.mat is not a readable .mat file" in one_line(e)


def test_stanford_cars_devkit_order_and_its_train_test_annotations(tmp_path):
    from scipy.io import savemat
    base = tmp_path / "stanford_cars"
    (base / "devkit").mkdir(parents=True)
    names = np.array([f"Make {i} Sedan 2012" for i in range(196)], dtype=object)
    savemat(str(base / "devkit" / "cars_meta.mat"), {"class_names": names.reshape(1, -1)})

    def annos(folder, n_per):
        rows = [(f"{c:03d}{j}.jpg", c + 1) for c in range(196) for j in range(n_per)]
        for f, _ in rows:
            put(str(base / folder / f))
        arr = np.zeros((1, len(rows)), dtype=[("fname", "O"), ("class", "O")])
        for k, (f, c) in enumerate(rows):
            arr[0, k] = (f, np.array([[c]], dtype=np.uint8))
        return {"annotations": arr}
    savemat(str(base / "devkit" / "cars_train_annos.mat"), annos("cars_train", 2))
    savemat(str(base / "cars_test_annos_withlabels.mat"), annos("cars_test", 1))
    raw = load_benchmark("cars", str(tmp_path), None)
    assert raw.class_names == [f"Make {i} Sedan 2012" for i in range(100)]
    assert np.bincount(raw.train_targets).tolist() == [2] * 100 and raw.test_targets.tolist() == list(range(100))
    assert raw.test_images[7].endswith(os.path.join("cars_test", "0070.jpg"))


def test_caltech101_drops_background_and_faces_easy_and_splits_by_seed(tmp_path):
    folder = tmp_path / "caltech101" / "101_ObjectCategories"
    # 102 folders as the archive: the background, 101 classes (two face folders); PROOF keeps 100
    cats = ["BACKGROUND_Google", "Faces", "Faces_easy", "Leopards", "Motorbikes"]
    cats += [f"thing_{i:03d}" for i in range(97)]
    for i, c in enumerate(cats):
        for j in range(5 + i % 6):
            put(str(folder / c / f"image_{j:04d}.jpg"))
    raw = load_benchmark("caltech101", str(tmp_path), None, needs_names="", download=False)
    expected = sorted(c for c in cats if c not in ("BACKGROUND_Google", "Faces_easy"))[:100]
    assert raw.class_names == expected
    assert len(expected) == 100 and expected[:3] == ["Faces", "Leopards", "Motorbikes"]
    sizes = {c: 5 + i % 6 for i, c in enumerate(cats)}
    n_test = [max(1, int(round(0.2 * sizes[c]))) for c in expected]
    assert np.bincount(raw.test_targets).tolist() == n_test
    assert np.bincount(raw.train_targets).tolist() == [sizes[c] - t for c, t in zip(expected, n_test)]
    # the held-out files of class 0: numpy's permutation with the documented seed, by hand
    files = sorted(os.listdir(folder / expected[0]))
    order = np.random.default_rng(CALTECH_SPLIT_SEED + 0).permutation(len(files))
    assert sorted(os.path.basename(p) for p, y in zip(raw.test_images, raw.test_targets) if y == 0) == \
        sorted(files[j] for j in order[:n_test[0]])
    again = load_benchmark("caltech101", str(tmp_path), None, needs_names="", download=False)
    assert again.test_images == raw.test_images
    assert not set(raw.train_images) & set(raw.test_images)


def test_imagenet_a_archive_folder_needs_its_own_name(tmp_path):
    wnids = [f"n{10000000 + i:08d}" for i in range(200)]
    for w in wnids:
        for j in range(5):
            put(str(tmp_path / "imagenet-a" / w / f"{j}.jpg"))
    raw = load_benchmark("imagenet_a", str(tmp_path), None, needs_names="", download=False)
    assert raw.class_names == wnids and len(raw.test_images) == 200 and len(raw.train_images) == 800
    with pytest.raises(DatasetError) as e:  # wnids are no prompts
        load_benchmark("imagenet_a", str(tmp_path), None, needs_names="proof", download=False)
    assert "'class_names'" in one_line(e)


def test_offline_download_fails_fast_in_one_line(tmp_path, monkeypatch):
    import toolbox.benchmark_data as bd

    def no_network(url, *a, **k):
        raise TimeoutError("no answer within 10 s")
    monkeypatch.setattr(bd, "open_url", no_network)
    with pytest.raises(DatasetError) as e:
        load_benchmark("food101", str(tmp_path), None)
    text = one_line(e)
    assert "food-101.tar.gz" in text and str(tmp_path) in text and "internet" in text
    assert not os.listdir(tmp_path)


# ----------------------------------------------------------------------------- PROOF's release
def test_released_proof_names_and_templates_keys():
    assert {d: PROOF_FILES["class_names"][d].split("#")[1] for d in NEW} == {
        "aircraft": "aircraft", "cars": "cars", "food101": "food101", "objectnet": "objectnet", "sun": "sun",
        "ucf101": "ucf101", "caltech101": "caltech101", "flowers": "flowers", "imagenet_a": "imageneta"}
    assert "imagenet_a" not in PROOF_TEMPLATE_KEYS  # templates.json has no imageneta entry
    if not os.path.isfile(LABELS):
        pytest.skip("../shared/released (PROOF's labels.json) is not here")
    labels = json.load(open(LABELS))
    templates = json.load(open(os.path.join(RELEASED, "proof", "utils", "templates.json")))
    for d in NEW:
        assert len(labels[PROOF_FILES["class_names"][d].split("#")[1]]) >= PROOF_COUNTS[d]
    assert "imageneta" not in templates
    assert all(PROOF_TEMPLATE_KEYS[d] in templates for d in NEW if d != "imagenet_a")


def test_labels_json_lists_are_in_the_archives_canonical_order():
    """Where the archive's order is the sorted order of names (Food-101, SUN397, UCF-101's
    class folders), PROOF's names are sorted too: its first N are the archive's first N."""
    if not os.path.isfile(LABELS):
        pytest.skip("../shared/released (PROOF's labels.json) is not here")
    labels = json.load(open(LABELS))
    for key in ("food101", "sun"):
        words = [n.lower().replace(" ", "_") for n in labels[key]]
        assert words == sorted(words), key
    ucf = [n.replace(" ", "") for n in labels["ucf101"]]  # UCF's CamelCase folders, sorted as bytes
    assert ucf == sorted(ucf)


@pytest.mark.parametrize("key", NEW)
def test_released_proof_names_resolve_for_each_dataset(tmp_path, key):
    if not os.path.isfile(LABELS):
        pytest.skip("../shared/released (PROOF's labels.json) is not here")
    n = PROOF_COUNTS[key]
    make_proof_folders(str(tmp_path / BENCHMARKS[key].subfolders[0]), n)
    raw = load_benchmark(key, str(tmp_path), LABELS + "#" + PROOF_FILES["class_names"][key].split("#")[1])
    expected = json.load(open(LABELS))[PROOF_FILES["class_names"][key].split("#")[1]][:n]
    assert raw.class_names == [e.strip() for e in expected] and len(raw.class_names) == n


def test_a_run_reads_a_benchmark_with_proofs_names_and_images_of_any_mode(tmp_path):
    """Through the run's DataManager: `released:proof` fetched from the cache, PROOF's split
    into tasks, and grey, CMYK, palette and RGBA files reaching the model as 3 channels."""
    from toolbox.data_manager import DataManager
    from toolbox.released import cache_path

    if not os.path.isfile(LABELS):
        pytest.skip("../shared/released (PROOF's labels.json) is not here")
    cache = tmp_path / "cache"
    target = cache_path("proof/utils/labels.json", str(cache))
    os.makedirs(os.path.dirname(target))
    with open(LABELS, "rb") as src, open(target, "wb") as dst:
        dst.write(src.read())
    root = tmp_path / "data" / "sun"
    classes = make_proof_folders(str(root), 300)
    odd = {"L": (9, ".png"), "CMYK": (10, ".jpg"), "P": (11, ".png"), "RGBA": (12, ".png")}
    for mode, (c, ext) in odd.items():
        Image.new(mode, (6, 5)).save(str(root / "test" / classes[c] / f"odd{ext}"))
    dm = DataManager("sun", False, 1993, 150, 15, {"data_path": str(tmp_path / "data"), "class_order": "default",
                                                   "class_names": "released:proof", "released_cache": str(cache)},
                     release="proof")
    assert dm.nb_tasks == 11 and dm.get_task_size(0) == 150
    assert dm.get_class_names() == json.load(open(LABELS))["sun"][:300]
    test = dm.get_dataset(list(range(9, 13)), source="test", mode="test")
    assert len(test) == 8 and all(test[i][1].shape == (3, 224, 224) for i in range(len(test)))


def test_every_dataset_of_the_config_list_has_a_loader_once_the_data_manager_is_imported():
    """utils/config.py's DATASETS is what a config may name; toolbox/data.py reads six of them
    itself and the rest through LOADERS, which toolbox/benchmark_data.py fills on import (the
    data manager and the retention module import it). A key with no loader would pass the
    config check and fail only when the run reads its data."""
    import toolbox.data_manager  # noqa: F401
    from toolbox.data import LOADERS
    from utils.config import DATASETS

    read_by_data_py = {"synthetic", "cifar100", "imagenet_r", "cub200", "imagenet100", "folder"}
    assert set(LOADERS) == set(DATASETS) - read_by_data_py


def _aircraft_tree(root, classes=100):
    """FGVC-Aircraft's archive layout (fgvc-aircraft-2013b/data/...), tiny: one trainval and one
    test image per variant."""
    data = os.path.join(root, "fgvc-aircraft-2013b", "data")
    variants = [f"V-{i:03d}" for i in range(classes)]
    write(os.path.join(data, "variants.txt"), variants)
    write(os.path.join(data, "images_variant_trainval.txt"), [f"{i:07d} {v}" for i, v in enumerate(variants)])
    write(os.path.join(data, "images_variant_test.txt"), [f"{i + 5000:07d} {v}" for i, v in enumerate(variants)])
    for i in range(classes):
        put(os.path.join(data, "images", f"{i:07d}.jpg"))
        put(os.path.join(data, "images", f"{i + 5000:07d}.jpg"))
    return variants


def test_aircraft_downloads_whole_before_torchvision_unpacks_it(tmp_path, monkeypatch):
    """FGVC-Aircraft has no checksum in torchvision, which would take a broken archive left at
    its path for whole: the archive is fetched into a temporary file and renamed once complete
    (a download that breaks leaves nothing), then torchvision unpacks it and the loader reads it.
    The 'server' is a file:// URL of a tiny archive laid out as the real one."""
    import tarfile

    from toolbox import benchmark_data

    staging = tmp_path / "staging"
    variants = _aircraft_tree(str(staging))
    archive = tmp_path / "server" / "fgvc-aircraft-2013b.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(staging / "fgvc-aircraft-2013b", arcname="fgvc-aircraft-2013b")
    monkeypatch.setitem(benchmark_data.DOWNLOADS, "aircraft", (archive.as_uri(), "FGVCAircraft"))

    # a download that breaks half-way: nothing is left in data_path, and the error names the URL
    data_path = tmp_path / "data"
    real_open = benchmark_data.fetch_verified.__globals__["open_url"]

    class Broken:
        def __init__(self, source):
            self.source, self.sent = source, 0

        def read(self, n):
            if self.sent:
                raise OSError("connection reset")
            self.sent += 1
            return self.source.read(100)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.source.close()

    monkeypatch.setitem(benchmark_data.fetch_verified.__globals__, "open_url", lambda url: Broken(real_open(url)))
    with pytest.raises(DatasetError) as e:
        load_benchmark("aircraft", str(data_path), None)
    assert archive.as_uri() in one_line(e) and "connection reset" in one_line(e)
    assert not data_path.exists() or not [p for p in data_path.rglob("*") if p.is_file()]

    monkeypatch.setitem(benchmark_data.fetch_verified.__globals__, "open_url", real_open)
    raw = load_benchmark("aircraft", str(data_path), None)
    assert raw.class_names == variants and len(raw.train_images) == len(raw.test_images) == 100
    assert (data_path / "fgvc-aircraft-2013b.tar.gz").read_bytes() == archive.read_bytes()
