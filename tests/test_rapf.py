"""RAPF (docs/methods/rapf.md items R1-R10), each item against an independent computation: hand-made
features and text, numpy statistics, the fusion's fixed points, the sampler's moments, the
learning-rate trace; its configs against the official YAMLs; side by side with MG-CLIP."""
import glob
import json
import math
import os
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from main import main
from models.rapf import RAPF, RAPFOptions, hard_pairs, hinge_loss, official_old_per_batch
from tests.conftest import ROOT, SHARED_RELEASED, tiny_args
from toolbox.configs import build_configs, make_config
from toolbox.data_manager import DataManager
from utils.config import ConfigError
from utils.gaussian import ClassGaussians, shrunk_covariance
from utils.parameter_fusion import svd_fusion


def rapf_args(tmp_path, **over):
    return tiny_args(tmp_path, **{"model_name": "rapf", "epochs": 2, "batch_size": 4, **over})


def make(tmp_path, **over):
    args = rapf_args(tmp_path, **over)
    cfg = make_config(args)
    dm = DataManager(cfg.dataset, True, cfg.seeds()[0], cfg.init_cls, cfg.increment, cfg)
    return RAPF(cfg.to_dict()), dm


# ----------------------------------------------------------------------------- R1
def test_r1_hard_pairs_by_hand():
    eye = torch.eye(4)
    assert hard_pairs(eye[:2], eye[2:], 0.55, offset=2) == []  # orthonormal: distance sqrt(2) > delta
    old = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]])
    new = torch.tensor([[0, 2.0, 0], [0, 0, 1.0]])  # new class 0 has old class 1's direction
    assert hard_pairs(old, new, 0.55, offset=2) == [(1, 2)]
    g = torch.Generator().manual_seed(0)
    old, new = torch.randn(6, 8, generator=g), torch.randn(5, 8, generator=g)
    a = F.normalize(old, dim=1).numpy()
    b = F.normalize(new, dim=1).numpy()
    dist = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    delta = float(np.median(dist))
    expected = [(k, 10 + j) for k in range(6) for j in range(5) if dist[k, j] < delta]  # old-major order
    assert hard_pairs(old, new, delta, offset=10) == expected


# ----------------------------------------------------------------------------- R2 / R10
def test_r2_r10_logits_and_prediction_by_hand(tmp_path):
    learner, dm = make(tmp_path)
    learner.incremental_train(dm)
    feats, labels = learner.cache.get(dm, "test", range(learner._total_classes))
    W = learner.adapter.weight.detach().numpy().astype(np.float64)
    f = feats.numpy().astype(np.float64)
    g = learner._text.numpy().astype(np.float64)
    z = f @ W.T
    cos = (z / np.linalg.norm(z, axis=1, keepdims=True)) @ (g / np.linalg.norm(g, axis=1, keepdims=True)).T
    logits = learner._logits(feats, learner._text).detach().numpy()
    np.testing.assert_allclose(logits, 100 * cos, rtol=1e-4, atol=1e-3)
    accy, _ = learner.eval_task()
    expected = float(np.mean(np.argmax(cos, 1) == labels.numpy()) * 100)
    assert accy["top1"] == pytest.approx(expected)


