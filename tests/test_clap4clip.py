"""CLAP4CLIP (docs/methods/clap4clip.md, items C1-C10) against independent computations: the
KL against its closed form in numpy, the reparameterised samples against eps drawn from the
same seed, the combination of samples by hand, the LASP term and the adapter initialisation
in numpy, the attention mask and the memory by hand, the schedule by its closed form, and
the trainable parameter count on ViT-B/16 shapes by formula."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.clap4clip import (
    CLAPHead,
    VariationalAdapter,
    combine_samples,
    init_from_text,
    kl_to_standard_normal,
    lasp_loss,
    memory_after_task,
    reparameterised,
    task_mask,
    warmup_cosine_rates,
)
from tests.conftest import make_learner, refused, tiny_args
from utils.clip_backbone import VIT_B16


def clap_args(tmp_path, **over):
    return tiny_args(tmp_path, **{"model_name": "clap4clip", "lr": 1e-2, "batch_size": 8, "epochs": 1,
                                  "forward_times": 3, "vga_ffn": 16, "memory_size": 6, "finetune_epochs": 1,
                                  **over})


# ----------------------------------------------------------------------------- C6: the KL
def test_c6_kl_to_standard_normal_equals_the_closed_form_in_numpy():
    rng = np.random.default_rng(0)
    mu = rng.normal(size=(4, 6))
    sigma = rng.uniform(0.05, 2.0, size=(4, 6))
    # KL(N(m, s^2) || N(0, 1)) = log(1/s) + (s^2 + m^2) / 2 - 1/2, per dimension
    per_dim = np.log(1 / sigma) + (sigma ** 2 + mu ** 2) / 2 - 0.5
    expected = per_dim.mean(axis=0).sum()  # mean over classes, sum over dimensions
    got = kl_to_standard_normal(torch.tensor(mu), torch.tensor(sigma)).item()
    assert got == pytest.approx(expected, rel=1e-12)
    assert kl_to_standard_normal(torch.zeros(3, 5), torch.ones(3, 5)).item() == 0.0


def test_c3_sigma_head_is_a_shifted_scaled_softplus():
    torch.manual_seed(0)
    adapter = VariationalAdapter(5).double()
    x = torch.randn(3, 5, dtype=torch.float64)
    mu, sigma = adapter(x)
    W, b = adapter.sigma.weight.detach().numpy(), adapter.sigma.bias.detach().numpy()
    z = x.numpy() @ W.T + b
    np.testing.assert_allclose(sigma.detach().numpy(), np.log1p(np.exp(z)) * 0.999 + 0.001, rtol=1e-12)
    np.testing.assert_allclose(mu.detach().numpy(), x.numpy() @ adapter.mu.weight.detach().numpy().T
                               + adapter.mu.bias.detach().numpy(), rtol=1e-12)


# ----------------------------------------------------------------------------- C5: sampling and combination
def test_c5_samples_are_mu_plus_sigma_times_eps_from_the_same_seed():
    mu = torch.tensor([[0.5, -1.0, 2.0], [0.0, 3.0, -2.0]])
    sigma = torch.tensor([[0.1, 1.0, 0.5], [2.0, 0.01, 1.5]])
    samples = reparameterised(mu, sigma, 20, torch.Generator().manual_seed(123))
    eps = torch.randn((20, 2, 3), generator=torch.Generator().manual_seed(123))
    assert samples.shape == (20, 2, 3)
    np.testing.assert_allclose(samples.numpy(), mu.numpy() + sigma.numpy() * eps.numpy(), rtol=1e-6)
    other = reparameterised(mu, sigma, 20, torch.Generator().manual_seed(124))
    assert not torch.allclose(samples, other)


def test_c5_test_scores_are_the_mean_of_logits_over_samples_not_of_probabilities():
    # three samples, one image, two classes; by hand: mean logits [0, 1/3] -> class 1, while the
    # mean of the softmaxes is about [0.577, 0.423] -> class 0
    logits = torch.tensor([[[0.0, 20.0]], [[0.0, -18.0]], [[0.0, -1.0]]])
    scores = combine_samples(logits)
    np.testing.assert_allclose(scores.numpy(), [[0.0, 1.0 / 3.0]], atol=1e-6)
    assert scores.argmax(1).item() == 1
    assert logits.softmax(-1).mean(0).argmax(1).item() == 0


def test_c2_c3_c5_c6_head_logits_and_kl_by_hand_with_the_seeded_samples():
    """Without the VGA: the classifier of each class is its text feature plus a sample of its
    task's Gaussian; logits = scale * image . classifier, each sample; KL only of loss_tasks."""
    torch.manual_seed(0)
    head = CLAPHead(4, 8, 0.0, use_vga=False).double()
    head.adapters.append(VariationalAdapter(4).double())
    head.adapters.append(VariationalAdapter(4).double())
    text = F.normalize(torch.randn(3, 4, dtype=torch.float64), dim=1)  # task 0: 2 classes, task 1: 1
    img = F.normalize(torch.randn(5, 4, dtype=torch.float64), dim=1)
    logits, kl, _ = head(img, text, [2, 1], 6, 10.0, generator=torch.Generator().manual_seed(7), loss_tasks=[1])
    g = torch.Generator().manual_seed(7)
    eps0 = torch.randn((6, 2, 4), generator=g, dtype=torch.float64).numpy()
    eps1 = torch.randn((6, 1, 4), generator=g, dtype=torch.float64).numpy()

    def gaussian(a, x):
        W, b = a.mu.weight.detach().numpy(), a.mu.bias.detach().numpy()
        Ws, bs = a.sigma.weight.detach().numpy(), a.sigma.bias.detach().numpy()
        return x @ W.T + b, np.log1p(np.exp(x @ Ws.T + bs)) * 0.999 + 0.001

    t = text.numpy()
    m0, s0 = gaussian(head.adapters[0], t[:2])
    m1, s1 = gaussian(head.adapters[1], t[2:])
    cls = np.concatenate([t[None, :2] + m0 + s0 * eps0, t[None, 2:] + m1 + s1 * eps1], axis=1)  # (6, 3, 4)
    expected = 10.0 * np.einsum("bd,scd->sbc", img.numpy(), cls)
    np.testing.assert_allclose(logits.detach().numpy(), expected, rtol=1e-10)
    kl1 = (np.log(1 / s1) + (s1 ** 2 + m1 ** 2) / 2 - 0.5).mean(0).sum()
    assert kl.item() == pytest.approx(kl1, rel=1e-10)


