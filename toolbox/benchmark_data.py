"""PROOF's benchmark datasets: Aircraft, Stanford Cars, Food-101, ObjectNet, SUN, UCF-101
(and C3Box's Caltech-101, Flowers-102, ImageNet-A).

PROOF's own code reads each as ``train/<class>/`` + ``test/<class>/`` folders (its processed,
pre-split subsets), classes in sorted folder order, the first ``N`` classes of the original
dataset. This module reads those folders first (the faithful form); where they are absent
and an original archive is there (or can be downloaded by torchvision, which checks its
MD5), it builds the same class subset (the first ``N`` classes in the archive's own order)
with the archive's official split. That split is not PROOF's file for file: PROOF sampled
its subsets and published no file lists (see docs/data.md).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from toolbox.data import (
    IMAGE_EXTENSIONS,
    LOADERS,
    DatasetError,
    RawData,
    _dataset_root,
    folder_class_names,
    load_split_folders,
    read_class_table,
)
from utils.download import fetch_verified, open_url

CALTECH_SPLIT_SEED = 1993  # the seeded per-class split of the archives without an official one
HELD_OUT_FRACTION = 0.2


@dataclass(frozen=True)
class Benchmark:
    key: str                      # config key 'dataset'
    num_classes: int              # PROOF's class count (np.arange(N) over its folders)
    title: str
    subfolders: Tuple[str, ...]   # where PROOF's pre-split train/ + test/ may be under data_path
    archive: Tuple[str, ...]      # marker files of the original archive, relative to its root
    archive_roots: Tuple[str, ...]
    how_to_get: str


BENCHMARKS: Dict[str, Benchmark] = {b.key: b for b in (
    Benchmark("aircraft", 100, "FGVC-Aircraft", ("aircraft", "fgvc_aircraft"),
              ("data/variants.txt", "data/images_variant_trainval.txt", "data/images_variant_test.txt"),
              ("fgvc-aircraft-2013b",),
              "torchvision downloads fgvc-aircraft-2013b.tar.gz into data_path on first use"),
    Benchmark("cars", 100, "Stanford Cars", ("cars", "stanford_cars_proof"),
              ("devkit/cars_meta.mat", "devkit/cars_train_annos.mat", "cars_test_annos_withlabels.mat"),
              ("stanford_cars",),
              "the original site is gone (torchvision's download is broken): put the devkit, cars_train/, "
              "cars_test/ and cars_test_annos_withlabels.mat in data_path/stanford_cars/, or PROOF's cars "
              "folder (README link) as data_path/cars/train + test"),
    Benchmark("food101", 100, "Food-101", ("food101", "food"),
              ("meta/classes.txt", "meta/train.txt", "meta/test.txt"), ("food-101",),
              "torchvision downloads food-101.tar.gz (MD5 85eeb15f3717b99a5da872d97d918f87) into data_path"),
    Benchmark("sun", 300, "SUN397", ("sun", "sun397_proof"),
              ("ClassName.txt", "Partitions/Training_01.txt", "Partitions/Testing_01.txt"), ("SUN397",),
              "torchvision downloads SUN397.tar.gz (MD5 8ca2778205c41d23104230ba66911c7a) into data_path; "
              "put the official Partitions.zip, unpacked, in data_path/SUN397/Partitions/ (not in torchvision)"),
    Benchmark("caltech101", 100, "Caltech-101", ("caltech101", "caltech"),
              ("101_ObjectCategories",), ("caltech101",),
              "torchvision downloads caltech-101.zip (MD5 3138e1922a9193bfa496528edbbc45d0) into "
              "data_path/caltech101"),
    Benchmark("flowers", 100, "Flowers-102", ("flowers", "flowers102"),
              ("imagelabels.mat", "setid.mat", "jpg"), ("flowers-102",),
              "torchvision downloads 102flowers.tgz, imagelabels.mat and setid.mat into data_path/flowers-102"),
    Benchmark("imagenet_a", 200, "ImageNet-A", ("imagenet-a-split", "imageneta", "imagenet_a"),
              ("n01498041",), ("imagenet-a",),
              "get imagenet-a.tar from the ImageNet-A authors (Hendrycks et al.) and unpack it as "
              "data_path/imagenet-a/<wnid>/, or PROOF's split as data_path/imageneta/train + test"),
    Benchmark("objectnet", 200, "ObjectNet", ("objectnet",), (), (),
              "ObjectNet's licence forbids redistribution and automatic download: get PROOF's 200-class "
              "subset (its README's link, or its file list applied to ObjectNet's own archive) as "
              "data_path/objectnet/train/<class>/ + test/<class>/"),
    Benchmark("ucf101", 100, "UCF-101", ("ucf101", "ucf"), (), (),
              "UCF-101 is videos; PROOF uses its own extracted frames: get PROOF's ucf folder (its README's "
              "link) as data_path/ucf101/train/<class>/ + test/<class>/"),
)}


def _looked(data_path: str, subs: Sequence[str]) -> str:
    return ", ".join(os.path.abspath(p) for p in [data_path] + [os.path.join(data_path, s) for s in subs])


def _misplaced(data_path: str, marker: str, levels: int = 2) -> Optional[str]:
    """A folder 1..``levels`` levels under data_path that holds ``marker`` (a misplaced dataset)."""
    if not os.path.isdir(data_path):
        return None
    base = os.path.abspath(data_path)
    for here, dirs, _ in os.walk(base):
        depth = os.path.relpath(here, base).count(os.sep) + (here != base)
        if depth >= levels:
            dirs[:] = []
        if depth and os.path.exists(os.path.join(here, marker)):
            return here
    return None


def _names(spec: Benchmark, class_names: Optional[str], default: List[str], needs_names: str) -> List[str]:
    """Names from ``class_names`` (a file, e.g. PROOF's labels.json#key), else ``default``. PROOF's
    list for cars has more names than it has classes (its code indexes the list by class id): the
    first N are used for a labels.json list; any other file must have exactly N names."""
    if class_names is None:
        return folder_class_names(default, spec.key, needs_names)
    names = [r[-1] for r in read_class_table(class_names)]
    proof_list = "labels.json#" in class_names and len(names) > spec.num_classes
    if proof_list:
        names = names[:spec.num_classes]
    if len(names) != len(default):
        raise DatasetError(f"class-name file {class_names} has {len(names)} names but {spec.key} has {len(default)} "
                           f"classes (config key 'class_names'): give one name per class, in class-id order")
    return names


def _check_count(spec: Benchmark, got: int, where: str) -> None:
    if got != spec.num_classes:
        raise DatasetError(f"dataset '{spec.key}': {where} has {got} classes, PROOF's {spec.title} has "
                           f"{spec.num_classes} (config key 'data_path'): use PROOF's folder or the complete "
                           f"original archive; see docs/data.md")


# ----------------------------------------------------------------------------- archive readers
def _lines(path: str, key: str) -> List[str]:
    if not os.path.isfile(path):
        raise DatasetError(f"dataset '{key}': {path} is missing (config key 'data_path'): use the complete, "
                           f"unmodified archive; see docs/data.md")
    with open(path, "r", encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def _bad(key: str, path: str, line: str, want: str) -> DatasetError:
    return DatasetError(f"dataset '{key}': {path} is corrupt: line {line!r} is not {want}; replace it with the "
                        f"archive's original file (config key 'data_path'; see docs/data.md)")


def _labelled(spec: Benchmark, items: List[Tuple[str, str]], classes: List[str], path: str
              ) -> Tuple[List[str], np.ndarray]:
    """(image path, class) pairs -> paths and ids of the kept classes (the first N)."""
    index = {c: i for i, c in enumerate(classes)}
    paths, ys = [], []
    for image, cls in items:
        if cls not in index:
            continue
        if not os.path.isfile(image):
            raise DatasetError(f"dataset '{spec.key}': image {image} listed in {path} is missing (config key "
                               f"'data_path'): use the complete, unmodified archive; see docs/data.md")
        paths.append(image)
        ys.append(index[cls])
    if len(set(ys)) != len(classes):
        empty = next(c for c in classes if index[c] not in set(ys))
        raise DatasetError(f"dataset '{spec.key}': {path} lists no image of class '{empty}': use the archive's "
                           f"original file (config key 'data_path'; see docs/data.md)")
    return paths, np.asarray(ys, dtype=np.int64)


def read_aircraft(root: str, spec: Benchmark) -> Tuple[RawData, List[str]]:
    data = os.path.join(root, "data")
    classes = _lines(os.path.join(data, "variants.txt"), spec.key)[:spec.num_classes]
    out = {}
    for split in ("trainval", "test"):
        path = os.path.join(data, f"images_variant_{split}.txt")
        items = []
        for line in _lines(path, spec.key):
            image, _, variant = line.partition(" ")
            if not variant or not image.isdigit():
                raise _bad(spec.key, path, line, "'<7-digit image id> <variant>'")
            items.append((os.path.join(data, "images", image + ".jpg"), variant))
        out[split] = _labelled(spec, items, classes, path)
    return RawData(*out["trainval"], *out["test"], list(classes)), classes


def read_food101(root: str, spec: Benchmark) -> Tuple[RawData, List[str]]:
    classes = sorted(_lines(os.path.join(root, "meta", "classes.txt"), spec.key))[:spec.num_classes]
    out = {}
    for split in ("train", "test"):
        path = os.path.join(root, "meta", f"{split}.txt")
        items = []
        for line in _lines(path, spec.key):
            if line.count("/") != 1:
                raise _bad(spec.key, path, line, "'<class>/<image id>'")
            items.append((os.path.join(root, "images", line + ".jpg"), line.split("/")[0]))
        out[split] = _labelled(spec, items, classes, path)
    return RawData(*out["train"], *out["test"], [c.replace("_", " ") for c in classes]), classes


def read_sun397(root: str, spec: Benchmark) -> Tuple[RawData, List[str]]:
    path = os.path.join(root, "ClassName.txt")
    all_classes = _lines(path, spec.key)
    for line in all_classes:
        if not line.startswith("/") or line.count("/") < 2:
            raise _bad(spec.key, path, line, "'/<letter>/<category>'")
    classes = all_classes[:spec.num_classes]  # ClassName.txt is sorted: SUN397's canonical order
    out = {}
    for split, name in (("train", "Training_01.txt"), ("test", "Testing_01.txt")):
        part = os.path.join(root, "Partitions", name)
        items = []
        for line in _lines(part, spec.key):
            if not line.startswith("/") or not line.endswith(".jpg"):
                raise _bad(spec.key, part, line, "'/<letter>/<category>/<image>.jpg'")
            items.append((os.path.join(root, *line.strip("/").split("/")), line.rsplit("/", 1)[0]))
        out[split] = _labelled(spec, items, classes, part)
    names = [c[3:].replace("/", " ").replace("_", " ") for c in classes]
    return RawData(*out["train"], *out["test"], names), [c[3:] for c in classes]


def _loadmat(path: str, key: str):
    from scipy.io import loadmat  # scipy only for the .mat archives
    if not os.path.isfile(path):
        raise DatasetError(f"dataset '{key}': {path} is missing (config key 'data_path'): use the complete, "
                           f"unmodified archive; see docs/data.md")
    try:
        return loadmat(path, squeeze_me=True)
    except Exception as e:  # scipy raises ValueError / TypeError / MatReadError on a broken file
        raise DatasetError(f"dataset '{key}': {path} is not a readable .mat file ({e}); replace it with the "
                           f"archive's original file (config key 'data_path'; see docs/data.md)") from None


def _mat_field(mat, name: str, path: str, key: str):
    if name not in mat:
        raise DatasetError(f"dataset '{key}': {path} has no '{name}' entry: it is not the archive's original file; "
                           f"replace it (config key 'data_path'; see docs/data.md)")
    return mat[name]


def read_flowers(root: str, spec: Benchmark) -> Tuple[RawData, List[str]]:
    lpath, spath = os.path.join(root, "imagelabels.mat"), os.path.join(root, "setid.mat")
    labels = np.atleast_1d(_mat_field(_loadmat(lpath, spec.key), "labels", lpath, spec.key)).astype(np.int64)
    setid = _loadmat(spath, spec.key)
    ids = {s: np.atleast_1d(_mat_field(setid, s, spath, spec.key)).astype(np.int64)
           for s in ("trnid", "valid", "tstid")}
    classes = [str(c) for c in range(1, spec.num_classes + 1)]  # Oxford's label ids, in order
    out = {}
    for split, image_ids in (("train", np.concatenate([ids["trnid"], ids["valid"]])), ("test", ids["tstid"])):
        if image_ids.size and (image_ids.min() < 1 or image_ids.max() > len(labels)):
            raise _bad(spec.key, spath, str(int(image_ids.max())), f"an image id in 1..{len(labels)}")
        items = [(os.path.join(root, "jpg", f"image_{i:05d}.jpg"), str(labels[i - 1])) for i in sorted(image_ids)]
        out[split] = _labelled(spec, items, classes, spath)
    return RawData(*out["train"], *out["test"], classes), classes


def read_cars(root: str, spec: Benchmark) -> Tuple[RawData, List[str]]:
    meta = os.path.join(root, "devkit", "cars_meta.mat")
    classes = [str(c) for c in np.atleast_1d(_mat_field(_loadmat(meta, spec.key), "class_names", meta, spec.key))]
    kept = classes[:spec.num_classes]  # the devkit's class order
    out = {}
    for split, path, folder in (("train", os.path.join(root, "devkit", "cars_train_annos.mat"), "cars_train"),
                                ("test", os.path.join(root, "cars_test_annos_withlabels.mat"), "cars_test")):
        annos = np.atleast_1d(_mat_field(_loadmat(path, spec.key), "annotations", path, spec.key))
        try:
            items = [(os.path.join(root, folder, str(a["fname"])), classes[int(a["class"]) - 1]) for a in annos]
        except (ValueError, IndexError, KeyError, TypeError) as e:
            raise _bad(spec.key, path, str(e), "an annotation with 'fname' and a 1-based 'class'") from None
        out[split] = _labelled(spec, items, kept, path)
    return RawData(*out["train"], *out["test"], kept), kept


def seeded_split(spec: Benchmark, folder: str, classes: List[str]
                 ) -> Tuple[List[str], np.ndarray, List[str], np.ndarray]:
    """No official split: per class, the sorted files permuted with CALTECH_SPLIT_SEED (numpy's
    default_rng, the class index added), the first ``HELD_OUT_FRACTION`` (at least one) to test."""
    train, train_y, test, test_y = [], [], [], []
    for i, cls in enumerate(classes):
        d = os.path.join(folder, cls)
        files = sorted(f for f in os.listdir(d) if f.endswith(IMAGE_EXTENSIONS)) if os.path.isdir(d) else []
        if len(files) < 2:
            raise DatasetError(f"dataset '{spec.key}': class folder {d} holds {len(files)} image(s), at least 2 are "
                               f"needed (one to train, one to test): use the complete archive (config key "
                               f"'data_path'; see docs/data.md)")
        order = np.random.default_rng(CALTECH_SPLIT_SEED + i).permutation(len(files))
        n_test = max(1, int(round(HELD_OUT_FRACTION * len(files))))
        for rank, j in enumerate(order):
            (test if rank < n_test else train).append(os.path.join(d, files[j]))
            (test_y if rank < n_test else train_y).append(i)
    return train, np.asarray(train_y, dtype=np.int64), test, np.asarray(test_y, dtype=np.int64)


CALTECH_IGNORED = ("BACKGROUND_Google", "Faces_easy")  # not classes in PROOF's (CoOp's) 100


def read_caltech101(root: str, spec: Benchmark) -> Tuple[RawData, List[str]]:
    folder = os.path.join(root, "101_ObjectCategories")
    classes = sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d))
                     and d not in CALTECH_IGNORED)[:spec.num_classes]
    return RawData(*seeded_split(spec, folder, classes), list(classes)), classes


def read_imagenet_a(root: str, spec: Benchmark) -> Tuple[RawData, List[str]]:
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))[:spec.num_classes]
    return RawData(*seeded_split(spec, root, classes), list(classes)), classes


READERS: Dict[str, Callable[[str, Benchmark], Tuple[RawData, List[str]]]] = {
    "aircraft": read_aircraft, "food101": read_food101, "sun": read_sun397, "flowers": read_flowers,
    "cars": read_cars, "caltech101": read_caltech101, "imagenet_a": read_imagenet_a}


# ----------------------------------------------------------------------------- download
# dataset -> (a URL of its server, torchvision's class, its arguments); torchvision checks the MD5s
# it has (all but FGVC-Aircraft's). Not Stanford Cars: torchvision's source site is gone.
DOWNLOADS: Dict[str, Tuple[str, str]] = {
    "aircraft": ("https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/archives/fgvc-aircraft-2013b.tar.gz",
                 "FGVCAircraft"),
    "food101": ("http://data.vision.ee.ethz.ch/cvl/food-101.tar.gz", "Food101"),
    "sun": ("http://vision.princeton.edu/projects/2010/SUN/SUN397.tar.gz", "SUN397"),
    "flowers": ("https://www.robots.ox.ac.uk/~vgg/data/flowers/102/setid.mat", "Flowers102"),
    "caltech101": ("https://data.caltech.edu/records/mzrjq-6wc02/files/caltech-101.zip", "Caltech101"),
}
# torchvision has no checksum for these archives and would take a broken download left at its path for
# whole: fetched here first (a temporary file renamed once complete), then torchvision finds and unpacks it.
FETCHED_FIRST = ("aircraft",)


def _torchvision_download(spec: Benchmark, data_path: str) -> None:
    """torchvision's own download (it checks the archive's MD5 where it has one), after a
    fast check that its server answers (offline: one line, within seconds)."""
    from torchvision import datasets

    url, name = DOWNLOADS[spec.key]
    try:
        if spec.key in FETCHED_FIRST:
            fetch_verified(url, os.path.join(data_path, os.path.basename(url)), None, DatasetError,
                           f"then run again; or put PROOF's {spec.key} folder as "
                           f"data_path/{spec.subfolders[0]}/train/ + test/ (config key 'data_path'); see docs/data.md")
        else:
            open_url(url).close()
        os.makedirs(data_path, exist_ok=True)
        getattr(datasets, name)(data_path, download=True)
    except DatasetError:  # fetch_verified's own line: the URL, where to put the file
        raise
    except Exception as e:  # offline / server gone / MD5 mismatch: torchvision raises several kinds
        raise DatasetError(f"dataset '{spec.key}' is not in {os.path.abspath(data_path)} and could not be "
                           f"downloaded from {url} ({e}). Run once with internet access, or put PROOF's "
                           f"train/ + test/ folders or the archive's files ({', '.join(spec.archive)}) under "
                           f"data_path/{spec.archive_roots[0]} (config key 'data_path'); see docs/data.md") from None


# ----------------------------------------------------------------------------- entry point
def _archive_root(spec: Benchmark, data_path: str) -> Optional[str]:
    if not spec.archive:
        return None
    if spec.key == "imagenet_a":  # wnid folders alone would also match ImageNet-R: the folder's own name counts
        for root in (data_path, os.path.join(data_path, "imagenet-a")):
            if os.path.basename(os.path.normpath(root)) == "imagenet-a" and os.path.isdir(root):
                return root
        return None
    return _dataset_root(data_path, spec.archive_roots, spec.archive)


def _misplaced_message(spec: Benchmark, data_path: str) -> Optional[str]:
    """Where PROOF's folders or the archive's marker are deeper under data_path than looked."""
    for root in [data_path] + [os.path.join(data_path, s) for s in spec.subfolders]:
        for have, lack in (("train", "test"), ("test", "train")):
            if os.path.isdir(os.path.join(root, have)) and not os.path.isdir(os.path.join(root, lack)):
                return (f"dataset '{spec.key}': {os.path.abspath(root)} holds {have}/ but no {lack}/ (config key "
                        f"'data_path'): PROOF's folders are train/<class>/ and test/<class>/ side by side; "
                        f"see docs/data.md")
    places = [os.path.join(s, "train") for s in spec.subfolders] + ([spec.archive[0]] if spec.archive else [])
    for marker in places:
        where = _misplaced(data_path, marker)
        if where is not None:
            found = os.path.join(where, marker)
            return (f"dataset '{spec.key}': found {found}, but looked in "
                    f"{_looked(data_path, spec.subfolders + spec.archive_roots)} (config key 'data_path'): set "
                    f"data_path to {where}, or move the folder up; see docs/data.md")
    return None


def load_benchmark(dataset: str, data_path: str, class_names: Optional[str], needs_names: str = "the method",
                   download: bool = True) -> RawData:
    """PROOF's pre-split folders, else the original archive's class subset and split (downloaded
    by torchvision where it can), else one line saying where to get the data."""
    spec = BENCHMARKS[dataset]
    presplit = _dataset_root(data_path, spec.subfolders, ["train", "test"])
    if presplit is not None:
        classes = sorted(d for d in os.listdir(os.path.join(presplit, "train"))
                         if os.path.isdir(os.path.join(presplit, "train", d)))
        _check_count(spec, len(classes), os.path.join(presplit, "train"))
        raw = load_split_folders(dataset, data_path, spec.subfolders, "test", None, spec.how_to_get,
                                 class_dirs=classes, needs_names="")
        raw.class_names = _names(spec, class_names, classes, needs_names)
        return raw
    root = _archive_root(spec, data_path)
    if root is None:
        for part in [data_path] + [os.path.join(data_path, r) for r in spec.archive_roots]:
            have = [m for m in spec.archive if os.path.exists(os.path.join(part, m))]
            partitions_only = download and all(m.startswith("Partitions/") for m in have)  # SUN: images to come
            if have and spec.key != "imagenet_a" and not partitions_only:
                lacking = [m for m in spec.archive if m not in have]
                raise DatasetError(f"dataset '{dataset}': {os.path.abspath(part)} holds {have[0]} but not "
                                   f"{', '.join(lacking)} (config key 'data_path'): complete the archive. "
                                   f"{spec.how_to_get}. See docs/data.md")
        misplaced = _misplaced_message(spec, data_path)
        if misplaced is not None:
            raise DatasetError(misplaced)
        if not download or dataset not in DOWNLOADS:
            raise DatasetError(f"dataset '{dataset}' not found: looked for PROOF's train/ + test/ folders in "
                               f"{_looked(data_path, spec.subfolders)}"
                               + (f" and the original archive ({', '.join(spec.archive)}) in "
                                  f"{_looked(data_path, spec.archive_roots)}" if spec.archive else "")
                               + f" (config key 'data_path'). {spec.how_to_get}. See docs/data.md")
        if dataset == "sun":  # torchvision fetches the images only: the partitions must be there first
            lacking = [m for m in spec.archive[1:] if not os.path.isfile(os.path.join(data_path, "SUN397", m))]
            if lacking and class_names is not None:  # e.g. proof_sun*.json's released:proof names
                raise DatasetError(f"dataset 'sun' not found: PROOF's train/ + test/ folders are not in "
                                   f"{_looked(data_path, spec.subfolders)} (config key 'data_path'). With a names "
                                   f"file (config key 'class_names', {class_names}) only PROOF's sun folder can "
                                   f"be used: PROOF's 300 names are not SUN397's first 300 categories, so the "
                                   f"original archive would be downloaded whole and then refused. Get PROOF's "
                                   f"folder (its README's link) as data_path/sun/train/<class>/ + test/<class>/; "
                                   f"see docs/data.md")
            if lacking:
                raise DatasetError(f"dataset 'sun': SUN397's official {', '.join(lacking)} (Partitions.zip, which "
                                   f"torchvision does not download) is not in {os.path.join(data_path, 'SUN397')} "
                                   f"(config key 'data_path'): unpack Partitions.zip there first, then the images "
                                   f"(SUN397.tar.gz) are downloaded on first use; or use PROOF's sun folder. "
                                   f"See docs/data.md")
        _torchvision_download(spec, data_path)
        root = _archive_root(spec, data_path)
        if root is None:
            raise DatasetError(f"dataset '{dataset}': the download did not leave {', '.join(spec.archive)} in "
                               f"{_looked(data_path, spec.archive_roots)}. {spec.how_to_get}. See docs/data.md")
    raw, classes = READERS[dataset](root, spec)
    _check_count(spec, len(classes), root)
    if class_names is not None or dataset in ("flowers", "imagenet_a"):
        archive_names = raw.class_names
        raw.class_names = _names(spec, class_names, raw.class_names, needs_names)
        if class_names is not None and dataset in COMPARABLE:
            _check_alignment(spec, class_names, raw.class_names, archive_names)
    return raw


# Archives whose own class names say which class a name of a names file stands for.
COMPARABLE = ("aircraft", "food101", "cars", "sun")


def _words(name: str) -> str:
    return " ".join("".join(ch if ch.isalnum() else " " for ch in name.lower()).split())


def _check_alignment(spec: Benchmark, path: str, given: List[str], archive: List[str]) -> None:
    """The names file's i-th name must be the archive's i-th class (letters and digits compared;
    SUN: the category without its /indoor, /outdoor... qualifier). Else the subset built here is
    not the one the names were written for: refused, naming the first mismatch."""
    for i, (a, b) in enumerate(zip(given, archive)):
        mine, theirs = _words(b), _words(a)
        if not (mine == theirs or (spec.key == "sun" and mine.startswith(theirs + " "))):
            raise DatasetError(f"dataset '{spec.key}': class {i} of the archive is '{b}' but the names file {path} "
                               f"(config key 'class_names') says '{a}': the archive's first {spec.num_classes} "
                               f"classes are not the ones these names are for; use PROOF's own {spec.key} folder "
                               f"(train/ + test/) or names for the archive's classes; see docs/data.md")


def _from_config(cfg, needs_names: str) -> RawData:
    return load_benchmark(cfg.dataset, cfg.data_path, cfg.class_names, needs_names)


LOADERS.update({key: _from_config for key in BENCHMARKS})
