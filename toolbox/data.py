"""Dataset definitions: where the images are, their labels and class names.

Each builder returns ``RawData``: images as a uint8 array (N, H, W, 3) for small datasets
held in memory, or a list of file paths for JPEG folders; integer labels in the dataset's
own class ids; class names indexed by those ids. Nothing is downloaded silently except
torchvision's CIFAR-100 and, in toolbox/benchmark_data.py, the benchmark archives torchvision fetches.
"""
from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from utils.class_names import CIFAR100_CLASSES  # noqa: F401  (re-exported)
from utils.config import DATASETS

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".JPEG", ".JPG", ".PNG")


class DatasetError(RuntimeError):
    """Data missing or malformed; the message names the path, the key and what to do."""


@dataclass
class RawData:
    train_images: Union[np.ndarray, List[str]]
    train_targets: np.ndarray
    test_images: Union[np.ndarray, List[str]]
    test_targets: np.ndarray
    class_names: List[str]

    @property
    def use_path(self) -> bool:
        return not isinstance(self.train_images, np.ndarray)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


# ----------------------------------------------------------------------------- name files
WNID = re.compile(r"^n\d{8}$")


def read_class_table(path: str, key: str = "class_names") -> List[List[str]]:
    """The tab-separated fields of each non-blank line of a class file (one field for a
    plain list of names). A ``.json`` file holds a list of names, or an object of such
    lists: ``file.json#name`` is the list under ``name`` (PROOF's ``labels.json#cub``)."""
    file, _, entry = path.rpartition("#") if not os.path.isfile(path) and "#" in path else (path, "", "")
    if not os.path.isfile(file):
        raise DatasetError(f"class file not found: {file} (config key '{key}')")
    if file.endswith(".json"):
        return [[name] for name in _json_names(file, entry, key)]
    with open(file, "r", encoding="utf-8") as f:
        return [[field.strip() for field in line.rstrip("\n\r").split("\t")] for line in f if line.strip()]


def _json_names(file: str, entry: str, key: str) -> List[str]:
    try:
        with open(file, "r", encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DatasetError(f"class file {file} is not valid JSON: {e} (config key '{key}')") from None
    if isinstance(data, dict):
        if entry not in data:
            raise DatasetError(f"class file {file} holds one list per dataset: name one as {file}#<name> (config "
                               f"key '{key}'; {'no ' + repr(entry) + '; ' if entry else ''}it has: "
                               f"{', '.join(sorted(data))})")
        data = data[entry]
    if not isinstance(data, list) or not all(isinstance(n, str) for n in data):
        raise DatasetError(f"class file {file}{'#' + entry if entry else ''} must be a list of class names "
                           f"(config key '{key}')")
    return [n.strip() for n in data]


def table_wnids(rows: List[List[str]]) -> Optional[List[str]]:
    """The ImageNet ids of a class table whose lines are ``index, wnid, name`` (the released
    ImageNet-100 / ImageNet-R files), else None."""
    if rows and all(len(r) >= 3 and WNID.match(r[1]) for r in rows):
        return [r[1] for r in rows]
    return None


def read_class_names(path: str, expected: Optional[int] = None, folders: Optional[Sequence[str]] = None) -> List[str]:
    """One class name per line, or tab-separated lines with the name in the last field
    (the released MG-CLIP files). Blank lines are skipped. Where the lines also hold
    ImageNet ids (``index, wnid, name``) and the classes are ``folders`` named by wnid,
    the ids must be those folders, in the same order."""
    rows = read_class_table(path)
    names = [r[-1] for r in rows]
    if expected is not None and len(names) != expected:
        raise DatasetError(
            f"class-name file {path} has {len(names)} names but the dataset has {expected} classes "
            f"(config key 'class_names'): give one name per class, in class-id order")
    wnids = table_wnids(rows)
    if wnids is not None and folders is not None and all(WNID.match(f) for f in folders) and wnids != list(folders):
        first = next(i for i, (a, b) in enumerate(zip(wnids, folders)) if a != b)
        raise DatasetError(f"class-name file {path} does not match the class folders: line {first + 1} is for "
                           f"{wnids[first]}, class folder {first + 1} is {folders[first]} (config key "
                           f"'class_names'): use the file that belongs to these folders")
    return names


def _folder_name_to_class_name(folder: str) -> str:
    return re.sub(r"^\d+\.", "", folder)  # CUB's "001.Black_footed_Albatross" -> "Black_footed_Albatross"


def is_class_id(name: str) -> bool:
    """A class name that is an id, not words: an ImageNet wnid (``n01443537``), a number
    (``017``), or nothing (after ``_folder_name_to_class_name``)."""
    return not name.strip() or bool(WNID.match(name)) or name.strip().isdigit()


# Where readable names for a dataset's id folders are (the refusal's hint).
NAMES_HINT = {
    "imagenet_r": "'released' (MG-CLIP's ImageNet-R names) or 'released:proof' (PROOF's)",
    "imagenet100": "'released' (MG-CLIP's ImageNet-100 names)",
    "cub200": "'released' (MG-CLIP's CUB-200 names) or 'released:proof' (PROOF's)",
}


def folder_class_names(class_dirs: Sequence[str], dataset: str, needs_names: str) -> List[str]:
    """Class names from class folders (CUB's numbering removed). Where ``needs_names`` (the
    method that builds prompts from them) and a folder's name is an id (``is_class_id``),
    refused in one line naming config key 'class_names'; ``needs_names`` = "" (a method
    without text) takes the folder names as they are."""
    names = [_folder_name_to_class_name(d) for d in class_dirs]
    ids = [d for d, n in zip(class_dirs, names) if is_class_id(n)]
    if ids and needs_names:
        hint = NAMES_HINT.get(dataset, "a file of one name per line, in the sorted order of the class folders")
        raise DatasetError(f"{dataset}: {len(ids)} of {len(names)} class folders are ids, not names (e.g. {ids[0]}), "
                           f"and {needs_names} builds its prompts from class names: set config key 'class_names' "
                           f"to {hint}; see docs/data.md")
    if needs_names:
        logger.warning("%s: no class-name file (config key 'class_names'); prompts use the folder names", dataset)
    return names


# ----------------------------------------------------------------------------- synthetic
_COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "pink", "brown", "grey", "cyan", "black", "white"]
_THINGS = ["circle", "square", "stripe", "wave", "grid", "dot", "ring", "cross", "star", "band", "check", "spiral"]