def test_c2_mask_keeps_attention_within_each_task():
    expected = np.array([[0, 0, 1, 1, 1], [0, 0, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 0, 0, 0]], bool)
    np.testing.assert_array_equal(task_mask([2, 3]).numpy(), expected)


def test_c2_vga_changes_a_task_only_through_its_own_classes():
    """With the mask, task 0's guided features do not depend on task 1's text features."""
    torch.manual_seed(0)
    head = CLAPHead(8, 16, 0.0, use_vga=True).double().eval()
    img = torch.randn(4, 8, dtype=torch.float64)
    text = torch.randn(5, 8, dtype=torch.float64)
    other = text.clone()
    other[3:] = torch.randn(2, 8, dtype=torch.float64)
    a = head.vga(text[None], img[None], tgt_mask=task_mask([3, 2]))[0]
    b = head.vga(other[None], img[None], tgt_mask=task_mask([3, 2]))[0]
    assert torch.allclose(a[:3], b[:3]) and not torch.allclose(a[3:], b[3:])


# ----------------------------------------------------------------------------- C4, C7: the language-aware parts
def test_c4_adapter_init_from_the_template_statistics_in_numpy():
    rng = np.random.default_rng(1)
    per = rng.normal(size=(5, 3, 4))
    per /= np.linalg.norm(per, axis=-1, keepdims=True)
    adapter = VariationalAdapter(4).double()
    bias = adapter.mu.bias.detach().clone()
    init_from_text(adapter, torch.tensor(per))
    E, V = per.mean(1), per.var(1, ddof=1)
    np.testing.assert_allclose(adapter.mu.weight.detach().numpy(), E.T @ E / 4, rtol=1e-12)
    np.testing.assert_allclose(adapter.sigma.weight.detach().numpy(), V.T @ V / 4, rtol=1e-12)
    assert torch.equal(adapter.mu.bias.detach(), bias)


