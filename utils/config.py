"""The typed run configuration a learner reads: the shared keys with their defaults, a
method's own options (its dataclass), coercion of values and validation with errors that
name the key and what is allowed.

This is the fork-safe core (a plugin file): it reads a learner's ``args`` dict, in this
toolbox or in a PyCIL fork, and knows no files, registry or official releases. Config
files, ``extends``, ``--set``, key suggestions and the checks that need the registry or the
official data files are the toolbox's (``toolbox/configs.py``).
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
from dataclasses import dataclass, field, fields
from typing import Any, Dict, Generic, List, Literal, Optional, TypeVar, Union, get_args, get_origin, get_type_hints


class ConfigError(ValueError):
    """A configuration problem; the message names the key and what to do."""


def require(ok: bool, key: str, value: Any, allowed: str) -> None:
    """Refuse ``key`` = ``value`` unless ``ok``, saying what is ``allowed`` (the one message
    format for every option, shared or a method's own)."""
    if not ok:
        raise ConfigError(f"config key '{key}' = {value!r} is not allowed: {allowed}")


# Datasets this toolbox can build (toolbox/data.py); checked here so a typo fails before work.
DATASETS = ("cifar100", "imagenet_r", "imagenet100", "cub200", "synthetic", "folder", "aircraft", "cars", "food101",
            "objectnet", "sun", "ucf101", "caltech101", "flowers", "imagenet_a")
DATASET_CLASSES = {"cifar100": 100, "imagenet_r": 200, "imagenet100": 100, "cub200": 200, "aircraft": 100,
                   "cars": 100, "food101": 100, "objectnet": 200, "sun": 300, "ucf101": 100, "caltech101": 100,
                   "flowers": 100, "imagenet_a": 200}  # PROOF's class counts for its benchmarks
CLASS_ORDER_KEYWORDS = ("shuffle", "default", "released")

# Field metadata. PLACE: where a run reads and writes and how fast it runs, never what it
# computes (a resumed run, or another seed of a group, may differ in these). BY_CONTENT: a
# data file a run's data are read from, compared by what it gives (class order, names).
PLACE = {"placement": True}
BY_CONTENT = {"by_content": True}

Options = TypeVar("Options")  # a method's options dataclass


@dataclass
class Config(Generic[Options]):
    # --- run ---
    prefix: str = "reproduce"
    model_name: str = "mgclip"
    seed: Union[int, List[int]] = 1993
    device: str = field(default="auto", metadata=PLACE)  # "auto" | "cpu" | "cuda" | "cuda:N"
    precision: str = "auto"  # "auto": fp32, TF32 matmuls on CUDA (released) | "fp32": strict | "bf16": autocast
    logdir: str = field(default="logs", metadata=PLACE)
    num_workers: int = field(default=0, metadata=PLACE)
    preprocess: str = "device"  # "device": batched resize/normalize on the device; "pil": per image with PIL
    # JPEG datasets: decode + resize once per run ("auto": if under cache_max_gb)
    cache_images: Literal["auto", "true", "false"] = field(default="auto", metadata={
        **PLACE, "allowed": "'auto', true or false"})
    cache_max_gb: float = field(default=8.0, metadata=PLACE)
    compile: bool = False  # torch.compile the image encoder (warm-up costs tens of seconds)

    # --- data ---
    dataset: str = "cifar100"
    data_path: str = field(default="data", metadata=PLACE)
    # "shuffle" | "default" | "released" | list | file path
    class_order: Union[str, List[int]] = field(default="shuffle", metadata={
        **BY_CONTENT, "allowed": "'shuffle', 'default', 'released', a list of class ids or a file path"})
    # file: one name per line, or tab-separated (name last); or "released"
    class_names: Optional[str] = field(default=None, metadata=BY_CONTENT)
    # file of the 100 wnids (imagenet100 only); or "released"
    imagenet100_classes: Optional[str] = field(default=None, metadata=BY_CONTENT)
    # list file assigning imagenet-r/<wnid>/<file> to train/test; or "released:rapf"
    imagenet_r_split: Optional[str] = None
    # official data files (toolbox/released.py)
    released_cache: str = field(default="~/.cache/mgclip-toolbox/released", metadata=PLACE)
    init_cls: int = 10
    increment: int = 10
    shots_per_class: Optional[int] = None  # few-shot: keep k training images per class (seeded)
    synthetic_classes: int = 30
    synthetic_train_per_class: int = 20
    synthetic_test_per_class: int = 10
    synthetic_image_size: int = 32
    # largest / smallest class's training count, counts spread geometrically (1: equal classes)
    synthetic_imbalance: float = 1.0

    # --- backbone ---
    backbone: str = "ViT-B/16"  # OpenAI name | local checkpoint | "tiny-random" | "vit-b16-random"
    clip_cache: str = field(default="~/.cache/clip", metadata=PLACE)
    prompt_template: str = "a good photo of a {}."

    # --- training, read by every method (each documents its defaults for "auto") ---
    lr: float = 1e-3
    batch_size: int = 128
    eval_batch_size: int = 128
    # "auto": the method's own choice (MG-CLIP: the epoch probe); or an integer
    epochs: Union[Literal["auto"], int] = "auto"

    # --- zero-shot retention on held-out data after the last task (toolbox/retention.py) ---
    zero_shot_eval: List[Dict[str, Any]] = field(default_factory=list, metadata={
        "allowed": "a list of held-out dataset specs, e.g. [{dataset: cifar100, corruption: gaussian_noise}]"})

    # --- the chosen method's own options: an instance of the options_class its learner
    # declares (built and validated once, by from_dict), or None for a method without any ---
    options: Optional[Options] = None

    # ------------------------------------------------------------------
    @classmethod
    def field_names(cls) -> List[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_dict(cls, d: Dict[str, Any], options_cls=None, ignore_unknown: bool = False) -> "Config":
        """Build and validate from a flat dict: the shared keys (this class) and the options
        of ``options_cls`` (a method's options dataclass; None: the method has none). An
        unknown key fails naming the closest valid key, unless ``ignore_unknown`` (a PyCIL
        fork's config holds keys of its own). The toolbox checks keys with fuller hints
        first (``toolbox.configs.make_config``)."""
        names = [n for n in cls.field_names() if n != "options"]
        own = [f.name for f in fields(options_cls)] if options_cls else []
        hints, allowed = field_hints(cls), {f.name: f.metadata.get("allowed") for f in fields(cls)}
        kwargs, options = {}, {}
        for key, value in d.items():
            if key in names:
                kwargs[key] = coerce(key, value, hints[key], allowed[key])
            elif key in own:
                options[key] = value
            elif not ignore_unknown:
                close = difflib.get_close_matches(key, names + own, n=1, cutoff=0.6)
                raise ConfigError(f"unknown config key '{key}'" + (f"; did you mean '{close[0]}'?" if close else ""))
        if options_cls is not None:
            kwargs["options"] = build_options(options_cls, options)
        cfg = cls(**kwargs)
        cfg.validate()
        return cfg

    def to_dict(self) -> Dict[str, Any]:
        """Flat: the shared keys and the method's options side by side (as in config files)."""
        d = dataclasses.asdict(self)
        return {**{k: v for k, v in d.items() if k != "options"}, **(d["options"] or {})}

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
        for key in ("synthetic_classes", "synthetic_train_per_class", "synthetic_test_per_class"):
            need(self.__dict__[key] >= 1, key, "an integer >= 1")
        need(self.synthetic_image_size >= 8, "synthetic_image_size", "an integer >= 8 (pixels)")
        need(math.isfinite(self.synthetic_imbalance) and self.synthetic_imbalance >= 1, "synthetic_imbalance",
             "a number >= 1 (the largest class's training count over the smallest's; 1: equal classes)")
        if self.dataset != "folder":  # a folder dataset's class count is known once it is read
            self.validate_against_dataset(DATASET_CLASSES.get(self.dataset, self.synthetic_classes))
        if hasattr(self.options, "validate_with"):  # the method's checks that need shared keys
            self.options.validate_with(self)

    def validate_against_dataset(self, num_classes: int) -> None:
        """Checks that need the dataset's class count."""
        if self.init_cls > num_classes:
            raise ConfigError(
                f"config key 'init_cls' = {self.init_cls} is larger than the {num_classes} classes "
                f"of dataset '{self.dataset}': use at most {num_classes}")



# Keys of where a run reads and writes and how fast it runs (see PLACE above).
PLACEMENT_KEYS = frozenset(f.name for f in fields(Config) if f.metadata.get("placement"))
# Data-file keys compared by what they give, not by their value (see BY_CONTENT above).
BY_CONTENT_KEYS = frozenset(f.name for f in fields(Config) if f.metadata.get("by_content"))

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


_HINTS: Dict[type, Dict[str, Any]] = {}


def field_hints(cls: type) -> Dict[str, Any]:
    """The resolved type hint of each field of dataclass ``cls`` (read once per class)."""
    if cls not in _HINTS:
        hints = get_type_hints(cls)
        _HINTS[cls] = {f.name: hints[f.name] for f in fields(cls)}
    return _HINTS[cls]


def build_options(options_cls: type, values: Dict[str, Any]) -> Any:
    """A method's options: an instance of its dataclass ``options_cls`` (defaults = the
    official values) with ``values``, each coerced to its field's type hint, checked by
    the class's ``validate()``. The one place an options object is built from a config."""
    allowed = {f.name: f.metadata.get("allowed") for f in fields(options_cls)}
    hints = field_hints(options_cls)
    opts = options_cls(**{k: coerce(k, v, hints[k], allowed[k]) for k, v in values.items()})
    if hasattr(opts, "validate"):
        opts.validate()
    return opts


class _Mismatch(Exception):
    """The value cannot be read as the hint (turned into a ConfigError naming the key)."""


def coerce(key: str, value: Any, hint: Any, allowed: Optional[str] = None) -> Any:
    """``value`` (from JSON, YAML or ``--set``) as the type ``hint`` (int, float, bool, str,
    Any, Optional / Union, Literal, List, Tuple, Dict), or a one-line ConfigError naming the
    key, the value and what is allowed (``allowed``: the field's own words, else the hint's)."""
    try:
        return _as(hint, value)
    except _Mismatch:
        raise ConfigError(f"config key '{key}' = {value!r}: expected {allowed or describe(hint)}") from None


def _as(hint: Any, v: Any) -> Any:
    origin, args = get_origin(hint), get_args(hint)
    if hint is Any:
        return v
    if hint is type(None):
        if v is None:
            return None
        raise _Mismatch
    if origin is Union:
        if v is None and type(None) in args:
            return None
        members = sorted((m for m in args if m is not type(None)), key=lambda m: not _is(m, v))  # as-is first
        for member in members:
            try:
                return _as(member, v)
            except _Mismatch:
                pass
        raise _Mismatch
    if origin is Literal:
        for choice in args:
            if v == choice and type(v) is type(choice):
                return choice
        text = ("true" if v else "false") if isinstance(v, bool) else v.lower() if isinstance(v, str) else None
        if text in [c for c in args if isinstance(c, str)]:
            return text  # YAML's true/false, or another case, for a word
        raise _Mismatch
    if origin in (list, tuple):
        elem = args[0] if args else Any
        if origin is tuple and args and args[-1] is not Ellipsis:  # a fixed-length tuple
            if not isinstance(v, (list, tuple)) or len(v) != len(args):
                raise _Mismatch
            return tuple(_as(a, x) for a, x in zip(args, v))
        if isinstance(v, str) and elem in (str, int, float):
            v = [x.strip() for x in v.split(",") if x.strip()]  # --set lora_targets=q,v
        elif isinstance(v, dict) and get_origin(elem) is dict:
            v = [v]  # one mapping where a list of them is expected
        if not isinstance(v, (list, tuple)):
            raise _Mismatch
        items = [_as(elem, x) for x in v]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(v, dict):
            raise _Mismatch
        kt, vt = args if args else (Any, Any)
        return {_as(kt, k): _as(vt, x) for k, x in v.items()}
    if hint is bool:
        if isinstance(v, bool):
            return v
        if isinstance(v, str) and v.lower() in ("true", "false", "yes", "no", "1", "0"):
            return v.lower() in ("true", "yes", "1")
        raise _Mismatch
    if hint is int:
        if isinstance(v, bool):
            raise _Mismatch
        if isinstance(v, int):
            return v
        if isinstance(v, float) and v.is_integer():
            return int(v)
        if isinstance(v, str):
            try:
                return int(v)
            except ValueError:
                pass
        raise _Mismatch
    if hint is float:
        if isinstance(v, bool):
            raise _Mismatch
        try:
            return float(v)
        except (TypeError, ValueError):
            raise _Mismatch from None
    if hint is str:
        if isinstance(v, str):
            return v
        raise _Mismatch
    raise TypeError(f"no coercion for the type {hint!r}")  # a programming error: a field of an unsupported type


def _is(hint: Any, v: Any) -> bool:
    """Whether ``v`` already is of the type ``hint`` (no conversion needed)."""
    origin = get_origin(hint)
    if origin is Literal:
        return any(v == c and type(v) is type(c) for c in get_args(hint))
    if origin in (list, tuple):
        return isinstance(v, (list, tuple))
    if origin is dict:
        return isinstance(v, dict)
    if hint in (int, float):
        return isinstance(v, (int, float) if hint is float else int) and not isinstance(v, bool)
    return hint is Any or (isinstance(hint, type) and isinstance(v, hint))


_PLURAL = {int: "integers", float: "numbers", str: "strings", bool: "true/false values"}


def describe(hint: Any) -> str:
    """What a type hint allows, in words (for error messages and the options tables)."""
    origin, args = get_origin(hint), get_args(hint)
    if origin is Union:
        return _one_of([describe(m) for m in args])
    if origin is Literal:
        return _one_of([repr(c) for c in args])
    if origin in (list, tuple):
        elem = args[0] if args else Any
        return "a list of " + (_PLURAL.get(elem) or ("mappings" if get_origin(elem) is dict else "values"))
    if origin is dict:
        return "a mapping"
    return {type(None): "null", bool: "true or false", int: "an integer", float: "a number", str: "a string",
            Any: "any value"}.get(hint, str(hint))


def _one_of(words: List[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]
