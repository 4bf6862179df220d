"""Benchmark learners are in the factory only while they are measured (so a registration
never shows in another run's config errors or key suggestions)."""
from __future__ import annotations

import contextlib
from typing import Dict

from utils import factory
from utils.config import OPTIONS


@contextlib.contextmanager
def registered(learners: Dict[str, str], method: str):
    """``learners`` (name -> "module:Class") as learners of ``method``, with its options."""
    factory.LEARNERS.update(learners)
    OPTIONS.update({name: OPTIONS[method] for name in learners})
    try:
        yield
    finally:
        for name in learners:
            factory.LEARNERS.pop(name, None)
            OPTIONS.pop(name, None)
