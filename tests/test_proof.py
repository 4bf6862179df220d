"""PROOF (docs/methods/proof.md items P1-P10), each item against an independent computation: the official
logs' parameter counts, the fusion block by hand, herding on a toy set, prototypes,
losses and the inference rule recomputed, batch dependence and its per-sample option."""
import json
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.proof import PROOF, FusionBlock, ProofHead
from tests.conftest import refused, tiny_args
from toolbox.configs import make_config
from toolbox.data_manager import DataManager
from utils.herding import herding_order, per_class_budget, update_herding_memory


def make(tmp_path, **over):
    args = tiny_args(tmp_path, **{"model_name": "proof", "epochs": 2, "batch_size": 8, "lr": 0.01,
                                  "proof_memory_size": 12, **over})
    cfg = make_config(args)
    dm = DataManager(cfg.dataset, True, cfg.seeds()[0], cfg.init_cls, cfg.increment, cfg)
    return PROOF(cfg.to_dict()), dm


def trainable(module):
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


@pytest.mark.parametrize("key, value, allowed", [
    ("optimizer", "adamw", "'sgd' or 'adam'"),
    ("templates", ["a photo"], "'released' (PROOF's templates.json for the dataset) or a non-empty list of prompts"),
    ("templates", [], "a non-empty list of prompts with one '{}' each"),
    ("context_prompts", -1, "an integer >= 0"), ("proof_memory_size", -5, "an integer >= 0"),
    ("memory_per_class", -1, "an integer >= 0")])
def test_bad_options_are_one_line_naming_the_key(tmp_path, capsys, key, value, allowed):
    """PROOF's options are checked by the shared path: the one message shape of every method's."""
    err = refused(tmp_path, capsys, tiny_args(tmp_path, model_name="proof", **{key: value}))
    assert err.startswith(f"error: proof: config key '{key}' = {value!r}") and allowed in err


# ----------------------------------------------------------------------------- P1 / P6
def test_p1_p6_trainable_parameter_counts_are_the_official_logs():
    head = ProofHead(512, math.log(100.0))
    head.new_task()
    assert trainable(head) == 1_576_961  # task 0 in the official logs
    head.new_task()
    assert trainable(head) == 1_839_617  # +262,656: new projections, old image projection and prompts frozen
    for _ in range(7):
        head.new_task()
    assert trainable(head) == 3_678_209  # task 8
    assert not head.img_proj[0].weight.requires_grad and head.txt_proj[0].weight.requires_grad  # the code's choice
    assert not head.prompts[0].requires_grad and head.logit_scale.requires_grad
    frozen = ProofHead(16, 0.0)
    frozen.new_task(freeze_old_text=True)
    frozen.new_task(freeze_old_text=True)
    assert not frozen.txt_proj[0].weight.requires_grad  # option: the paper's premise


# ----------------------------------------------------------------------------- P4
def test_p4_fusion_block_by_hand():
    torch.manual_seed(0)
    block = FusionBlock(4).eval()  # eval: no dropout
    x = torch.randn(2, 3, 4)
    q, k, v = (m.weight.detach().numpy() for m in (block.q, block.k, block.v))
    wo, bo = block.out.weight.detach().numpy(), block.out.bias.detach().numpy()
    xs = x.numpy().astype(np.float64)
    expected = []
    for s in xs:
        scores = (s @ q.T) @ (s @ k.T).T / 2.0  # / sqrt(d)
        a = np.exp(scores - scores.max(1, keepdims=True))
        a /= a.sum(1, keepdims=True)
        h = (a @ (s @ v.T)) @ wo.T + bo + s  # output map, residual
        mu, var = h.mean(1, keepdims=True), h.var(1, keepdims=True)
        expected.append((h - mu) / np.sqrt(var + 1e-5))  # LayerNorm (weight 1, bias 0 at init)
    np.testing.assert_allclose(block(x).detach().numpy(), np.stack(expected), atol=1e-5)
    assert block.q.bias is None and block.out.bias is not None
    std = block.q.weight.std().item()
    assert 0.5 * math.sqrt(2 / 8) < std < 1.5 * math.sqrt(2 / 8)


def test_p4_text_and_prototype_outputs_are_batch_means_and_per_sample_is_not():
    head = ProofHead(8, 0.0)
    head.new_task()
    head.eval()
    g = torch.Generator().manual_seed(1)
    img, text, protos = torch.randn(3, 8, generator=g), torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    o, w, p = head.fuse(img, text, protos)
    o_s, w_s, p_s = head.fuse(img, text, protos, per_sample=True)
    torch.testing.assert_close(o, o_s)
    torch.testing.assert_close(w, w_s.mean(0))
    torch.testing.assert_close(p, p_s.mean(0))
    alone = head.fuse(img[:1], text, protos)
    torch.testing.assert_close(alone[1], w_s[0])  # a batch of one = that sample's own outputs
    assert not torch.allclose(alone[1], w)  # with batch-mates the text outputs differ


