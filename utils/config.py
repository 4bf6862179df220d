"""Typed run configuration: defaults, JSON/YAML loading, ``--set key=value`` overrides and
validation with errors that name the key and what is allowed.

The learner-facing ``args`` stays a plain dict (PyCIL forks pass dicts around);
``Config.from_dict`` reads it once into this typed form.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
from dataclasses import dataclass, field, fields
from typing import Any, Dict, Iterable, List, Optional, Tuple, Union

import yaml


class ConfigError(ValueError):
    """A configuration problem; the message names the key and what to do."""


def require(ok: bool, key: str, value: Any, allowed: str) -> None:
    """Refuse ``key`` = ``value`` unless ``ok``, saying what is ``allowed`` (the one message
    format for every option, shared or a method's own)."""
    if not ok:
        raise ConfigError(f"config key '{key}' = {value!r} is not allowed: {allowed}")


# Datasets this toolbox can build (utils/data.py); checked here so a typo fails before work.
DATASETS = ("cifar100", "imagenet_r", "imagenet100", "cub200", "synthetic", "folder")
DATASET_CLASSES = {"cifar100": 100, "imagenet_r": 200, "imagenet100": 100, "cub200": 200}
CLASS_ORDER_KEYWORDS = ("shuffle", "default", "released")

# Keys that may differ between a run and its resumption: where things are and how fast
# they run, not what is computed. Path-valued data keys are compared by what they resolve
# to (class order and class names are checked separately).
RUN_ONLY_KEYS = frozenset({"device", "num_workers", "logdir", "data_path", "clip_cache", "class_names",
                           "imagenet100_classes", "class_order", "cache_images", "cache_max_gb",
                           "released_cache"})


@dataclass
class Config:
    # --- run ---
    prefix: str = "reproduce"
    model_name: str = "mgclip"
    seed: Union[int, List[int]] = 1993
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    precision: str = "auto"  # "auto": fp32, TF32 matmuls on CUDA (released) | "fp32": strict | "bf16": autocast
    logdir: str = "logs"
    num_workers: int = 0
    preprocess: str = "device"  # "device": batched resize/normalize on the device; "pil": per image with PIL
    cache_images: str = "auto"  # JPEG datasets: decode + resize once per run ("auto": if under cache_max_gb)
    cache_max_gb: float = 8.0
    compile: bool = False  # torch.compile the image encoder (warm-up costs tens of seconds)

    # --- data ---
    dataset: str = "cifar100"
    data_path: str = "data"
    class_order: Union[str, List[int]] = "shuffle"  # "shuffle" | "default" | "released" | list | file path
    class_names: Optional[str] = None  # file: one name per line, or tab-separated (name last); or "released"
    imagenet100_classes: Optional[str] = None  # file of the 100 wnids (imagenet100 only); or "released"
    imagenet_r_split: Optional[str] = None  # list file assigning imagenet-r/<wnid>/<file> to train/test; or "released:rapf"
    released_cache: str = "~/.cache/mgclip-toolbox/released"  # official data files (utils/released.py)
    init_cls: int = 10
    increment: int = 10
    shots_per_class: Optional[int] = None  # few-shot: keep k training images per class (seeded)
    synthetic_classes: int = 30
    synthetic_train_per_class: int = 20
    synthetic_test_per_class: int = 10
    synthetic_image_size: int = 32

    # --- backbone ---
    backbone: str = "ViT-B/16"  # OpenAI name | local checkpoint | "tiny-random" | "vit-b16-random"
    clip_cache: str = "~/.cache/clip"
    prompt_template: str = "a good photo of a {}."

    # --- training, read by every method (each documents its defaults for "auto") ---
    lr: float = 1e-3
    batch_size: int = 128
    eval_batch_size: int = 128
    epochs: Union[str, int] = "auto"  # "auto": the method's own choice (MG-CLIP: the epoch probe); or an integer

    # --- zero-shot retention on held-out data after the last task (utils/retention.py) ---
    zero_shot_eval: List[Dict[str, Any]] = field(default_factory=list)

    # --- the chosen method's own options (a dataclass in its models/ file, registered in OPTIONS below) ---
    options: Dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------
    @classmethod
    def field_names(cls) -> List[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_dict(cls, d: Dict[str, Any], ignore_unknown: bool = False, options_cls=None) -> "Config":
        """Build and validate. Keys are the shared ones (this class) and the chosen
        method's own options (its options dataclass: ``options_cls``, else the one
        registered in ``OPTIONS`` for ``model_name``). Unknown keys fail (naming the closest
        valid key, or the method a key belongs to) unless ``ignore_unknown`` (used when a
        PyCIL fork passes its own extra keys; there the learner names its options class,
        since the fork's ``model_name`` need not be ours)."""
        names = [n for n in cls.field_names() if n != "options"]
        model = str(d.get("model_name", cls.model_name)).lower()
        options_cls = options_cls or method_options(model)
        own = [f.name for f in fields(options_cls)] if options_cls else []
        kwargs, options = {}, {}
        for key, value in d.items():
            if key in names:
                kwargs[key] = _coerce(key, value)
            elif key in own:
                options[key] = value
            elif ignore_unknown:
                continue
            elif option_owner(key):
                raise ConfigError(f"config key '{key}' is an option of {', '.join(option_owner(key))}, not of "
                                  f"'{model}': remove it, or put it in that method's section of a side-by-side config")
            else:
                raise ConfigError(_unknown_key_message(key, names + own, model))
        if options_cls is not None:
            kwargs["options"] = options_from_dict(options_cls, options)
        cfg = cls(**kwargs)
        cfg.validate()
        if options_cls is not None and hasattr(options_cls, "validate_with"):  # checks that need shared keys
            options_cls(**cfg.options).validate_with(cfg)
        return cfg

    def to_dict(self) -> Dict[str, Any]:
        """Flat: the shared keys and the method's options side by side (as in config files)."""
        d = dataclasses.asdict(self)
        return {**{k: v for k, v in d.items() if k != "options"}, **d["options"]}

    def seeds(self) -> List[int]:
        return list(self.seed) if isinstance(self.seed, list) else [self.seed]

    def validate(self) -> None:
        def need(cond: bool, key: str, allowed: str) -> None:
            require(cond, key, getattr(self, key), allowed)

        need(self.dataset in DATASETS, "dataset", f"one of {', '.join(DATASETS)}")
        need(self.init_cls >= 1, "init_cls", "an integer >= 1")
        need(self.increment >= 1, "increment", "an integer >= 1")
        need(self.lr > 0 and math.isfinite(self.lr), "lr", "a finite number > 0")
        for key in ("batch_size", "eval_batch_size"):
            need(self.__dict__[key] >= 1, key, "an integer >= 1")
        need(self.num_workers >= 0, "num_workers", "an integer >= 0")
        need(self.shots_per_class is None or self.shots_per_class >= 1, "shots_per_class",
             "null (all training images) or an integer >= 1")
        need(self.precision in ("auto", "fp32", "bf16"), "precision", "'auto', 'fp32' or 'bf16'")
        need(self.preprocess in ("device", "pil"), "preprocess", "'device' or 'pil'")
        need(self.cache_images in ("auto", "true", "false"), "cache_images", "'auto', true or false")
        need(self.cache_max_gb >= 0, "cache_max_gb", "a number >= 0 (GiB)")
        need(self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
             "device", "'auto', 'cpu', 'cuda' or 'cuda:N'")
        need(self.epochs == "auto" or (isinstance(self.epochs, int) and self.epochs >= 1),
             "epochs", "'auto' (the method's own budget; MG-CLIP: the epoch probe on the first task) or an "
                       "integer >= 1")
        need(all(isinstance(s, int) and s >= 0 for s in self.seeds()) and len(self.seeds()) > 0,
             "seed", "an integer >= 0 or a non-empty list of them")
        repeated = sorted({s for s in self.seeds() if self.seeds().count(s) > 1})
        need(not repeated, "seed", f"a list of different seeds (repeated: {repeated}); a repeated seed would "
                                   f"run the same run twice and count it twice in the summary")
        need("{}" in self.prompt_template, "prompt_template", "a string with one '{}' for the class name")
        if isinstance(self.class_order, list):
            need(all(isinstance(c, int) for c in self.class_order), "class_order", "a list of integer class ids")
        elif (self.class_order not in CLASS_ORDER_KEYWORDS and not self.class_order.startswith("released:")
              and not os.path.exists(self.class_order)):
            close = difflib.get_close_matches(self.class_order, CLASS_ORDER_KEYWORDS, n=1, cutoff=0.6)
            need(not close, "class_order", f"did you mean '{close[0] if close else ''}'? (one of "
                                           f"{', '.join(CLASS_ORDER_KEYWORDS)}, a list of class ids or a file)")
        for key in ("class_order", "class_names", "imagenet100_classes", "imagenet_r_split"):
            value = getattr(self, key)
            if isinstance(value, str) and (value == "released" or value.startswith("released:")):
                from utils.released import TABLES, ReleasedFileError, release_of

                try:
                    release = release_of(value, self.model_name)
                except ReleasedFileError as e:
                    raise ConfigError(f"config key '{key}': {e}") from None
                has = sorted(TABLES[release].get(key, {}))
                need(self.dataset in has, key, f"'released' only for datasets whose official {release} release has "
                                               f"that file ({', '.join(has)}); give a file instead")
        for spec in self.zero_shot_eval:
            check_held_out_spec(spec)
        for key in ("synthetic_classes", "synthetic_train_per_class", "synthetic_test_per_class"):
            need(self.__dict__[key] >= 1, key, "an integer >= 1")
        need(self.synthetic_image_size >= 8, "synthetic_image_size", "an integer >= 8 (pixels)")
        if self.dataset != "folder":  # a folder dataset's class count is known once it is read
            self.validate_against_dataset(DATASET_CLASSES.get(self.dataset, self.synthetic_classes))

    def validate_against_dataset(self, num_classes: int) -> None:
        """Checks that need the dataset's class count."""
        if self.init_cls > num_classes:
            raise ConfigError(
                f"config key 'init_cls' = {self.init_cls} is larger than the {num_classes} classes "
                f"of dataset '{self.dataset}': use at most {num_classes}")


# Names researchers bring from other codebases (PyCIL, C3Box, common habits) -> our key.
KEY_ALIASES = {
    "learning_rate": "lr", "init_lr": "lr", "base_lr": "lr", "batch": "batch_size", "bs": "batch_size",
    "epoch": "epochs", "num_epochs": "epochs", "n_epochs": "epochs", "model": "model_name", "method": "model_name",
    "convnet_type": "backbone", "backbone_type": "backbone", "net": "backbone", "seeds": "seed",
    "rank": "lora_rank", "alpha": "gap_alpha", "beta": "fusion_beta", "workers": "num_workers",
    "output_dir": "logdir", "log_dir": "logdir", "data_dir": "data_path", "data_root": "data_path",
}


# C3Box's own MG-CLIP port (its models/mind.py, exps/mind.json) names some options differently.
C3BOX_KEYS = {"init_lr": "lr", "visual_clsf": "compensation", "visual_clsf_lr": "visual_lr",
              "visual_clsf_batch_size": "visual_batch_size", "visual_clsf_epochs": "visual_epochs"}


def map_c3box_keys(args: Dict[str, Any]) -> "tuple[Dict[str, Any], List[str]]":
    """A C3Box ``mind.json``'s keys read as this toolbox's (for the plugin inside a fork).
    There ``epochs`` is the epoch probe's maximum, not a fixed budget: it becomes
    ``probe_max_epochs`` with ``epochs: auto``. Returns the mapped args and one line per
    mapping; a key given both ways with different values is refused."""
    present = [k for k in C3BOX_KEYS if k in args]
    if not present:
        return args, []
    out, notes = dict(args), []
    for key in present:
        ours = C3BOX_KEYS[key]
        if ours in args and args[ours] != args[key]:
            raise ConfigError(f"config keys '{key}' (C3Box's) = {args[key]!r} and '{ours}' = {args[ours]!r} "
                              f"disagree: keep one of them")
        out[ours] = out.pop(key)
        notes.append(f"C3Box config key '{key}' = {args[key]!r} read as '{ours}'")
    epochs = args.get("epochs")
    if isinstance(epochs, int) and not isinstance(epochs, bool) and "probe_max_epochs" not in args:
        out["epochs"], out["probe_max_epochs"] = "auto", epochs
        notes.append(f"C3Box's 'epochs' = {epochs} is the epoch probe's maximum: read as probe_max_epochs = "
                     f"{epochs} with epochs 'auto' (set probe_max_epochs to keep a fixed 'epochs')")
    return out, notes


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


HELD_OUT_KEYS = {"dataset": str, "data_path": str, "class_names": str, "corruption": str, "severity": int,
                 "max_images": int, "name": str, "seed": int, "synthetic_classes": int,
                 "synthetic_test_per_class": int, "synthetic_image_size": int}


def check_held_out_spec(spec: Dict[str, Any]) -> None:
    """One ``zero_shot_eval`` entry: known keys with values of the right type, a dataset
    this toolbox can load, severity 1-5 (corruptions are checked when the run starts)."""
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
    if not 1 <= spec.get("severity", 3) <= 5:
        raise ConfigError(f"config key 'zero_shot_eval': 'severity' = {spec['severity']} must be 1-5 (ImageNet-C)")


def _unknown_key_message(key: str, names: Iterable[str], model: Optional[str] = None) -> str:
    if key in C3BOX_KEYS:
        return (f"config key '{key}' is C3Box's name (its mind.json): use '{C3BOX_KEYS[key]}' here; and where "
                f"mind.json's 'epochs' meant the probe's maximum, write probe_max_epochs: N with epochs: auto")
    names = list(names)
    close = suggest_key(key, names)
    if model is not None and not difflib.get_close_matches(key.lower(), names, n=1, cutoff=0.75):
        # no near spelling among this method's keys: a misspelt option of another method?
        others = sorted({f.name for m in OPTIONS if m != model for f in fields(method_options(m))} - set(names))
        near = difflib.get_close_matches(key.lower(), others, n=1, cutoff=0.8)
        if near:
            return (f"unknown config key '{key}'; did you mean '{near[0]}'? That is an option of "
                    f"{', '.join(option_owner(near[0]))}, not of '{model}'")
    hint = f"; did you mean '{close}'?" if close else f"; valid keys: {', '.join(sorted(names))}"
    return f"unknown config key '{key}'{hint}"


_KINDS = {f.name: f.type for f in fields(Config)}

# Methods with options of their own: a dataclass in the method's file whose defaults are the
# official values (zero-shot CLIP has none).
OPTIONS = {
    "mgclip": "models.mgclip:MGCLIPOptions",
    "proof": "models.proof:PROOFOptions",
    "rapf": "models.rapf:RAPFOptions",
}


def method_options(model_name: str):
    """The options dataclass of method ``model_name``, or None."""
    path = OPTIONS.get(str(model_name).lower())
    if path is None:
        return None
    import importlib

    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def option_owner(key: str) -> List[str]:
    """The methods that have an option named ``key``."""
    return [m for m in OPTIONS if key in {f.name for f in fields(method_options(m))}]


def options_from_dict(options_cls, values: Dict[str, Any]) -> Dict[str, Any]:
    """A method's options: its dataclass's defaults (the official values) updated with
    ``values`` (each coerced to its field's type), validated by the class's ``validate()``."""
    kinds = {f.name: f.type for f in fields(options_cls)}
    opts = options_cls(**{k: _coerce(k, v, kinds) for k, v in values.items()})
    if hasattr(opts, "validate"):
        opts.validate()
    return dataclasses.asdict(opts)


def _coerce(key: str, value: Any, kinds: Optional[Dict[str, Any]] = None) -> Any:
    """Turn a value from JSON/YAML/--set into the field's type, or fail naming the key."""
    kind = str((kinds or _KINDS)[key])

    def bad(expected: str) -> ConfigError:
        return ConfigError(f"config key '{key}' = {value!r}: expected {expected}")

    def as_int(v: Any) -> int:
        if isinstance(v, bool):
            raise bad("an integer")
        if isinstance(v, int):
            return v
        if isinstance(v, float) and v.is_integer():
            return int(v)
        if isinstance(v, str):
            try:
                return int(v)
            except ValueError:
                pass
        raise bad("an integer")

    def as_float(v: Any) -> float:
        if isinstance(v, bool):
            raise bad("a number")
        try:
            return float(v)
        except (TypeError, ValueError):
            raise bad("a number") from None

    def as_bool(v: Any) -> bool:
        if isinstance(v, bool):
            return v
        if isinstance(v, str) and v.lower() in ("true", "false", "yes", "no", "1", "0"):
            return v.lower() in ("true", "yes", "1")
        raise bad("true or false")

    if key == "seed":
        return [as_int(s) for s in value] if isinstance(value, list) else as_int(value)
    if key == "cache_images":
        return str(value).lower() if isinstance(value, (bool, str)) else value
    if key == "epochs":
        return "auto" if value == "auto" else as_int(value)
    if key == "class_order":
        if isinstance(value, list):
            return [as_int(c) for c in value]
        if isinstance(value, str):
            return value
        raise bad("'shuffle', 'default', a list of class ids or a file path")
    if kind == "Optional[int]":
        return None if value is None else as_int(value)
    if kind in ("Optional[str]", "typing.Optional[str]"):
        return None if value is None else str(value)
    if kind in ("List[int]", "typing.List[int]"):
        if not isinstance(value, list):
            raise bad("a list of integers")
        return [as_int(v) for v in value]
    if kind in ("List[Dict[str, Any]]", "typing.List[typing.Dict[str, typing.Any]]"):
        if isinstance(value, dict):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise bad("a list of held-out dataset specs, e.g. [{dataset: cifar100, corruption: gaussian_noise}]")
        return [dict(v) for v in value]
    if kind in ("List[str]", "typing.List[str]"):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise bad("a list of strings")
        return [str(v) for v in value]
    if kind == "int":
        return as_int(value)
    if kind == "float":
        return as_float(value)
    if kind == "bool":
        return as_bool(value)
    if kind == "str":
        if not isinstance(value, str):
            raise bad("a string")
        return value
    raise AssertionError(f"no coercion for field {key} of type {kind}")  # programming error


CONFIG_SUFFIXES = (".json", ".yaml", ".yml")


def shipped_configs_dir() -> str:
    """The folder of the configs shipped with the toolbox (``exps/``, installed as a package)."""
    import exps

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
        raise ConfigError(f"config file {path} is not valid {'YAML' if path.endswith(('.yaml', '.yml')) else 'JSON'}: {e}") from None
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
            if _KINDS.get(key) in ("str", "Optional[str]") and not raw.lstrip().startswith(("[", "{", "'", '"')):
                value = raw  # a free-text value such as a prompt template
            else:
                problem = str(getattr(e, "problem", "") or e).strip()
                raise ConfigError(f"--set {item}: the value {raw!r} cannot be read ({problem}); write lists as "
                                  f"[1,2], strings with ':' or '#' in quotes") from None
        if isinstance(value, (dict, list)) and _KINDS.get(key) in ("str", "Optional[str]"):
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
    from utils.factory import LEARNERS, check_model_name  # late: factory imports this module

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
        from utils.released import METHOD_RELEASE

        for key in ("class_order", "class_names", "imagenet100_classes", "imagenet_r_split"):
            if shared.get(key) == "released":
                shared[key] = f"released:{METHOD_RELEASE.get(models[0], 'mgclip')}"
    owned = {m: {f.name for f in fields(method_options(m))} if method_options(m) else set() for m in models}
    configs = []
    for m in models:
        others = set().union(*(owned[o] for o in models if o != m)) - owned[m]
        d = {k: v for k, v in shared.items() if not (len(models) > 1 and k in others)}
        configs.append(Config.from_dict({**d, **sections.get(m, {}), "model_name": m}))
    return configs
