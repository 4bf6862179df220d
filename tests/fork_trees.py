"""Fork-shaped trees for the plugin tests: the contracts of PyCIL, PROOF's repository and
C3Box as the project's fork notes describe them (``../shared/FORKS.md``, beside the repository,
not in it; docs/forks.md is the users' summary), written from that description, not from the
forks' code. Each tree has the fork's ``main.py`` -> ``trainer.py`` -> ``DataManager`` /
``factory`` / ``BaseLearner`` shape, with a small synthetic CIFAR-like dataset standing in
for the real one (as FORKS.md says a test harness must: the forks' data roots are fixed paths).

What each contract reproduces:
- PyCIL: BaseLearner sets ``self.args``; DataManager holds no class names; the CIFAR
  transform is 32 px with CIFAR statistics; ``eval_task`` is unpacked into 2 values; the
  trainer counts ``_network``'s parameters and builds an accuracy matrix from the
  ``grouped`` keys that contain '-' (one column per task: more keys than tasks crash).
- PROOF: BaseLearner does not set ``self.args``; names in ``_class_to_label`` (from
  ``utils/labels.json``, reordered to incremental order), templates in ``_data_to_prompt``;
  ``cifar224`` squash-resizes to 224 x 224 with CLIP statistics; 6 values from ``eval_task``;
  the trainer sets ``model.save_dir``.
- C3Box: as PROOF, plus ``get_dataset``'s 4th positional parameter is an unused
  ``concepts``; the trainer logs ``backbone_type``.
Every trainer turns each device entry into ``cuda:<entry>``, whatever the machine.
"""
from __future__ import annotations

import json
import os
import textwrap

FORKS = ("pycil", "proof", "c3box")
DATASET = {"pycil": "cifar100", "proof": "cifar224", "c3box": "cifar224"}
NAMES = [f"thing number {i}" for i in range(10)]  # the fork's labels.json names, original class order
IMAGE_SHAPE = (40, 48)  # H, W: not square, so CLIP's resize + centre crop differs from any squash resize

BASE = '''
import numpy as np


class BaseLearner:
    def __init__(self, args):
        {set_args}
        self._cur_task = -1
        self._known_classes = 0
        self._total_classes = 0
        self._network = None
        self._old_network = None
        self._data_memory, self._targets_memory = np.array([]), np.array([])
        self.topk = 5
        self._memory_size = args["memory_size"]
        self._memory_per_class = args.get("memory_per_class", None)
        self._fixed_memory = args.get("fixed_memory", False)
        self._device = args["device"][0]
        self._multiple_gpus = args["device"]

    def incremental_train(self):  # no data_manager parameter: a plugin must override it
        pass

    def after_task(self):  # does not advance _known_classes
        pass

    def _get_memory(self):
        return None if len(self._data_memory) == 0 else (self._data_memory, self._targets_memory)

    def eval_task(self):
        {eval_task}
{extra}
'''

ZERO_SHOT = '''
    def _eval_zero_shot(self):  # needs CUDA and a CLIP-like network with a tokenizer
        raise RuntimeError("zero-shot evaluation of the base class is not available here")
'''

EVAL_TASK = {
    "pycil": 'raise NotImplementedError("the base evaluation needs _network(x)[\'logits\']")',
    "proof": 'return (self.args["convnet_type"],) * 6  # reads self.args, which this base never sets',
    "c3box": 'raise NotImplementedError("the base evaluation needs _network(x)[\'logits\']")',
}