def test_c7_lasp_by_a_numpy_loop():
    rng = np.random.default_rng(2)
    per = rng.normal(size=(3, 4, 5))  # 3 classes, 4 templates, dim 5
    samples = rng.normal(size=(6, 3, 5))  # 6 samples
    sims = np.zeros((3, 3))
    for i in range(3):
        for j in range(3):
            sims[i, j] = np.mean([[per[i, p] @ samples[s, j] for p in range(4)] for s in range(6)])
    logp = sims - np.log(np.exp(sims).sum(1, keepdims=True))
    expected = -np.mean([logp[i, i] for i in range(3)])
    assert lasp_loss(torch.tensor(per), torch.tensor(samples)).item() == pytest.approx(expected, rel=1e-10)


# ----------------------------------------------------------------------------- C8: the schedule
def test_c8_warmup_then_cosine_by_hand():
    rates = warmup_cosine_rates(1.0, 10, 3)
    assert len(rates) == 10
    np.testing.assert_allclose(rates[:3], [0.25, 0.5, 0.75])
    final = 1e-3
    fall = [final + 0.5 * (1 - final) * (1 + np.cos(np.pi * s / 7)) for s in range(7)]
    np.testing.assert_allclose(rates[3:], fall)
    np.testing.assert_allclose(warmup_cosine_rates(2.0, 4, 0)[0], 2.0)


def test_c8_c10_learner_rates_by_hand(tmp_path, monkeypatch):
    """lr 1e-2, batch 8, 20 as the reference batch: rate 4e-3. Task 1: 16 images, 4 epochs = 8
    steps, warm-up int(0.3 x 8) = 2 steps (4e-3 / 3, 8e-3 / 3), then the cosine over 6 steps
    to 4e-6. Task 2's fine-tuning: 4 exemplars = 1 step at 4e-3 / 10 over the 4 adapter tensors."""
    import models.clap4clip as clap

    steps = []

    def step(opt, loss, where):
        steps.append((opt.param_groups[0]["lr"], len(opt.param_groups[0]["params"]), where))
        opt.zero_grad()

    monkeypatch.setattr(clap, "checked_step", step)
    learner, dm = make_learner(clap_args(tmp_path, epochs=4))
    learner.incremental_train(dm)
    learner.after_task()
    lr, final = 4e-3, 4e-6
    cosine = [final + 0.5 * (lr - final) * (1 + np.cos(np.pi * s / 6)) for s in range(6)]
    np.testing.assert_allclose([r for r, _, _ in steps], [lr / 3, 2 * lr / 3] + cosine, rtol=1e-12)
    steps.clear()
    learner.incremental_train(dm)
    tuning = [s for s in steps if "finetune" in s[2]]
    assert len(steps) == 4 * 3 + 1 and len(tuning) == 1  # 16 new + 6 exemplars: 3 batches an epoch
    assert tuning[0][0] == pytest.approx(lr / 10) and tuning[0][1] == 8  # two adapters: 2 x (W, b) x 2 heads


