"""The method registry: a new method is one file plus one registration and then runs
through main.py, the report and the analysis; what a learner declares (options, release)
is what the toolbox uses, and what it does not declare fails loudly."""
import json
import os
import shutil
import sys

import pytest

from main import main
from models.zs_clip import ZSCLIP
from tests.conftest import ROOT, tiny_args
from toolbox.configs import build_configs, make_config
from toolbox.registry import LEARNERS, learner_class, method_release, option_owner, options_class, registered, uses_text
from utils.config import ConfigError


@pytest.fixture
def zs_copy(tmp_path, monkeypatch):
    """models/zs_clip.py copied, unchanged, into a module of its own, registered as ``zs_copy``."""
    package = tmp_path / "newmethods"
    package.mkdir()
    (package / "__init__.py").write_text("")
    shutil.copy(os.path.join(ROOT, "models", "zs_clip.py"), package / "zs_copy.py")
    monkeypatch.syspath_prepend(str(tmp_path))
    with registered({"zs_copy": "newmethods.zs_copy:ZSCLIP"}):
        yield
    sys.modules.pop("newmethods.zs_copy", None)
    sys.modules.pop("newmethods", None)


def test_a_new_method_runs_through_main_report_and_analysis(tmp_path, zs_copy, capsys):
    from toolbox.analysis import main as analysis_main
    from toolbox.report import main as report_main
    from toolbox.trainer import run_dir_for

    args = tiny_args(tmp_path, model_name=["zs_copy", "zs_clip"])
    path = tmp_path / "both.json"
    path.write_text(json.dumps(args))
    assert main(["--config", str(path), "-q"]) == 0
    copy_dir = run_dir_for(make_config({**args, "model_name": "zs_copy"}), 1993)
    original_dir = run_dir_for(make_config({**args, "model_name": "zs_clip"}), 1993)
    with open(os.path.join(copy_dir, "results.json")) as f, open(os.path.join(original_dir, "results.json")) as g:
        copy, original = json.load(f), json.load(g)
    assert copy["model_name"] == "zs_copy" and copy["accuracy_matrix"] == original["accuracy_matrix"]
    capsys.readouterr()
    assert report_main([str(tmp_path / "logs"), "--out", str(tmp_path / "report")]) == 0
    assert "| zs_copy | test | synthetic | 2/2 |" in capsys.readouterr().out
    assert analysis_main([copy_dir, "--out", str(tmp_path / "analysis"), "--per-class", "2"]) == 0
    with open(tmp_path / "analysis" / "analysis.json") as f:
        assert json.load(f)["model_name"] == "zs_copy"


def test_a_registration_lasts_only_inside_its_block(zs_copy):
    assert "zs_copy" in LEARNERS
    with pytest.raises(ValueError, match="already registered: zs_copy"):
        with registered({"zs_copy": "x:Y"}):
            pass


@pytest.mark.parametrize("model", sorted(LEARNERS))
def test_what_the_learners_declare(model):
    """The registry answers what each learner class declares (a new learner needs no entry here):
    its release is a known one (or None), its options class a dataclass whose every field it owns."""
    from dataclasses import fields, is_dataclass

    from toolbox.released import TABLES

    cls = learner_class(model)
    assert method_release(model) == cls.release and cls.release in (None, *TABLES)  # None: 'released' names one
    assert options_class(model) is getattr(cls, "options_class", None)
    if cls.options_class is not None:
        assert is_dataclass(cls.options_class)
        assert all(model in option_owner(f.name) for f in fields(cls.options_class))
    assert isinstance(cls.trains, str) and isinstance(uses_text(model), bool)


def test_the_registry_reads_the_declarations_of_two_learners():
    assert options_class("zs_clip") is None and options_class("mgclip").__name__ == "MGCLIPOptions"
    assert "mgclip" in option_owner("lora_rank") and "rapf" in option_owner("beta")
    assert method_release("rapf") == "rapf" and method_release("zs_clip") == "mgclip"
    assert uses_text("mgclip") and not uses_text("simplecil")


