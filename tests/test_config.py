import json
import os

import pytest
import yaml

from toolbox.configs import build_config, build_configs, load_config_file, make_config, parse_overrides
from toolbox.registry import get_model
from utils.config import ConfigError


def test_defaults_are_the_papers():
    c = make_config({})
    o = c.options  # MG-CLIP's own options (models/mgclip.py), the default method's
    assert (o.lora_rank, o.lora_alpha, o.lora_targets, o.lora_encoders) == (8, 1.0, ["k", "v"],
                                                                                        ["visual", "text"])
    assert (o.gap_alpha, o.probe_max_epochs, c.epochs, o.fusion_beta) == (0.10, 10, "auto", 4.0)
    assert (o.visual_epochs, o.visual_scale, o.min_lr_ratio) == (3, 1.0, 0.01)
    assert c.prompt_template == "a good photo of a {}."
    assert c.backbone == "ViT-B/16"


def test_unknown_key_suggests_the_closest():
    with pytest.raises(ConfigError, match="unknown config key 'lora_rnak'; did you mean 'lora_rank'"):
        make_config({"lora_rnak": 4})


@pytest.mark.parametrize("key, value, allowed", [
    ("lr", -0.1, "> 0"),
    ("lora_rank", 0, ">= 1"),
    ("init_cls", 101, "larger than the 100 classes"),
    ("epochs", "many", "integer"),
    ("dataset", "cifar10", "one of"),
    ("gap_alpha", 0, "> 0"),
    ("lora_targets", ["k", "mlp"], "list from"),
    ("precision", "fp8", "'auto'"),
])
def test_bad_values_say_what_is_allowed(key, value, allowed):
    with pytest.raises(ConfigError, match=key) as e:
        make_config({key: value})
    assert allowed in str(e.value)


def test_init_cls_checked_against_synthetic_class_count():
    with pytest.raises(ConfigError, match="init_cls"):
        make_config({"dataset": "synthetic", "synthetic_classes": 5, "init_cls": 6})


def test_fixed_epochs_required_without_gap_preservation():
    with pytest.raises(ConfigError, match="epochs"):
        make_config({"gap_preservation": False})
    assert make_config({"gap_preservation": False, "epochs": 2}).epochs == 2


def test_overrides_are_typed():
    d = parse_overrides(["lr=1e-3", "batch_size=64", "compensation=false", "seed=[1, 2]",
                         "lora_targets=[q,v]", "epochs=auto", "fusion_beta=2"])
    c = make_config(d)
    assert c.lr == 0.001 and isinstance(c.lr, float)
    assert c.batch_size == 64 and c.options.compensation is False and c.seeds() == [1, 2]
    assert c.options.lora_targets == ["q", "v"] and c.epochs == "auto" and c.options.fusion_beta == 2.0
    with pytest.raises(ConfigError, match="batch_size"):
        make_config(parse_overrides(["batch_size=big"]))
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["lr"])


def test_json_and_yaml_files(tmp_path):
    j = tmp_path / "c.json"
    j.write_text(json.dumps({"lr": 5e-4, "dataset": "synthetic", "init_cls": 5}))
    y = tmp_path / "c.yaml"
    y.write_text("lr: 0.0005\ndataset: synthetic\ninit_cls: 5\n")
    assert build_config(str(j)).to_dict() == build_config(str(y)).to_dict()
    assert build_config(str(j), ["lr=0.01"]).lr == 0.01


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found: .*missing.json"):
        load_config_file(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{lr: ")
    with pytest.raises(ConfigError, match="bad.json is not valid JSON"):
        load_config_file(str(bad))
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config_file(str(lst))


def test_model_registry_suggests_on_typo():
    with pytest.raises(ConfigError, match="did you mean 'mgclip'"):
        get_model("mgclp", {})
    with pytest.raises(ConfigError, match="model_name 'zs_clp'"):
        build_config(None, ["model_name=zs_clp"])


@pytest.mark.parametrize("model", ["rapf", "proof", "zs_clip"])
def test_mgclip_options_are_refused_by_other_methods(model):
    with pytest.raises(ConfigError, match=f"'lora_rank' is an option of mgclip, not of '{model}'"):
        make_config({"model_name": model, "lora_rank": 16})
    with pytest.raises(ConfigError, match="'fusion_beta' is an option of mgclip"):
        build_config(None, [f"model_name={model}", "fusion_beta=2"])


def test_a_misspelt_option_of_another_method_is_named_with_its_method():
    with pytest.raises(ConfigError, match="did you mean 'lora_rank'\\? That is an option of mgclip, not of 'rapf'"):
        make_config({"model_name": "rapf", "lora_rnak": 4})
    with pytest.raises(ConfigError, match="did you mean 'mix_bias'\\? That is an option of rapf, not of 'mgclip'"):
        make_config({"model_name": "mgclip", "mix_bais": 0.5})
    with pytest.raises(ConfigError, match="unknown config key 'lr_rate'; did you mean 'lr'\\?$"):
        make_config({"model_name": "rapf", "lr_rate": 0.1})  # a key of its own comes first


def test_mgclip_options_reach_only_mgclip_side_by_side(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"model_name": ["mgclip", "rapf", "zs_clip"], "dataset": "synthetic",
                                "fusion_beta": 2.0, "lora_rank": 4, "beta": 1.0}))
    mg, rapf, zs = build_configs(str(path))
    assert mg.options.fusion_beta == 2.0 and mg.options.lora_rank == 4 and not hasattr(mg.options, "beta")
    assert rapf.options.beta == 1.0 and "fusion_beta" not in rapf.to_dict() and "lora_rank" not in rapf.to_dict()
    assert zs.options is None and "lora_rank" not in zs.to_dict()


