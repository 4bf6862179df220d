"""Data files of the methods' official releases (class orders, class-name tables), fetched
at run time like CLIP weights: from the official repository at a pinned commit, SHA-256
checked, cached. The project ships none of their contents.

``fetch_released("mgclip/class_orders/cifar100.yaml", cache)`` returns a local, verified
copy; the first path component names the release (see ``RELEASES``), the rest is the
file's path in that repository. A ``#key`` after the path (``proof/utils/labels.json#cub``)
is kept on the local path it returns: the list under that key of a JSON object (see
``toolbox.data.read_class_table``). ``released_file(key, dataset, release)`` says which file a
config value ``released`` (the run's method's release) or ``released:<release>`` stands for.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional, Tuple

from utils.config import Config, ConfigError
from utils.download import fetch_verified

# release -> (GitHub repository, pinned commit)
RELEASES: Dict[str, Tuple[str, str]] = {
    "mgclip": ("linlany/MindtheGap", "f40bfceae67395c54c75f5504841200cd217d4a0"),
    "rapf": ("linlany/RAPF", "81d41dfb2e6f0c856c8ca520c1b35bd6ef0ba883"),
    "proof": ("zhoudw-zdw/PROOF", "0bb20520a726ebf3ca8b0c32168d5d4c1f59f3b7"),
}

# SHA-256 of each file a run may need, at the pinned commit.
SHA256: Dict[str, str] = {
    "mgclip/class_orders/cifar100.yaml": "4fbdb278735ac6b2411d41ed3fd01733ec273504624eba1abb40f4c4ed6622f1",
    "mgclip/class_orders/imagenet100.yaml": "1e52b22c10630a57165b18f8bc9ac4716c756a0a3812bd91caabad72f51b268b",
    "mgclip/class_orders/imagenet_R.yaml": "03b5722a4159525d4dd57ae3956b51c54210c253a151ac2b545d28b4af25bb21",
    "mgclip/dataset_reqs/imagenet100_classes.txt": "a646f0e6117e9061c4da5c9db46e858fcaf3aceb46443d436f2e4a35e9e2b8d6",
    "mgclip/dataset_reqs/imagenet_R_classes.txt": "5e280b6eb4246282f3a10554b7c781a176e5962c5b48b24931796e8f55bd2fd2",
    "mgclip/dataset_reqs/cub200_classes.txt": "48f08a36bdb8dfbaa13bc6041da2024902bbee0631810b54876310ebb6867f20",
    "rapf/class_orders/cifar100_order.yaml": "4fbdb278735ac6b2411d41ed3fd01733ec273504624eba1abb40f4c4ed6622f1",
    "rapf/class_orders/imagenet100.yaml": "e52575ccc3d6cbfeae6bbeb7f018fab389a083b640c0bf54230e3473833a598d",
    "rapf/class_orders/imagenet_R_order.yaml": "1c750f30ad6cf9e791bba60fa656dfe691a34c0b9ed39e7443dbd07ab4125b04",
    "rapf/class_orders/cub200_order.yaml": "5f6c87a4b206ccbe7d6e6df945f95807dce6b5945cab7b6266b99179e73919b2",
    "rapf/imgr_split/imgr_train_test_split.txt": "ecf0b2e74696f38d0180ab60cf632a9cb417b5522df20d57bc587911e3b59f81",
    "mgclip/dataset_reqs/oxford_pet_classes.txt": "e859b0c64be2b4a37ea33ac5c221d32b7d271b2962d87832b43f7531e7abbdd7",
    "mgclip/dataset_reqs/imagenet_c_classes.txt": "4c8a47123f8cf08a6da31fa8e4ca8027d35fca379c1c186e8e291d4008bbf81f",
    "proof/utils/labels.json": "d54724e52a08b225d67eda5ef3cc392f7a3be8784b1d642e619b44cc5ed921e8",
    "proof/utils/templates.json": "26854c1e3fb6456d21656197c85aa5180c268a6d75ba67c937d16529f3260152",
}

# What the config value "released" means for MG-CLIP, per key and dataset.
MGCLIP_FILES: Dict[str, Dict[str, str]] = {
    "class_order": {"cifar100": "mgclip/class_orders/cifar100.yaml",
                    "imagenet100": "mgclip/class_orders/imagenet100.yaml",
                    "imagenet_r": "mgclip/class_orders/imagenet_R.yaml"},
    "class_names": {"imagenet100": "mgclip/dataset_reqs/imagenet100_classes.txt",
                    "imagenet_r": "mgclip/dataset_reqs/imagenet_R_classes.txt",
                    "cub200": "mgclip/dataset_reqs/cub200_classes.txt"},
    "imagenet100_classes": {"imagenet100": "mgclip/dataset_reqs/imagenet100_classes.txt"},
}


# RAPF's release: its own class orders (ImageNet-R's differs from MG-CLIP's, and it has
# CUB-200's); its name tables are MG-CLIP's files (identical ImageNet-R and CUB-200 blobs).
RAPF_FILES: Dict[str, Dict[str, str]] = {
    "class_order": {"cifar100": "rapf/class_orders/cifar100_order.yaml",
                    "imagenet100": "rapf/class_orders/imagenet100.yaml",
                    "imagenet_r": "rapf/class_orders/imagenet_R_order.yaml",
                    "cub200": "rapf/class_orders/cub200_order.yaml"},
    "class_names": MGCLIP_FILES["class_names"],
    "imagenet100_classes": MGCLIP_FILES["imagenet100_classes"],
    "imagenet_r_split": {"imagenet_r": "rapf/imgr_split/imgr_train_test_split.txt"},
}

# PROOF's release: its class names, utils/labels.json, one list per dataset (its DataManager
# indexes the list by class id: CIFAR-100's label ids, the sorted class folders of ImageNet-R,
# CUB-200 and PROOF's other benchmark sets, the orders this toolbox's loaders give; its keys
# are PROOF's dataset names). "released:proof" in a config.
PROOF_FILES: Dict[str, Dict[str, str]] = {
    "class_names": {"cifar100": "proof/utils/labels.json#cifar224",
                    "imagenet_r": "proof/utils/labels.json#imagenetr",
                    "cub200": "proof/utils/labels.json#cub",
                    **{d: f"proof/utils/labels.json#{d}" for d in ("aircraft", "cars", "food101", "objectnet", "sun",
                                                                    "ucf101", "caltech101", "flowers")},
                    "imagenet_a": "proof/utils/labels.json#imageneta"},
}

TABLES = {"mgclip": MGCLIP_FILES, "rapf": RAPF_FILES, "proof": PROOF_FILES}


def release_of(value: str, method_release: Optional[str], model_name: str = "the method") -> Optional[str]:
    """Which release a config value names: "released" = the run's method's own release
    (``method_release``, as its learner declares it), "released:rapf" = that release's;
    None if the value is not of this kind. A method that declares no release has no
    "released" files of its own: the value must name one."""
    if value == "released":
        if method_release is None:
            raise ReleasedFileError(f"'released': {model_name} declares no official release of its own; name one "
                                    f"(released:{', released:'.join(TABLES)}) or give a file")
        return method_release
    if isinstance(value, str) and value.startswith("released:"):
        release = value.split(":", 1)[1]
        if release not in TABLES:
            raise ReleasedFileError(f"'{value}': no release '{release}' (known: {', '.join(TABLES)})")
        return release
    return None


class ReleasedFileError(RuntimeError):
    """An official data file is unknown, could not be fetched, or has the wrong checksum."""


def url_of(name: str) -> str:
    release, path = _split(name)
    repo, commit = RELEASES[release]
    return f"https://raw.githubusercontent.com/{repo}/{commit}/{path}"


def cache_path(name: str, cache_dir: str) -> str:
    """Where the verified copy of ``name`` lives: ``<cache>/<release>/<commit>/<path>``."""
    release, path = _split(name)
    return os.path.join(os.path.expanduser(cache_dir), release, RELEASES[release][1][:12], *path.split("/"))


def fetch_released(name: str, cache_dir: str) -> str:
    """A local copy of the official file ``name`` (see module doc), SHA-256 checked. A
    cached copy with another checksum is refused, never replaced. ``name#key``: the same
    file, with ``#key`` kept on the path returned."""
    name, sep, key = name.partition("#")
    if name not in SHA256:
        raise ReleasedFileError(f"no pinned official file '{name}' (known: {', '.join(sorted(SHA256))})")
    inside = os.path.relpath(cache_path(name, "/"), "/")
    return fetch_verified(url_of(name), cache_path(name, cache_dir), SHA256[name], ReleasedFileError,
                          f"or set config key 'released_cache' to a folder that holds it as {inside}.",
                          redownload_mismatch=False) + sep + key


