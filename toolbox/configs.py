"""Configs from files and the command line, for this toolbox's ``main.py``: JSON/YAML files
(a path, or a shipped config's name), ``extends``, ``--set key=value`` overrides, method
sections of side-by-side configs, unknown keys with the likeliest meant key, and the checks
that need the method registry or the official data files. The typed ``Config`` itself is
the fork-safe ``utils/config.py``.
"""
from __future__ import annotations

import difflib
import json
import os
from typing import Any, Dict, Iterable, List, Optional, Tuple

import yaml

import exps
from toolbox.registry import (
    LEARNERS,
    check_model_name,
    method_release,
    option_names,
    option_owner,
    options_class,
    with_method,
)
from toolbox.released import TABLES, ReleasedFileError, release_of
from utils.config import C3BOX_KEYS, DATASETS, Config, ConfigError, field_hints, require

# Config keys whose value may be "released" (an official data file).
RELEASED_KEYS = ("class_order", "class_names", "imagenet100_classes", "imagenet_r_split")


def make_config(d: Dict[str, Any]) -> Config:
    """The ``Config`` of one method from a flat dict (``model_name`` names the method): its
    options class from the registry; an unknown key fails with the likeliest meant key (or
    the method it belongs to); ``released`` values and held-out specs are checked."""
    model = check_model_name(str(d.get("model_name", Config.model_name)))
    names = [n for n in Config.field_names() if n != "options"]
    own = sorted(option_names(model))
    for key in d:
        if key in names or key in own:
            continue
        if option_owner(key):
            raise ConfigError(f"config key '{key}' is an option of {', '.join(option_owner(key))}, not of "
                              f"'{model}': remove it, or put it in that method's section of a side-by-side config")
        raise ConfigError(_unknown_key_message(key, names + own, model))
    try:
        cfg = Config.from_dict({**d, "model_name": model}, options_cls=options_class(model))
    except ConfigError as e:
        raise ConfigError(with_method(model, str(e), own)) from None
    for key in RELEASED_KEYS:
        value = getattr(cfg, key)
        if not isinstance(value, str) or not (value == "released" or value.startswith("released:")):
            continue
        try:
            release = release_of(value, method_release(model), model)
        except ReleasedFileError as e:
            raise ConfigError(f"config key '{key}': {e}") from None
        has = sorted(TABLES[release].get(key, {}))
        require(cfg.dataset in has, key, value, f"'released' only for datasets whose official {release} release "
                                                f"has that file ({', '.join(has)}); give a file instead")
    for spec in cfg.zero_shot_eval:
        check_held_out_spec(spec)
    return cfg


HELD_OUT_KEYS = {"dataset": str, "data_path": str, "split": str, "class_names": str, "corruption": str, "severity": int,
                 "max_images": int, "name": str, "seed": int, "synthetic_classes": int,
                 "synthetic_test_per_class": int, "synthetic_image_size": int}


def check_held_out_spec(spec: Dict[str, Any]) -> None:
    """One ``zero_shot_eval`` entry (``toolbox/retention.py``): known keys with values of the right type, a dataset
    this toolbox can load, ``split`` only for ``folder``, severity 1-5 (corruptions are checked when the run starts)."""
    for key, value in spec.items():
        if key not in HELD_OUT_KEYS:
            close = difflib.get_close_matches(key, list(HELD_OUT_KEYS), n=1, cutoff=0.5)
            raise ConfigError(f"config key 'zero_shot_eval': unknown key '{key}'"
                              + (f"; did you mean '{close[0]}'?" if close else f" (known: {', '.join(HELD_OUT_KEYS)})"))
        if value is not None and not isinstance(value, HELD_OUT_KEYS[key]):
            raise ConfigError(f"config key 'zero_shot_eval': '{key}' = {value!r} must be {HELD_OUT_KEYS[key].__name__}")
    if spec.get("dataset") not in DATASETS:
        raise ConfigError(f"config key 'zero_shot_eval': 'dataset' = {spec.get('dataset')!r} is not one of "
                          f"{', '.join(DATASETS)}")
    if spec.get("split") is not None and spec["dataset"] != "folder":
        raise ConfigError(f"config key 'zero_shot_eval': 'split' (a folder of class folders under 'data_path') is "
                          f"for dataset 'folder', not {spec['dataset']!r}")
    if not 1 <= spec.get("severity", 3) <= 5:
        raise ConfigError(f"config key 'zero_shot_eval': 'severity' = {spec['severity']} must be 1-5 (ImageNet-C)")


def _free_text(key: str) -> bool:
    """A string-valued key whose value is free text (a prompt, a prefix, a path): ``--set``
    keeps its raw text where YAML would read a list or a mapping (``a photo: {}``). Not
    ``model_name``, which a config may give as a list of methods."""
    return field_hints(Config).get(key) in (str, Optional[str]) and key != "model_name"