def test_the_learner_reads_its_options_whatever_the_forks_model_name(tmp_path):
    """A fork's factory may register the plugin under its own name ("mind"): the learner,
    not ``model_name``, says whose options the args hold."""
    from conftest import tiny_args

    from models.mgclip import MGCLIP
    from utils.lora import lora_layers

    learner = MGCLIP(tiny_args(tmp_path, model_name="mind", lora_rank=3, fusion_beta=1.5, some_fork_key=1))
    assert learner.opts.fusion_beta == 1.5
    ranks = {layer.lora_A.shape[0] for layer in lora_layers(learner._network)}
    assert ranks == {3}


def test_all_shipped_configs_validate():
    import glob
    import os

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    paths = sorted(glob.glob(os.path.join(root, "exps", "*.json")) + glob.glob(os.path.join(root, "exps", "*.yaml")))
    assert paths
    for p in paths:
        assert build_configs(p), p


def test_print_config_shows_every_default_and_reads_back(tmp_path, capsys):
    from main import main

    assert main(["--config", "compare_demo", "--set", "rapf.beta=1", "--print-config"]) == 0
    blocks = capsys.readouterr().out.split("# ")[1:]
    printed = {b.split("\n", 1)[0]: yaml.safe_load(b.split("\n", 1)[1]) for b in blocks}
    from tests.conftest import ROOT

    with open(os.path.join(ROOT, "exps", "compare_demo.json")) as f:  # every method it lists, in its order
        assert list(printed) == json.load(f)["model_name"] and list(printed)[:4] == ["mgclip", "rapf", "proof",
                                                                                     "moe_adapters"]
    assert printed["rapf"]["beta"] == 1.0 and printed["rapf"]["hard_pair_threshold"] == 0.55
    assert printed["mgclip"]["fusion_beta"] == 4.0 and "beta" not in printed["mgclip"]
    assert "lora_rank" not in printed["zs_clip"] and printed["zs_clip"]["prompt_template"] == "a good photo of a {}."
    for name, values in printed.items():  # a printed block is a complete config of its method
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(values))
        assert build_config(str(path)).to_dict() == values
    assert not (tmp_path / "logs").exists() and not os.path.exists("logs/mgclip/synthetic/10/10/compare_1993")


