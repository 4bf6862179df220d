"""Learner registry: ``get_model(name, args)``. Learners are imported by dotted path on
demand, so a registry entry costs nothing until it is used."""
from __future__ import annotations

import difflib
import importlib
from typing import Any, Dict

from utils.config import OPTIONS, ConfigError, method_options, option_owner  # noqa: F401  (the registry's options)

LEARNERS = {
    "mgclip": "models.mgclip:MGCLIP",
    "proof": "models.proof:PROOF",
    "rapf": "models.rapf:RAPF",
    "zs_clip": "models.zs_clip:ZSCLIP",
}

def check_model_name(model_name: str) -> str:
    name = model_name.lower()
    if name not in LEARNERS:
        close = difflib.get_close_matches(name, list(LEARNERS), n=1, cutoff=0.4)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"unknown model_name '{model_name}'{hint} (known: {', '.join(sorted(LEARNERS))})")
    return name


def get_model(model_name: str, args: Dict[str, Any]):
    """The learner registered as ``model_name``, built with ``args`` (a dict)."""
    module, cls = LEARNERS[check_model_name(model_name)].split(":")
    return getattr(importlib.import_module(module), cls)(args)
