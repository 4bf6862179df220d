"""MoE-Adapters (docs/methods/moe_adapters.md, items M1-M5) against hand computations: the
router's gates and the mixture by hand (noise included, from the same seed), parameter
counts by formula, the learning-rate schedule by its closed form, predictions with numpy."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.conftest import make_learner, refused, tiny_args
from utils.adapter import adapter_parameters, adapter_state_dict, adapters_disabled
from utils.clip_backbone import load_clip
from utils.moe import MoEAdapter, apply_moe_adapters


def moe_args(tmp_path, **over):
    return tiny_args(tmp_path, **{"model_name": "moe_adapters", "lr": 0.01, "batch_size": 4, "epochs": 1, **over})


def make(tmp_path, **over):
    return make_learner(moe_args(tmp_path, **over))


def randomised(moe, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in moe.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return moe


def expert_by_hand(e, h):
    return 0.1 * (torch.relu(h @ e.down.weight.t() + e.down.bias) @ e.up.weight.t() + e.up.bias)


# ----------------------------------------------------------------------------- M1
@pytest.mark.parametrize("top_k", [1, 2])
def test_m1_gates_and_mixture_by_hand_without_noise(top_k):
    moe = randomised(MoEAdapter(8, experts=3, top_k=top_k, bottleneck=4, scale=0.1, dropout=0.1,
                                noise_at_test=False)).eval()
    h = torch.randn(5, 2, 8, generator=torch.Generator().manual_seed(1))  # (tokens, samples, width)
    logits = (h[0] @ moe.router).detach().numpy()  # each sample's first token
    gates = np.zeros_like(logits)
    for n, row in enumerate(logits):
        top = np.argsort(-row)[:top_k]
        gates[n, top] = np.exp(row[top]) / np.exp(row[top]).sum()
    by_hand = sum(torch.from_numpy(gates[:, i]).float()[None, :, None] * expert_by_hand(e, h)
                  for i, e in enumerate(moe.experts))
    torch.testing.assert_close(moe(h).detach(), by_hand.detach(), rtol=1e-5, atol=1e-6)
    assert (gates > 0).sum(1).tolist() == [top_k, top_k]


def test_m1_noisy_gates_by_hand_and_noise_at_test_as_official():
    moe = randomised(MoEAdapter(8, experts=2, top_k=2, bottleneck=4, scale=0.1, dropout=0.0))
    h = torch.randn(3, 2, 8, generator=torch.Generator().manual_seed(2))
    torch.manual_seed(5)
    got = moe.gates(h[0])
    torch.manual_seed(5)
    noise = torch.randn(2, 2)
    std = np.log1p(np.exp((h[0] @ moe.w_noise).detach().numpy())) + 0.01  # softplus + epsilon
    logits = (h[0] @ moe.router).detach().numpy() + noise.numpy() * std
    expected = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    np.testing.assert_allclose(got.detach().numpy(), expected, rtol=1e-5)
    moe.eval()  # the official blocks keep drawing noise at test time
    assert not torch.equal(moe(h), moe(h))
    moe.noise_at_test = False
    assert torch.equal(moe(h), moe(h))


def test_m1_moe_beside_every_mlp_of_both_encoders_leaves_clip_unchanged_and_alone_trains():
    net = load_clip("tiny-random")
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    tokens = net.tokenize(["a bad photo of a cat.", "a bad photo of a dog."])
    before = net.encode_image(images), net.encode_text(tokens)
    added = apply_moe_adapters(net, experts=2, top_k=2, bottleneck=64, scale=0.1, dropout=0.1)
    assert len(added) == len(net.model.visual.transformer.resblocks) + len(net.model.transformer.resblocks)
    net.eval()
    torch.testing.assert_close(net.encode_image(images), before[0])  # every expert's up is zero
    torch.testing.assert_close(net.encode_text(tokens), before[1])
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable and all(".adapter." in n for n in trainable)
    assert {n.split(".adapter.")[1].split(".")[0] for n in trainable} == {"experts", "router", "w_noise"}


def test_m1_a_block_adds_the_gated_experts_of_its_stream():
    net = load_clip("tiny-random")
    block = net.model.visual.transformer.resblocks[0]
    x = torch.randn(5, 2, 64, generator=torch.Generator().manual_seed(4))
    plain = block(x)
    apply_moe_adapters(net, experts=2, top_k=2, bottleneck=4, scale=0.1, dropout=0.1, noise_at_test=False)
    moe = randomised(block.mlp.adapter, seed=7)
    net.eval()
    h = x + block.attention(block.ln_1(x))
    g = torch.softmax(h[0] @ moe.router, dim=1)
    by_hand = plain + sum(g[None, :, i, None] * expert_by_hand(e, h) for i, e in enumerate(moe.experts))
    torch.testing.assert_close(block(x), by_hand, rtol=1e-5, atol=1e-5)
    with adapters_disabled(net):
        torch.testing.assert_close(block(x), plain)


def test_m1_trainable_parameters_on_vit_b16_shapes():
    """Per block: 2 experts x (2 d 64 + 64 + d) + router and noise weights 2 x d x 2;
    12 image blocks (d = 768) and 12 text blocks (d = 512)."""
    net = load_clip("vit-b16-random")
    apply_moe_adapters(net, experts=2, top_k=2, bottleneck=64, scale=0.1, dropout=0.1)

    def per_block(d):
        return 2 * (2 * d * 64 + 64 + d) + 2 * d * 2

    assert sum(p.numel() for p in adapter_parameters(net)) == 12 * per_block(768) + 12 * per_block(512) == 4_027_392


# ----------------------------------------------------------------------------- M2 / M3 / M4
def test_m2_m3_m4_loss_schedule_and_carry_over(tmp_path, monkeypatch):
    learner, dm = make(tmp_path, warmup_steps=2, label_smoothing=0.1, synthetic_train_per_class=10)
    calls, lrs, optimizers = [], [], []
    real_ce, real_step, real_init = F.cross_entropy, torch.optim.AdamW.step, torch.optim.AdamW.__init__

    def ce(logits, target, **kw):
        calls.append((logits.shape[1], target.tolist(), kw.get("label_smoothing"), float(logits.detach().abs().max())))
        return real_ce(logits, target, **kw)

    def step(self, *a, **k):
        lrs.append(self.param_groups[0]["lr"])
        return real_step(self, *a, **k)

    def init(self, params, **kw):
        params = list(params)
        optimizers.append((kw, [p.detach().clone() for p in params]))
        real_init(self, params, **kw)

    monkeypatch.setattr("models.moe_adapters.F.cross_entropy", ce)
    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    monkeypatch.setattr(torch.optim.AdamW, "__init__", init)
    learner.incremental_train(dm)
    learner.after_task()
    end_of_first = [p.detach().clone() for p in adapter_parameters(learner._network)]
    learner.incremental_train(dm)
    # M2: the current task's 2 prompts, targets shifted to them, the label smoothing given, 100 * cosines
    assert all(cols == 2 and set(t) <= {0, 1} and ls == 0.1 and peak <= 100.0 + 1e-3 for cols, t, ls, peak in calls)
    assert any(1 in t for _, t, _, _ in calls[len(calls) // 2:])  # the second task's labels 2, 3 -> 0, 1
    # M3: 2 classes x 10 images in batches of 4 = 5 steps per task; warm-up 2, then cosine to the end
    steps = 5
    by_hand = [0.01 * (s + 1) / 2 if s < 2 else 0.01 * (1 + math.cos(math.pi * (s - 2) / (steps - 2))) / 2
               for s in range(steps)]
    assert lrs == pytest.approx(by_hand * 2)
    assert [kw["weight_decay"] for kw, _ in optimizers] == [0.0, 0.0]  # a fresh AdamW per task
    # M4: the second task starts from where the first ended (no reset)
    assert all(torch.equal(a, b) for a, b in zip(optimizers[1][1], end_of_first))
    assert any(not torch.equal(a, b) for a, b in zip(optimizers[0][1], end_of_first))


# ----------------------------------------------------------------------------- M5
def test_m5_prediction_is_the_nearest_prompt_by_cosine(tmp_path):
    learner, dm = make(tmp_path, noise_at_test=False, preprocess="pil", test_crop="center")
    learner.incremental_train(dm)
    learner.after_task()
    learner.incremental_train(dm)
    cnn, _ = learner.eval_task()
    from tests.test_aper_adapter import clip_images

    net = learner._network.eval()
    with torch.no_grad():
        x, y = clip_images(dm, range(4), "test", net.input_resolution)
        img = F.normalize(net.encode_image(x), dim=1).numpy()
        txt = F.normalize(net.encode_text(net.tokenize([f"a good photo of a {n}." for n in learner._names])),
                          dim=1).numpy()
    assert cnn["top1"] == pytest.approx(100 * np.mean((img @ txt.T).argmax(1) == y.numpy()), abs=0.01)


def test_test_time_noise_makes_evaluation_vary_unless_switched_off(tmp_path):
    learner, dm = make(tmp_path)
    learner.incremental_train(dm)
    with torch.no_grad():  # routers away from zero, so that noise can change a gate
        for p in adapter_parameters(learner._network):
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(0)) * 0.5)
    a = learner.image_view(torch.rand(2, 3, 32, 32), True)
    torch.manual_seed(1)
    x = torch.rand(2, 3, 32, 32)
    assert not torch.equal(learner.image_view(x, True), learner.image_view(x, True))
    assert a.shape == (2, learner._network.embed_dim)


# ----------------------------------------------------------------------------- runs, resume, errors
def test_moe_resumes_exactly(tmp_path, monkeypatch):
    from tests.test_resume import run_then_resume

    args = moe_args(tmp_path)
    reference, resumed = run_then_resume(args, tmp_path, monkeypatch)
    assert reference["finished"] and reference["trainable_parameters"] == 42_304
    assert resumed == reference


@pytest.mark.parametrize("key, value, allowed", [("top_k", 3, "[1, experts]"), ("label_smoothing", 1.0, "[0, 1)"),
                                                 ("experts", 0, ">= 1")])
def test_bad_options_are_one_line_naming_the_key(tmp_path, capsys, key, value, allowed):
    err = refused(tmp_path, capsys, {**moe_args(tmp_path), key: value})
    assert f"'{key}'" in err and allowed in err


def test_adapters_state_round_trip(tmp_path):
    learner, dm = make(tmp_path)
    learner.incremental_train(dm)
    learner.after_task()
    fresh, _ = make(tmp_path)
    fresh.load_state_dict(learner.state_dict())
    a, b = adapter_state_dict(learner._network), adapter_state_dict(fresh._network)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- M6: the official crops
def test_m6_train_and_test_images_are_the_official_random_resized_crop_seeded(tmp_path, monkeypatch):
    from torchvision import transforms as T

    import models.moe_adapters as moe_module
    from tests.test_aper_adapter import clip_images
    from tests.test_prompts import capture_batches, spy_reseeds, torchvision_official

    batches, bases = capture_batches(monkeypatch, moe_module), spy_reseeds(monkeypatch)
    learner, dm = make(tmp_path)  # the defaults: train_augment official, test_crop random
    assert (learner.opts.train_augment, learner.opts.test_crop) == ("official", "random")
    R = learner._network.input_resolution
    geometry = [T.RandomResizedCrop(R, scale=(0.9, 1.0), interpolation=T.InterpolationMode.BICUBIC)]  # no flip
    learner.incremental_train(dm)
    learner.eval_task()
    learner.eval_task()  # the same crops again
    learner.after_task()
    learner.incremental_train(dm)
    learner.eval_task()
    train_images, _, _ = dm.get_dataset(range(2), source="train", mode="train", ret_data=True)
    train = [b for b in batches if b[0].startswith("task 0")]
    # one epoch per task, 8 x 2 images in batches of 4; a base for the epoch and one for the extra step (M3)
    assert len(bases) == 4 and len(train) == 4
    for _, idx, x in train:
        torch.testing.assert_close(x, torchvision_official(train_images, idx, lambda r: bases[0] + r, geometry),
                                   rtol=0, atol=1e-6)
    evals = [b for b in batches if b[0] == "eval"]
    assert len(evals) == 3
    torch.testing.assert_close(evals[0][2], evals[1][2], rtol=0, atol=0)  # a rerun: bit-identical crops
    for task, classes, (_, idx, x) in ((0, 2, evals[0]), (1, 4, evals[2])):
        test_images, _, _ = dm.get_dataset(range(classes), source="test", mode="test", ret_data=True)
        seed = 1993 * 1_000_003 + task  # the run's seed and the task
        torch.testing.assert_close(x, torchvision_official(test_images, idx, lambda r: seed + r, geometry),
                                   rtol=0, atol=1e-6)
    centre, _ = clip_images(dm, range(2), "test", R)
    assert (evals[0][2] - centre).abs().max() > 0.01  # not the centre crop ...
    batches.clear()
    learner, dm = make(tmp_path, test_crop="center")
    learner.incremental_train(dm)
    learner.eval_task()
    torch.testing.assert_close([b for b in batches if b[0] == "eval"][0][2], centre, rtol=0, atol=1e-6)  # ... unless


def test_m3_the_official_extra_step_runs_inside_the_warm_up_only(tmp_path, monkeypatch):
    """The official loop runs ``steps + 1`` iterations with the rate set before each: the last
    is a real step at ``lr (steps + 1) / 30`` when a task has fewer than 30 steps (and at rate 0,
    changing nothing, when it has more: not run here; ``test_m2_m3_m4...`` has 5 steps > warm-up 2)."""
    real_step = torch.optim.AdamW.step
    for extra, want in ((True, 5), (False, 4)):
        lrs = []

        def step(self, *a, **k):
            lrs.append(self.param_groups[0]["lr"])
            return real_step(self, *a, **k)

        monkeypatch.setattr(torch.optim.AdamW, "step", step)
        learner, dm = make(tmp_path, extra_step=extra)  # 16 images in batches of 4: 4 steps, warm-up 30
        learner.incremental_train(dm)
        assert lrs == pytest.approx([0.01 * (s + 1) / 30 for s in range(want)])
