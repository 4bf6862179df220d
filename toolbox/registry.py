"""The method registry: a name -> the learner class, which declares everything else the
toolbox needs of its method (``options_class``: its options dataclass, or None;
``release``: the official release whose data files ``released`` stands for, or None;
``uses_text``: whether it builds prompts from class names; the optional hooks of ``models/base.py``).

Adding a method is one file in ``models/`` and one line in ``LEARNERS`` (or, for a
learner that lives elsewhere, ``with registered({"name": "package.module:Class"})``).
Learners are imported by dotted path on demand, so an entry costs nothing until it is used.
"""
from __future__ import annotations

import contextlib
import difflib
import importlib
import re
from dataclasses import fields
from typing import Any, Dict, Iterator, List, Optional, Set

from toolbox.released import with_released_options
from utils.config import ConfigError

LEARNERS: Dict[str, str] = {
    "mgclip": "models.mgclip:MGCLIP",
    "proof": "models.proof:PROOF",
    "rapf": "models.rapf:RAPF",
    "zs_clip": "models.zs_clip:ZSCLIP",
    "simplecil": "models.simplecil:SimpleCIL",
    "aper_adapter": "models.aper_adapter:APER",
    "slca": "models.slca:SLCA",
    "moe_adapters": "models.moe_adapters:MoEAdapters",
    "magmax": "models.magmax:MagMax",
    "clap4clip": "models.clap4clip:CLAP4CLIP",
    "clap4clip_star": "models.clap4clip:CLAP4CLIPStar",
    "l2p": "models.prompts:L2P",
    "dualprompt": "models.prompts:DualPrompt",
    "coda_prompt": "models.prompts:CODAPrompt",
}


def check_model_name(model_name: str) -> str:
    """``model_name`` in lower case if registered, else a ConfigError with the closest name."""
    name = str(model_name).lower()
    if name not in LEARNERS:
        close = difflib.get_close_matches(name, list(LEARNERS), n=1, cutoff=0.4)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"unknown model_name '{model_name}'{hint} (known: {', '.join(sorted(LEARNERS))})")
    return name


def learner_class(model_name: str) -> type:
    module, cls = LEARNERS[check_model_name(model_name)].split(":")
    return getattr(importlib.import_module(module), cls)


def options_class(model_name: str) -> Optional[type]:
    """The options dataclass the learner of ``model_name`` declares (None: no options)."""
    return getattr(learner_class(model_name), "options_class", None)


def option_names(model_name: str) -> Set[str]:
    cls = options_class(model_name)
    return {f.name for f in fields(cls)} if cls is not None else set()


def option_owner(key: str) -> List[str]:
    """The registered methods that have an option named ``key``."""
    return [m for m in LEARNERS if key in option_names(m)]


def method_release(model_name: str) -> Optional[str]:
    """The official release whose files ``released`` means for this method (None: it has none)."""
    return getattr(learner_class(model_name), "release", None)


def uses_text(model_name: str) -> bool:
    """Whether the method builds prompts from class names (its learner's ``uses_text``;
    a learner that does not say is taken to: its names must then be words, not folder ids)."""
    return bool(getattr(learner_class(model_name), "uses_text", True))


def method_data(model_name: str) -> Dict[str, Any]:
    """What the method needs of its data, as ``DataManager``'s keywords: ``release`` (what
    "released" stands for) and ``needs_names`` (whether class names must be words)."""
    return {"release": method_release(model_name), "needs_names": uses_text(model_name)}


def with_method(model: str, message: str, own) -> str:
    """An error about one of ``model``'s own options, naming the method first (in a side-by-side
    config several methods may have an option of that name)."""
    key = re.match(r"config key '(\w+)'", message)
    return f"{model}: {message}" if key and key.group(1) in own else message


def get_model(model_name: str, args: Dict[str, Any]):
    """The learner registered as ``model_name``, built with ``args`` (a dict; option values that
    stand for an official file, such as PROOF's ``templates: released``, read first). An option the
    learner refuses only once built (e.g. against its backbone) names the method."""
    try:
        return learner_class(model_name)(with_released_options(args))  # official files read here, not by learners
    except ConfigError as e:
        raise ConfigError(with_method(str(model_name).lower(), str(e), option_names(model_name))) from None


@contextlib.contextmanager
def registered(learners: Dict[str, str]) -> Iterator[None]:
    """``learners`` (name -> "module:Class") are registered inside the block only, so a
    temporary learner (a benchmark's, a test's) never shows in another run's errors."""
    clash = sorted(set(learners) & set(LEARNERS))
    if clash:
        raise ValueError(f"already registered: {', '.join(clash)}")
    LEARNERS.update(learners)
    try:
        yield
    finally:
        for name in learners:
            LEARNERS.pop(name, None)