# Names researchers bring from other codebases (PyCIL, C3Box, common habits) -> our key.
KEY_ALIASES = {
    "learning_rate": "lr", "init_lr": "lr", "base_lr": "lr", "batch": "batch_size", "bs": "batch_size",
    "epoch": "epochs", "num_epochs": "epochs", "n_epochs": "epochs", "model": "model_name", "method": "model_name",
    "convnet_type": "backbone", "backbone_type": "backbone", "net": "backbone", "seeds": "seed",
    "rank": "lora_rank", "alpha": "gap_alpha", "beta": "fusion_beta", "workers": "num_workers",
    "output_dir": "logdir", "log_dir": "logdir", "data_dir": "data_path", "data_root": "data_path",
}



def suggest_key(key: str, names: Iterable[str]) -> Optional[str]:
    """The valid key a mistyped ``key`` most likely meant, or None. In order: a known
    alias (or a near-spelling of one: ``lerning_rate`` -> ``lr``); a valid key spelled
    close to it; a valid key made of the typo's word initials (``l_r``); a valid key
    that the typo contains as whole words (``visual_lr_rate`` -> ``visual_lr``)."""
    names = list(names)
    low = key.lower().replace("-", "_")
    if low in names:
        return low
    alias = KEY_ALIASES.get(low) or next(iter(KEY_ALIASES[a] for a in difflib.get_close_matches(
        low, list(KEY_ALIASES), n=1, cutoff=0.8)), None)
    if alias in names:
        return alias
    close = difflib.get_close_matches(low, names, n=1, cutoff=0.75)
    if close:
        return close[0]
    words = [w for w in low.split("_") if w]
    initials = "".join(w[0] for w in words)
    if len(words) > 1 and initials in names:
        return initials
    contained = [n for n in names if f"_{n}_" in f"_{low}_"]
    if contained:
        return max(contained, key=len)
    close = difflib.get_close_matches(low, names, n=1, cutoff=0.5)
    return close[0] if close else None


def _unknown_key_message(key: str, names: Iterable[str], model: Optional[str] = None) -> str:
    if key in C3BOX_KEYS:
        return (f"config key '{key}' is C3Box's name (its mind.json): use '{C3BOX_KEYS[key]}' here; and where "
                f"mind.json's 'epochs' meant the probe's maximum, write probe_max_epochs: N with epochs: auto")
    names = list(names)
    close = suggest_key(key, names)
    if model is not None and not difflib.get_close_matches(key.lower(), names, n=1, cutoff=0.75):
        # no near spelling among this method's keys: a misspelt option of another method?
        others = sorted(set().union(*(option_names(m) for m in LEARNERS if m != model)) - set(names))
        near = difflib.get_close_matches(key.lower(), others, n=1, cutoff=0.8)
        if near:
            return (f"unknown config key '{key}'; did you mean '{near[0]}'? That is an option of "
                    f"{', '.join(option_owner(near[0]))}, not of '{model}'")
    hint = f"; did you mean '{close}'?" if close else f"; valid keys: {', '.join(sorted(names))}"
    return f"unknown config key '{key}'{hint}"



CONFIG_SUFFIXES = (".json", ".yaml", ".yml")


def shipped_configs_dir() -> str:
    """The folder of the configs shipped with the toolbox (``exps/``, installed as a package)."""
    return os.path.dirname(os.path.abspath(exps.__file__))


def resolve_config_path(path: str) -> str:
    """``path`` as given (relative to the current folder), else a shipped config of that
    name (``mgclip_cifar``, ``mgclip_cifar.json`` or ``exps/mgclip_cifar.json``)."""
    if os.path.isfile(path):
        return path
    shipped = shipped_configs_dir()
    name = os.path.basename(path) if os.path.dirname(path) in ("exps", "./exps") else path
    if os.path.dirname(name) == "":
        for candidate in [name] + [name + s for s in CONFIG_SUFFIXES]:
            if os.path.isfile(os.path.join(shipped, candidate)):
                return os.path.join(shipped, candidate)
    names = sorted(os.path.splitext(n)[0] for n in os.listdir(shipped) if n.endswith(CONFIG_SUFFIXES))
    close = difflib.get_close_matches(os.path.splitext(name)[0], names, n=1, cutoff=0.6)
    hint = f"; did you mean the shipped config '{close[0]}'?" if close else f"; shipped configs: {', '.join(names)}"
    raise ConfigError(f"config file not found: {path} (looked in {os.getcwd()} and among the shipped configs "
                      f"in {shipped}){hint}")