# ----------------------------------------------------------------------------- C9, C10: the memory
def test_c9_c10_memory_keeps_equal_counts_per_class_by_hand():
    # task 0: class 0 at training indices 10..14 (5 images), class 1 at 20..26 (7 images); budget 4
    labels0 = np.array([0] * 5 + [1] * 7)
    index0 = np.concatenate([np.arange(10, 15), np.arange(20, 27)])
    idx, lab = memory_after_task(np.zeros(0, np.int64), np.zeros(0, np.int64), index0, labels0, 0, [0, 1], 4 // 2)
    assert idx.tolist() == [10, 11, 20, 21] and lab.tolist() == [0, 0, 1, 1]
    # task 1: classes 2, 3 (3 images each); budget 4 over 4 classes -> 1 each, old classes keep their first
    labels1 = np.array([2, 3, 2, 3, 2, 3])
    index1 = np.array([30, 40, 31, 41, 32, 42])
    idx, lab = memory_after_task(idx, lab, index1, labels1, 2, [2, 3], 4 // 4)
    assert idx.tolist() == [10, 20, 30, 40]
    assert {c: int((lab == c).sum()) for c in range(4)} == {0: 1, 1: 1, 2: 1, 3: 1}


def test_c9_c10_learner_memory_is_class_balanced_and_finetuning_trains_every_adapter(tmp_path):
    learner, dm = make_learner(clap_args(tmp_path))
    learner.incremental_train(dm)
    learner.after_task()
    counts = np.bincount(learner.mem_label)
    assert counts.tolist() == [6 // 2] * 2  # budget 6 over 2 classes (8 images each)
    before = [p.detach().clone() for p in learner.head.adapters[0].parameters()]
    learner.incremental_train(dm)
    counts = np.bincount(learner.mem_label)
    assert counts.tolist() == [6 // 4] * 4
    # the first task's adapter is frozen while training task 2 and changes only in the fine-tuning
    assert any(not torch.equal(a, b) for a, b in zip(before, learner.head.adapters[0].parameters()))
    star, dm2 = make_learner(clap_args(tmp_path, model_name="clap4clip_star", memory_size=0))
    star.incremental_train(dm2)
    star.after_task()
    before = [p.detach().clone() for p in star.head.adapters[0].parameters()]
    star.incremental_train(dm2)
    assert len(star.mem_index) == 0
    assert all(torch.equal(a, b) for a, b in zip(before, star.head.adapters[0].parameters()))


def test_eval_batches_hold_one_task_each_in_a_fixed_order(tmp_path):
    learner, dm = make_learner(clap_args(tmp_path))
    for _ in range(2):
        learner.incremental_train(dm)
        learner.after_task()
    _, labels = learner.cache.get(dm, "test", range(learner._total_classes))
    batches = learner.eval_batches(labels)
    assert all(len(set((labels[b] // 2).tolist())) == 1 for b in batches)
    assert sorted(torch.cat(batches).tolist()) == list(range(len(labels)))
    assert all(torch.equal(a, b) for a, b in zip(batches, learner.eval_batches(labels)))


def first_step(tmp_path, monkeypatch, **over):
    """The loss of the learner's first training step, and the KL and LASP terms its head gave."""
    import models.clap4clip as clap

    seen = {}
    real_forward = clap.CLAPHead.forward

    def forward(self, *a, **k):
        out = real_forward(self, *a, **k)
        seen.setdefault("terms", (out[1].item(), out[2].item()))
        return out

    def step(opt, loss, where):
        seen.setdefault("loss", loss.item())
        opt.zero_grad()

    monkeypatch.setattr(clap.CLAPHead, "forward", forward)
    monkeypatch.setattr(clap, "checked_step", step)
    torch.manual_seed(0)
    learner, dm = make_learner(clap_args(tmp_path, **over))
    torch.manual_seed(1)
    learner.incremental_train(dm)
    return seen["loss"], seen["terms"]


def test_c5_c6_c7_loss_is_cross_entropy_plus_weighted_kl_and_lasp(tmp_path, monkeypatch):
    """Same weights, same random stream: the default loss minus the loss without the KL and
    LASP terms is 0.001 x KL + 15 x LASP of the current task (both non-zero)."""
    loss, (kl, lasp) = first_step(tmp_path, monkeypatch)
    bare, _ = first_step(tmp_path, monkeypatch, kl_weight=0.0, lasp_beta=0.0)
    assert kl > 0 and lasp > 0
    assert loss - bare == pytest.approx(0.001 * kl + 15.0 * lasp, rel=1e-4)


def test_c1_c4_learner_text_ensemble_and_new_adapter_init(tmp_path, monkeypatch):
    """With training switched off: the classifier base is the renormalised mean of the
    normalised template features (encoded here with CLIP directly), and the new adapter's
    weights are E^T E / d and V^T V / d of them (numpy)."""
    import models.clap4clip as clap

    monkeypatch.setitem(clap.DATASET_TEMPLATES, "synthetic", ("a photo of a {}.", "art of the {}.", "a {}."))
    monkeypatch.setattr(clap, "checked_step", lambda opt, loss, where: opt.zero_grad())
    learner, dm = make_learner(clap_args(tmp_path))
    learner.incremental_train(dm)
    net = learner._network
    per = []
    with torch.no_grad():
        for name in learner._names:
            tokens = net.tokenize([t.format(name) for t in ("a photo of a {}.", "art of the {}.", "a {}.")])
            f = net.encode_text(tokens).float()
            per.append((f / f.norm(dim=-1, keepdim=True)).numpy())
    per = np.stack(per).astype(np.float64)
    ensemble = per.mean(1) / np.linalg.norm(per.mean(1), axis=-1, keepdims=True)
    np.testing.assert_allclose(learner._text_features()[0].numpy(), ensemble, atol=1e-5)
    d = per.shape[-1]
    E, V = per.mean(1), per.var(1, ddof=1)
    np.testing.assert_allclose(learner.head.adapters[0].mu.weight.detach().numpy(), E.T @ E / d, atol=1e-6)
    np.testing.assert_allclose(learner.head.adapters[0].sigma.weight.detach().numpy(), V.T @ V / d, atol=1e-6)


# ----------------------------------------------------------------------------- parameter count
def test_trainable_parameters_on_vit_b16_shapes_equal_the_official_recipe():
    """The official code trains, per task, the VGA decoder layer (d = 512, one head, feed-forward
    2048, three layer norms) and the new task's mean and deviation heads (512 x 512 + 512 each)."""
    d, ffn = VIT_B16["embed_dim"], 2048
    attention = 3 * d * d + 3 * d + d * d + d  # in-projection (q, k, v) and out-projection
    vga = 2 * attention + (d * ffn + ffn) + (ffn * d + d) + 3 * 2 * d
    adapter = 2 * (d * d + d)
    assert vga + adapter == 4_729_344
    head = CLAPHead(d, ffn, 0.1, use_vga=True)
    head.adapters.append(VariationalAdapter(d))
    assert sum(p.numel() for p in head.parameters()) == vga + adapter


def test_learner_records_what_it_trains(tmp_path):
    learner, dm = make_learner(clap_args(tmp_path))
    learner.incremental_train(dm)
    d, ffn = learner.dim, 16
    attention = 4 * d * d + 4 * d
    assert learner.record["trainable_parameters"] == [2 * attention + 2 * d * ffn + ffn + d + 6 * d + 2 * (d * d + d)]


# ----------------------------------------------------------------------------- runs, resume, errors
def test_clap4clip_resumes_exactly(tmp_path, monkeypatch):
    from tests.test_resume import run_then_resume

    args = clap_args(tmp_path)
    reference, resumed = run_then_resume(args, tmp_path, monkeypatch)
    assert reference["finished"]
    assert resumed == reference


@pytest.mark.parametrize("key, value, allowed", [("forward_times", 0, ">= 1"), ("kl_weight", -1.0, ">= 0"),
                                                 ("eval_grouping", "tasks", "'task' or 'mixed'"),
                                                 ("warmup_fraction", 1.0, "[0, 1)")])
def test_bad_options_are_one_line_naming_the_key(tmp_path, capsys, key, value, allowed):
    err = refused(tmp_path, capsys, {**clap_args(tmp_path), key: value})
    assert f"'{key}'" in err and allowed in err


@pytest.mark.parametrize("config", ["clap4clip_demo", "clap4clip_star_demo"])
def test_demo_and_check_through_main(tmp_path, config):
    from main import main

    path = tmp_path / "demo.json"
    cfg = {"extends": str(__import__("os").path.abspath(f"exps/{config}.json")), "logdir": str(tmp_path / "logs")}
    path.write_text(json.dumps(cfg))
    assert main(["--config", str(path), "--check", "-q"]) == 0
    assert main(["--config", str(path), "-q"]) == 0