def test_a_config_extends_a_shipped_config_or_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # names resolve among the shipped configs, files beside the extending file
    child = tmp_path / "mine.json"
    child.write_text(json.dumps({"extends": "mgclip_cifar", "lr": 5e-4, "prefix": "mine"}))
    cfg = build_config(str(child))
    with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "exps",
                           "mgclip_cifar.json")) as f:
        shipped = json.load(f)
    assert cfg.lr == 5e-4 and cfg.prefix == "mine"
    assert (cfg.dataset, cfg.epochs, cfg.class_order) == (shipped["dataset"], shipped["epochs"], shipped["class_order"])
    # a chain of files, relative to the extending file's folder; sections merge key by key
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "base.yaml").write_text(yaml.safe_dump(
        {"model_name": ["mgclip", "rapf"], "dataset": "synthetic", "rapf": {"lr": 0.1, "beta": 1.0}}))
    (tmp_path / "conf" / "middle.yaml").write_text(yaml.safe_dump({"extends": "base.yaml", "seed": 7}))
    (tmp_path / "top.json").write_text(json.dumps({"extends": "conf/middle.yaml", "rapf": {"beta": 2.0}}))
    mg, rapf = build_configs(str(tmp_path / "top.json"))
    assert mg.seeds() == [7] and (rapf.lr, rapf.options.beta) == (0.1, 2.0)
    # a loop, and a base that does not exist, are named
    (tmp_path / "a.json").write_text(json.dumps({"extends": "b.json"}))
    (tmp_path / "b.json").write_text(json.dumps({"extends": "a.json", "lr": 0.1}))
    with pytest.raises(ConfigError, match="extends itself"):
        build_config(str(tmp_path / "a.json"))
    (tmp_path / "typo.json").write_text(json.dumps({"extends": "mgclip_cifr"}))
    with pytest.raises(ConfigError, match="did you mean the shipped config 'mgclip_cifar'"):
        build_config(str(tmp_path / "typo.json"))


def test_set_model_name_takes_a_list_of_methods():
    """Side by side from the command line: a YAML list for model_name (it is a string key,
    and string keys keep free text such as 'a photo: {}' raw; model_name is not free text)."""
    configs = build_configs(None, ["model_name=[mgclip,rapf,zs_clip]", "dataset=synthetic"])
    assert [c.model_name for c in configs] == ["mgclip", "rapf", "zs_clip"]
    assert parse_overrides(["prompt_template=a photo: {}."]) == {"prompt_template": "a photo: {}."}
    assert parse_overrides(["prefix=[a,b]"]) == {"prefix": "[a,b]"}  # free text stays text


# ----------------------------------------------------------------------------- typed options, built once
def every_options_class():
    from toolbox.registry import LEARNERS, options_class

    return {m: options_class(m) for m in LEARNERS if options_class(m) is not None}


OPTION_METHODS = sorted(every_options_class())  # every registered learner that declares options (a new one too)


def test_every_method_with_options_is_counted():
    assert {"mgclip", "rapf", "proof", "moe_adapters", "l2p", "dualprompt", "coda_prompt",
            "aper_adapter"} <= set(OPTION_METHODS) and "zs_clip" not in OPTION_METHODS


@pytest.mark.parametrize("hint, value, expected", [
    ("int", "3", 3), ("int", 2.0, 2), ("float", "1e-3", 1e-3), ("float", 2, 2.0), ("bool", "yes", True),
    ("bool", "0", False), ("str", "a", "a"), ("Optional[int]", None, None), ("Optional[int]", "4", 4),
    ("List[int]", [1, "2"], [1, 2]), ("List[int]", "4,10", [4, 10]), ("List[str]", "q, v", ["q", "v"]),
    ("Tuple[int, ...]", [1, 2], (1, 2)), ("Tuple[int, str]", [1, "a"], (1, "a")),
    ("Union[int, List[int]]", [3, 4], [3, 4]), ("Union[int, List[int]]", "5", 5),
    ("Union[Literal['auto'], int]", "auto", "auto"), ("Union[Literal['auto'], int]", "7", 7),
    ("Literal['auto', 'true', 'false']", True, "true"), ("Literal['auto', 'true', 'false']", "AUTO", "auto"),
    ("List[Dict[str, Any]]", {"dataset": "cifar100"}, [{"dataset": "cifar100"}]),
])
def test_values_are_read_by_the_type_hint(hint, value, expected):
    from typing import Any, Dict, List, Literal, Optional, Tuple, Union  # noqa: F401 (the hints' names)

    from utils.config import coerce

    got = coerce("k", value, eval(hint))
    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize("hint, value, allowed", [
    ("int", True, "an integer"), ("int", "x", "an integer"), ("float", "fast", "a number"),
    ("bool", "maybe", "true or false"), ("str", 3, "a string"), ("Optional[int]", "x", "an integer or null"),
    ("List[int]", 5, "a list of integers"), ("List[int]", [1, "x"], "a list of integers"),
    ("Union[int, List[int]]", "x", "an integer or a list of integers"),
    ("Union[Literal['auto'], int]", "many", "'auto' or an integer"),
    ("Literal['sgd', 'adam']", "adamw", "'sgd' or 'adam'"), ("Dict[str, int]", [1], "a mapping"),
])
def test_a_value_of_the_wrong_type_is_one_line_naming_key_value_and_what_is_allowed(hint, value, allowed):
    from typing import Dict, List, Literal, Optional, Union  # noqa: F401 (the hints' names)

    from utils.config import coerce

    with pytest.raises(ConfigError) as e:
        coerce("some_key", value, eval(hint))
    assert str(e.value) == f"config key 'some_key' = {value!r}: expected {allowed}"


