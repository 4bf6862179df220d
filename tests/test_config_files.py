"""Config files and the command line (``toolbox/configs.py``): empty files, typos with the
likeliest meant key, free-text values, shipped configs by name from any folder."""
import os

import pytest

from main import main
from tests.conftest import write_cfg


@pytest.mark.parametrize("text", ["", "null\n", "# only a comment\n", "{}\n"])
def test_an_empty_or_null_config_is_refused(tmp_path, capsys, text):
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    assert main(["--config", str(path), "-q"]) == 2
    assert "is empty" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "logs") and not os.path.exists("logs/mgclip/cifar100")


@pytest.mark.parametrize("item, expected", [
    ("lerning_rate=0.01", "did you mean 'lr'?"),
    ("learning_rate=0.01", "did you mean 'lr'?"),
    ("bach_size=4", "did you mean 'batch_size'?"),
    ("class_order=shufle", "did you mean 'shuffle'?"),
    ("seed=[1,2", "cannot be read"),
])
def test_typos_get_useful_suggestions(tmp_path, capsys, item, expected):
    cfg_path, _ = write_cfg(tmp_path)
    assert main(["--config", str(cfg_path), "-q", "--set", item]) == 2
    err = capsys.readouterr().err
    assert expected in err and "expected an integer" not in err


def test_free_text_values_with_yaml_characters_stay_strings():
    from toolbox.configs import parse_overrides

    assert parse_overrides(["prompt_template=a photo: {}."]) == {"prompt_template": "a photo: {}."}


def test_shipped_configs_by_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # outside the clone: no exps/ here
    assert main(["--config", "mgclip_demo", "-q", "--set", "epochs=1", "--set", "synthetic_classes=4",
                 "--set", "init_cls=2", "--set", "increment=2", "--set", "backbone=tiny-random"]) == 0
    assert os.path.isdir(tmp_path / "logs")  # relative run folders go under the current folder
