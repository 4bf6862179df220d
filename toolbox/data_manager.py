"""PyCIL's ``DataManager`` API, plus class names in incremental order and class-order files.

Labels handed out are already remapped: class ``class_order[i]`` becomes label ``i``, so
task ``t`` owns labels ``[sum(increments[:t]), sum(increments[:t+1]))``.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from toolbox import benchmark_data  # noqa: F401  (adds PROOF's benchmarks to toolbox.data.LOADERS)
from toolbox.data import DatasetError, RawData, build_raw_data
from toolbox.released import ReleasedFileError, fetch_released, release_of, released_file
from utils.clip_backbone import clip_resize_crop, clip_transform
from utils.config import Config

logger = logging.getLogger(__name__)


def shuffled_order(num_classes: int, seed: int) -> List[int]:
    """PyCIL's order: ``np.random.seed(seed); np.random.permutation(n)``, without touching
    numpy's global RNG (a RandomState with the same seed draws the same permutation)."""
    return np.random.RandomState(seed).permutation(num_classes).tolist()


def read_class_order(path: str) -> List[int]:
    """A class order from a YAML file with a ``class_order`` key (the released MG-CLIP
    files), a JSON list or object with that key, or a text file with one id per line."""
    if not os.path.isfile(path):
        raise DatasetError(f"class-order file not found: {path} (config key 'class_order')")
    with open(path, "r", encoding="utf-8") as f:
        text = f.read()
    if path.endswith((".yaml", ".yml", ".json")):
        import yaml  # YAML is a superset of JSON

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise DatasetError(f"class-order file {path} is not valid YAML/JSON: {e}") from None
        if isinstance(data, dict):
            if "class_order" not in data:
                raise DatasetError(f"class-order file {path} has no 'class_order' key (keys: {sorted(data)})")
            data = data["class_order"]
    else:
        data = [line.strip() for line in text.splitlines() if line.strip()]
    try:
        return [int(c) for c in data]
    except (TypeError, ValueError):
        raise DatasetError(f"class-order file {path} must list integer class ids") from None


def check_class_order(order: Sequence[int], num_classes: int, source: str) -> List[int]:
    order = list(order)
    seen, repeated = set(), []
    for c in order:
        if c in seen:
            repeated.append(c)
        seen.add(c)
    missing = sorted(set(range(num_classes)) - seen)
    out_of_range = sorted(c for c in seen if not 0 <= c < num_classes)
    if repeated or missing or out_of_range:
        parts = []
        if missing:
            parts.append(f"missing ids {missing[:10]}{'...' if len(missing) > 10 else ''}")
        if repeated:
            parts.append(f"repeated ids {sorted(set(repeated))[:10]}")
        if out_of_range:
            parts.append(f"ids outside 0..{num_classes - 1}: {out_of_range[:10]}")
        raise DatasetError(f"class order from {source} is not a permutation of the {num_classes} classes: "
                           + "; ".join(parts))
    return order


def _release(cfg: Config, value: Any, release: Optional[str]) -> Optional[str]:
    """The release a config value names ("released" = ``release``, the run's method's own), or None."""
    if not isinstance(value, str):
        return None
    if value == "released" and release is None:
        raise ReleasedFileError(f"'released' stands for {cfg.model_name}'s own release, which the data manager was "
                                f"not told: pass release= (toolbox.registry.method_data), or name one "
                                f"(released:mgclip)")
    return release_of(value, release, cfg.model_name)


def resolve_released(cfg: Config, release: Optional[str] = None) -> Config:
    """``cfg`` with ``class_names`` / ``imagenet100_classes`` / ``imagenet_r_split`` = "released" replaced by the
    local, verified copy of the official file (downloaded on first use); ``release``: the method's own."""
    changes = {key: fetch_released(released_file(key, cfg.dataset, _release(cfg, getattr(cfg, key), release)),
                                   cfg.released_cache)
               for key in ("class_names", "imagenet100_classes", "imagenet_r_split")
               if _release(cfg, getattr(cfg, key), release)}
    return dataclasses.replace(cfg, **changes) if changes else cfg


def check_every_class_has_images(raw: RawData, dataset: str) -> None:
    """A class without training images cannot be learned, one without test images cannot
    be evaluated: both are refused before any training, naming the class."""
    for split, targets in (("training", raw.train_targets), ("test", raw.test_targets)):
        counts = np.bincount(np.asarray(targets, dtype=np.int64), minlength=raw.num_classes)
        empty = np.nonzero(counts == 0)[0]
        if len(empty):
            named = ", ".join(f"{c} ({raw.class_names[c]})" for c in empty[:5])
            raise DatasetError(f"dataset '{dataset}': class(es) {named} have no {split} images; every class needs "
                               f"training and test images (check the dataset's files under config key 'data_path')")


