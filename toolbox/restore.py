"""A learner restored from a run folder's checkpoint (its last completed task), for the
commands that look at a finished or stopped run: ``toolbox.analysis`` and
``toolbox.retention``."""
from __future__ import annotations

import os
from typing import Any, Tuple

from toolbox.checkpoint import CheckpointError, load_checkpoint
from toolbox.configs import build_config
from toolbox.data_manager import DataManager
from toolbox.registry import get_model, method_data
from utils.config import Config, ConfigError


class RunDirError(RuntimeError):
    """The run folder cannot be read back; the message says why and what to do."""


def load_learner(run_dir: str) -> Tuple[Any, DataManager, Config]:
    """(learner restored from the checkpoint, data manager, resolved config)."""
    config = os.path.join(run_dir, "config.json")
    if not os.path.isfile(config):
        raise RunDirError(f"{run_dir}: no config.json (is it a run directory?)")
    try:
        cfg = build_config(config)
        state = load_checkpoint(os.path.join(run_dir, "checkpoint.pt"))
    except (ConfigError, CheckpointError) as e:
        raise RunDirError(str(e)) from None
    if state["completed_tasks"] == 0:
        raise RunDirError(f"{run_dir}: no task has completed yet; analyse it after its first task")
    seed = int(state["config"]["seed"])
    resolved = {**cfg.to_dict(), "seed": seed}
    dm = DataManager(cfg.dataset, True, seed, cfg.init_cls, cfg.increment, cfg, **method_data(cfg.model_name))
    learner = get_model(cfg.model_name, resolved)
    learner.load_state_dict(state["learner"])
    return learner, dm, cfg