def test_an_unsupported_type_hint_is_a_programming_error():
    from utils.config import coerce

    with pytest.raises(TypeError, match="no coercion"):
        coerce("k", 1, complex)


def test_every_fields_default_reads_back_as_itself():
    """Every field of the shared config and of each method's options has a hint the
    coercion reads, and its default passes through unchanged."""
    from dataclasses import MISSING, fields

    from utils.config import Config, coerce, field_hints

    for cls in [Config] + list(every_options_class().values()):
        hints = field_hints(cls)
        for f in fields(cls):
            if f.name == "options":
                continue
            default = f.default_factory() if f.default is MISSING else f.default
            assert coerce(f.name, default, hints[f.name]) == default, (cls.__name__, f.name)


@pytest.mark.parametrize("model", OPTION_METHODS)
def test_every_option_refuses_a_wrong_type_in_one_line(model, tmp_path):
    """Each option given a value of no type it accepts: one line naming the method, the key,
    the value and what is allowed."""
    from dataclasses import fields

    for f in fields(every_options_class()[model]):
        value = {"not": "this"}
        with pytest.raises(ConfigError) as e:
            make_config({"model_name": model, "dataset": "synthetic", f.name: value})
        message = str(e.value)
        assert len(message.splitlines()) == 1 and message.startswith(f"{model}: config key '{f.name}' = ")
        assert repr(value) in message and ": expected " in message


def count_builds(monkeypatch, cls):
    """Counts each construction and each validate() of options class ``cls`` (its own
    dataclass __init__ and validate, not a parent's)."""
    counts = {"built": 0, "validated": 0}
    init, validate = cls.__init__, cls.validate

    def counted_init(self, *a, **kw):
        counts["built"] += 1
        init(self, *a, **kw)

    def counted_validate(self):
        counts["validated"] += 1
        validate(self)

    monkeypatch.setattr(cls, "__init__", counted_init)
    monkeypatch.setattr(cls, "validate", counted_validate)
    return counts


@pytest.mark.parametrize("model", OPTION_METHODS)
def test_a_learner_builds_and_validates_its_options_once(model, tmp_path, monkeypatch):
    """The learner's one typed config: its options object is built and validated once, in
    the learner's construction, and is the object the learner reads for a whole task."""
    from conftest import tiny_args

    from tests.test_prompts import prompt_args
    from toolbox.data_manager import DataManager
    from toolbox.registry import get_model, options_class
    from utils.config import Config

    args = prompt_args(tmp_path, model) if model in ("l2p", "dualprompt", "coda_prompt") else \
        tiny_args(tmp_path, model_name=model)
    cfg = make_config(args)
    dm = DataManager(cfg.dataset, True, cfg.seeds()[0], cfg.init_cls, cfg.increment, cfg)
    counts = count_builds(monkeypatch, options_class(model))
    learner = get_model(model, {**cfg.to_dict(), "seed": cfg.seeds()[0]})
    assert counts == {"built": 1, "validated": 1}
    assert isinstance(learner.cfg, Config) and learner.opts is learner.cfg.options
    assert isinstance(learner.opts, options_class(model)) and learner.cfg.options == cfg.options
    learner.incremental_train(dm)
    learner.eval_task()
    learner.after_task()
    assert counts == {"built": 1, "validated": 1}


def test_a_fork_learner_builds_its_options_once(tmp_path, monkeypatch):
    """A PyCIL fork hands the plugin a plain args dict (its device a list, keys of its own):
    one options object all the same."""
    from conftest import tiny_args

    from models.mgclip import MGCLIP, MGCLIPOptions

    counts = count_builds(monkeypatch, MGCLIPOptions)
    learner = MGCLIP(tiny_args(tmp_path, model_name="mind", device=["cpu"], lora_rank=3, memory_size=0,
                               some_fork_key=1))
    assert counts == {"built": 1, "validated": 1} and learner.opts.lora_rank == 3
