"""Zero-shot retention: after continual learning, classify held-out data zero-shot (the
toolbox's prompt, the held-out class names) with the run's final model and with zero-shot
CLIP, optionally on ImageNet-C corruptions generated on the fly (``imagecorruptions``).

- In a run: ``zero_shot_eval: [{dataset: cifar100, corruption: gaussian_noise, severity: 3}]``
  evaluates after the last task into ``results.json`` (``zero_shot_retention``).
- On a finished run: ``python -m toolbox.retention RUN_DIR --dataset cifar100 --corruption
  gaussian_noise --severity 3`` writes ``retention.json`` in the run directory.

Each held-out spec: ``dataset`` (any dataset the toolbox loads; its test split),
``data_path`` (default: the run's), ``split`` (``folder`` only: evaluate ``<data_path>/<split>/<class>/``
alone, e.g. ``imagenet/val`` for ImageNet's validation images), ``class_names`` (a file, or an official table such as
``released:mgclip/dataset_reqs/oxford_pet_classes.txt``), ``corruption`` (an ImageNet-C name, none = clean),
``severity`` (1-5, default 3), ``max_images`` (a seeded subset), ``seed`` (0), ``name``.
Images are resized and centre-cropped as CLIP's preprocessing does, then corrupted (per
image, with a seed derived from the spec's seed and the image's index, so the same images
come out whatever the order), then normalised.
"""
from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import sys
import types
import warnings
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from PIL import Image

from toolbox.configs import check_held_out_spec
from toolbox.data import DatasetError, RawData, load_test_folder
from toolbox.data_manager import build_raw_data, open_rgb  # data_manager's import adds PROOF's benchmarks
from toolbox.io import write_json
from toolbox.released import ReleasedFileError, fetch_released
from toolbox.restore import RunDirError, load_learner
from utils.clip_backbone import clip_resize_crop, ensure_pkg_resources
from utils.config import Config, ConfigError
from utils.preprocess import DevicePreprocess

logger = logging.getLogger(__name__)


def corruptions_module():
    ensure_pkg_resources()  # imagecorruptions imports pkg_resources, gone from setuptools >= 81
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pkg_resources' deprecation notice
            from imagecorruptions import corrupt, corruptions, get_corruption_names
    except ImportError as e:
        missing = getattr(e, "name", None) == "imagecorruptions"
        raise ConfigError("config key 'zero_shot_eval' asks for a corruption, which needs the 'imagecorruptions' "
                          "package: " + ("pip install -e .[corruptions]" if missing else
                                         f"it is installed but fails to import ({e})")) from None
    _modern_spellings(corruptions)
    return corrupt, get_corruption_names


class _NumpyWithFloat_(types.ModuleType):
    """numpy as seen by imagecorruptions: ``np.float_`` (removed in numpy 2) is float64."""
    float_ = np.float64

    def __getattr__(self, name: str):
        return getattr(np, name)


def _modern_spellings(corruptions: types.ModuleType) -> None:
    """imagecorruptions 1.1.2 (its latest release) was written for numpy 1 and
    scikit-image < 0.19: ``fog`` reads ``np.float_`` (numpy 2: ``np.float64``), and
    ``gaussian_blur`` and ``glass_blur`` pass ``multichannel=True`` to skimage's ``gaussian``
    (now ``channel_axis=-1``). Only those two spellings are translated, inside its
    corruptions module; the computation stays the library's."""
    if not hasattr(np, "float_") and not isinstance(corruptions.np, _NumpyWithFloat_):
        corruptions.np = _NumpyWithFloat_("numpy")
    gaussian = corruptions.gaussian
    if "multichannel" not in inspect.signature(gaussian).parameters and not getattr(gaussian, "_translated", False):
        def translated(image, *args, multichannel=None, **kwargs):
            if multichannel:
                kwargs.setdefault("channel_axis", -1)
            return gaussian(image, *args, **kwargs)

        translated._translated = True
        corruptions.gaussian = translated


def check_corruption(name: str, severity: int) -> None:
    """The corruption exists and runs here (refused before the run starts, with the
    library's reason, where it fails in the installed versions)."""
    corrupt, names = corruptions_module()
    known = names("all")
    if name not in known:
        raise ConfigError(f"config key 'zero_shot_eval': corruption '{name}' is not one of {', '.join(known)}")
    try:
        corrupt(np.full((32, 32, 3), 128, dtype=np.uint8), corruption_name=name, severity=severity)
    except Exception as e:
        raise ConfigError(f"config key 'zero_shot_eval': corruption '{name}' fails in the installed "
                          f"imagecorruptions ({type(e).__name__}: {e}); choose another") from None


