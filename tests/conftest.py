import json
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
    args.update(overrides)
    if "visual_batch_size" not in overrides:  # MG-CLIP's option: only where a method has it (others refuse it)
        from toolbox.registry import LEARNERS, option_names

        models = args["model_name"] if isinstance(args["model_name"], list) else [args["model_name"]]
        # a name not registered here is a fork's name for the plugin (MG-CLIP): it keeps the option
        if all(m in LEARNERS and "visual_batch_size" not in option_names(m) for m in models):
            del args["visual_batch_size"]
    return args


def write_cfg(folder, name="cfg.json", **over):
    """A tiny config written to ``folder/name``; returns (its path, the run folder of its first seed)."""
    from toolbox.configs import make_config
    from toolbox.trainer import run_dir_for

    args = tiny_args(folder, **over)
    path = folder / name
    path.write_text(json.dumps(args))
    seed = args["seed"] if isinstance(args["seed"], int) else args["seed"][0]
    return path, run_dir_for(make_config({**args, "model_name": _first(args["model_name"])}), seed)


def make_learner(args):
    """(learner, data manager) of a one-method tiny config dict, built as a run builds them."""
    from toolbox.configs import make_config
    from toolbox.data_manager import DataManager
    from toolbox.registry import get_model

    cfg = make_config(args)
    torch.manual_seed(0)
    dm = DataManager(cfg.dataset, True, cfg.seeds()[0], cfg.init_cls, cfg.increment, cfg)
    return get_model(cfg.model_name, {**cfg.to_dict(), "seed": cfg.seeds()[0]}), dm


def refused(folder, capsys, args) -> str:
    """Runs ``main.py`` on a config of ``args`` written to ``folder``; asserts it stops before
    any work (exit 2) with a one-line error and returns that line."""
    from main import main

    path = folder / "refused.json"
    path.write_text(json.dumps(args))
    assert main(["--config", str(path), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def _first(model_name):
    return model_name[0] if isinstance(model_name, list) else model_name


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