DATA_MANAGER = '''
import json

import numpy as np
import torch
from PIL import Image
from torchvision import transforms


class SyntheticCifar:
    """Stands in for the fork's CIFAR iData: uint8 (H, W, 3) arrays, the fork's transforms."""
    use_path = False
    train_trsf = {train_trsf}
    test_trsf = {test_trsf}
    common_trsf = {common_trsf}

    def download_data(self):
        rng = np.random.default_rng(0)
        def draw(n):
            y = np.repeat(np.arange(10), n)
            base = rng.integers(40, 215, size=(10, 1, 1, 3))
            x = base[y] + rng.integers(-30, 30, size=(len(y), {h}, {w}, 3))
            return np.clip(x, 0, 255).astype(np.uint8), y
        self.train_data, self.train_targets = draw(6)
        self.test_data, self.test_targets = draw(3)


class DummyDataset(torch.utils.data.Dataset):
    def __init__(self, images, labels, trsf, use_path):
        self.images, self.labels, self.trsf, self.use_path = images, labels, trsf, use_path

    def __len__(self):
        return len(self.images)

    def __getitem__(self, idx):
        image = self.trsf(Image.fromarray(self.images[idx]))
        return idx, image, self.labels[idx]


class DataManager:
    def __init__(self, dataset_name, shuffle, seed, init_cls, increment):
        self.dataset_name = dataset_name
        {read_names}
        idata = SyntheticCifar()
        idata.download_data()
        self._train_data, self._test_data = idata.train_data, idata.test_data
        self._train_trsf, self._test_trsf, self._common_trsf = idata.train_trsf, idata.test_trsf, idata.common_trsf
        self.use_path = idata.use_path
        n = len(np.unique(idata.train_targets))
        if shuffle:
            np.random.seed(seed)
            order = np.random.permutation(n).tolist()
        else:
            order = list(range(n))
        self._class_order = order
        remap = {{c: i for i, c in enumerate(order)}}
        self._train_targets = np.array([remap[c] for c in idata.train_targets])
        self._test_targets = np.array([remap[c] for c in idata.test_targets])
        {reorder_names}
        self._increments = [init_cls]
        while sum(self._increments) + increment < n:
            self._increments.append(increment)
        if n - sum(self._increments) > 0:
            self._increments.append(n - sum(self._increments))

    @property
    def nb_tasks(self):
        return len(self._increments)

    def get_task_size(self, task):
        return self._increments[task]

    def get_total_classnum(self):
        return len(self._class_order)

    def get_dataset(self, indices, source, mode, {extra_param}appendent=None, ret_data=False, m_rate=None):
        x, y = (self._train_data, self._train_targets) if source == "train" else (self._test_data, self._test_targets)
        if mode == "train":
            trsf = transforms.Compose([*self._train_trsf, *self._common_trsf])
        elif mode == "test":
            trsf = transforms.Compose([*self._test_trsf, *self._common_trsf])
        else:
            raise ValueError("Unknown mode " + str(mode))
        keep = np.isin(y, np.asarray(list(indices)))
        data, targets = x[keep], y[keep]
        if appendent is not None and len(appendent) != 0 and len(appendent[0]):
            data = np.concatenate([data, appendent[0]])
            targets = np.concatenate([targets, appendent[1]])
        dataset = DummyDataset(data, targets, trsf, self.use_path)
        return (data, targets, dataset) if ret_data else dataset
'''

TRANSFORMS = {
    # PyCIL's cifar100: 32 px, crop/flip/jitter for training, CIFAR statistics
    "pycil": ("[transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(p=0.5), "
              "transforms.ColorJitter(brightness=63 / 255), transforms.ToTensor()]",
              "[transforms.ToTensor()]",
              "[transforms.Normalize(mean=(0.5071, 0.4867, 0.4408), std=(0.2675, 0.2565, 0.2761))]"),
    # PROOF's / C3Box's cifar224: squash to 224 x 224 (bicubic), CLIP statistics, train = test
    "proof": ("[transforms.Resize((224, 224), interpolation=transforms.InterpolationMode.BICUBIC), "
              "transforms.CenterCrop((224, 224)), transforms.ToTensor(), transforms.Normalize("
              "(0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))]",) * 2 + ("[]",),
}
TRANSFORMS["c3box"] = TRANSFORMS["proof"]

TRAINER = '''
import copy
import json
import logging
import os

import numpy as np
import torch

from utils import factory
from utils.data_manager import DataManager


def train(args):
    seeds, devices = copy.deepcopy(args["seed"]), copy.deepcopy(args["device"])
    for seed in seeds:
        args["seed"], args["device"] = seed, devices
        _train(args)


def _set_device(args):
    gpus = []
    for device in args["device"]:
        gpus.append(torch.device("cuda:{{}}".format(device)))  # every entry, whatever the machine
    args["device"] = gpus


def _train(args):
    init_cls = 0 if args["init_cls"] == args["increment"] else args["init_cls"]
    logs_name = "logs/{{}}/{{}}/{{}}/{{}}".format(args["model_name"], args["dataset"], init_cls, args["increment"])
    os.makedirs(logs_name, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", handlers=[
        logging.FileHandler(os.path.join(logs_name, "{{}}_{{}}_{{}}.log".format(args["prefix"], args["seed"],
                                                                        args["{backbone_key}"]))),
        logging.StreamHandler()])
    torch.manual_seed(1)
    _set_device(args)
    data_manager = DataManager(args["dataset"], args["shuffle"], args["seed"], args["init_cls"], args["increment"])
    model = factory.get_model(args["model_name"], args)
    {save_dir}
    curve, rows = [], []
    for task in range(data_manager.nb_tasks):
        {count_params}
        model.incremental_train(data_manager)
        {unpack}
        model.after_task()
        curve.append(cnn_accy["top1"])
        logging.info("grouped %s top5 %s", cnn_accy["grouped"], cnn_accy["top5"])
        rows.append([cnn_accy["grouped"][k] for k in sorted(cnn_accy["grouped"]) if "-" in k])
    {matrix}
    test_set = model.test_loader.dataset
    print("RESULT " + json.dumps({{
        "curve": [float(a) for a in curve], "names": list(model._names), "class_order": data_manager._class_order,
        "test_images": test_set.images[:2].tolist(), "test_inputs": [test_set[i][1].tolist() for i in range(2)],
        "device": str(model._device), "known": model._known_classes, "cfg": model.cfg.to_dict()}}))
'''

