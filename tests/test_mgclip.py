import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from main import main
from models.mgclip import MGCLIP, fuse_predictions
from tests.conftest import tiny_args, write_cfg
from toolbox.data_manager import DataManager
from utils.cosine_linear import CosineLinear
from utils.lora import lora_layers


def make(args):
    torch.manual_seed(args["seed"])
    dm = DataManager(args["dataset"], True, args["seed"], args["init_cls"], args["increment"], args)
    return MGCLIP(args), dm


def np_softmax(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_fusion_equals_spec_formula():
    rng = np.random.default_rng(0)
    t = rng.normal(0, 20, size=(6, 5))
    v = rng.uniform(-1, 1, size=(6, 5))
    expected = (1 * np_softmax(np_softmax(t)) + 4 * np_softmax(v)) / 5
    got = fuse_predictions(torch.tensor(t), torch.tensor(v), beta=4.0).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)


def test_beta_zero_gives_the_text_prediction():
    rng = np.random.default_rng(1)
    t, v = torch.tensor(rng.normal(0, 20, (50, 7))), torch.tensor(rng.uniform(-1, 1, (50, 7)))
    assert torch.equal(fuse_predictions(t, v, 0.0).argmax(1), t.argmax(1))
    assert not torch.equal(fuse_predictions(t, v, 1e3).argmax(1), t.argmax(1))  # the visual side can win


def test_cosine_prototypes_are_class_means_and_logits_bounded():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(12, 5, generator=g)
    labels = torch.tensor([3, 4, 3, 4, 3, 4, 3, 4, 3, 4, 3, 4])
    clf = CosineLinear(5)
    clf.add_classes(feats, labels, num_new=2, offset=3)
    f = feats.numpy() / np.linalg.norm(feats.numpy(), axis=1, keepdims=True)
    np.testing.assert_allclose(clf.blocks[0].detach().numpy(), np.stack([f[0::2].mean(0), f[1::2].mean(0)]), rtol=1e-5)
    out = clf(torch.randn(20, 5, generator=g) * 50)
    assert out.shape == (20, 2) and out.abs().max() <= 1.0 + 1e-6
    with pytest.raises(ValueError, match="class 5"):
        clf.add_classes(feats, labels, num_new=3, offset=3)


def test_later_task_loss_is_cross_entropy_on_sliced_logits(tmp_path):
    args = tiny_args(tmp_path)
    learner, dm = make(args)
    for t in range(2):
        learner.incremental_train(dm)
        if t == 0:
            learner.after_task()
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for layer in lora_layers(learner._network):
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * 0.05)
    _, x, y = next(iter(learner.train_loader))
    assert (y >= 2).all() and (y < 4).all()
    net = learner._network
    # by hand: text features of ALL seen classes, 100 * cos, slice the current task's columns
    all_tokens = net.tokenize([f"a good photo of a {n}." for n in dm.get_class_names(range(4))])
    img = F.normalize(net.encode_image(x), dim=1)
    txt = F.normalize(net.encode_text(all_tokens), dim=1)
    logits = 100.0 * img @ txt.T
    expected = F.cross_entropy(logits[:, 2:4], y - 2)
    torch.testing.assert_close(learner._loss(x, y), expected, atol=1e-4, rtol=1e-5)


