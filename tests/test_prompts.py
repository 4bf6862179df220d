"""L2P++, DualPrompt and CODA-Prompt (docs/methods/prompts.md: L1-L8, D1-D3, C1-C4)
against hand computations: prefix attention by hand, key-query
selection, losses and CODA's weighted prompts with numpy, Gram-Schmidt by hand, one Adam
step by its closed form, parameter counts by formula."""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from main import main
from models.prompts import L2P, CODAPrompt, DualPrompt
from tests.conftest import make_learner, refused, tiny_args
from toolbox.configs import make_config
from utils.clip_backbone import SDPAttention, load_clip
from utils.prompt_pool import CodaPool, KeyedPromptPool, gram_schmidt_rows, official_cosine_lr, ortho_penalty, prefixed

METHODS = ["l2p", "dualprompt", "coda_prompt"]


def prompt_args(tmp_path, method, **over):
    # tiny CLIP has 2 image blocks: the official layers are mapped into them
    layers = {"l2p": {}, "dualprompt": {"prompt_layers": [1], "g_prompt_layers": [0]},
              "coda_prompt": {"prompt_layers": [0, 1], "pool_size": 6, "prompt_length": 4}}[method]
    return tiny_args(tmp_path, **{"model_name": method, "lr": 0.01, "batch_size": 8, "epochs": 1, **layers, **over})


def cos_np(a, b):
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return a @ b.T


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- prefix-tuning (L2)
def test_l2_prefix_keys_and_values_join_every_head_after_the_projections():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2)
    attn = SDPAttention(mha, causal=False)
    x = rand(5, 3, 8, seed=1)  # (L, N, D)
    pk, pv = rand(3, 4, 8, seed=2), rand(3, 4, 8, seed=3)  # (N, P, D)
    attn.prefix = (pk, pv)
    got = attn(x, x, x)[0].detach().numpy()
    W, b = mha.in_proj_weight.detach().numpy(), mha.in_proj_bias.detach().numpy()
    Wo, bo = mha.out_proj.weight.detach().numpy(), mha.out_proj.bias.detach().numpy()
    xs = x.numpy()
    out = np.zeros((5, 3, 8))
    for n in range(3):
        q = xs[:, n] @ W[:8].T + b[:8]
        k = np.concatenate([pk[n].numpy(), xs[:, n] @ W[8:16].T + b[8:16]])  # prompts are not projected
        v = np.concatenate([pv[n].numpy(), xs[:, n] @ W[16:].T + b[16:]])
        heads = []
        for h in range(2):
            s = slice(4 * h, 4 * h + 4)
            a = q[:, s] @ k[:, s].T / 2.0
            a = np.exp(a - a.max(1, keepdims=True))
            heads.append((a / a.sum(1, keepdims=True)) @ v[:, s])
        out[:, n] = np.concatenate(heads, 1) @ Wo.T + bo
    np.testing.assert_allclose(got, out, rtol=1e-5, atol=1e-5)
    attn.prefix = None
    assert not np.allclose(attn(x, x, x)[0].detach().numpy(), out, atol=1e-3)


def test_l2_prefix_on_batch_first_attention_as_openclip_lays_it_out():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2)
    seq_first, batch_first = SDPAttention(mha, causal=False), SDPAttention(mha, causal=False, batch_first=True)
    x = rand(5, 3, 8, seed=1)
    prefix = (rand(3, 4, 8, seed=2), rand(3, 4, 8, seed=3))
    seq_first.prefix = batch_first.prefix = prefix
    xb = x.transpose(0, 1).contiguous()
    torch.testing.assert_close(batch_first(xb, xb, xb)[0].transpose(0, 1), seq_first(x, x, x)[0])


def test_prefixed_sets_only_the_named_blocks_and_clears_them():
    net = load_clip("tiny-random")
    blocks = net.model.visual.transformer.resblocks
    p = (torch.zeros(1, 2, 64), torch.zeros(1, 2, 64))
    with prefixed(net, {1: p}):
        assert blocks[0].attn.prefix is None and blocks[1].attn.prefix is p
    assert all(b.attn.prefix is None for b in blocks)