def synthetic_class_names(n: int) -> List[str]:
    names = [f"{c} {t}" for t in _THINGS for c in _COLOURS]
    return [names[i] if i < len(names) else f"{names[i % len(names)]} {i // len(names)}" for i in range(n)]


def imbalanced_counts(num_classes: int, largest: int, ratio: float) -> List[int]:
    """Training images per class id for ``synthetic_imbalance`` = ``ratio``: class 0 has
    ``largest``, the last class ``largest / ratio`` (at least 2), the ones between spread
    geometrically; ratio 1 (or one class): ``largest`` each."""
    if ratio == 1 or num_classes == 1:
        return [largest] * num_classes
    floor = min(2, largest)
    smallest = max(floor, largest / ratio)
    return [max(floor, int(round(largest * (smallest / largest) ** (c / (num_classes - 1)))))
            for c in range(num_classes)]


def make_synthetic(num_classes: int, train_per_class: int, test_per_class: int, size: int,
                   seed: int = 0, imbalance: float = 1.0) -> RawData:
    """Images whose class is visible: each class has its own colour and stripe pattern
    (orientation and frequency); every image adds its own phase shift and pixel noise.
    ``imbalance`` > 1: unequal training counts (``imbalanced_counts``); test counts stay equal."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    colours = rng.uniform(0.15, 0.85, size=(num_classes, 3)).astype(np.float32)
    angles = rng.uniform(0, np.pi, size=num_classes)
    freqs = rng.uniform(1.5, 5.0, size=num_classes)

    def draw(c: int, n: int) -> np.ndarray:
        phase = rng.uniform(0, 2 * np.pi, size=(n, 1, 1))
        proj = np.cos(angles[c]) * xx + np.sin(angles[c]) * yy
        stripes = np.sin(2 * np.pi * freqs[c] * proj[None] + phase)  # (n, H, W)
        img = colours[c][None, None, None, :] + 0.25 * stripes[..., None]
        img = img + rng.normal(0, 0.05, size=img.shape)
        return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)

    counts = imbalanced_counts(num_classes, train_per_class, imbalance)
    train = np.concatenate([draw(c, counts[c]) for c in range(num_classes)])
    test = np.concatenate([draw(c, test_per_class) for c in range(num_classes)])
    return RawData(train, np.repeat(np.arange(num_classes), counts),
                   test, np.repeat(np.arange(num_classes), test_per_class),
                   synthetic_class_names(num_classes))


# ----------------------------------------------------------------------------- cifar100
def load_cifar100(data_path: str, class_names: Optional[str] = None) -> RawData:
    from torchvision import datasets

    try:
        train = datasets.CIFAR100(data_path, train=True, download=True)
        test = datasets.CIFAR100(data_path, train=False, download=True)
    except Exception as e:  # offline: torchvision raises URLError / RuntimeError
        raise DatasetError(
            f"CIFAR-100 is not in {os.path.abspath(data_path)} and could not be downloaded ({e}). "
            f"Set config key 'data_path' to the folder that holds 'cifar-100-python/', or run once "
            f"with internet access (torchvision downloads it there).") from None
    # torchvision's names keep underscores (e.g. 'aquarium_fish'), as MG-CLIP's prompts need (SPEC 2);
    # 'class_names' (e.g. PROOF's labels.json, 'aquarium fish') replaces them, by label id.
    names = read_class_names(class_names, expected=100) if class_names else list(train.classes)
    return RawData(np.asarray(train.data), np.asarray(train.targets), np.asarray(test.data),
                   np.asarray(test.targets), names)


# ----------------------------------------------------------------------------- folders
def _dataset_root(data_path: str, subfolders: Sequence[str], needs: Sequence[str]) -> Optional[str]:
    """``data_path`` itself if it holds ``needs``, else the first ``data_path/sub`` that does."""
    for root in [data_path] + [os.path.join(data_path, s) for s in subfolders]:
        if all(os.path.exists(os.path.join(root, n)) for n in needs):
            return root
    return None


def _scan_split(split_dir: str, class_dirs: Sequence[str]) -> Tuple[List[str], np.ndarray]:
    paths, labels = [], []
    for label, cls in enumerate(class_dirs):
        folder = os.path.join(split_dir, cls)
        if not os.path.isdir(folder):
            raise DatasetError(f"class folder missing: {folder} (every split needs the same class folders)")
        files = sorted(f for f in os.listdir(folder) if f.endswith(IMAGE_EXTENSIONS))
        if not files:
            raise DatasetError(f"class folder {folder} holds no images ({'/'.join(IMAGE_EXTENSIONS[:5])}): every "
                               f"class needs training and test images; add some, or remove the class from "
                               f"every split")
        paths += [os.path.join(folder, f) for f in files]
        labels += [label] * len(files)
    return paths, np.asarray(labels, dtype=np.int64)


def _names_for(class_dirs: List[str], root: str, class_names: Optional[str], dataset: str,
               needs_names: str = "the method") -> List[str]:
    if class_names is None and os.path.isfile(os.path.join(root, "classnames.txt")):
        class_names = os.path.join(root, "classnames.txt")
    if class_names is not None:
        return read_class_names(class_names, expected=len(class_dirs), folders=class_dirs)
    return folder_class_names(class_dirs, dataset, needs_names)


def load_split_folders(dataset: str, data_path: str, subfolders: Sequence[str], test_split: str,
                       class_names: Optional[str], how_to_get: str,
                       class_dirs: Optional[List[str]] = None, needs_names: str = "the method") -> RawData:
    root = _dataset_root(data_path, subfolders, ["train", test_split])
    if root is None:
        looked = [data_path] + [os.path.join(data_path, s) for s in subfolders]
        raise DatasetError(
            f"dataset '{dataset}' not found: looked for 'train/' and '{test_split}/' folders of class "
            f"sub-folders in {', '.join(os.path.abspath(p) for p in looked)} (config key 'data_path'). "
            f"{how_to_get}")
    if class_dirs is None:
        class_dirs = sorted(d for d in os.listdir(os.path.join(root, "train"))
                            if os.path.isdir(os.path.join(root, "train", d)))
    if not class_dirs:
        raise DatasetError(f"dataset '{dataset}': no class folders in {os.path.join(root, 'train')}")
    train_paths, train_y = _scan_split(os.path.join(root, "train"), class_dirs)
    test_paths, test_y = _scan_split(os.path.join(root, test_split), class_dirs)
    return RawData(train_paths, train_y, test_paths, test_y,
                   _names_for(class_dirs, root, class_names, dataset, needs_names))


def load_test_folder(dataset: str, folder: str, class_names: Optional[str],
                     needs_names: str = "the method") -> RawData:
    """Images to evaluate only, as ``folder/<class>/`` (held-out data such as ImageNet's
    ``val/<wnid>/``): no training split; classes in the sorted order of their folders."""
    if not os.path.isdir(folder):
        raise DatasetError(f"dataset '{dataset}': held-out image folder {os.path.abspath(folder)} not found (its "
                           f"zero_shot_eval keys 'data_path' and 'split': <data_path>/<split>/<class>/ images)")
    class_dirs = sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))
    if not class_dirs:
        raise DatasetError(f"dataset '{dataset}': no class folders in {folder}")
    paths, labels = _scan_split(folder, class_dirs)
    return RawData([], np.zeros(0, dtype=np.int64), paths, labels,
                   _names_for(class_dirs, folder, class_names, dataset, needs_names))


def read_split_list(path: str) -> Dict[str, List[str]]:
    """A split list: a line ``train``, the training images' paths (``<wnid>/<file>``,
    relative to the dataset folder), a line ``test``, the test images' paths (RAPF's
    ImageNet-R list)."""
    if not os.path.isfile(path):
        raise DatasetError(f"split list not found: {path} (config key 'imagenet_r_split')")
    split: Dict[str, List[str]] = {}
    current = None
    with open(path, "r", encoding="utf-8") as f:
        for line in (raw.strip() for raw in f):
            if line in ("train", "test"):
                current = split.setdefault(line, [])
            elif line:
                if current is None:
                    raise DatasetError(f"split list {path} must start with a 'train' or 'test' line")
                current.append(line)
    if not split.get("train") or not split.get("test"):
        raise DatasetError(f"split list {path} needs a 'train' and a 'test' section with image paths")
    return split


def load_listed_split(dataset: str, data_path: str, subfolders: Sequence[str], list_path: str,
                      class_names: Optional[str], how_to_get: str, needs_names: str = "the method") -> RawData:
    """An unsplit dataset folder (``<class>/<image>``) divided by a split list; classes are
    the sorted class folders named in the list."""
    split = read_split_list(list_path)
    first = split["train"][0]
    root = _dataset_root(data_path, subfolders, [first])
    if root is None:
        looked = [data_path] + [os.path.join(data_path, s) for s in subfolders]
        raise DatasetError(f"dataset '{dataset}' not found: looked for {first} (the first image of the split list "
                           f"{list_path}) in {', '.join(os.path.abspath(p) for p in looked)} (config key "
                           f"'data_path'). {how_to_get}")
    class_dirs = sorted({p.split("/")[0] for p in split["train"] + split["test"]})
    index = {c: i for i, c in enumerate(class_dirs)}
    missing = [p for p in split["train"] + split["test"] if not os.path.isfile(os.path.join(root, p))]
    if missing:
        raise DatasetError(f"dataset '{dataset}': {len(missing)} image(s) of the split list {list_path} are not in "
                           f"{root}, e.g. {missing[0]}; use the complete, unmodified dataset folder")
    out = {}
    for part in ("train", "test"):
        out[part] = ([os.path.join(root, p) for p in split[part]],
                     np.asarray([index[p.split("/")[0]] for p in split[part]], dtype=np.int64))
    return RawData(out["train"][0], out["train"][1], out["test"][0], out["test"][1],
                   _names_for(class_dirs, root, class_names, dataset, needs_names))


def load_cub_official(root: str, class_names: Optional[str], needs_names: str = "the method") -> RawData:
    """The CUB_200_2011 archive as distributed: images/, images.txt, classes.txt,
    image_class_labels.txt, train_test_split.txt."""
    def table(name: str) -> Dict[int, str]:
        with open(os.path.join(root, name), "r", encoding="utf-8") as f:
            return {int(a): b for a, b in (line.split(maxsplit=1) for line in f if line.strip())}

    images, labels, is_train = table("images.txt"), table("image_class_labels.txt"), table("train_test_split.txt")
    classes = table("classes.txt")
    split = {True: ([], []), False: ([], [])}
    for image_id in sorted(images):
        paths, ys = split[is_train[image_id].strip() == "1"]
        paths.append(os.path.join(root, "images", images[image_id].strip()))
        ys.append(int(labels[image_id]) - 1)
    names = (read_class_names(class_names, expected=len(classes)) if class_names else
             folder_class_names([classes[k].strip() for k in sorted(classes)], "cub200", needs_names))
    return RawData(split[True][0], np.asarray(split[True][1]), split[False][0], np.asarray(split[False][1]), names)


HOW_TO_GET = {
    "imagenet_r": ("Get ImageNet-R (imagenet-r.tar from the ImageNet-R authors), split it 80/20 into "
                   "imagenet-r/train/<class>/ and imagenet-r/test/<class>/ (the split the released MG-CLIP "
                   "and PyCIL code use), and give class names with 'class_names'. See docs/data.md."),
    "cub200": ("Put CUB_200_2011 (the official archive with images.txt and train_test_split.txt) or a "
               "cub200/train/<class>/ + cub200/test/<class>/ split under data_path. See docs/data.md."),
    "imagenet100": ("Point data_path at an ImageNet-1k root with train/<wnid>/ and val/<wnid>/ folders and "
                    "set 'imagenet100_classes' to a file of the 100 wnids. See docs/data.md."),
}


def load_imagenet100(data_path: str, class_list: Optional[str], class_names: Optional[str],
                     needs_names: str = "the method") -> RawData:
    if class_list is None:
        raise DatasetError("dataset 'imagenet100' needs config key 'imagenet100_classes': a file with the "
                           "100 ImageNet class ids (wnids), one per line. " + HOW_TO_GET["imagenet100"])
    rows = read_class_table(class_list, "imagenet100_classes")
    # one wnid per line, or the released file's "index, wnid, name" lines (which also give names)
    wnids = table_wnids(rows) or [r[0].split()[0] for r in rows]
    if len(set(wnids)) != len(wnids):
        raise DatasetError(f"imagenet100 class-id file {class_list} repeats ids")
    if class_names is None and table_wnids(rows) is not None:
        class_names = class_list
    return load_split_folders("imagenet100", data_path, ["imagenet", "ImageNet", "imagenet100"], "val",
                              class_names, HOW_TO_GET["imagenet100"], class_dirs=wnids, needs_names=needs_names)


# Loaders kept in other modules of the data layer, by config value 'dataset': each module adds its own
# on import (toolbox/benchmark_data.py: PROOF's benchmarks; toolbox/data_manager.py imports it), since
# it imports this module's helpers and an import back would be a circle.
LOADERS: Dict[str, Callable[..., RawData]] = {}


def build_raw_data(cfg, needs_names: bool = True) -> RawData:
    """Dispatch on ``cfg.dataset`` (a ``Config``). Class names from folders that are ids are
    refused when ``needs_names``: the method builds prompts from class names (its learner's
    ``uses_text``, which the caller reads from the registry; ``folder_class_names``)."""
    name = cfg.dataset
    text = str(cfg.model_name).lower() if needs_names else ""
    if name == "synthetic":
        return make_synthetic(cfg.synthetic_classes, cfg.synthetic_train_per_class,
                              cfg.synthetic_test_per_class, cfg.synthetic_image_size,
                              imbalance=cfg.synthetic_imbalance)
    if name == "cifar100":
        return load_cifar100(cfg.data_path, cfg.class_names)
    if name == "imagenet_r" and getattr(cfg, "imagenet_r_split", None):
        return load_listed_split("imagenet_r", cfg.data_path, ["imagenet-r", "imagenet_r"], cfg.imagenet_r_split,
                                 cfg.class_names, HOW_TO_GET["imagenet_r"], text)
    if name == "imagenet_r":
        return load_split_folders("imagenet_r", cfg.data_path, ["imagenet-r", "imagenet_r"], "test",
                                  cfg.class_names, HOW_TO_GET["imagenet_r"], needs_names=text)
    if name == "cub200":
        official = _dataset_root(cfg.data_path, ["CUB_200_2011", "cub200/CUB_200_2011"],
                                 ["images.txt", "train_test_split.txt", "image_class_labels.txt", "classes.txt"])
        if official is not None:
            return load_cub_official(official, cfg.class_names, text)
        return load_split_folders("cub200", cfg.data_path, ["cub200", "CUB200", "cub"], "test",
                                  cfg.class_names, HOW_TO_GET["cub200"], needs_names=text)
    if name == "imagenet100":
        return load_imagenet100(cfg.data_path, cfg.imagenet100_classes, cfg.class_names, text)
    if name in LOADERS:
        return LOADERS[name](cfg, text)
    if name == "folder":  # any dataset as train/<class>/ and test/<class>/ folders (e.g. held-out Oxford Pets)
        return load_split_folders("folder", cfg.data_path, [], "test", cfg.class_names,
                                  "Give data_path a folder with train/<class>/ and test/<class>/ image folders.",
                                  needs_names=text)
    if name in DATASETS:  # a dataset of the config's list whose loader module has not been imported
        raise DatasetError(f"dataset '{name}' is read by toolbox/benchmark_data.py, which registers itself on import: "
                           "import toolbox.data_manager (or toolbox.benchmark_data) before build_raw_data")
    raise DatasetError(f"unknown dataset '{name}' (config key 'dataset')")