def test_the_official_fp16_numerics_run_here_and_agree_with_fp32_by_hand(tmp_path, monkeypatch):
    """RAPF's default numerics on CUDA (clip.load's fp16 encoder, fp16 adapter output and
    logits), forced on the CPU: the dtypes, casts, fp16 cross-entropy and backward that a
    GPU run takes, checked against the fp32 computation at fp16 tolerance."""
    learner, dm = make(tmp_path)
    learner.incremental_train(dm)
    feats, labels = learner.cache.get(dm, "test", range(learner._total_classes))
    W = learner.adapter.weight.detach().numpy().astype(np.float64)
    z = feats.numpy().astype(np.float64) @ W.T
    g = learner._text.numpy().astype(np.float64)
    cos = (z / np.linalg.norm(z, axis=1, keepdims=True)) @ (g / np.linalg.norm(g, axis=1, keepdims=True)).T
    monkeypatch.setattr(RAPF, "_official_half", property(lambda self: True))
    half = learner._logits(feats, learner._text).detach()
    assert half.dtype == torch.float16
    np.testing.assert_allclose(half.float().numpy(), 100 * cos, atol=0.25)
    x = torch.from_numpy(np.random.RandomState(0).rand(3, 3, 32, 32).astype(np.float32))
    with torch.no_grad():
        enc = learner._encode(x)
        ref = learner._network.encode_image(x).float()
    assert enc.dtype == torch.float32 and not torch.equal(enc, ref.half().float())  # the encoder ran in fp16
    np.testing.assert_allclose(enc.numpy(), ref.numpy(), rtol=2e-2, atol=2e-2)
    logdir = tmp_path / "half"
    assert main(["--config", "rapf_demo", "--set", f"logdir={logdir}", "--set", "seed=1993", "--set", "epochs=2",
                 "-q"]) == 0  # a whole run on the fp16 path: replay, hinge, fusion, evaluation
    (results,) = glob.glob(str(logdir / "**" / "results.json"), recursive=True)
    with open(results) as f:
        accuracy = json.load(f)["accuracy"]
    assert len(accuracy) == 3 and all(math.isfinite(a) for a in accuracy)


def h16(a):
    """Numpy: the value fp16 storage keeps."""
    return np.asarray(a, dtype=np.float64).astype(np.float16).astype(np.float64)


def h16_normalize(a):
    a = h16(a)
    return h16(a / h16(np.sqrt((a ** 2).sum(1, keepdims=True))))


def test_official_fp16_points_hinge_and_statistics_by_hand():
    """fp16_points: official: the hinge (main.py:113-118 on models.py:132-134's output) and
    the class statistics (models.py:193-194, torch.mean/torch.cov of fp16 features), each
    against numpy arithmetic rounded to float16 at the same points; fp32 differs."""
    g = torch.Generator().manual_seed(3)
    text = F.normalize(torch.randn(4, 8, generator=g), dim=1)
    edge = torch.randn(6, 8, generator=g) * 3
    rows = torch.tensor([[0, 2], [0, 2], [1, 3], [1, 3], [1, 2], [0, 3]])
    u = h16_normalize(h16_normalize(edge.numpy()))
    t = text.numpy()
    old, new = h16_normalize(t[rows[:, 0]]), h16_normalize(t[rows[:, 1]])
    cos_old, cos_new = h16(h16(u * old).sum(1)), h16(h16(u * new).sum(1))
    expected = h16(np.maximum(h16(h16(cos_new - cos_old) + 0.1), 0).mean())
    half = float(hinge_loss(edge, text, rows, 0.1, half=True))
    assert half == pytest.approx(float(expected), abs=float(np.spacing(np.float16(expected))))
    full = float(hinge_loss(edge, text, rows, 0.1))
    assert half != full and half == pytest.approx(full, abs=2e-3)

    x = torch.randn(40, 8, generator=g).mul(0.8).add(0.4).half().float()  # fp16 features, as cached
    stats, stats32 = ClassGaussians(1e-4), ClassGaussians(1e-4)
    stats.add(0, x, half=True)
    stats32.add(0, x)
    xn = x.numpy().astype(np.float64)
    mean = h16(xn.mean(0))
    centred = h16(xn - mean)
    cov = h16(h16(centred.T @ centred) / 39) + 1e-4 * np.eye(8)
    np.testing.assert_array_equal(stats.means[0].numpy(), mean.astype(np.float32))
    np.testing.assert_allclose(stats.covs[0].numpy(), cov, rtol=0, atol=1e-6)
    torch.testing.assert_close(stats.covs[0], torch.cov(x.half().t()).float() + 1e-4 * torch.eye(8),
                               rtol=0, atol=1e-3)  # torch's fp16 kernel: within one fp16 step
    assert not torch.equal(stats.means[0], stats32.means[0]) and not torch.equal(stats.covs[0], stats32.covs[0])