def corrupt_images(images: np.ndarray, name: str, severity: int, seed: int, first: int = 0) -> np.ndarray:
    """uint8 (N, H, W, 3) -> the same images corrupted; image i drawn with seed
    ``seed * 1_000_003 + first + i`` (``first``: the position of ``images[0]`` in the whole
    held-out set, so a set corrupted in chunks equals the set corrupted at once; numpy's
    global generator, which imagecorruptions uses, is restored afterwards)."""
    corrupt, _ = corruptions_module()
    saved = np.random.get_state()
    try:
        out = np.empty_like(images)
        for i, image in enumerate(images):
            np.random.seed((seed * 1_000_003 + first + i) % 2**32)
            corrupted = np.asarray(corrupt(image, corruption_name=name, severity=severity))
            out[i] = np.clip(corrupted, 0, 255).astype(np.uint8)
        return out
    finally:
        np.random.set_state(saved)


def held_out_config(spec: Dict[str, Any], released_cache: str, data_path: Optional[str] = None) -> Config:
    """The data config of a held-out spec; ``class_names: released:mgclip/dataset_reqs/<file>``
    names an official name table (e.g. ``oxford_pet_classes.txt``), fetched and checked. A
    spec without ``data_path`` reads the run's (``data_path``), else the config default."""
    keys = {k: spec[k] for k in ("data_path", "class_names", "synthetic_classes", "synthetic_test_per_class",
                                 "synthetic_image_size") if spec.get(k) is not None}
    if data_path is not None:
        keys.setdefault("data_path", data_path)
    names = keys.get("class_names", "")
    if names.startswith("released:") and "/" in names:
        keys["class_names"] = fetch_released(names.split(":", 1)[1], released_cache)
    return Config.from_dict({"dataset": spec["dataset"], "class_order": "default", **keys, "init_cls": 1,
                             "increment": 1})


def held_out_data(spec: Dict[str, Any], released_cache: str = Config.released_cache,
                  data_path: Optional[str] = None) -> RawData:
    """The held-out dataset of a spec: its test split, or with ``split`` the class folders
    of ``<data_path>/<split>/`` alone (e.g. ImageNet's ``imagenet/val/<wnid>/``)."""
    cfg = held_out_config(spec, released_cache, data_path)
    if spec.get("split"):
        return load_test_folder(spec["dataset"], os.path.join(cfg.data_path, spec["split"]), cfg.class_names,
                                needs_names="zero-shot evaluation")
    return build_raw_data(cfg)


def held_out_label(spec: Dict[str, Any]) -> str:
    """A held-out set's name: the spec's ``name``, else its dataset and corruption (``cifar100 frost-3``)."""
    return spec.get("name") or spec["dataset"] + (f" {spec['corruption']}-{spec.get('severity', 3)}"
                                                  if spec.get("corruption") else "")


def held_out_selection(spec: Dict[str, Any], released_cache: str = Config.released_cache,
                       data_path: Optional[str] = None) -> Tuple[RawData, np.ndarray]:
    """The held-out dataset and the positions of its test images evaluated: all, or a
    seeded subset of ``max_images`` (sorted)."""
    raw = held_out_data(spec, released_cache, data_path)
    idx = np.arange(len(raw.test_targets))
    if spec.get("max_images") and spec["max_images"] < len(idx):
        idx = np.sort(np.random.RandomState(spec.get("seed", 0)).choice(idx, spec["max_images"], replace=False))
    return raw, idx


def resized_images(raw: RawData, idx: np.ndarray, resolution: int) -> np.ndarray:
    """The test images at positions ``idx``, resized and centre-cropped like CLIP: uint8 (N, R, R, 3)."""
    resize = clip_resize_crop(resolution)
    return np.stack([np.asarray(resize(open_rgb(raw.test_images[i]) if raw.use_path else
                                       Image.fromarray(raw.test_images[i]))) for i in idx])


def held_out_images(spec: Dict[str, Any], resolution: int, released_cache: str = Config.released_cache,
                    data_path: Optional[str] = None) -> Tuple[np.ndarray, np.ndarray, List[str]]:
    """The held-out test images resized and cropped like CLIP (uint8 (N, R, R, 3)), labels,
    class names: all in memory (``evaluate`` reads them in chunks instead)."""
    raw, idx = held_out_selection(spec, released_cache, data_path)
    return resized_images(raw, idx, resolution), np.asarray(raw.test_targets)[idx], raw.class_names