def few_shot(raw: RawData, shots: int, seed: int) -> RawData:
    """Keep ``shots`` training images per class (all of a class that has fewer), drawn
    with ``seed`` and kept in dataset order; the test set is unchanged."""
    rng = np.random.RandomState(seed)
    targets = np.asarray(raw.train_targets)
    keep = np.sort(np.concatenate([
        rng.choice(idx, size=min(shots, len(idx)), replace=False)
        for idx in (np.nonzero(targets == c)[0] for c in range(raw.num_classes))]))
    images = raw.train_images[keep] if isinstance(raw.train_images, np.ndarray) else [raw.train_images[i] for i in keep]
    return RawData(images, targets[keep], raw.test_images, raw.test_targets, raw.class_names)


def _decode(path: str) -> Image.Image:
    """Any mode PIL reads as 3-channel RGB: grey (L, 1), palette (P), RGBA/LA (alpha dropped) and CMYK
    by PIL's conversion; 16-bit grey (I;16*, I) scaled from 0..65535 to 0..255 (PIL's own conversion
    clips it at 255, which turns most such images white)."""
    with Image.open(path) as im:
        if im.mode.startswith("I"):
            grey = np.asarray(im, dtype=np.float64) / 257.0
            return Image.fromarray(np.clip(grey, 0, 255).round().astype(np.uint8), "L").convert("RGB")
        return im.convert("RGB")


def open_rgb(path: str) -> Image.Image:
    """An image file as RGB: the run's one decoder (training, evaluation and ``--check``)."""
    try:
        return _decode(path)
    except Exception as e:
        raise DatasetError(unreadable_message([(path, _reason(path, e))])) from None


def _reason(path: str, error: Exception) -> str:
    """PIL's reason without the path it repeats ("cannot identify image file '<path>'")."""
    return str(error).replace(f" {path!r}", "") or type(error).__name__


def unreadable_message(bad: Sequence[tuple], shown: int = 5) -> str:
    """One line for the images that could not be read: ``bad`` = (path, reason) pairs, the
    first ``shown`` named, all counted."""
    total = len(bad)
    if total == 1:
        path, reason = bad[0]
        return f"image file could not be read: {path} ({reason}); remove or replace it"
    named = "; ".join(f"{path} ({reason})" for path, reason in bad[:shown])
    more = f"; and {total - shown} more" if total > shown else ""
    return f"{total} image files could not be read: {named}{more}; remove or replace them"


_VERIFIED: set = set()  # (path, size, mtime_ns) of images that decoded in this process


def _stat_key(path: str) -> Optional[tuple]:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return path, st.st_size, st.st_mtime_ns


def verify_image_files(paths: Sequence[str], workers: Optional[int] = None, progress_over: int = 2000,
                       desc: str = "checking images") -> int:
    """Decode every file of ``paths`` as ``open_rgb`` does (the run's decoder), in a thread pool
    (PIL releases the GIL while it decodes), with a progress bar on a terminal for more than
    ``progress_over`` images; raise one ``DatasetError`` naming the unreadable ones (the
    first five, and how many). Returns how many were decoded (files that decoded before in
    this process, unchanged, are not decoded again)."""
    from concurrent.futures import ThreadPoolExecutor

    keyed = ((p, _stat_key(p)) for p in dict.fromkeys(paths))  # dataset order, each file once
    todo = [(p, k) for p, k in keyed if k is None or k not in _VERIFIED]
    if not todo:
        return 0
    workers = workers or min(32, (os.cpu_count() or 1) + 4)
    chunk = min(64, max(1, len(todo) // (4 * workers)))
    chunks = [todo[i:i + chunk] for i in range(0, len(todo), chunk)]

    def decode(part):
        failed = []
        for path, key in part:
            try:
                _decode(path)  # what open_rgb decodes with
            except Exception as e:  # what open_rgb refuses
                failed.append((path, _reason(path, e)))
                continue
            if key is not None:
                _VERIFIED.add(key)
        return failed, len(part)

    bar = None
    if len(todo) > progress_over and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc=desc, unit="img", leave=False)
    bad: List[tuple] = []
    start = time.perf_counter()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="verify-images")
    try:
        for failed, n in pool.map(decode, chunks):
            bad += failed
            if bar is not None:
                bar.update(n)
    finally:
        pool.shutdown(cancel_futures=True)  # Ctrl-C: the chunks being decoded finish, no others start
        if bar is not None:
            bar.close()
    logger.info("decoded %d images to check them (%.1f s, %d threads)", len(todo), time.perf_counter() - start,
                workers)
    if bad:
        raise DatasetError(unreadable_message(bad))
    return len(todo)


class _DecodeDataset(Dataset):
    """Decode + CLIP resize/crop with PIL, as uint8 (R, R, 3): done once per run."""

    def __init__(self, paths: List[str], resolution: int):
        self.paths = paths
        self.resize = clip_resize_crop(resolution)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        return np.asarray(self.resize(open_rgb(self.paths[i])), dtype=np.uint8)