def test_official_fp16_points_text_and_a_hard_pair_near_the_threshold(tmp_path, monkeypatch):
    """The text features as the official fp16 model gives them (encoder in fp16, output
    stored in fp16, normalised in fp32 for hard pairs and the hinge, in fp16 for the logits),
    and a threshold between a pair's fp32 and fp16 distance: the two settings pick
    different hard pairs in the same run."""
    monkeypatch.setattr(RAPF, "_official_half", property(lambda self: True))  # the CUDA path, here on the CPU
    learner, dm = make(tmp_path, epochs=1)
    assert learner.opts.fp16_points == "official" and learner._fp16_points
    names = dm.get_class_names(range(4))  # tasks 0 and 1
    tokens = learner._network.tokenize([learner.cfg.prompt_template.format(n) for n in names])
    with torch.no_grad():
        text, logit_text = learner._prompt_texts(tokens)
        with torch.autocast("cpu", dtype=torch.float16):
            raw = learner._network.encode_text(tokens).float().numpy()
        raw32 = learner._network.encode_text(tokens).float().numpy()
    raw16 = h16(raw)
    np.testing.assert_allclose(text.numpy(), raw16 / np.linalg.norm(raw16, axis=1, keepdims=True), atol=1e-6)
    np.testing.assert_allclose(logit_text.numpy(), h16_normalize(raw16), atol=1e-3)
    assert set(np.unique(logit_text.numpy().astype(np.float16).astype(np.float32) == logit_text.numpy())) == {True}

    def distances(r):
        a = r / np.linalg.norm(r, axis=1, keepdims=True)
        return np.sqrt(((a[:2, None] - a[None, 2:4]) ** 2).sum(-1))  # task 0's classes vs task 1's

    d16, d32 = distances(raw16), distances(raw32)
    k, j = np.unravel_index(np.argmax(np.abs(d16 - d32)), d16.shape)
    assert abs(d16[k, j] - d32[k, j]) > 1e-5
    threshold = float((d16[k, j] + d32[k, j]) / 2)
    picked = {}
    for points in ("official", "encoder_and_logits"):
        learner, dm = make(tmp_path, epochs=1, hard_pair_threshold=threshold, fp16_points=points)
        for _ in range(2):
            learner.incremental_train(dm)
            learner.after_task()
        picked[points] = learner.record["hard_pairs"][1]["pairs"]
        d = d16 if points == "official" else d32
        assert picked[points] == [(a, 2 + b) for a in range(2) for b in range(2) if d[a, b] < threshold]
    assert picked["official"] != picked["encoder_and_logits"]
    assert ((k, 2 + j) in picked["official"]) == (d16[k, j] < threshold)


def test_fp16_points_is_the_official_default_and_only_on_the_fp16_path(tmp_path):
    """The official code as released runs clip.load's half model on CUDA, so the published
    numbers come from the fp16 points: every shipped RAPF config keeps the default; on the
    CPU (and with precision fp32) nothing is fp16."""
    assert RAPFOptions().fp16_points == "official"
    for path in sorted(glob.glob(os.path.join(ROOT, "exps", "rapf_*.json"))):
        cfg = make_config(json.load(open(path)))
        assert cfg.options.fp16_points == "official" and cfg.precision == "auto", path
    learner, _ = make(tmp_path)
    assert not learner._official_half and not learner._fp16_points
    with pytest.raises(ConfigError, match="fp16_points"):
        make(tmp_path, fp16_points="fp16")


# ----------------------------------------------------------------------------- R3 / R6
def test_r3_replay_labels_follow_the_epoch_shuffle_and_task_1_has_no_replay(tmp_path, monkeypatch):
    learner, dm = make(tmp_path, synthetic_classes=8, init_cls=4, increment=4, hard_pair_threshold=0.0,
                       old_per_batch=3, beta=0.2, epochs=2)
    calls = []
    real = ClassGaussians.sample

    def recording(self, c, m):
        calls.append((c, m))
        return real(self, c, m)

    monkeypatch.setattr(ClassGaussians, "sample", recording)
    learner.incremental_train(dm)
    assert calls == []  # first task: nothing to replay, no hinge
    learner.after_task()
    random.seed(123)
    learner.incremental_train(dm)  # 4 new classes x 8 images = 32 features, batches of 4 -> 8 per epoch
    random.seed(123)
    expected = []
    for _ in range(2):
        old = list(range(4))
        random.shuffle(old)
        for b in range(8):
            expected += [(old[(b * 3 + i) % 4], math.floor(10 * 0.2)) for i in range(3)]
    assert calls == expected
    assert learner.record["replayed_per_epoch"] == [0, 8 * 3 * 2]