# ----------------------------------------------------------------------------- L2P++ (L1-L3)
def test_l1_l2_l2p_picks_the_top_k_keys_by_cosine_and_lays_their_halves_end_to_end():
    torch.manual_seed(0)
    pool = KeyedPromptPool(width=6, key_dim=5, pool_size=7, length=4, layers=[0], top_k=3)
    assert pool.prompts["0"].min() >= 0 and pool.prompts["0"].max() < 1  # uniform [0, 1), as tensor_prompt
    q = rand(2, 5)
    prefixes, loss = pool(q, train=False, task=0)
    cos = cos_np(q.numpy(), pool.keys["0"].detach().numpy())
    P = pool.prompts["0"].detach().numpy()
    for n in range(2):
        top = np.argsort(-cos[n])[:3]
        keys = np.concatenate([P[i, :2] for i in top])  # each chosen prompt's first half, in rank order
        values = np.concatenate([P[i, 2:] for i in top])
        np.testing.assert_allclose(prefixes[0][0][n].detach().numpy(), keys, rtol=1e-6)
        np.testing.assert_allclose(prefixes[0][1][n].detach().numpy(), values, rtol=1e-6)
    assert float(loss) == 0.0  # no matching loss at test time


def test_l3_l2p_matching_loss_indexes_every_row_with_every_rows_choice_and_moves_only_keys():
    torch.manual_seed(0)
    pool = KeyedPromptPool(width=6, key_dim=5, pool_size=7, length=4, layers=[0], top_k=2)
    q = rand(3, 5, seed=4).requires_grad_(True)
    _, loss = pool(q, train=True, task=0)
    cos = cos_np(q.detach().numpy(), pool.keys["0"].detach().numpy())
    chosen = np.argsort(-cos, axis=1)[:, :2]
    by_hand = sum(1 - cos[i, chosen[j, k]] for i in range(3) for j in range(3) for k in range(2))
    per_sample = sum(1 - cos[i, chosen[i, k]] for i in range(3) for k in range(2))
    assert loss.item() == pytest.approx(by_hand, rel=1e-5)
    assert abs(by_hand - per_sample) > 1e-3  # the official indexing, not a per-sample gather
    loss.backward()
    assert q.grad is None or float(q.grad.abs().sum()) == 0.0  # the query is detached
    assert float(pool.keys["0"].grad.abs().sum()) > 0


# ----------------------------------------------------------------------------- DualPrompt (D1-D2)
def test_d1_d2_dualprompt_uses_the_task_prompt_in_training_and_the_nearest_key_at_test():
    torch.manual_seed(0)
    pool = KeyedPromptPool(width=6, key_dim=5, pool_size=4, length=4, layers=[1, 2], top_k=1, task_bootstrap=True,
                           g_length=2, g_layers=[0, 1])
    q = rand(3, 5, seed=5)
    train, loss = pool(q, train=True, task=2)
    P1, G0, G1 = (pool.prompts["1"].detach().numpy(), pool.g_prompts["0"].detach().numpy(),
                  pool.g_prompts["1"].detach().numpy())
    np.testing.assert_allclose(train[0][0][1].detach().numpy(), G0[:1])  # G only: 1 key + 1 value token
    np.testing.assert_allclose(train[1][0][0].detach().numpy(), np.concatenate([P1[2, :2], G1[:1]]))  # E then G
    np.testing.assert_allclose(train[1][1][0].detach().numpy(), np.concatenate([P1[2, 2:], G1[1:]]))
    by_hand = sum((1 - cos_np(q.numpy(), pool.keys[str(i)].detach().numpy())[:, 2]).sum() for i in (1, 2))
    assert loss.item() == pytest.approx(by_hand, rel=1e-5)
    test, loss = pool(q, train=False, task=2)
    nearest = cos_np(q.numpy(), pool.keys["2"].detach().numpy()).argmax(1)
    for n in range(3):
        np.testing.assert_allclose(test[2][0][n].detach().numpy(), pool.prompts["2"][nearest[n], :2].detach())
    assert float(loss) == 0.0


