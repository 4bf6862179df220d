import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

torch.set_num_threads(2)


def tiny_args(tmp_path=None, **overrides):
    """A small, fast, offline run: synthetic data, tiny random CLIP, CPU."""
    args = {
        "model_name": "mgclip", "dataset": "synthetic", "backbone": "tiny-random", "device": "cpu",
        "synthetic_classes": 6, "synthetic_train_per_class": 8, "synthetic_test_per_class": 4,
        "synthetic_image_size": 32, "init_cls": 2, "increment": 2, "seed": 1993,
        "batch_size": 8, "eval_batch_size": 32, "visual_batch_size": 8, "epochs": 1, "prefix": "test",
    }
    if tmp_path is not None:
        args["logdir"] = str(tmp_path / "logs")
    if overrides.get("model_name", "mgclip") != "mgclip":
        del args["visual_batch_size"]  # MG-CLIP's own option: another method refuses it
    args.update(overrides)
    return args


@pytest.fixture
def make_args(tmp_path):
    return lambda **kw: tiny_args(tmp_path, **kw)


@pytest.fixture(scope="session")
def tiny_clip():
    from utils.clip_backbone import load_clip

    return load_clip("tiny-random")


SHARED_RELEASED = os.path.join(os.path.dirname(ROOT), "shared", "released")


def shared_released(name):
    """Path of the official file ``name`` (e.g. ``mgclip/class_orders/cifar100.yaml``) in
    ``../shared/released``; skips the test where that folder is absent (a user's clone)."""
    path = os.path.join(SHARED_RELEASED, *name.split("/"))
    if not os.path.isfile(path):
        pytest.skip(f"needs ../shared/released/{name} (the official data files; absent outside the project)")
    return path


@pytest.fixture
def released_cache(tmp_path):
    """A ``released_cache`` folder holding local copies of every pinned official file, as
    if each had been downloaded once (copied from ../shared/released)."""
    import shutil

    from toolbox.released import SHA256, cache_path

    cache = tmp_path / "released-cache"
    for name in SHA256:
        target = cache_path(name, str(cache))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy(shared_released(name), target)
    return str(cache)