UNPACK = {"pycil": "cnn_accy, nme_accy = model.eval_task()",
          "proof": "cnn_accy, nme_accy, zs_seen, zs_unseen, zs_harmonic, zs_total = model.eval_task()",
          "c3box": "cnn_accy, nme_accy, zs_seen, zs_unseen, zs_harmonic, zs_total = model.eval_task()"}

MATRIX = '''matrix = np.zeros((data_manager.nb_tasks, data_manager.nb_tasks))
    for k, row in enumerate(rows):
        matrix[k, :len(row)] = row  # more groups than tasks cannot be broadcast: the fork crashes here
    logging.info("accuracy matrix %s", matrix.T.tolist())'''

MAIN = '''
import argparse
import json

import trainer


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--config", type=str, default="./exps/missing.json")
    args = vars(p.parse_args())
    with open(args["config"]) as f:
        args.update(json.load(f))
    trainer.train(args)


if __name__ == "__main__":
    main()
'''


def write_fork(root: str, fork: str, factory_branch: str) -> None:
    """The fork's own files under ``root`` (the plugin's files are copied in by the test)."""
    for sub in ("models", "utils", "exps"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    for pkg in ("models", "utils"):
        open(os.path.join(root, pkg, "__init__.py"), "w").close()
    names_fork = fork != "pycil"
    write(root, "models/base.py", BASE.format(
        set_args="self.args = args" if fork == "pycil" else "pass  # this fork's base does not set self.args",
        eval_task=EVAL_TASK[fork], extra=ZERO_SHOT if names_fork else ""))
    train_trsf, test_trsf, common_trsf = TRANSFORMS[fork]
    write(root, "utils/data_manager.py", DATA_MANAGER.format(
        train_trsf=train_trsf, test_trsf=test_trsf, common_trsf=common_trsf, h=IMAGE_SHAPE[0], w=IMAGE_SHAPE[1],
        read_names=("with open('./utils/labels.json') as f:\n            self._class_to_label = json.load(f)"
                    "[dataset_name]\n        with open('./utils/templates.json') as f:\n"
                    "            self._data_to_prompt = json.load(f)[dataset_name]") if names_fork else "pass",
        reorder_names=("self._class_to_label = [self._class_to_label[c] for c in order]" if names_fork else "pass"),
        extra_param="concepts=None, " if fork == "c3box" else ""))
    if names_fork:
        write(root, "utils/labels.json", json.dumps({"cifar224": NAMES}))
        write(root, "utils/templates.json", json.dumps({"cifar224": ["a photo of a {}."]}))
    write(root, "utils/factory.py", "def get_model(model_name, args):\n    name = model_name.lower()\n"
                                    "    if name == 'simplecil':\n        raise NotImplementedError\n"
                                    + textwrap.indent(textwrap.dedent(factory_branch).strip(), "    ")
                                    + "\n    else:\n        assert 0\n")
    write(root, "trainer.py", TRAINER.format(
        backbone_key="backbone_type" if fork == "c3box" else "convnet_type",
        save_dir="model.save_dir = logs_name" if names_fork else "",
        count_params="" if fork == "c3box" else "sum(p.numel() for p in model._network.parameters())",
        unpack=UNPACK[fork], matrix=MATRIX if fork == "pycil" else ""))
    write(root, "main.py", MAIN)


def write(root: str, path: str, text: str) -> None:
    with open(os.path.join(root, path), "w", encoding="utf-8") as f:
        f.write(textwrap.dedent(text).lstrip() if path.endswith(".py") else text)
