"""Checkpoints for resuming a run: atomic save, checked load, RNG capture, config comparison.

A checkpoint holds what is needed to continue as if never stopped: the learner's state
(LoRA, visual classifier, epoch budget, gap records), every RNG state, the metrics so far,
the resolved config and class order. It is written to a temp file in the run directory,
fsynced and renamed over the previous one, so the previous checkpoint survives any crash
during the write. Only plain types and tensors are stored, so it loads with
``weights_only=True``.
"""
from __future__ import annotations

import io
from typing import Any, Dict, List

import torch

from toolbox.io import atomic_write
from utils.config import BY_CONTENT_KEYS, PLACEMENT_KEYS
from utils.rng import rng_state, set_rng_state  # noqa: F401  (part of the checkpoint API)

FORMAT_VERSION = 1

# Keys that may differ between a run and its resumption: where things are and how fast they
# run (not what is computed), and the data files the resumed run compares by what they give
# (class order and names are checked against the checkpoint's).
RUN_ONLY_KEYS = PLACEMENT_KEYS | BY_CONTENT_KEYS


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or does not belong to this config."""


def save_checkpoint(path: str, payload: Dict[str, Any]) -> None:
    # Serialized in memory first: torch's zip writer reports a full disk as a RuntimeError
    # from C++; a plain file write reports it as an OSError with the path.
    buf = io.BytesIO()
    torch.save({"format": FORMAT_VERSION, **payload}, buf)
    atomic_write(path, lambda f: f.write(buf.getbuffer()), mode="wb")


def load_checkpoint(path: str) -> Dict[str, Any]:
    import os

    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint at {path}: nothing to resume (run without --resume, with --overwrite, "
                              f"to start over)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} is unreadable or corrupt ({type(e).__name__}: {e}); "
                              f"run without --resume, with --overwrite, to start the run over") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} is not a checkpoint of this toolbox (format "
                              f"{state.get('format') if isinstance(state, dict) else '?'}, expected {FORMAT_VERSION})")
    return state


def config_differences(saved: Dict[str, Any], current: Dict[str, Any]) -> List[str]:
    """Keys whose values differ and that change what a run computes."""
    keys = (set(saved) | set(current)) - RUN_ONLY_KEYS
    return sorted(k for k in keys if saved.get(k) != current.get(k))