def test_d3_dualprompt_needs_an_e_prompt_per_task(tmp_path, capsys):
    err = refused(tmp_path, capsys, prompt_args(tmp_path, "dualprompt", pool_size=2))  # 3 tasks
    assert "'pool_size'" in err and "number of tasks (3)" in err


def test_d3_with_a_forks_split_the_pool_is_checked_once_the_tasks_are_known(tmp_path):
    from utils.config import ConfigError

    learner, _ = make_learner(prompt_args(tmp_path, "dualprompt", pool_size=3))  # the config's 3 tasks fit
    with pytest.raises(ConfigError, match=r"'pool_size' = 3 .* number of tasks \(4\)"):
        learner._ensure_pool(4)  # a fork's data manager with 4 tasks
    assert learner.pool is None


# ----------------------------------------------------------------------------- CODA-Prompt (C1-C4)
def test_c1_coda_prompt_is_the_attention_weighted_sum_of_components():
    torch.manual_seed(0)
    pool = CodaPool(width=6, key_dim=5, pool_size=6, length=4, layers=[0], tasks=3, ortho_mu=0.0)
    pool.start_task(0)
    pool.start_task(1)
    with torch.no_grad():
        for p in pool.parameters():
            p.add_(rand(*p.shape, seed=7) * 0.1)
    q = rand(2, 5, seed=8)
    prefixes, loss = pool(q, train=False, task=1)
    K, A, P = (pool.params[n + "0"].detach().numpy()[:4] for n in "kap")  # components of tasks 0 and 1
    qa = q.numpy()[:, None, :] * A[None]
    w = np.einsum("nkd,kd->nk", qa / np.linalg.norm(qa, axis=2, keepdims=True),
                  K / np.linalg.norm(K, axis=1, keepdims=True))
    prompt = np.einsum("nk,kld->nld", w, P)
    np.testing.assert_allclose(prefixes[0][0].detach().numpy(), prompt[:, :2], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(prefixes[0][1].detach().numpy(), prompt[:, 2:], rtol=1e-5, atol=1e-6)
    assert float(loss) == 0.0


def test_c2_gram_schmidt_by_hand_and_each_task_gets_orthonormal_new_components():
    old = rand(2, 5, seed=9)
    torch.manual_seed(3)
    got = gram_schmidt_rows(old, 2).numpy()
    torch.manual_seed(3)
    draws = [torch.randn(5).numpy() for _ in range(2)]
    basis, made = [r for r in old.numpy()], []
    for v in draws:
        u = v - sum((v @ b) / (b @ b) * b for b in basis)
        basis.append(u)
        made.append(u / np.linalg.norm(u))
    np.testing.assert_allclose(got, np.stack(made), rtol=1e-5, atol=1e-6)
    pool = CodaPool(width=6, key_dim=5, pool_size=6, length=4, layers=[0], tasks=3, ortho_mu=0.0)
    pool.start_task(0)
    pool.start_task(1)
    for name in "kap":
        t = pool.params[name + "0"].detach().reshape(6, -1).numpy()
        np.testing.assert_allclose(t[:4] @ t[:4].T, np.eye(4), atol=1e-5)  # two tasks' components, orthonormal
        assert not t[4:].any()  # the last task's are not drawn yet


def test_c3_earlier_components_are_used_but_not_trained_and_c4_ortho_penalty():
    torch.manual_seed(0)
    pool = CodaPool(width=6, key_dim=5, pool_size=6, length=4, layers=[0], tasks=3, ortho_mu=0.5)
    pool.start_task(0)
    pool.start_task(1)
    prefixes, loss = pool(rand(3, 5, seed=10), train=True, task=1)
    t = {n: pool.params[n + "0"][:4].detach().reshape(4, -1).numpy() for n in "kap"}
    by_hand = 0.5 * sum(((m @ m.T - np.eye(4)) ** 2).mean() for m in t.values())
    assert loss.item() == pytest.approx(by_hand, rel=1e-5, abs=1e-9)
    (prefixes[0][0].sum() + prefixes[0][1].sum() + loss).backward()
    for n in "kap":
        g = pool.params[n + "0"].grad.reshape(6, -1)
        assert not g[:2].any() and g[2:4].abs().sum() > 0 and not g[4:].any()
    m = rand(3, 4, seed=11)
    assert float(ortho_penalty(m)) == pytest.approx(((m.numpy() @ m.numpy().T - np.eye(3)) ** 2).mean(), rel=1e-5)


def test_c2_coda_components_past_the_key_width_are_refused_before_any_work(tmp_path, capsys):
    """The official Gram-Schmidt loops for ever once the rows outnumber the key width; ours
    refuses the config: tiny CLIP's width is 64, 3 tasks x (100 // 3) = 99 components."""
    err = refused(tmp_path, capsys, prompt_args(tmp_path, "coda_prompt", pool_size=100))
    assert "coda_prompt: config key 'pool_size' = 100" in err and "= 99" in err and "key width 64" in err, err
    assert "'tiny-random'" in err
    learner, _ = make_learner(prompt_args(tmp_path, "coda_prompt", pool_size=65))  # 3 x 21 = 63 fit
    from utils.config import ConfigError

    with pytest.raises(ConfigError, match="1 x \\(pool_size // 1\\) = 65"):  # a fork's split: checked once known
        learner._ensure_pool(1)
    with pytest.raises(ValueError, match="do not fit width 5"):
        gram_schmidt_rows(rand(4, 5), 2)


# ----------------------------------------------------------------------------- parameter counts
def test_trainable_parameters_on_vit_b16_shapes_equal_the_official_modules():
    def count(m):
        return sum(p.numel() for p in m.parameters())

    d, head = 768, 768 * 100 + 100  # ViT-B/16 width; a linear head over CIFAR-100's classes
    l2p = KeyedPromptPool(d, d, 30, 20, [0], 5)
    dual = KeyedPromptPool(d, d, 10, 20, [2, 3, 4], 1, True, 6, [0, 1])
    coda = CodaPool(d, d, 100, 8, [0, 1, 2, 3, 4], 10, 0.0)
    assert count(l2p) == 30 * 20 * d + 30 * d == 483_840
    assert count(dual) == 2 * 6 * d + 3 * (10 * 20 * d + 10 * d) == 493_056
    assert count(coda) == 5 * (100 * 8 * d + 2 * 100 * d) == 3_840_000
    assert [count(m) + head for m in (l2p, dual, coda)] == [560_740, 569_956, 3_916_900]


def test_the_learners_read_clip_vit_b16_at_the_official_width(tmp_path):
    """CLIP ViT-B/16's class token before the projection is 768 wide: each learner's pool and
    head on it (official options, 10 tasks, 100 classes) count as the official modules."""
    official = {"l2p": {}, "dualprompt": {"prompt_layers": [2, 3, 4], "g_prompt_layers": [0, 1]},
                "coda_prompt": {"prompt_layers": [0, 1, 2, 3, 4], "pool_size": 100, "prompt_length": 8}}
    counts = []
    for method in METHODS:
        learner, _ = make_learner(prompt_args(tmp_path, method, backbone="vit-b16-random", **official[method]))
        learner._ensure_pool(10)
        learner._grow_head(100)
        assert learner.width == 768
        counts.append(sum(p.numel() for p in [*learner.pool.parameters(), *learner.head.parameters()]))
    assert counts == [560_740, 569_956, 3_916_900]


# ----------------------------------------------------------------------------- the learner (L4-L8)
def manual_class_token(net, images):
    """CLIP's image encoder written out: patches, class token, positions, ln_pre, blocks, ln_post."""
    v = net.model.visual
    x = v.conv1(images).flatten(2).transpose(1, 2)
    x = torch.cat([v.class_embedding.expand(x.shape[0], 1, -1), x], dim=1) + v.positional_embedding
    x = v.ln_pre(x).permute(1, 0, 2)
    for block in v.transformer.resblocks:
        h = block.ln_1(x)
        x = x + block.attn(h, h, h)[0]
        x = x + block.mlp(block.ln_2(x))
    return v.ln_post(x[0])



def test_l4_on_openclip_the_query_is_its_pooled_final_class_token(tmp_path):
    pytest.importorskip("open_clip", reason="pip install -e .[openclip] (CI installs it)")
    learner, _ = make_learner(prompt_args(tmp_path, "l2p", backbone="openclip:tiny-random"))
    v = learner._network.model.visual
    images = rand(3, 3, 32, 32, seed=13)
    with torch.no_grad():  # OpenCLIP's image tower written out (batch-first, LayerNorm on every token)
        x = v.conv1(images).flatten(2).transpose(1, 2)
        x = torch.cat([v.class_embedding.expand(x.shape[0], 1, -1), x], dim=1) + v.positional_embedding
        x = v.transformer(v.ln_pre(x))
        expected = v.ln_post(x)[:, 0]
    torch.testing.assert_close(learner._query(images), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_l4_the_query_is_the_frozen_final_class_token_before_the_projection(tmp_path, method):
    learner, _ = make_learner(prompt_args(tmp_path, method))
    images = rand(3, 3, 32, 32, seed=12)
    with torch.no_grad():
        expected = manual_class_token(learner._network, images)
    assert expected.shape == (3, 64)  # the encoder's width, not CLIP's 16-d embedding
    torch.testing.assert_close(learner._query(images), expected, rtol=1e-5, atol=1e-5)


def test_l5_official_cosine_rate_runs_one_epoch_behind_its_formula():
    """The official CosineSchedule (K = E) sets lr cos(99 pi s / (200 (E - 1))) at its counter s.
    Its constructor sets the rate at s = 0 and leaves the counter at -1; learners/default.py
    calls step() (s + 1) before every epoch but the first. So epochs 0, 1, 2, ... run at
    s = 0, 0, 1, ..., E - 2."""
    def at(s, E):
        return 1e-3 * math.cos(99 * math.pi * s / (200 * (E - 1)))

    expected = [at(0, 5), at(0, 5), at(1, 5), at(2, 5), at(3, 5)]  # E = 5, written out
    assert expected == pytest.approx([1e-3, 1e-3, 0.925375e-3, 0.712639e-3, 0.393541e-3], rel=1e-5)
    assert [official_cosine_lr(1e-3, 5, e) for e in range(5)] == pytest.approx(expected, rel=1e-12)
    for E in (2, 20, 50):  # the official loop replayed: the constructor's s = 0, then s = -1 + 1, ... per epoch
        counter, rates = -1, []
        for epoch in range(E):
            if epoch > 0:
                counter += 1
            rates.append(at(max(counter, 0), E))
        assert [official_cosine_lr(1e-3, E, e) for e in range(E)] == pytest.approx(rates, rel=1e-12)
    # E = 20: the last epoch at s = 18, 1e-3 cos(99 pi 18 / 3800), not the curve's end cos(99 pi / 200) (6x lower)
    assert official_cosine_lr(1e-3, 20, 19) == pytest.approx(0.0974000561e-3, rel=1e-8)
    assert official_cosine_lr(1e-3, 1, 0) == 1e-3  # E = 1: the official schedule divides by zero; ours keeps lr


@pytest.mark.parametrize("method, cls", [("l2p", L2P), ("dualprompt", DualPrompt), ("coda_prompt", CODAPrompt)])
def test_l5_l6_two_adam_steps_on_ce_over_the_task_classes_plus_pool_loss(tmp_path, method, cls):
    import copy

    from utils.clip_ops import make_loader, task_data

    seen = {}

    class Watched(cls):
        def _start_task(self):
            super()._start_task()
            if self._cur_task == 1:
                seen["pool"], seen["head"] = copy.deepcopy(self.pool), copy.deepcopy(self.head)

    # one full batch per task (16 images), three epochs: three Adam steps on task 1 at the official rates
    # of E = 3 (L5): lr, lr (the scheduler's first step leaves s at 0), lr cos(99 pi / 400) (s = 1)
    lr = 0.05
    learner, dm = make_learner(prompt_args(tmp_path, method, batch_size=16, lr=lr, epochs=3, train_augment="none"))
    learner.__class__ = Watched
    for _ in range(2):
        learner.incremental_train(dm)
        learner.after_task()
    pool, head = seen["pool"], seen["head"]
    data = task_data(dm, range(2, 4), "train", 32, learner.cfg, learner._device)
    _, x, y = next(iter(make_loader(data, 16, False, 0, learner._device)))
    params = list(pool.parameters()) + list(head.parameters())
    first_rows = head.weight[:2].detach().clone()
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    for step, rate in enumerate([lr, lr, lr * math.cos(99 * math.pi / 400)], start=1):
        prefixes, pool_loss = pool(learner._query(x), True, 1)
        logits = head(learner._class_token(x, prefixes))
        loss = F.cross_entropy(logits[:, 2:4], y - 2) + pool_loss  # CE over the task's own classes
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        with torch.no_grad():  # Adam by its formula: betas (0.9, 0.999), eps 1e-8, no weight decay
            for i, (p, g) in enumerate(zip(params, grads)):
                g = torch.zeros_like(p) if g is None else g
                m[i] = 0.9 * m[i] + 0.1 * g
                v[i] = 0.999 * v[i] + 0.001 * g * g
                p -= rate * (m[i] / (1 - 0.9 ** step)) / ((v[i] / (1 - 0.999 ** step)).sqrt() + 1e-8)
    trained = list(learner.pool.parameters()) + list(learner.head.parameters())
    for p0, p1 in zip(params, trained):
        torch.testing.assert_close(p1.detach(), p0.detach(), rtol=1e-4, atol=5e-5)
    assert torch.equal(learner.head.weight[:2], first_rows)  # the first task's rows: logits at -inf, no change


def test_l5_the_last_partial_batch_is_dropped(tmp_path):
    steps = []

    class Counting(L2P):
        def logits(self, images, queries, train):
            if train:
                steps.append(len(images))
            return super().logits(images, queries, train)

    learner, dm = make_learner(prompt_args(tmp_path, "l2p", batch_size=6, epochs=2))
    learner.__class__ = Counting
    learner.incremental_train(dm)
    assert steps == [6, 6, 6, 6]  # 16 images: two full batches per epoch, the 4 left over never used


@pytest.mark.parametrize("method", METHODS)
def test_l7_prediction_is_the_largest_head_logit_over_the_seen_classes(tmp_path, monkeypatch, method):
    import models.prompts
    from utils.clip_ops import make_loader, task_data

    learner, dm = make_learner(prompt_args(tmp_path, method))
    for _ in range(2):
        learner.incremental_train(dm)
        learner.after_task()
    scored = {}
    original = models.prompts.scores_result

    def recording(learner_, scores, labels):  # observe what the evaluation scores, then score it as usual
        scored["scores"], scored["labels"] = scores, labels
        return original(learner_, scores, labels)

    monkeypatch.setattr(models.prompts, "scores_result", recording)
    accy, _ = learner.eval_task()
    data = task_data(dm, range(4), "test", 32, learner.cfg, learner._device)
    x, y = zip(*[(b[1], b[2]) for b in make_loader(data, 64, False, 0, learner._device)])
    x, y = torch.cat(x), torch.cat(y)
    with torch.no_grad():
        prefixes, _ = learner.pool(manual_class_token(learner._network, x), False, 1)  # no task id
        with prefixed(learner._network, prefixes):
            logits = learner.head(manual_class_token(learner._network, x))[:, :4]
    torch.testing.assert_close(scored["scores"], logits, rtol=1e-4, atol=1e-5)
    assert torch.equal(scored["labels"], y)
    assert accy["top1"] == pytest.approx(round(100 * float(np.mean(logits.numpy().argmax(1) == y.numpy())), 2))


@pytest.mark.parametrize("method", METHODS)
def test_l8_the_query_cache_is_exact_and_encodes_each_image_once(tmp_path, method):
    results = {}
    for cache in (True, False):
        torch.manual_seed(0)
        learner, dm = make_learner(prompt_args(tmp_path, method, query_cache=cache, epochs=2, train_augment="none"))
        accs = []
        for _ in range(3):
            learner.incremental_train(dm)
            accs.append(learner.eval_task()[0]["top1"])
            learner.after_task()
        results[cache] = (accs, learner.head.weight.detach().clone(), learner.record["query_images"])
    assert results[True][0] == results[False][0]
    torch.testing.assert_close(results[True][1], results[False][1], rtol=1e-5, atol=1e-6)
    assert results[True][2] == 6 * 8 + 6 * 4  # every train and test image once
    # without the cache: 2 epochs over each task's 16 images (full batches of 8), then the seen test images
    assert results[False][2] == 3 * 2 * 16 + (8 + 16 + 24)


@pytest.mark.parametrize("cache", [False, True])
@pytest.mark.parametrize("method", METHODS)
def test_prompt_methods_resume_exactly(tmp_path, monkeypatch, method, cache):
    """With the official augmentation (the crops of every epoch drawn from the checkpointed
    stream) and with the query cache (no augmentation)."""
    from tests.test_resume import run_then_resume

    args = prompt_args(tmp_path, method, **({"query_cache": True, "train_augment": "none"} if cache else {}))
    reference, resumed = run_then_resume(args, tmp_path, monkeypatch)
    assert reference["finished"] and reference["trainable_parameters"] > 0
    # a cost counter, like the timings: with the cache the resumed process computes the test images' queries
    # once more
    assert resumed.pop("query_images") == reference.pop("query_images") + (6 * 4 if cache else 0)
    assert resumed == reference


@pytest.mark.parametrize("method, key, value, allowed", [
    ("l2p", "prompt_length", 3, "even"), ("l2p", "prompt_top_k", 31, "[1, pool_size]"),
    ("dualprompt", "g_prompt_length", 0, "even"), ("coda_prompt", "ortho_mu", -1, ">= 0"),
    ("coda_prompt", "prompt_layers", [0, 5], "below 2")])
def test_bad_options_are_one_line_naming_the_key(tmp_path, capsys, method, key, value, allowed):
    err = refused(tmp_path, capsys, {**prompt_args(tmp_path, method), key: value})
    assert f"{method}: config key '{key}'" in err and allowed in err


def test_a_bad_option_in_a_side_by_side_config_names_its_method(capsys):
    for setting, method in (("l2p.prompt_length=3", "l2p"), ("dualprompt.prompt_layers=[4]", "dualprompt"),
                            ("coda_prompt.pool_size=2", "coda_prompt")):
        assert main(["--config", "compare_demo", "--check", "--set", setting, "-q"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith(f"error: {method}: config key"), err


def test_l5_epochs_auto_are_the_official_20_or_50_on_imagenet_r(tmp_path):
    from toolbox.registry import get_model

    for dataset, epochs in (("cifar100", 20), ("imagenet_r", 50), ("synthetic", 20)):
        split = {"init_cls": 20, "increment": 20} if dataset != "synthetic" else {}
        args = {**prompt_args(tmp_path, "l2p", epochs="auto"), "dataset": dataset, **split}
        assert get_model("l2p", args).epochs == epochs


# ----------------------------------------------------------------------------- L9: the official augmentation
def capture_batches(monkeypatch, module):
    """Every (description, idx, images) a learner of ``module`` iterates through ``progress``."""
    seen = []
    original = module.progress

    def spy(loader, desc):
        for idx, x, y in original(loader, desc):
            seen.append((desc, idx.clone(), x.detach().clone()))
            yield idx, x, y

    monkeypatch.setattr(module, "progress", spy)
    return seen


def spy_reseeds(monkeypatch):
    """The bases ``SeededAugment.reseed`` draws (the crops of item i are then torch seed base + i)."""
    from utils.augment import SeededAugment

    bases, original = [], SeededAugment.reseed
    monkeypatch.setattr(SeededAugment, "reseed", lambda self: bases.append(original(self)) or bases[-1])
    return bases


def torchvision_official(images, rows, seed_of, geometry):
    """The images of ``rows`` through ``geometry`` + RGB + ToTensor + CLIP normalisation, each
    under ``torch.manual_seed(seed_of(row))``: built here by hand from torchvision."""
    from PIL import Image
    from torchvision import transforms as T

    from utils.clip_backbone import CLIP_MEAN, CLIP_STD

    pipe = T.Compose([*geometry, T.Lambda(lambda im: im.convert("RGB")), T.ToTensor(),
                      T.Normalize(CLIP_MEAN, CLIP_STD)])
    out = []
    for r in rows:
        torch.manual_seed(seed_of(int(r)))
        out.append(pipe(Image.fromarray(images[int(r)])))
    return torch.stack(out)


@pytest.mark.parametrize("method", METHODS)
def test_l9_training_images_and_queries_are_the_official_random_crop_and_flip_test_images_are_not(
        tmp_path, monkeypatch, method):
    from PIL import Image
    from torchvision import transforms as T

    import models.prompts as prompts_module
    from utils.clip_backbone import clip_transform

    batches, bases = capture_batches(monkeypatch, prompts_module), spy_reseeds(monkeypatch)
    queried = []
    cls = {"l2p": L2P, "dualprompt": DualPrompt, "coda_prompt": CODAPrompt}[method]
    original_query = cls._query
    monkeypatch.setattr(cls, "_query", lambda self, x: queried.append(x.detach().clone()) or original_query(self, x))
    torch.manual_seed(0)
    learner, dm = make_learner(prompt_args(tmp_path, method, epochs=2))  # the defaults: train_augment official
    assert learner.opts.train_augment == "official" and learner.opts.query_cache is False
    learner.incremental_train(dm)
    images, _, _ = dm.get_dataset(range(2), source="train", mode="train", ret_data=True)
    train = [(d, i, x) for d, i, x in batches if d.startswith("task 0 epoch")]
    assert len(bases) == 2 and bases[0] != bases[1] and len(train) == 4  # 16 images, batches of 8, 2 epochs
    R = learner._network.input_resolution
    for step, (desc, idx, x) in enumerate(train):
        base = bases[int(desc.split("epoch ")[1]) - 1]
        want = torchvision_official(images, idx, lambda r: base + r, [T.RandomResizedCrop(R), T.RandomHorizontalFlip()])
        torch.testing.assert_close(x, want, rtol=0, atol=1e-6)
        torch.testing.assert_close(queried[step], x, rtol=0, atol=0)  # the query: this step's augmented images
    centre = torch.stack([clip_transform(R)(Image.fromarray(images[int(r)])) for r in train[0][1]])
    assert (train[0][2] - centre).abs().max() > 0.1  # not CLIP's deterministic preprocessing
    batches.clear()
    learner.eval_task()
    test_images, _, _ = dm.get_dataset(range(2), source="test", mode="test", ret_data=True)
    (_, idx, x), = [b for b in batches if b[0] == "eval"]
    torch.testing.assert_close(x, torch.stack([clip_transform(R)(Image.fromarray(test_images[int(r)])) for r in idx]),
                               rtol=0, atol=1e-6)  # test time: deterministic


@pytest.mark.parametrize("method", METHODS)
def test_l8_l9_the_query_cache_with_augmentation_is_refused_naming_both_keys(tmp_path, capsys, method):
    err = refused(tmp_path, capsys, {**prompt_args(tmp_path, method), "query_cache": True})
    assert f"{method}: config key 'query_cache' = True" in err and "train_augment: 'none'" in err
    cfg = make_config(prompt_args(tmp_path, method, query_cache=True, train_augment="none"))  # accepted
    assert cfg.model_name == method
