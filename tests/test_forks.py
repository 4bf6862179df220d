"""The plugin runs unchanged in PyCIL, PROOF's repository and C3Box: for each, the
docs/forks.md's steps (its file list, its factory branch, its config) in a tree with that fork's
contract (``tests/fork_trees.py``), run through the fork's own ``main.py`` -> trainer in a
Python that cannot see this repository."""
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from tests import fork_trees
from tests.conftest import ROOT
from toolbox.configs import make_config
from utils.class_names import CIFAR100_CLASSES

README = open(os.path.join(ROOT, "docs", "forks.md"), encoding="utf-8").read()  # the steps a fork's user follows
SECTIONS = {"pycil": "## PyCIL", "proof": "## PROOF's repository", "c3box": "## C3Box"}
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711])


def readme_files():
    m = re.search(r"Copy `models/mgclip\.py` and `utils/\{([a-z_,]+)\}\.py`", README)
    assert m, "docs/forks.md no longer names the files to copy"
    return ["models/mgclip.py"] + [f"utils/{name}.py" for name in m.group(1).split(",")]


def readme_factory_branch():
    m = re.search(r"utils/factory\.py` `get_model`:\s*```python\n(.*?)```", README, re.S)
    assert m, "docs/forks.md no longer shows the factory branch"
    return m.group(1)


def readme_config(fork):
    section = README[README.index(SECTIONS[fork]):]
    m = re.search(r"```json\n(.*?)```", section, re.S)
    return json.loads(m.group(1))


TINY = {"backbone": "tiny-random", "init_cls": 5, "increment": 5, "batch_size": 8, "eval_batch_size": 16,
        "visual_batch_size": 8}


def run_fork(tmp_path, fork, config):
    root = tmp_path / fork
    fork_trees.write_fork(str(root), fork, readme_factory_branch())
    for path in readme_files():
        assert not (root / path).exists(), f"{path} would overwrite the fork's own file"
        shutil.copy(os.path.join(ROOT, path), root / path)
    (root / "exps" / "mgclip.json").write_text(json.dumps(config))
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
             if p and os.path.abspath(p) != os.path.abspath(ROOT)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    proc = subprocess.run([sys.executable, "main.py", "--config", "exps/mgclip.json"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.split("RESULT ", 1)[1])
    return result, proc.stderr


def clip_preprocess_by_hand(image, size=32):
    """CLIP's preprocessing with PIL and numpy: shorter side to ``size`` (bicubic), centre
    crop, [0, 1], CLIP mean/std; (3, size, size)."""
    im = Image.fromarray(np.asarray(image, dtype=np.uint8))
    w, h = im.size
    new = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    im = im.resize(new, Image.BICUBIC)
    left, top = int(round((new[0] - size) / 2)), int(round((new[1] - size) / 2))
    arr = np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.float64) / 255.0
    return ((arr - CLIP_MEAN) / CLIP_STD).transpose(2, 0, 1)


@pytest.mark.parametrize("fork", fork_trees.FORKS)
def test_the_readme_steps_run_in_the_fork(tmp_path, fork):
    config = {**readme_config(fork), **TINY}
    assert config["dataset"] == fork_trees.DATASET[fork] and config["memory_size"] == 0
    result, log = run_fork(tmp_path, fork, config)
    assert len(result["curve"]) == 2 and all(0 <= a <= 100 for a in result["curve"])
    assert result["known"] == 10  # after_task advanced the classes (the fork's base does not)
    order = result["class_order"]
    if fork == "pycil":  # no names in PyCIL's data manager: the CIFAR-100 table by the fork's order
        assert result["names"] == [CIFAR100_CLASSES[c] for c in order]
    else:  # the fork's own names, already in incremental order
        assert result["names"] == [fork_trees.NAMES[c] for c in order]
    # the images reach CLIP preprocessed as CLIP expects, not by the fork's transforms
    for image, tensor in zip(result["test_images"], result["test_inputs"]):
        np.testing.assert_allclose(np.asarray(tensor), clip_preprocess_by_hand(image), atol=1e-5)
    assert "CLIP's preprocessing" in log
    if not torch.cuda.is_available():  # the forks make "cuda:0" of device "0" whatever the machine
        assert result["device"] == "cpu" and "no CUDA: running on the CPU" in log


def test_a_c3box_mind_json_is_read_with_its_meaning(tmp_path):
    config = {**readme_config("c3box"), **TINY, "init_lr": 0.002, "visual_clsf": True, "visual_clsf_lr": 0.0007,
              "visual_clsf_batch_size": 4, "visual_clsf_epochs": 2, "epochs": 3}
    config.pop("lr"), config.pop("visual_batch_size")
    result, log = run_fork(tmp_path, "c3box", config)
    cfg = result["cfg"]
    assert (cfg["lr"], cfg["compensation"], cfg["visual_lr"], cfg["visual_batch_size"], cfg["visual_epochs"]) == \
        (0.002, True, 0.0007, 4, 2)
    assert cfg["epochs"] == "auto" and cfg["probe_max_epochs"] == 3  # mind.json's epochs: the probe's maximum
    assert "C3Box config key 'init_lr' = 0.002 read as 'lr'" in log and "probe_max_epochs = 3" in log


def test_c3box_keys_in_conflict_or_in_our_own_configs_are_refused():
    from utils.config import ConfigError, map_c3box_keys

    with pytest.raises(ConfigError, match="'init_lr'.*'lr'.*disagree"):
        map_c3box_keys({"init_lr": 0.1, "lr": 0.2})
    with pytest.raises(ConfigError, match="C3Box's name.*use 'visual_lr'.*probe_max_epochs"):
        make_config({"visual_clsf_lr": 0.1})
    mapped, _ = map_c3box_keys({"init_lr": 0.1, "epochs": 5, "probe_max_epochs": 7})
    assert mapped == {"lr": 0.1, "epochs": 5, "probe_max_epochs": 7}  # an explicit probe maximum keeps epochs


def test_accuracy_groups_are_one_per_task_and_sort_as_strings():
    from utils.metrics import accuracy_dict

    ranges = [range(0, 100), range(100, 200)]
    y_true = np.array([5, 150, 150, 99])
    y_pred = np.array([[5], [150], [3], [99]])
    d = accuracy_dict(y_pred, y_true, ranges, known_classes=100, topk=5)
    keys = [k for k in d["grouped"] if "-" in k]
    assert keys == ["000-099", "100-199"] and sorted(keys) == keys  # PyCIL's trainer sorts them as strings
    assert d["grouped"]["000-099"] == 100.0 and d["grouped"]["100-199"] == 50.0
    assert d["grouped"]["old"] == 100.0 and d["grouped"]["new"] == 50.0 and d["top1"] == 75.0


def test_a_fork_data_manager_without_names_is_told_its_own_file():
    """PyCIL's DataManager (utils/data_manager.py in the fork) has no names: on a dataset the
    plugin has no table for, the error names that file, not this toolbox's."""
    from utils.clip_ops import class_names

    fork_dm = type("DataManager", (), {"__module__": "utils.data_manager", "_class_order": [3, 1, 2]})()
    with pytest.raises(RuntimeError, match=r"DataManager in utils/data_manager\.py\) has no get_class_names") as e:
        class_names(fork_dm, [0, 1], "imagenet-r")
    assert "toolbox/" not in str(e.value)
    assert class_names(fork_dm, [0, 1], "cifar100") == [CIFAR100_CLASSES[3], CIFAR100_CLASSES[1]]