# ----------------------------------------------------------------------------- P3 / P8
def test_p3_prototypes_are_means_of_normalised_features_not_renormalised(tmp_path):
    learner, dm = make(tmp_path)
    learner.incremental_train(dm)
    feats, labels = learner.cache.all(dm, "train")
    for c in range(2):
        fc = feats[labels == c].double().numpy()
        expected = (fc / np.linalg.norm(fc, axis=1, keepdims=True)).mean(0)
        np.testing.assert_allclose(learner.prototypes[c].numpy(), expected, rtol=1e-5, atol=1e-6)
        assert np.linalg.norm(expected) < 1.0


def test_p8_herding_order_on_a_toy_set_by_hand():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.8, 0.6]])
    xn = x / x.norm(dim=1, keepdim=True)
    mu = xn.mean(0).numpy()
    chosen, running = [], np.zeros(2)
    for k in range(1, 5):
        d = [np.inf if i in chosen else np.sum((mu - (running + xn[i].numpy()) / k) ** 2) for i in range(4)]
        chosen.append(int(np.argmin(d)))
        running += xn[chosen[-1]].numpy()
    assert herding_order(x, 4) == chosen and herding_order(x, 2) == chosen[:2]
    assert herding_order(x, 10) == chosen  # capped at the class size (the official code crashes)


def test_p8_memory_budget_reduce_then_construct():
    assert per_class_budget(2000, False, 20, 10) == 200 and per_class_budget(2000, True, 20, 10) == 20
    feats = torch.randn(12, 3, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0] * 6 + [1] * 6)
    mem = update_herding_memory({}, feats, labels, [0], 4)
    assert len(mem[0]) == 4 and all(labels[i] == 0 for i in mem[0])
    mem2 = update_herding_memory(mem, feats, labels, [1], 2)
    assert mem2[0] == mem[0][:2] and len(mem2[1]) == 2  # old classes keep their first picks


# ----------------------------------------------------------------------------- P5 / P7
def test_p5_losses_recomputed(tmp_path):
    learner, dm = make(tmp_path, epochs=1)
    learner.incremental_train(dm)
    head = learner.head.eval()
    feats, labels = learner.cache.get(dm, "train", range(2))
    f, y = feats[:6], labels[:6]
    with torch.no_grad():
        loss = learner._losses(f, y)
        z = F.normalize(sum(p(f) for p in head.img_proj), dim=1)
        w = F.normalize(sum(p(learner._train_text) for p in head.txt_proj), dim=1)
        protos = F.normalize(sum(p(learner.prototypes) for p in head.img_proj), dim=1)
        ctx = torch.cat(list(head.prompts))
        seq = torch.cat([z[:, None], w.expand(6, -1, -1), protos.expand(6, -1, -1), ctx.expand(6, -1, -1)], 1)
        out = head.fusion(seq)
        o, w_t, p_t = out[:, 0], out[:, 1:3].mean(0), out[:, 3:5].mean(0)
        logits = math.exp(float(head.logit_scale)) * z @ w[y].t()
        t = torch.arange(6)
        expected = (F.cross_entropy(o @ w_t.t(), y) + F.cross_entropy(o @ p_t.t(), y)
                    + (F.cross_entropy(logits, t) + F.cross_entropy(logits.t(), t)) / 2)
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)


def test_p7_sgd_with_weight_decay_and_cosine_to_zero(tmp_path, monkeypatch):
    seen = []
    real = torch.optim.SGD.step

    def recording(self, *a, **k):
        g = self.param_groups[0]
        seen.append((g["lr"], g["momentum"], g["weight_decay"]))
        return real(self, *a, **k)

    monkeypatch.setattr(torch.optim.SGD, "step", recording)
    learner, dm = make(tmp_path, epochs=4, lr=0.01)
    learner.incremental_train(dm)
    per_epoch = len(seen) // 4
    lrs = [seen[e * per_epoch][0] for e in range(4)]
    assert lrs == pytest.approx([0.01 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)])
    assert all(m == 0.9 and wd == 0.05 for _, m, wd in seen)