def test_official_old_classes_per_batch():
    assert official_old_per_batch("cifar100", 10) == 2 and official_old_per_batch("cifar100", 5) == 4
    assert official_old_per_batch("imagenet_r", 20) == 5 and official_old_per_batch("cub200", 20) == 10
    assert official_old_per_batch("imagenet100", 10) == 2 and official_old_per_batch("synthetic", 10) == 2


# ----------------------------------------------------------------------------- R4
def test_r4_shrinkage_by_hand():
    cov = np.array([[2.0, 0.5, 0.0], [0.5, 1.0, -0.3], [0.0, -0.3, 3.0]])
    off = [0.5, -0.3, 0.5, -0.3]  # the non-zero off-diagonal entries
    o = np.mean(off)
    expected = cov + np.trace(cov) / 3 * np.eye(3) + o * (np.ones((3, 3)) - np.eye(3))
    np.testing.assert_allclose(shrunk_covariance(torch.tensor(cov)).numpy(), expected, rtol=1e-12)


@pytest.mark.parametrize("shrink", [False, True])
def test_r4_samples_have_the_class_mean_and_covariance(shrink):
    g = torch.Generator().manual_seed(1)
    a = torch.randn(4, 4, generator=g, dtype=torch.float64)
    x = torch.randn(50, 4, generator=g, dtype=torch.float64) @ a + torch.tensor([1.0, -2.0, 0.5, 3.0],
                                                                                 dtype=torch.float64)
    stats = ClassGaussians(ridge=1e-4, shrink=shrink, seed=0)
    stats.add(7, x.float())
    mean = x.numpy().mean(0)
    cov = np.cov(x.numpy(), rowvar=False, ddof=1) + 1e-4 * np.eye(4)  # R8: unbiased + ridge
    np.testing.assert_allclose(stats.means[7].numpy(), mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(stats.covs[7].numpy(), cov, rtol=1e-4, atol=1e-5)
    target = shrunk_covariance(torch.tensor(cov)).numpy() if shrink else cov
    before = torch.get_rng_state()
    s = stats.sample(7, 100_000).double().numpy()
    assert torch.equal(torch.get_rng_state(), before)  # its own generator
    np.testing.assert_allclose(s.mean(0), mean, atol=0.05 * np.sqrt(np.diag(target)).max())
    np.testing.assert_allclose(np.cov(s, rowvar=False), target, atol=0.03 * np.abs(target).max())


# ----------------------------------------------------------------------------- R5
def test_r5_hinge_by_hand():
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # class 0 (old), class 1 (new)
    edge = torch.tensor([[1.0, 1.0], [2.0, 0.1], [0.0, 3.0]])
    rows = torch.tensor([[0, 1]] * 3)
    u = edge / edge.norm(dim=1, keepdim=True)
    expected = np.mean([max(0.0, float(v[1] - v[0]) + 0.1) for v in u])
    assert float(hinge_loss(edge, text, rows, 0.1)) == pytest.approx(expected)


def test_r5_hinge_uses_edge_draws_of_the_old_class_and_only_after_task_1(tmp_path, monkeypatch):
    learner, dm = make(tmp_path, synthetic_classes=4, init_cls=2, increment=2, hard_pair_threshold=10.0,
                       old_per_batch=1, beta=0.1, epochs=1)
    calls = []
    real = ClassGaussians.sample
    monkeypatch.setattr(ClassGaussians, "sample", lambda self, c, m: calls.append((c, m)) or real(self, c, m))
    learner.incremental_train(dm)
    learner.after_task()
    assert learner.record["hard_pairs"][0]["count"] == 0 and calls == []
    learner.incremental_train(dm)
    pairs = learner.record["hard_pairs"][1]["pairs"]
    assert pairs == [(0, 2), (0, 3), (1, 2), (1, 3)]  # every pair is hard with delta 10
    m_r, m_e = 1, 2  # floor(10 * 0.1), floor(20 * 0.1)
    per_batch = calls[:1 + len(pairs)]
    assert per_batch[0][1] == m_r and [c for c, _ in per_batch[1:]] == [k for k, _ in pairs]
    assert all(m == m_e for _, m in per_batch[1:])


# ----------------------------------------------------------------------------- R7
def test_r7_multistep_schedule_trace(tmp_path, monkeypatch):
    learner, dm = make(tmp_path, epochs="auto")  # auto = the official 15 epochs
    assert learner.epochs == 15
    seen = []
    real_step = torch.optim.Adam.step

    def recording(self, *a, **k):
        seen.append(self.param_groups[0]["lr"])
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.Adam, "step", recording)
    learner.incremental_train(dm)
    per_epoch = len(seen) // 15
    lrs = [seen[e * per_epoch] for e in range(15)]
    assert lrs == pytest.approx([1e-3] * 4 + [1e-4] * 6 + [1e-5] * 5)