def load_config_file(path: str, _chain: Tuple[str, ...] = ()) -> Dict[str, Any]:
    """Read a JSON or YAML config file into a dict (error names the path on failure);
    ``path`` may also name a shipped config (see :func:`resolve_config_path`).

    ``extends: BASE`` (a shipped config's name, or a file, relative to this file's folder)
    starts from BASE's keys and replaces those this file gives; a method's section
    (``"rapf": {...}``) is merged key by key. Bases may extend further bases."""
    path = resolve_config_path(path)
    data = _read_config_file(path)
    base = data.pop("extends", None)
    if base is None:
        return data
    if not isinstance(base, str) or not base:
        raise ConfigError(f"config file {path}: 'extends' must name one config (a shipped config's name or a file)")
    here = os.path.realpath(path)
    if here in _chain:
        raise ConfigError(f"config file {path} extends itself through {' -> '.join(_chain + (here,))}")
    local = os.path.join(os.path.dirname(path), base)
    parent = load_config_file(local if os.path.isfile(local) else base, _chain + (here,))
    merged = {**parent, **data}
    for key, value in data.items():  # method sections: key by key
        if isinstance(value, dict) and isinstance(parent.get(key), dict):
            merged[key] = {**parent[key], **value}
    return merged


def _read_config_file(path: str) -> Dict[str, Any]:
    with open(path, "r", encoding="utf-8") as f:
        text = f.read()
    try:
        if path.endswith((".yaml", ".yml")):
            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        kind = "YAML" if path.endswith((".yaml", ".yml")) else "JSON"
        raise ConfigError(f"config file {path} is not valid {kind}: {e}") from None
    if data is None or data == {}:
        raise ConfigError(f"config file {path} is empty: give at least the keys that differ from the defaults "
                          f"(e.g. dataset, model_name); see exps/ for complete configs")
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values, not {type(data).__name__}")
    return data


def parse_overrides(items: Iterable[str]) -> Dict[str, Any]:
    """``["lr=1e-3", "seed=[1,2]", "compensation=false"]`` -> typed dict (YAML scalars)."""
    out: Dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        key = key.strip()
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            if _free_text(key) and not raw.lstrip().startswith(("[", "{", "'", '"')):
                value = raw  # a free-text value such as a prompt template
            else:
                problem = str(getattr(e, "problem", "") or e).strip()
                raise ConfigError(f"--set {item}: the value {raw!r} cannot be read ({problem}); write lists as "
                                  f"[1,2], strings with ':' or '#' in quotes") from None
        if isinstance(value, (dict, list)) and _free_text(key):
            value = raw  # 'a photo: {}' is a string here, not a YAML mapping
        out[key] = value
    return out


def build_config(path: Optional[str], overrides: Iterable[str] = ()) -> Config:
    """The config of a one-method file (see :func:`build_configs` for several methods)."""
    configs = build_configs(path, overrides)
    if len(configs) != 1:
        raise ConfigError(f"config key 'model_name' lists {len(configs)} methods; give one method here")
    return configs[0]


def build_configs(path: Optional[str], overrides: Iterable[str] = ()) -> List[Config]:
    """One config per method. ``model_name`` may be a list (methods side by side on the
    same data, split, class order, backbone and seeds): each method gets the shared keys,
    the top-level options that are its own, and its section (``"rapf": {...}``: keys for
    that method only, overriding the shared ones). ``--set rapf.beta=1`` reaches a section."""
    data = load_config_file(path) if path else {}
    for key, value in parse_overrides(overrides).items():
        if "." in key and key.split(".", 1)[0] in LEARNERS:
            section, sub = key.split(".", 1)
            data.setdefault(section, {})[sub] = value
        else:
            data[key] = value
    models = data.get("model_name", Config.model_name)
    models = [str(m) for m in models] if isinstance(models, list) else [str(models)]
    if not models:
        raise ConfigError("config key 'model_name' is an empty list: name at least one method")
    models = [check_model_name(m) for m in models]
    if len(set(models)) != len(models):
        raise ConfigError(f"config key 'model_name' lists a method twice: {models}")
    sections = {k: v for k, v in data.items() if k in LEARNERS}
    for name, section in sections.items():
        if name not in models:
            raise ConfigError(f"config section '{name}' is for a method that 'model_name' does not list ({models})")
        if not isinstance(section, dict):
            raise ConfigError(f"config section '{name}' must be a mapping of keys to values")
    shared = {k: v for k, v in data.items() if k not in LEARNERS and k != "model_name"}
    if len(models) > 1:  # one class order and one set of names for all: "released" = the first method's release
        first = method_release(models[0])
        for key in RELEASED_KEYS:
            if shared.get(key) == "released" and first is not None:
                shared[key] = f"released:{first}"
    owned = {m: option_names(m) for m in models}
    configs = []
    for m in models:
        others = set().union(*(owned[o] for o in models if o != m)) - owned[m]
        d = {k: v for k, v in shared.items() if not (len(models) > 1 and k in others)}
        configs.append(make_config({**d, **sections.get(m, {}), "model_name": m}))
    return configs