@torch.no_grad()
def count_correct(learner, images: np.ndarray, labels: np.ndarray, text: torch.Tensor, trained: bool,
                  batch: int = 256) -> int:
    """How many of ``images`` (uint8, CLIP-sized) the learner's image view (as trained, or as
    zero-shot CLIP; ``models/base.py``) puts nearest to their own class's row of ``text``."""
    normalise = DevicePreprocess(images.shape[1], learner._device)  # CLIP-sized: normalisation only
    correct = 0
    for i in range(0, len(labels), batch):
        feats = learner.image_view(normalise(torch.from_numpy(images[i:i + batch])), trained)
        pred = (feats @ text.t()).argmax(1).cpu().numpy()
        correct += int((pred == labels[i:i + batch]).sum())
    return correct


def evaluate(learner, spec: Dict[str, Any], chunk: int = 1024) -> Dict[str, Any]:
    """One held-out spec: zero-shot CLIP's and the trained model's accuracy, and the delta.
    The images are read, resized and corrupted ``chunk`` at a time (ImageNet's 50,000
    validation images would take 7.5 GB at 224 x 224 at once); each image's corruption is
    seeded by its position in the whole set, so the result does not depend on ``chunk``."""
    raw, idx = held_out_selection(spec, learner.cfg.released_cache, learner.cfg.data_path)
    names, targets = raw.class_names, np.asarray(raw.test_targets)
    texts = {trained: learner.text_view(names, trained) for trained in (False, True)}
    correct = {False: 0, True: 0}
    for start in range(0, len(idx), chunk):
        part = idx[start:start + chunk]
        images = resized_images(raw, part, learner._network.input_resolution)
        if spec.get("corruption"):
            images = corrupt_images(images, spec["corruption"], spec.get("severity", 3), spec.get("seed", 0),
                                    first=start)
        for trained in (False, True):
            correct[trained] += count_correct(learner, images, targets[part], texts[trained], trained)
    clip_acc, model_acc = (100.0 * correct[t] / len(idx) for t in (False, True))
    label = held_out_label(spec)
    logger.info("zero-shot retention on %s: zero-shot CLIP %.2f %%, after training %.2f %% (%+.2f)", label,
                clip_acc, model_acc, model_acc - clip_acc)
    return {"name": label, "spec": dict(spec), "images": int(len(idx)), "classes": len(names),
            "zero_shot_clip": clip_acc, "model": model_acc, "delta": model_acc - clip_acc}


def check_views(learner) -> None:
    """Retention compares the learner's views (``models/base.py``) as trained and as
    zero-shot CLIP: a learner without them is refused before a run starts. Read from the
    learner's class (duck typing): a hook it lacks, or the default that refuses (marked
    ``refuses`` in ``models/base.py``), is missing."""
    missing = [hook for hook in ("image_view", "text_view")
               if getattr(type(learner), hook, None) is None or getattr(getattr(type(learner), hook), "refuses", False)]
    if missing:
        raise ConfigError(f"config key 'zero_shot_eval': {type(learner).__name__} has no {' or '.join(missing)} "
                          f"(models/base.py), so its zero-shot retention cannot be measured; remove the key")


def check_specs(specs: List[Dict[str, Any]], released_cache: str = Config.released_cache,
                data_path: Optional[str] = None) -> None:
    """Before a run: each spec is valid, its corruption runs here, and its data loads
    (``data_path``: the run's, for specs without their own)."""
    for spec in specs:
        check_held_out_spec(spec)
        if spec.get("corruption"):
            check_corruption(spec["corruption"], spec.get("severity", 3))
        held_out_data(spec, released_cache, data_path)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m toolbox.retention", description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="a run directory (with config.json and checkpoint.pt)")
    p.add_argument("--dataset", required=True)
    p.add_argument("--data-path", dest="data_path", help="default: the run's data_path")
    p.add_argument("--split", help="dataset folder only: evaluate <data-path>/<split>/<class>/ (e.g. imagenet/val)")
    p.add_argument("--class-names", dest="class_names")
    p.add_argument("--corruption")
    p.add_argument("--severity", type=int, default=3)
    p.add_argument("--max-images", dest="max_images", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="output file (default: RUN/retention.json)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    spec = {k: v for k, v in vars(args).items() if k not in ("run", "out") and v is not None}
    try:
        learner, _, _ = load_learner(args.run)
        check_views(learner)
        check_specs([spec], learner.cfg.released_cache, learner.cfg.data_path)
        result = evaluate(learner, spec)
    except (RunDirError, ConfigError, DatasetError, ReleasedFileError, NotImplementedError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = args.out or os.path.join(args.run, "retention.json")
    write_json(out, result)
    print(json.dumps({k: result[k] for k in ("name", "images", "zero_shot_clip", "model", "delta")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