# ----------------------------------------------------------------------------- P9
def test_p9_inference_rule_recomputed(tmp_path):
    learner, dm = make(tmp_path, templates=["a photo of a {}.", "a drawing of a {}."])
    learner.incremental_train(dm)
    head = learner.head
    feats, _ = learner.cache.get(dm, "test", range(2))
    f = feats[:5]
    with torch.no_grad():
        z = sum(p(f) for p in head.img_proj)  # not normalised at test (official)
        per_template = [F.normalize(sum(p(learner._raw_text(t, learner._names)) for p in head.txt_proj), dim=1)
                        for t in ("a photo of a {}.", "a drawing of a {}.")]
        w_bar = F.normalize((per_template[0] + per_template[1]) / 2, dim=1)
        protos = F.normalize(sum(p(learner.prototypes) for p in head.img_proj), dim=1)
        o, w_t, p_t = head.fuse(z, w_bar, protos)
        expected = o @ w_t.t() + o @ p_t.t() + z @ w_bar.t()
        torch.testing.assert_close(learner.scores(f), expected)
    learner.opts.normalize_eval_image = True
    with torch.no_grad():
        o2, w2, p2 = head.fuse(F.normalize(z, dim=1), w_bar, protos)
        torch.testing.assert_close(learner.scores(f), o2 @ w2.t() + o2 @ p2.t() + z @ w_bar.t())


def test_p9_batch_dependence_and_the_per_sample_option(tmp_path):
    learner, dm = make(tmp_path)
    learner.incremental_train(dm)
    feats, _ = learner.cache.get(dm, "test", range(2))
    with torch.no_grad():
        batched, alone = learner.scores(feats[:6])[0], learner.scores(feats[:1])[0]
        assert not torch.allclose(batched, alone)  # official: a sample's scores depend on its batch-mates
        learner.opts.per_sample_eval = True
        torch.testing.assert_close(learner.scores(feats[:6])[0], learner.scores(feats[:1])[0])


def test_p9_an_evaluation_encodes_the_prompts_once_and_scores_as_per_batch_encoding(tmp_path, monkeypatch):
    """Speed, same results: the official code re-encodes every template's prompts for each
    evaluation batch; here once per evaluation. The scores equal the per-batch path's
    (each batch encoding the prompts again) exactly, and the text encoder runs once per template."""
    import models.proof as proof_module
    from utils.clip_backbone import ClipBackbone

    templates = ["a photo of a {}.", "a drawing of a {}."]
    learner, dm = make(tmp_path, templates=templates, batch_size=3)
    got = {}
    monkeypatch.setattr(proof_module, "scores_result", lambda self, s, y: got.update(scores=s, labels=y) or ({}, None))
    calls = []
    real = ClipBackbone.encode_text
    monkeypatch.setattr(ClipBackbone, "encode_text", lambda self, t: calls.append(len(t)) or real(self, t))
    for _ in range(2):
        learner.incremental_train(dm)
        calls.clear()
        learner.eval_task()
        assert len(calls) == len(templates)  # once per template per evaluation
        feats, labels = learner.cache.get(dm, "test", range(learner._total_classes))
        order = torch.argsort(labels, stable=True)
        feats, labels = feats[order], labels[order]
        b = learner.cfg.batch_size
        assert len(labels) > 2 * b  # several evaluation batches
        calls.clear()
        with torch.no_grad():  # the per-batch path: every batch encodes the prompts again
            per_batch = torch.cat([learner.scores(feats[i:i + b]) for i in range(0, len(labels), b)])
        assert len(calls) == len(templates) * math.ceil(len(labels) / b)
        assert torch.equal(got["labels"], labels) and torch.equal(got["scores"], per_batch)
        learner.after_task()


# ----------------------------------------------------------------------------- runs
def test_proof_learns_and_resumes_exactly(tmp_path, monkeypatch):
    from tests.test_resume import run_then_resume

    args = tiny_args(tmp_path, model_name="proof", synthetic_classes=6, epochs=3, batch_size=8, lr=0.01,
                     proof_memory_size=12)
    reference, resumed = run_then_resume(args, tmp_path, monkeypatch)
    assert reference["trainable_parameters"][1] - reference["trainable_parameters"][0] == 16 * 16 + 16
    assert reference["memory_per_class"] == [6, 3, 2]  # 12 // seen classes
    assert resumed == reference


# ----------------------------------------------------------------------------- official configs
def official_proof(name):
    from tests.conftest import SHARED_RELEASED

    path = os.path.join(SHARED_RELEASED, "proof", "exps", name)
    if not os.path.isfile(path):
        pytest.skip(f"needs {path} (../shared, absent outside the project)")
    with open(path) as f:
        return json.load(f)