# ----------------------------------------------------------------------------- R8
def test_r8_statistics_are_of_pre_adapter_features(tmp_path):
    learner, dm = make(tmp_path)
    learner.incremental_train(dm)
    # encode the task's training images independently, with the frozen encoder
    from utils.clip_backbone import clip_transform

    ds = dm.get_dataset(range(2), source="train", mode="test", transform=clip_transform(32))
    x = torch.stack([ds[i][1] for i in range(len(ds))])
    y = np.array([ds[i][2] for i in range(len(ds))])
    with torch.no_grad():
        f = learner._network.encode_image(x).double().numpy()
    for c in range(2):
        fc = f[y == c]
        np.testing.assert_allclose(learner.stats.means[c].numpy(), fc.mean(0), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(learner.stats.covs[c].numpy(), np.cov(fc, rowvar=False) + 1e-4 * np.eye(f.shape[1]),
                                   rtol=1e-3, atol=1e-4)


# ----------------------------------------------------------------------------- R9
def test_r9_fusion_fixed_points_and_kept_fractions():
    g = torch.Generator().manual_seed(0)
    w_old, w_new = torch.randn(6, 6, generator=g, dtype=torch.float64), torch.randn(6, 6, generator=g,
                                                                                     dtype=torch.float64)
    torch.testing.assert_close(svd_fusion(w_old, w_new, 1.0).double(), w_new, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(svd_fusion(w_old, w_new, 1.7).double(), w_new, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(svd_fusion(w_old, w_old, 0.3).double(), w_old, atol=1e-6, rtol=1e-6)
    b = 0.3
    fused = svd_fusion(w_old, w_new, b).double().numpy()
    u = np.linalg.svd(w_old.numpy())[0]
    r_old, r_new, r_fused = u.T @ w_old.numpy(), u.T @ w_new.numpy(), u.T @ fused
    kept = (r_fused - r_old) / (r_new - r_old)  # fraction of each coordinate's update kept
    assert np.all(kept >= b - 1e-4) and np.all(kept <= 1 + 1e-4)
    top = np.unravel_index(np.argmax(np.abs(r_new - r_old)), r_old.shape)
    assert kept[top] == pytest.approx(1.0, abs=1e-4)
    d = np.abs(r_new - r_old)
    np.testing.assert_allclose(kept, np.minimum(d / d.max() + b, 1), atol=1e-4)  # the mask by hand


def test_r9_fusion_after_every_task_but_the_first(tmp_path, monkeypatch):
    import models.rapf as rapf

    calls = []
    real = rapf.svd_fusion
    monkeypatch.setattr(rapf, "svd_fusion", lambda a, b, bias: calls.append(bias) or real(a, b, bias))
    learner, dm = make(tmp_path, mix_bias=0.25)
    for _ in range(3):
        learner.incremental_train(dm)
        learner.eval_task()
        learner.after_task()
    assert calls == [0.25, 0.25]


# ----------------------------------------------------------------------------- learning
def test_rapf_learns_separable_features_and_keeps_old_classes_by_replay(tmp_path):
    """On hand-made features (class c around 3 e_c) with orthogonal text features, RAPF's
    training reaches high accuracy, and replay keeps the first task's classes."""
    learner, _ = make(tmp_path, lr=0.02, epochs=15, beta=2.0, hard_pair_threshold=0.0, old_per_batch=2)
    d = learner.adapter.in_features
    g = torch.Generator().manual_seed(0)

    def data(classes, n):
        y = torch.tensor(classes).repeat_interleave(n)
        return 3 * torch.eye(d)[y] + 0.3 * torch.randn(len(y), d, generator=g), y

    learner._text = learner._logit_text = torch.eye(d)[:4]
    for task, classes in enumerate(([0, 1], [2, 3])):
        learner._cur_task, learner._known_classes = task, 2 * task
        x, y = data(classes, 20)
        learner._train(x, y, [])
        for c in classes:
            learner.stats.add(c, x[y == c])
        xt, yt = data(list(range(2 * task + 2)), 10)
        with torch.no_grad():
            acc = (learner._logits(xt, learner._text[:2 * task + 2]).argmax(1) == yt).float().mean()
        assert acc > 0.9, (task, acc)


# ----------------------------------------------------------------------------- config and runs
def test_rapf_options_belong_to_rapf():
    cfg = make_config({"model_name": "rapf", "beta": 1, "shrink": True, "milestones": [3, 6]})
    assert cfg.options.beta == 1.0 and cfg.options.shrink is True and cfg.options.milestones == [3, 6]
    assert cfg.to_dict()["beta"] == 1.0 and make_config(cfg.to_dict()).options == cfg.options
    with pytest.raises(ConfigError, match="'beta' is an option of rapf, not of 'mgclip'"):
        make_config({"model_name": "mgclip", "beta": 1})
    with pytest.raises(ConfigError, match="did you mean 'mix_bias'"):
        make_config({"model_name": "rapf", "mix_bais": 0.5})
    with pytest.raises(ConfigError, match="'beta' = -1.0"):
        make_config({"model_name": "rapf", "beta": -1})


def test_side_by_side_sections_and_set(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"model_name": ["mgclip", "rapf"], "dataset": "synthetic", "lr": 0.5, "beta": 1.0,
                                "rapf": {"lr": 0.002}}))
    mg, rapf = build_configs(str(path), ["rapf.mix_bias=0.9"])
    assert mg.model_name == "mgclip" and mg.lr == 0.5 and "beta" not in mg.to_dict()
    assert rapf.lr == 0.002 and rapf.options.beta == 1.0 and rapf.options.mix_bias == 0.9
    path.write_text(json.dumps({"model_name": ["rapf", "mgclip"], "dataset": "cifar100", "class_order": "released"}))
    assert [c.class_order for c in build_configs(str(path))] == ["released:rapf", "released:rapf"]  # one order
    path.write_text(json.dumps({"model_name": ["mgclip"], "rapf": {"lr": 0.1}}))
    with pytest.raises(ConfigError, match="section 'rapf'"):
        build_configs(str(path))


def test_rapf_resume_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    from tests.test_resume import run_then_resume

    args = rapf_args(tmp_path, synthetic_classes=6, epochs=2, hard_pair_threshold=10.0, beta=0.2)
    reference, resumed = run_then_resume(args, tmp_path, monkeypatch)
    assert resumed == reference


# ----------------------------------------------------------------------------- official configs
MAIN_CONFIGS = [("cifar100_10-10.yaml", "rapf_cifar.json"), ("imagenet100_10-10.yaml", "rapf_imagenet100.json"),
                ("imagenet_r_20-20.yaml", "rapf_imagenet_r.json"), ("cub200_20-20.yaml", "rapf_cub.json")]


def official(name):
    path = os.path.join(SHARED_RELEASED, "rapf", "configs", "class", name)
    if not os.path.isfile(path):
        pytest.skip(f"needs {path} (../shared, absent outside the project)")
    raw = yaml.safe_load(open(path))
    return {k: raw[v[2:-1]] if isinstance(v, str) and v.startswith("${") else v for k, v in raw.items()}


def test_every_official_rapf_config_has_a_config_here_key_by_key():
    folder = os.path.join(SHARED_RELEASED, "rapf", "configs", "class")
    if not os.path.isdir(folder):
        pytest.skip("needs ../shared/released/rapf")
    ours = {}
    for path in glob.glob(os.path.join(ROOT, "exps", "rapf_*.json")):
        cfg = make_config(json.load(open(path)))
        ours[(cfg.dataset, cfg.init_cls, cfg.increment)] = cfg
    names = {"cifar100": "cifar100", "imagenet100": "imagenet100", "imagenet_R": "imagenet_r", "cub200": "cub200"}
    for path in glob.glob(os.path.join(folder, "*.yaml")):
        r = official(os.path.basename(path))
        cfg = ours[(names[r["dataset"]], r["initial_increment"], r["increment"])]
        o = cfg.options
        assert (cfg.batch_size, cfg.eval_batch_size, cfg.epochs, cfg.lr, cfg.seed) == \
            (r["train_batch_size"], r["batch_size"], r["epochs"], r["lr"], r["seed"]), path
        assert (o.beta, o.mix_bias, o.hard_pair_threshold, o.shrink, o.milestones) == \
            (r["beta"], r["mix_bias"], r["threshold"], bool(r["shrinkage"]), r["milestones"]), path
        assert cfg.backbone == r["model_name"] and cfg.prompt_template == r["prompt_template"]
        assert cfg.class_order == "released" and o.old_per_batch == 0 and cfg.precision == "auto"
        assert cfg.imagenet_r_split == ("released" if cfg.dataset == "imagenet_r" else None)


def test_released_rapf_class_orders_are_rapfs_own(released_cache):
    from toolbox.released import release_of, released_file

    assert release_of("released", "rapf") == "rapf" and release_of("released:mgclip", "rapf") == "mgclip"
    assert released_file("class_order", "imagenet_r", "rapf") == "rapf/class_orders/imagenet_R_order.yaml"
    assert released_file("class_order", "imagenet_r", "mgclip") == "mgclip/class_orders/imagenet_R.yaml"
    assert RAPFOptions().beta == 2.0  # the official CIFAR-100 10-10 values are the defaults


# ----------------------------------------------------------------------------- ImageNet-R split list
def test_a_split_list_divides_an_unsplit_dataset_folder(tmp_path):
    from PIL import Image

    from toolbox.data import DatasetError

    rng = np.random.default_rng(0)
    wnids = ["n01443537", "n01484850", "n01494475", "n01498041"]
    lines = {"train": [], "test": []}
    for w in wnids:
        os.makedirs(tmp_path / "imagenet-r" / w)
        for i in range(4):
            pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "imagenet-r" / w / f"a_{i}.jpg")
            lines["train" if i < 3 else "test"].append(f"{w}/a_{i}.jpg")
    split = tmp_path / "split.txt"
    split.write_text("train\n" + "\n".join(lines["train"]) + "\ntest\n" + "\n".join(lines["test"]) + "\n")
    names = tmp_path / "names.txt"  # wnid folders: a method with text needs names
    names.write_text("goldfish\ngreat white shark\nhammerhead\nstingray\n")
    dm = DataManager("imagenet_r", False, 0, 2, 2, {"data_path": str(tmp_path), "imagenet_r_split": str(split),
                                                   "class_order": "default", "class_names": str(names)})
    train = dm.get_dataset(range(4), source="train", mode="test")
    test = dm.get_dataset(range(4), source="test", mode="test")
    assert len(train) == 12 and len(test) == 4
    assert [os.path.basename(p) for p in test.images] == ["a_3.jpg"] * 4
    assert list(test.labels) == [0, 1, 2, 3]  # classes are the sorted wnid folders
    os.remove(tmp_path / "imagenet-r" / wnids[2] / "a_1.jpg")
    with pytest.raises(DatasetError, match="1 image.*n01494475/a_1.jpg"):
        DataManager("imagenet_r", False, 0, 2, 2, {"data_path": str(tmp_path), "imagenet_r_split": str(split)})


def test_the_released_imagenet_r_split_list_reads_as_24000_and_6001_images():
    from tests.conftest import shared_released
    from toolbox.data import read_split_list

    split = read_split_list(shared_released("rapf/imgr_split/imgr_train_test_split.txt"))
    assert len(split["train"]) == 24000 and len(split["test"]) == 6001  # counted in the file (30,001 paths)
    assert not set(split["train"]) & set(split["test"])
    assert len({p.split("/")[0] for p in split["train"]}) == 200
