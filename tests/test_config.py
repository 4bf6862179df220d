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
    assert (o["lora_rank"], o["lora_alpha"], o["lora_targets"], o["lora_encoders"]) == (8, 1.0, ["k", "v"],
                                                                                        ["visual", "text"])
    assert (o["gap_alpha"], o["probe_max_epochs"], c.epochs, o["fusion_beta"]) == (0.10, 10, "auto", 4.0)
    assert (o["visual_epochs"], o["visual_scale"], o["min_lr_ratio"]) == (3, 1.0, 0.01)
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
    assert c.batch_size == 64 and c.options["compensation"] is False and c.seeds() == [1, 2]
    assert c.options["lora_targets"] == ["q", "v"] and c.epochs == "auto" and c.options["fusion_beta"] == 2.0
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
    assert mg.options["fusion_beta"] == 2.0 and mg.options["lora_rank"] == 4 and "beta" not in mg.options
    assert rapf.options["beta"] == 1.0 and "fusion_beta" not in rapf.to_dict() and "lora_rank" not in rapf.to_dict()
    assert zs.options == {} and "lora_rank" not in zs.to_dict()


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
    assert list(printed) == ["mgclip", "rapf", "proof", "moe_adapters", "l2p", "dualprompt", "coda_prompt",
                             "aper_adapter", "simplecil", "zs_clip"]
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
    assert mg.seeds() == [7] and (rapf.lr, rapf.options["beta"]) == (0.1, 2.0)
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