# PROOF's templates.json key per dataset (option ``templates: released``).
# ImageNet-A has none (PROOF's own code stops there with a KeyError): give the templates in the config.
PROOF_TEMPLATE_KEYS = {"cifar100": "cifar224", "imagenet_r": "imagenetr", "cub200": "cub",
                       **{d: d for d in ("aircraft", "cars", "food101", "objectnet", "sun", "ucf101", "caltech101",
                                         "flowers")}}


def released_templates(dataset: str, cache: str) -> List[str]:
    """PROOF's prompt templates for ``dataset`` from its released ``utils/templates.json``
    (fetched at the pinned commit, SHA-256 checked): the first trains, all are averaged at test."""
    if dataset not in PROOF_TEMPLATE_KEYS:
        raise ConfigError(f"config key 'templates' = 'released': PROOF's templates.json has no entry for dataset "
                          f"'{dataset}' (it has {', '.join(PROOF_TEMPLATE_KEYS)}); give a list of templates")
    with open(fetch_released("proof/utils/templates.json", cache), encoding="utf-8") as f:
        return list(json.load(f)[PROOF_TEMPLATE_KEYS[dataset]])


def with_released_options(args: Dict[str, Any]) -> Dict[str, Any]:
    """The learner's ``args`` with each option value that stands for an official file replaced by
    the file's contents, before the learner is built (``toolbox.registry.get_model``): PROOF's
    ``templates: released``. The run's config keeps the value as written."""
    if args.get("model_name") == "proof" and args.get("templates") in ("released", ["released"]):
        return {**args, "templates": released_templates(str(args.get("dataset", "")),
                                                        args.get("released_cache", Config.released_cache))}
    return args


def released_file(key: str, dataset: str, release: str = "mgclip") -> str:
    """The official file that config key ``key`` = "released" stands for on ``dataset``
    in ``release`` (its repository's own file)."""
    files = TABLES[release].get(key, {})
    if dataset not in files:
        has = ", ".join(sorted(files)) or "none"
        raise ReleasedFileError(f"config key '{key}' = 'released': the {release} release has no such file for "
                                f"dataset '{dataset}' (it has one for: {has}); give a file or another value")
    return files[dataset]


def _split(name: str) -> Tuple[str, str]:
    release, _, path = name.partition("/")
    if release not in RELEASES or not path:
        raise ReleasedFileError(f"'{name}' does not name an official file as <release>/<path> with release one of "
                                f"{', '.join(RELEASES)}")
    return release, path