class CLDataset(Dataset):
    """Items are ``(index, image, label)`` as in PyCIL: the image is a normalized tensor
    after ``transform``, or with ``transform=None`` the uint8 array as a (H, W, 3) tensor
    (for batched preprocessing on the device)."""

    def __init__(self, images: Union[np.ndarray, List[str]], labels: np.ndarray, transform: Optional[Callable]):
        self.images = images
        self.labels = labels
        self.transform = transform
        self.use_path = not isinstance(images, np.ndarray)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def in_memory(self) -> bool:
        """uint8 arrays served as they are: worker processes would only add their start-up
        and the copying of every batch between processes."""
        return self.transform is None and not self.use_path

    def __getitem__(self, idx: int):
        if self.transform is None:
            return idx, torch.from_numpy(np.ascontiguousarray(self.images[idx])), int(self.labels[idx])
        image = open_rgb(self.images[idx]) if self.use_path else Image.fromarray(self.images[idx])
        if getattr(self.transform, "takes_index", False):  # utils.augment.SeededAugment: seeded per item
            return idx, self.transform(image, idx), int(self.labels[idx])
        return idx, self.transform(image), int(self.labels[idx])


class DataManager:
    """PyCIL-compatible: ``DataManager(dataset_name, shuffle, seed, init_cls, increment, args)``.

    ``args`` (a dict or ``Config``) supplies data_path, class_order, class_names and the
    synthetic-data sizes; without it the defaults of ``Config`` apply. What the method
    needs of its data comes from its learner, which the caller reads from the registry
    (``toolbox.registry.method_data``): ``release``, what a config value "released"
    stands for (None: a value must name one, "released:mgclip"), and ``needs_names``:
    whether it builds prompts from class names (then class folders that are ids are refused as names)."""

    def __init__(self, dataset_name: str, shuffle: bool, seed: int, init_cls: int, increment: int,
                 args: Optional[Union[Dict[str, Any], Config]] = None, release: Optional[str] = None,
                 needs_names: bool = True):
        if isinstance(args, Config):
            cfg = args
        else:
            cfg = Config.from_dict({**(args or {}), "dataset": dataset_name, "init_cls": init_cls,
                                    "increment": increment}, ignore_unknown=True)
        self.dataset_name = dataset_name
        self.image_size = 224
        cfg = resolve_released(cfg, release)
        raw: RawData = build_raw_data(cfg, needs_names)
        check_every_class_has_images(raw, dataset_name)
        n = raw.num_classes
        if cfg.shots_per_class is not None:
            raw = few_shot(raw, cfg.shots_per_class, seed)

        spec = cfg.class_order
        if isinstance(spec, list):
            order = check_class_order(spec, n, "config key 'class_order'")
        elif spec in ("shuffle", "default"):
            # "shuffle": PyCIL's seeded permutation (when the caller's ``shuffle`` is true)
            order = shuffled_order(n, seed) if spec == "shuffle" and shuffle else list(range(n))
        elif _release(cfg, spec, release):  # an official class-order file (fetched, SHA-256 checked)
            path = fetch_released(released_file("class_order", cfg.dataset, _release(cfg, spec, release)),
                                  cfg.released_cache)
            order = check_class_order(read_class_order(path), n, path)
        else:
            order = check_class_order(read_class_order(spec), n, spec)
        self._class_order = order

        if init_cls > n:
            raise DatasetError(f"config key 'init_cls' = {init_cls} is larger than the {n} classes of "
                               f"'{dataset_name}': use at most {n}")
        self._increments = [init_cls]
        while sum(self._increments) + increment < n:
            self._increments.append(increment)
        if n - sum(self._increments) > 0:
            self._increments.append(n - sum(self._increments))

        remap = np.empty(n, dtype=np.int64)
        remap[np.asarray(order)] = np.arange(n)
        self._train_data, self._test_data = raw.train_images, raw.test_images
        self._train_targets = remap[np.asarray(raw.train_targets)]
        self._test_targets = remap[np.asarray(raw.test_targets)]
        self._class_names = [raw.class_names[c] for c in order]
        self.use_path = raw.use_path
        self._decoded: Dict[tuple, np.ndarray] = {}  # (source, resolution) -> uint8 (N, R, R, 3)

    # --- PyCIL surface -----------------------------------------------------------
    @property
    def nb_tasks(self) -> int:
        return len(self._increments)

    def get_task_size(self, task: int) -> int:
        return self._increments[task]

    def get_total_classnum(self) -> int:
        return len(self._class_order)

    def get_dataset(self, indices: Sequence[int], source: str, mode: str, appendent=None,
                    ret_data: bool = False, transform: Optional[Callable] = None, raw: bool = False,
                    resolution: Optional[int] = None, num_workers: int = 0):
        """Images whose (remapped) label is in ``indices``. ``source``: "train" | "test";
        ``mode`` is accepted for PyCIL compatibility (train and test preprocess alike,
        SPEC 3). ``appendent=(images, labels)`` adds e.g. replay exemplars.

        ``raw=True``: items hold uint8 (H, W, 3) images for ``utils.preprocess`` on the
        device; JPEG datasets are then decoded and resized to ``resolution`` once per run
        (by PIL, with ``num_workers`` processes) and served from memory."""
        if source not in ("train", "test"):
            raise ValueError(f"get_dataset source must be 'train' or 'test', not {source!r}")
        data, targets = (self._train_data, self._train_targets) if source == "train" else (
            self._test_data, self._test_targets)
        if raw and not isinstance(data, np.ndarray):
            if resolution is None:
                raise ValueError("get_dataset(raw=True) on a JPEG dataset needs the resolution to decode to")
            data = self.decoded_images(source, resolution, num_workers)
        mask = np.isin(targets, np.asarray(list(indices)))
        sel = np.nonzero(mask)[0]
        images = data[sel] if isinstance(data, np.ndarray) else [data[i] for i in sel]
        labels = targets[sel]
        if appendent is not None and len(appendent) and len(appendent[1]):
            app_x, app_y = appendent
            images = (np.concatenate([images, app_x]) if isinstance(images, np.ndarray)
                      else list(images) + list(app_x))
            labels = np.concatenate([labels, np.asarray(app_y)])
        ds = CLDataset(images, labels, None if raw else (transform or clip_transform(self.image_size)))
        return (images, labels, ds) if ret_data else ds

    def decoded_images(self, source: str, resolution: int, num_workers: int = 0) -> np.ndarray:
        """All images of ``source`` decoded, resized and cropped to ``resolution`` (cached)."""
        key = (source, resolution)
        if key not in self._decoded:
            from torch.utils.data import DataLoader

            paths = self._train_data if source == "train" else self._test_data
            out = np.empty((len(paths), resolution, resolution, 3), dtype=np.uint8)
            loader = DataLoader(_DecodeDataset(paths, resolution), batch_size=64, num_workers=num_workers,
                                collate_fn=np.stack)
            start = time.perf_counter()
            pos = 0
            for batch in loader:
                out[pos:pos + len(batch)] = batch
                pos += len(batch)
            logger.info("decoded %d %s images at %d px once (%.1f s, %.2f GiB in memory)", len(paths), source,
                        resolution, time.perf_counter() - start, out.nbytes / 2**30)
            self._decoded[key] = out
        return self._decoded[key]

    def supports_raw(self, resolution: int, cache: str = "auto", max_gb: float = 8.0) -> bool:
        """Whether ``get_dataset(raw=True)`` should be used: in-memory arrays always; JPEG
        datasets when caching is on ("true") or would fit in ``max_gb`` ("auto")."""
        if not self.use_path:
            return True
        if cache in ("true", "false"):
            return cache == "true"
        n = len(self._train_data) + len(self._test_data)
        return n * resolution * resolution * 3 <= max_gb * 2**30

    # --- additions ---------------------------------------------------------------
    @property
    def class_order(self) -> List[int]:
        return list(self._class_order)

    def get_class_names(self, indices: Optional[Sequence[int]] = None) -> List[str]:
        """Class names in incremental order (of ``indices`` if given)."""
        if indices is None:
            return list(self._class_names)
        return [self._class_names[i] for i in indices]

    def task_range(self, task: int) -> range:
        start = sum(self._increments[:task])
        return range(start, start + self._increments[task])

    def image_paths(self, tasks: Optional[Sequence[int]] = None) -> List[str]:
        """The files a run of ``tasks`` (default: every task) reads: the training and test
        images of their classes (with ``shots_per_class`` only the kept training images);
        none for datasets held in memory."""
        if not self.use_path:
            return []
        tasks = range(self.nb_tasks) if tasks is None else tasks
        labels = np.asarray([c for t in tasks for c in self.task_range(t)], dtype=np.int64)
        return [data[i] for data, targets in ((self._train_data, self._train_targets),
                                              (self._test_data, self._test_targets))
                for i in np.nonzero(np.isin(targets, labels))[0]]

    def verify_images(self, tasks: Optional[Sequence[int]] = None, workers: Optional[int] = None,
                      progress_over: int = 2000) -> int:
        """Decode every image a run of ``tasks`` (default: every task) reads, as the run
        decodes them (``open_rgb``), in parallel; one ``DatasetError`` names the unreadable
        files (up to five, and how many). Returns how many files were decoded."""
        return verify_image_files(self.image_paths(tasks), workers, progress_over,
                                  desc=f"checking {self.dataset_name} images")
