"""The supplementary's options (SPEC "Options the supplementary evaluates"), all off by
default: replay (``memory_size``), EMA of the LoRA weights (``lora_ema``), per-task epoch
estimation (``epochs_per_task``)."""
import numpy as np
import pytest
import torch

from tests.conftest import tiny_args
from tests.test_mgclip import make
from toolbox.configs import make_config
from utils.clip_backbone import load_clip
from utils.clip_ops import encode_dataset, prompts, text_features
from utils.config import ConfigError
from utils.gap import gap_statistic
from utils.lora import lora_state_dict


def run_tasks(learner, dm, n):
    for _ in range(n):
        learner.incremental_train(dm)
        learner.eval_task()
        learner.after_task()


def hand_ce(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per-row cross-entropy by the log-sum-exp formula."""
    m = logits.max(axis=1, keepdims=True)
    lse = (m + np.log(np.exp(logits - m).sum(axis=1, keepdims=True)))[:, 0]
    return lse - logits[np.arange(len(targets)), targets]


def test_defaults_are_off():
    o = make_config({}).options
    assert o.memory_size == 0 and o.lora_ema == 0.0 and o.epochs_per_task is False
    assert o.replay_weight == 0.1  # the released code's weight on the exemplars' loss


@pytest.mark.parametrize("key, value, message", [
    ("memory_size", -1, "memory_size"), ("lora_ema", 1.0, "lora_ema"), ("replay_weight", -0.5, "replay_weight")])
def test_bad_option_values_name_the_key(key, value, message):
    with pytest.raises(ConfigError, match=message):
        make_config({key: value})


def test_per_task_estimation_needs_the_probe():
    with pytest.raises(ConfigError, match="epochs_per_task"):
        make_config({"epochs_per_task": True, "epochs": 2})


def test_memory_is_random_per_class_and_shrinks_keeping_the_first(tmp_path):
    # 6 classes, 8 train images each, tasks of 2 classes; memory 12 -> 6, then 3, then 2 per class
    args = tiny_args(tmp_path, memory_size=12)
    learner, dm = make(args)
    run_tasks(learner, dm, 1)
    mem_x, mem_y = learner._get_memory()
    assert sorted(mem_y.tolist()) == [0] * 6 + [1] * 6
    task_ds = dm.get_dataset([0, 1], "train", "train", raw=True, resolution=32)
    for x, y in zip(mem_x, mem_y):  # every exemplar is a real training image of its class
        assert any(np.array_equal(x, img) and y == lab for img, lab in zip(task_ds.images, task_ds.labels))
    assert len({x.tobytes() for x in mem_x}) == 12  # no image twice
    first = {c: [x.tobytes() for x, y in zip(mem_x, mem_y) if y == c] for c in (0, 1)}

    learner.incremental_train(dm)
    # task 2's LoRA data = its 16 images + the 12 exemplars; the gap/classifier data = its 16 alone
    assert len(learner.train_loader.dataset) == 16 + 12
    assert len(learner.ordered_train_loader.dataset) == 16
    learner.eval_task()
    learner.after_task()
    mem_x, mem_y = learner._get_memory()
    assert sorted(mem_y.tolist()) == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    for c in (0, 1):  # old classes keep the first of theirs
        assert [x.tobytes() for x, y in zip(mem_x, mem_y) if y == c] == first[c][:3]


def test_replay_loss_is_current_ce_plus_weighted_all_class_ce(tmp_path):
    args = tiny_args(tmp_path, memory_size=12, replay_weight=0.3)
    learner, dm = make(args)
    run_tasks(learner, dm, 1)
    learner.incremental_train(dm)  # task 2 (classes 2, 3), replaying classes 0, 1
    net = learner._network.eval()
    _, x, y = next(iter(learner.train_loader))
    y = torch.tensor([0, 2, 3, 1, 2, 3, 3, 2])  # mixed: three exemplars, five current images
    x = x[:8]
    with torch.no_grad():
        img = torch.nn.functional.normalize(net.encode_image(x).float(), dim=1).numpy()
        tokens = net.tokenize(prompts(args.get("prompt_template", "a good photo of a {}."), learner._names))
        txt = text_features(net, tokens, torch.device("cpu")).numpy()
        got = float(learner._loss(x, y))
    logits = float(net.logit_scale) * img @ txt.T  # (8, 4): all seen classes
    yn = y.numpy()
    old, new = yn < 2, yn >= 2
    expected = hand_ce(logits[new][:, 2:], yn[new] - 2).mean() + 0.3 * hand_ce(logits[old], yn[old]).mean()
    assert got == pytest.approx(expected, rel=1e-4)
    # a batch without exemplars: the plain sliced loss (the exemplar term adds nothing)
    with torch.no_grad():
        only_new = float(learner._loss(x[new], y[new]))
    assert only_new == pytest.approx(hand_ce(logits[new][:, 2:], yn[new] - 2).mean(), rel=1e-4)


def test_ema_blends_with_the_task_start(tmp_path):
    starts, finals = {}, {}
    for a in (0.0, 0.3):
        learner, dm = make(tiny_args(tmp_path, lora_ema=a))
        run_tasks(learner, dm, 1)
        starts[a] = lora_state_dict(learner._network)
        run_tasks(learner, dm, 1)
        finals[a] = lora_state_dict(learner._network)
    start = starts[0.0]
    assert all(torch.equal(starts[0.3][k], start[k]) for k in start)  # the first task is not blended
    for k in start:
        torch.testing.assert_close(finals[0.3][k], 0.3 * start[k] + 0.7 * finals[0.0][k], atol=1e-6, rtol=0)
    assert any(not torch.equal(finals[0.3][k], finals[0.0][k]) for k in start)


def test_per_task_probe_uses_zero_shot_reference_and_restarts_from_the_task_start(tmp_path, monkeypatch):
    args = tiny_args(tmp_path, epochs="auto", epochs_per_task=True, probe_max_epochs=2)
    learner, dm = make(args)
    run_tasks(learner, dm, 1)
    carried = lora_state_dict(learner._network)
    starts = []
    real_train = learner._train_lora

    def spy(epochs, probe=None):
        starts.append((probe is not None, lora_state_dict(learner._network)))
        return real_train(epochs, probe)

    monkeypatch.setattr(learner, "_train_lora", spy)
    learner.incremental_train(dm)
    assert [p for p, _ in starts] == [True, False]
    for _, state in starts:  # the probe and the real run both start from the carried-over LoRA
        assert all(torch.equal(state[k], carried[k]) for k in carried)
    rec = learner.record["epochs"]
    assert rec["mode"] == "probe_per_task" and [e["task"] for e in rec["per_task"]] == [0, 1]
    assert learner.epochs == rec["per_task"][1]["chosen"] and 1 <= learner.epochs <= 2
    # task 2's reference = zero-shot CLIP (a fresh backbone, no LoRA) on task 2's images and classes
    clip = load_clip("tiny-random").eval()
    feats, labels = encode_dataset(clip, learner.ordered_train_loader, torch.device("cpu"))
    names = dm.get_class_names([2, 3])
    with torch.no_grad():
        txt = text_features(clip, clip.tokenize(prompts("a good photo of a {}.", names)), torch.device("cpu"))
    neg, pos = gap_statistic(feats, labels - 2, txt, float(clip.logit_scale.detach()), args["batch_size"])
    assert rec["per_task"][1]["neg0"] == pytest.approx(neg, rel=1e-5)


def test_resume_with_every_option_on_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    from tests.test_resume import read, resume_from_copy, run_keeping_checkpoints, without_timings, write_cfg
    from toolbox.checkpoint import load_checkpoint

    cfg_path, run_dir = write_cfg(tmp_path, memory_size=8, lora_ema=0.2, epochs_per_task=True)
    snapshots = run_keeping_checkpoints(cfg_path, monkeypatch)
    reference = without_timings(read(run_dir))
    stages = [load_checkpoint(p)["completed_tasks"] for p in snapshots]
    assert stages == [0, 1, 1, 2, 2, 3, 3, 4]  # a probe before every task, and every task's end
    for i in (2, 3):  # right after task 2's probe (memory of task 1), and after task 2
        assert resume_from_copy(run_dir, snapshots[i], tmp_path / f"resumed_{i}") == reference, \
            f"resumed from checkpoint {i} (after {stages[i]} tasks)"