@pytest.mark.parametrize("official, ours, logged", [
    ("cifar.json", "proof_cifar.json", {}),
    ("img.json", "proof_imagenet_r.json", {"fixed_memory": True}),  # the published log's value (test below)
    ("cub.json", "proof_cub.json", {}),
])
def test_proof_configs_equal_the_official_ones_key_by_key(official, ours, logged):
    from tests.conftest import ROOT

    o = {**official_proof(official), **logged}
    cfg = make_config(json.load(open(os.path.join(ROOT, "exps", ours))))
    opts = cfg.options
    names = {"cifar224": "cifar100", "imagenetr": "imagenet_r", "cub": "cub200"}
    assert (cfg.dataset, cfg.init_cls, cfg.increment, cfg.seed) == (names[o["dataset"]], o["init_cls"], o["increment"],
                                                                     o["seed"][0])
    assert (cfg.epochs, cfg.lr, cfg.batch_size, cfg.eval_batch_size) == (o["tuned_epoch"], o["init_lr"],
                                                                         o["batch_size"], o["batch_size"])
    assert (opts.weight_decay, opts.optimizer, opts.proof_memory_size, opts.fixed_memory,
            opts.memory_per_class) == (o["weight_decay"], o["optimizer"], o["memory_size"], o["fixed_memory"],
                                          o["memory_per_class"])
    assert o["convnet_type"] == "clip" and cfg.backbone == "openclip:ViT-B-16/laion400m_e32"  # LAION-400M
    assert cfg.class_order == "shuffle" and opts.templates == ["released"] and opts.squash_resize
    assert o["min_lr"] == 0 and o["projection_type"] == "pure_mlp"


def test_imagenet_r_keeps_the_published_logs_fixed_memory_not_img_json(tmp_path):
    """exps/img.json says fixed_memory false, but the published ImageNet-R B0 Inc20 run
    (the log whose figures toolbox/published.py holds) ran with true: its header says so
    and every task kept 20 exemplars per class (false would be 4000 // 20 = 200 in task 0).
    Ours keeps the published run's value and so its per-class budget in every task."""
    import re

    from tests.conftest import ROOT, SHARED_RELEASED

    assert official_proof("img.json")["fixed_memory"] is False
    log = os.path.join(SHARED_RELEASED, "proof", "logs", "proof", "imagenetr", "0", "20", "imgb0.log")
    with open(log) as f:
        text = f.read()
    assert set(re.findall(r"=> fixed_memory: (\w+)", text)) == {"True"}
    logged = [int(m) for m in re.findall(r"Constructing exemplars for new classes\.\.\.\((\d+) per classes\)", text)]
    assert len(logged) >= 10 and set(logged) == {20}
    opts = make_config(json.load(open(os.path.join(ROOT, "exps", "proof_imagenet_r.json")))).options
    assert opts.fixed_memory is True
    budgets = [per_class_budget(opts.proof_memory_size, opts.fixed_memory, opts.memory_per_class, 20 * t)
               for t in range(1, 11)]
    assert budgets == [20] * 10
    assert per_class_budget(opts.proof_memory_size, False, opts.memory_per_class, 20) == 200  # img.json's


def test_released_templates_are_prooFs_own(released_cache):
    from toolbox.released import released_templates, with_released_options

    assert released_templates("cub200", released_cache) == ["a photo of a {}, a type of bird."]
    args = {"model_name": "proof", "dataset": "cub200", "templates": ["released"], "released_cache": released_cache}
    assert with_released_options(args)["templates"] == ["a photo of a {}, a type of bird."]  # read before the learner
    assert args["templates"] == ["released"]  # the run's config keeps the value as written
    cifar = released_templates("cifar100", released_cache)
    assert len(cifar) == 18 and all("{}" in t for t in cifar)
    assert released_templates("imagenet_r", released_cache)[0] == "itap of a {}."


def test_p10_each_image_is_encoded_once_and_no_unreported_evaluation_runs(tmp_path, monkeypatch):
    """The official code's logging-only evaluations (every epoch, NME, zero-shot over all
    classes) change nothing; here each image goes through the frozen encoder exactly once."""
    from utils.clip_backbone import ClipBackbone

    seen = []
    real = ClipBackbone.encode_image
    monkeypatch.setattr(ClipBackbone, "encode_image", lambda self, x: seen.append(len(x)) or real(self, x))
    learner, dm = make(tmp_path, epochs=3)  # 6 classes x (8 train + 4 test) images, 3 tasks
    for _ in range(3):
        learner.incremental_train(dm)
        learner.eval_task()
        learner.after_task()
    assert sum(seen) == 6 * 8 + 6 * 4