class NoRelease(ZSCLIP):
    """Zero-shot CLIP declaring no official release (before: silently MG-CLIP's files)."""
    release = None


def test_released_files_for_a_method_without_a_release_are_refused_by_name(tmp_path):
    with registered({"norelease": "tests.test_registry:NoRelease"}):
        with pytest.raises(ConfigError, match="norelease declares no official release"):
            make_config({"model_name": "norelease", "dataset": "cifar100", "class_order": "released"})
        cfg = make_config({"model_name": "norelease", "dataset": "cifar100", "class_order": "released:rapf"})
        assert cfg.class_order == "released:rapf"
        # side by side, 'released' is the first method's release; one without it keeps the value (and is refused)
        with pytest.raises(ConfigError, match="norelease declares no official release"):
            build_configs(None, ["model_name=[norelease,zs_clip]", "dataset=cifar100", "class_order=released"])


def parameters(learner):
    """Every parameter of the learner's modules, by attribute and name (detached copies)."""
    import torch

    return {f"{attr}.{name}": p.detach().clone() for attr, module in vars(learner).items()
            if isinstance(module, torch.nn.Module) for name, p in module.named_parameters()}


@pytest.mark.parametrize("model", sorted(LEARNERS))
def test_every_registered_learner_keeps_the_contract(tmp_path, model):
    """models/base.py's hooks on two tasks: what it trains in words, task metrics by name,
    normalised views, and a fresh learner given its state_dict sees the same features."""
    import torch

    from toolbox.data_manager import DataManager
    from toolbox.registry import get_model, option_names

    with open(os.path.join(ROOT, "exps", "compare_demo.json")) as f:  # its options for the tiny CLIP (2 image
        tiny = {k: v for k, v in json.load(f).get(model, {}).items() if k in option_names(model)}  # blocks), if any
    cfg = make_config(tiny_args(tmp_path, model_name=model, epochs=1, **tiny))
    args = {**cfg.to_dict(), "seed": 1993}

    def build():
        torch.manual_seed(0)
        return get_model(model, args)

    dm = DataManager(cfg.dataset, True, 1993, cfg.init_cls, cfg.increment, cfg)
    learner = build()
    untrained = parameters(build())
    for _ in range(2):
        learner.incremental_train(dm)
        cnn, _ = learner.eval_task()
        learner.after_task()
        assert all(isinstance(k, str) and 0 <= v <= 100 for k, v in learner.task_metrics().items())
    trained = parameters(learner)  # "" = nothing trained: no parameter of the learner's modules changed or was added
    changed = [k for k, p in trained.items() if k not in untrained or not torch.equal(p, untrained[k])]
    assert isinstance(learner.trains, str) and (learner.trains == "") == (not changed), changed[:3]
    x = torch.rand(3, 3, learner._network.input_resolution, learner._network.input_resolution)
    names = learner._names[:4]
    fresh = build()
    fresh.load_state_dict(learner.state_dict())
    def seeded(view, *a):  # the same draws for both learners (MoE-Adapters' gates are noisy at test time)
        torch.manual_seed(0)
        return view(*a)

    for trained in (False, True):
        image, text = seeded(learner.image_view, x, trained), seeded(learner.text_view, names, trained)
        assert image.shape == (3, learner._network.embed_dim) and text.shape == (4, learner._network.embed_dim)
        torch.testing.assert_close(image.norm(dim=1), torch.ones(3))
        torch.testing.assert_close(seeded(fresh.image_view, x, trained), image)
        torch.testing.assert_close(seeded(fresh.text_view, names, trained), text)
    visual = learner.visual_classifier()
    if visual is not None:  # a row per seen class, in CLIP's feature space
        assert visual.shape == (learner._total_classes, learner._network.embed_dim)
        torch.testing.assert_close(fresh.visual_classifier(), visual)