def test_first_task_loss_is_full_cross_entropy(tmp_path):
    learner, dm = make(tiny_args(tmp_path))
    learner.incremental_train(dm)
    _, x, y = next(iter(learner.train_loader))
    net = learner._network
    tokens = net.tokenize([f"a good photo of a {n}." for n in dm.get_class_names(range(2))])
    logits = 100.0 * F.normalize(net.encode_image(x), dim=1) @ F.normalize(net.encode_text(tokens), dim=1).T
    torch.testing.assert_close(learner._loss(x, y), F.cross_entropy(logits, y), atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("script, expected_e", [
    ([-8.0], 1),                      # first probe epoch already violates
    ([-10.5, -10.9, -12.0], 2),       # violation at epoch 3
    ([-10.1, -10.2, -10.3], 3),       # never violates within probe_max_epochs = 3
])
def test_probe_chooses_e_then_restarts_from_zero_shot(tmp_path, monkeypatch, script, expected_e):
    args = tiny_args(tmp_path, epochs="auto", probe_max_epochs=3, track_gap=False)
    learner, dm = make(args)
    values = iter([-10.0] + script)  # reference neg0, then one value per probe epoch
    real_gap = learner._task_gap

    def scripted_gap(feats=None, labels=None):
        if feats is not None:          # the post-training statistic: measure for real
            return real_gap(feats, labels)
        return {"neg": next(values), "pos": 0.0}

    monkeypatch.setattr(learner, "_task_gap", scripted_gap)
    calls = []
    real_train = learner._train_lora
    a_init = [layer.lora_A.detach().clone() for layer in lora_layers(learner._network)]

    def spy_train(epochs, probe=None):
        layers = lora_layers(learner._network)
        calls.append({"epochs": epochs, "probe": probe is not None,
                      "b_zero": all(torch.count_nonzero(m.lora_B) == 0 for m in layers),
                      "a_initial": all(torch.equal(m.lora_A, a) for m, a in zip(layers, a_init))})
        return real_train(epochs, probe)

    monkeypatch.setattr(learner, "_train_lora", spy_train)
    t_max = []
    real_sched = torch.optim.lr_scheduler.CosineAnnealingLR

    class RecordingSchedule(real_sched):
        def __init__(self, opt, T_max, eta_min=0.0, **kw):
            t_max.append(T_max)
            super().__init__(opt, T_max, eta_min=eta_min, **kw)

    monkeypatch.setattr(torch.optim.lr_scheduler, "CosineAnnealingLR", RecordingSchedule)
    learner.incremental_train(dm)

    assert learner.epochs == expected_e
    assert [c["epochs"] for c in calls] == [3, expected_e] and [c["probe"] for c in calls] == [True, False]
    assert calls[1]["b_zero"] and calls[1]["a_initial"]  # restarted from zero-shot CLIP, same LoRA init
    assert t_max[:2] == [3, expected_e]                   # schedule sized for the probe, then for E
    rec = learner.record["epochs"]
    assert rec["chosen"] == expected_e and rec["neg0"] == -10.0
    assert [p["neg"] for p in rec["probe"]] == script[:len(rec["probe"])]
    assert len(rec["probe"]) == min(len(script), 3)
    assert any(torch.count_nonzero(m.lora_B) > 0 for m in lora_layers(learner._network))  # then it trained


def test_earlier_visual_rows_bit_identical_after_later_tasks(tmp_path):
    learner, dm = make(tiny_args(tmp_path))
    learner.incremental_train(dm)
    learner.after_task()
    first = learner.visual.blocks[0].detach().clone()
    for _ in range(2):
        learner.incremental_train(dm)
        learner.after_task()
    assert torch.equal(learner.visual.blocks[0], first)
    assert learner.visual.out_features == 6


def test_visual_block_moves_from_its_prototypes(tmp_path):
    learner, dm = make(tiny_args(tmp_path))
    from utils.clip_ops import encode_dataset

    learner.incremental_train(dm)
    trained = learner.visual.blocks[0].detach().clone()
    prototypes = CosineLinear(learner.visual.in_features)
    f, y = encode_dataset(learner._network, learner.ordered_train_loader, learner._device)
    prototypes.add_classes(f, y, 2, 0)
    assert not torch.equal(prototypes.blocks[0], trained)  # 3 epochs of training moved the rows


def test_eval_task_returns_pycil_dicts(tmp_path):
    learner, dm = make(tiny_args(tmp_path))
    learner.incremental_train(dm)
    cnn, nme = learner.eval_task()
    assert nme is None
    assert {"grouped", "top1", "top5"} <= set(cnn) and "total" in cnn["grouped"] and "00-01" in cnn["grouped"]
    assert 0 <= cnn["top1"] <= cnn["top5"] <= 100
    metrics = learner.task_metrics()
    assert set(metrics) == {"text_accuracy", "visual_accuracy"} and all(0 <= v <= 100 for v in metrics.values())


class ForkDataManager:
    """A PyCIL fork's DataManager: no class names, no transform argument, its own dataset name."""

    def __init__(self, inner):
        self._inner = inner
        self._class_order = list(range(100))
        self.dataset_name = "cifar224"

    def get_task_size(self, t):
        return self._inner.get_task_size(t)

    def get_dataset(self, indices, source, mode):
        from utils.clip_backbone import clip_transform

        return self._inner.get_dataset(indices, source=source, mode=mode, transform=clip_transform(32))


def test_runs_under_a_pycil_fork_contract(tmp_path):
    import torch as _torch

    inner = DataManager("synthetic", False, 0, 2, 2, tiny_args(tmp_path, class_order="default"))
    fork_args = {"model_name": "mgclip", "dataset": "cifar224", "device": [_torch.device("cpu")],
                 "memory_size": 0, "memory_per_class": 0, "fixed_memory": False, "init_cls": 50,
                 "increment": 10, "convnet_type": "clip", "backbone": "tiny-random", "epochs": 1,
                 "batch_size": 8, "seed": [1993]}
    learner = MGCLIP(fork_args)
    learner.incremental_train(ForkDataManager(inner))
    assert learner._names == ["apple", "aquarium_fish"]  # CIFAR-100 names from the built-in table
    cnn, _ = learner.eval_task()
    assert 0 <= cnn["top1"] <= 100


def recording_schedules(monkeypatch):
    """Record (T_max, eta_min) of every cosine schedule the learner builds."""
    seen = []
    real = torch.optim.lr_scheduler.CosineAnnealingLR

    class Recording(real):
        def __init__(self, opt, T_max, eta_min=0.0, **kw):
            seen.append((T_max, eta_min, opt.param_groups[0]["lr"]))
            super().__init__(opt, T_max, eta_min=eta_min, **kw)

    monkeypatch.setattr(torch.optim.lr_scheduler, "CosineAnnealingLR", Recording)
    return seen


def test_schedules_spec_8_and_15(tmp_path, monkeypatch):
    # LoRA: per epoch over E epochs to 1 % of lr; classifier: per iteration over 3 epochs to 1 %.
    seen = recording_schedules(monkeypatch)
    learner, dm = make(tiny_args(tmp_path, epochs=2, lr=2e-3, visual_lr=5e-4, visual_batch_size=5))
    learner.incremental_train(dm)
    n_train = 2 * 8  # 2 classes x 8 images
    assert seen[0] == (2, pytest.approx(2e-5), 2e-3)
    assert seen[1] == (3 * -(-n_train // 5), pytest.approx(5e-6), 5e-4)


def test_lora_carries_over_between_tasks_with_a_fresh_optimizer(tmp_path, monkeypatch):
    learner, dm = make(tiny_args(tmp_path))
    learner.incremental_train(dm)
    learner.after_task()
    after_first = [m.lora_B.detach().clone() for m in lora_layers(learner._network)]
    assert any(torch.count_nonzero(b) for b in after_first)
    optimizers = []
    real_adam = torch.optim.Adam

    def spy_adam(params, **kw):
        params = list(params)
        # at the start of task 2 LoRA is where task 1 left it (no reset, no merge)
        optimizers.append(all(torch.equal(m.lora_B, b) for m, b in zip(lora_layers(learner._network), after_first)))
        return real_adam(params, **kw)

    monkeypatch.setattr(torch.optim, "Adam", spy_adam)
    learner.incremental_train(dm)
    assert optimizers[0] is True and len(optimizers) == 2  # new Adam for LoRA, new Adam for the classifier


def test_gap_reference_is_zero_shot_clip_even_with_trained_lora(tmp_path):
    from utils.clip_backbone import load_clip
    from utils.gap import GapAccumulator

    args = tiny_args(tmp_path, epochs="auto", probe_max_epochs=1)
    learner, dm = make(args)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():  # pretend LoRA already moved: the reference must ignore it
        for layer in lora_layers(learner._network):
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * 0.2)
    learner.incremental_train(dm)
    neg0 = learner.record["epochs"]["neg0"]
    # by hand with a separate plain CLIP: 100 * cos over task-1 classes, batches of batch_size in order
    plain = load_clip("tiny-random").eval()
    names = dm.get_class_names(range(2))
    with torch.no_grad():
        txt = F.normalize(plain.encode_text(plain.tokenize([f"a good photo of a {n}." for n in names])), dim=1)
        acc = GapAccumulator()
        for _, x, y in learner.ordered_train_loader:
            acc.add(100.0 * F.normalize(plain.encode_image(x), dim=1) @ txt.T, y)
    assert neg0 == pytest.approx(acc.negative, rel=1e-5)


def test_a_last_task_of_one_class_runs_without_a_gap_statistic(tmp_path):
    # 5 classes in tasks of 2: the last task has one class, whose gap statistic (a mean over
    # non-target logits) does not exist; the run must not stop on a NaN there
    cfg_path, run_dir = write_cfg(tmp_path, synthetic_classes=5, epochs="auto", probe_max_epochs=2)
    assert main(["--config", str(cfg_path), "-q"]) == 0
    with open(os.path.join(run_dir, "results.json")) as f:
        r = json.load(f)
    assert r["finished"] and len(r["accuracy"]) == 3
    assert "after" in r["gap"][1] and r["gap"][2] == {"task": 2}


def test_the_probe_needs_two_classes_in_the_first_task(tmp_path, capsys):
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps(tiny_args(tmp_path, init_cls=1, epochs="auto")))
    assert main(["--config", str(cfg_path), "-q"]) == 2
    assert "'init_cls'" in capsys.readouterr().err
