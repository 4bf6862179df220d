"""SLCA (docs/methods/slca.md, items S1-S7), each against an independent computation: the
class statistics and the Gaussian draws against numpy (mean, covariance, Cholesky), the
logit normalisation by its formula in numpy, the optimiser's groups and the MultiStep
schedule read from the optimiser during a run, the parameter count by the ViT-B/16 shapes."""
import json

import numpy as np
import pytest
import torch

from main import main
from models.slca import mean_scale, new_head, normalised_logits, slow_learner_optimizer
from tests.conftest import make_learner, refused, tiny_args
from utils.clip_backbone import load_clip
from utils.clip_ops import make_loader, task_data
from utils.gaussian import ClassGaussians


def slca_args(tmp_path, **over):
    return tiny_args(tmp_path, **{"model_name": "slca", "epochs": 2, "milestones": [1], "batch_size": 4, "lr": 0.05,
                                  "bcb_lrscale": 0.1, "ca_epochs": 2, "ca_samples_per_class": 8, "preprocess": "pil",
                                  **over})


def make(tmp_path, **over):
    return make_learner(slca_args(tmp_path, **over))


# ----------------------------------------------------------------------------- S4 / S5: the Gaussians
def test_s4_class_statistics_are_numpy_mean_and_unbiased_fp64_covariance_plus_ridge(tmp_path):
    learner, dm = make(tmp_path)
    learner.incremental_train(dm)
    data = task_data(dm, range(2), "train", 32, learner.cfg, learner._device)
    feats, labels = [], []
    with torch.no_grad():
        for _, x, y in make_loader(data, 5, False, 0, learner._device):  # another batching: the same features
            feats.append(learner.encoder(x).numpy())
            labels.append(y.numpy())
    feats, labels = np.concatenate(feats), np.concatenate(labels)
    d = feats.shape[1]
    for c in range(2):
        x = feats[labels == c].astype(np.float64)
        np.testing.assert_allclose(learner.stats.means[c].numpy(), x.mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(learner.stats.covs[c].numpy(), np.cov(x.T, ddof=1) + 1e-4 * np.eye(d),
                                   rtol=1e-4, atol=1e-6)


def test_s5_a_draw_is_the_scaled_mean_plus_the_cholesky_factor_times_the_generators_normals():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6)) @ rng.normal(size=(6, 6))
    g = ClassGaussians(ridge=1e-4, seed=7)
    g.add(3, torch.tensor(x, dtype=torch.float32), double=True)
    twin = torch.Generator().manual_seed(7)
    eps = torch.randn(5, 6, generator=twin).numpy().astype(np.float64)
    cov = np.cov(x.T.astype(np.float32).astype(np.float64), ddof=1) + 1e-4 * np.eye(6)
    mean = x.astype(np.float32).mean(0).astype(np.float64)
    expected = 0.95 * mean + eps @ np.linalg.cholesky(cov).T
    np.testing.assert_allclose(g.sample(3, 5, scale=0.95).numpy(), expected, rtol=1e-4, atol=1e-4)


def test_s5_draws_converge_to_the_scaled_mean_and_the_covariance():
    cov = np.array([[2.0, 0.6, 0.0], [0.6, 1.0, -0.3], [0.0, -0.3, 0.5]])
    x = np.random.default_rng(1).multivariate_normal([1.0, -2.0, 0.5], cov, size=4000)
    g = ClassGaussians(ridge=1e-4, seed=0)
    g.add(0, torch.tensor(x, dtype=torch.float32), double=True)
    draws = g.sample(0, 200_000, scale=0.9).double().numpy()
    np.testing.assert_allclose(draws.mean(0), 0.9 * x.mean(0), atol=0.01)
    np.testing.assert_allclose(np.cov(draws.T), np.cov(x.T) + 1e-4 * np.eye(3), atol=0.02)


def test_s5_the_mean_scale_by_hand():
    # task 2 of three (T = 2), tasks of 10 classes: 0.9 + 0.1 (t + 1) / 3
    assert mean_scale(0, 10, 2) == pytest.approx(0.9 + 0.1 / 3)
    assert mean_scale(19, 10, 2) == pytest.approx(0.9 + 0.2 / 3)
    assert mean_scale(25, 10, 2) == pytest.approx(1.0)


def test_s5_the_alignment_batches_rate_and_schedule(tmp_path, monkeypatch):
    """Per alignment epoch: one batch of m draws per seen class, every head trained at lr,
    cosine over ca_epochs; none in the first task."""
    learner, dm = make(tmp_path, ca_epochs=3, ca_samples_per_class=8, ca_logit_norm=0.0)
    seen = []
    real_step = torch.optim.SGD.step

    def step(self, *a, **k):
        if len(self.param_groups) == 1 and sum(p.numel() for p in self.param_groups[0]["params"]) == \
                sum(p.numel() for p in learner.heads.parameters()):
            seen.append((len(self.param_groups[0]["params"]), self.param_groups[0]["lr"]))
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.SGD, "step", step)
    learner.incremental_train(dm)
    assert seen == []  # task 0: no alignment
    learner.after_task()
    learner.incremental_train(dm)
    lrs = [0.05 * (1 + np.cos(np.pi * e / 3)) / 2 for e in range(3)]
    assert seen == [(4, pytest.approx(lr)) for lr in lrs for _ in range(4)]  # 4 classes -> 4 batches


# ----------------------------------------------------------------------------- S6
def test_s6_logit_normalisation_by_the_formula():
    z = np.random.default_rng(2).normal(size=(4, 7))
    sizes = [3, 4]
    norms = np.stack([np.linalg.norm(z[:, :3], axis=1) + 1e-7, np.linalg.norm(z[:, 3:], axis=1) + 1e-7], 1)
    expected = z / norms.mean(1, keepdims=True) / 0.1
    np.testing.assert_allclose(normalised_logits(torch.tensor(z), sizes, 0.1).numpy(), expected, rtol=1e-12)


# ----------------------------------------------------------------------------- S1-S3: the slow learner
def test_s2_slow_encoder_group_and_multistep_schedule_read_from_the_optimizer(tmp_path, monkeypatch):
    learner, dm = make(tmp_path, epochs=3, milestones=[2], lr=0.05, bcb_lrscale=0.01, batch_size=8)
    enc = {id(p) for p in learner.encoder.parameters()}
    seen = []
    real_step = torch.optim.SGD.step

    def step(self, *a, **k):
        if len(self.param_groups) == 2:
            groups = self.param_groups
            assert {id(p) for p in groups[0]["params"]} == enc
            assert {id(p) for p in groups[1]["params"]} == {id(p) for p in learner.heads[-1].parameters()}
            assert self.defaults["momentum"] == 0.9 and all(g["weight_decay"] == 0.0005 for g in groups)
            seen.append((groups[0]["lr"], groups[1]["lr"]))
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.SGD, "step", step)
    learner.incremental_train(dm)
    per_epoch = len(seen) // 3
    assert per_epoch == 2  # 16 images, batch 8
    expected = [(0.05 * 0.01, 0.05)] * 4 + [(0.05 * 0.01 * 0.1, 0.05 * 0.1)] * 2
    assert seen == [(pytest.approx(a), pytest.approx(b)) for a, b in expected]


def test_s3_old_heads_stay_as_they_were_and_the_loss_sees_only_new_logits(tmp_path, monkeypatch):
    learner, dm = make(tmp_path)
    learner.incremental_train(dm)
    learner.after_task()
    old = [p.detach().clone() for p in learner.heads[0].parameters()]
    calls = []
    real_ce = torch.nn.functional.cross_entropy

    def ce(logits, target, **kw):
        calls.append((logits.shape[1], int(target.min()), int(target.max())))
        return real_ce(logits, target, **kw)

    monkeypatch.setattr("models.slca.F.cross_entropy", ce)
    learner.incremental_train(dm)
    slow = [c for c in calls if c[0] == 2]
    assert slow and all(0 <= lo and hi <= 1 for _, lo, hi in slow)  # labels 2, 3 -> 0, 1 on the new head
    aligned = learner.visual_classifier()[:2].clone()
    assert not torch.equal(aligned, old[0])  # S5: the alignment trains the old head too ...
    learner.after_task()
    for p, q in zip(learner.heads[0].parameters(), old):  # ... S7: but the next task continues from before it
        assert torch.equal(p, q)


def test_s3_new_head_initialisation():
    torch.manual_seed(0)
    head = new_head(512, 1000)
    w = head.weight.detach().numpy()
    # timm's / torch's trunc_normal_(std=0.02) cut at +-2 in absolute units: in effect N(0, 0.02^2)
    assert not head.bias.any() and abs(w.std() - 0.02) < 0.0005 and abs(w.mean()) < 0.0005
    assert np.abs(w).max() > 4 * 0.02


def test_s2_trainable_parameters_on_vit_b16_shapes():
    """The official recipe trains the whole image encoder and the task's head: conv stem,
    class token, positions, ln_pre, 12 blocks (attention, MLP 4x, two norms), ln_post, the
    projection 768 -> 512; then 512 x 10 + 10 for the first task's head."""
    net = load_clip("vit-b16-random")
    w, n_tokens = 768, (224 // 16) ** 2 + 1
    block = (3 * w * w + 3 * w) + (w * w + w) + (w * 4 * w + 4 * w) + (4 * w * w + w) + 2 * 2 * w
    encoder = 3 * w * 16 * 16 + w + n_tokens * w + 2 * w + 12 * block + 2 * w + w * 512
    opt, _ = slow_learner_optimizer(net.model.visual, new_head(512, 10), 0.01, 0.01, 5e-4, [18], 0.1)
    count = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert count == encoder + 512 * 10 + 10 == 86_197_770


# ----------------------------------------------------------------------------- runs
def test_demo_and_check_through_main(tmp_path):
    cfg = json.loads(open("exps/slca_demo.json").read())
    path = tmp_path / "demo.json"
    path.write_text(json.dumps({**cfg, "logdir": str(tmp_path / "logs")}))
    assert main(["--config", str(path), "--check", "-q"]) == 0
    assert main(["--config", str(path), "-q"]) == 0


def test_slca_learns_and_resumes_exactly(tmp_path, monkeypatch):
    from tests.test_resume import run_then_resume

    args = slca_args(tmp_path)
    reference, resumed = run_then_resume(args, tmp_path, monkeypatch)
    assert reference["finished"] and reference["last"] > 100 / 6
    assert resumed == reference


@pytest.mark.parametrize("key, value, allowed", [("bcb_lrscale", -1, ">= 0"), ("milestones", [0], "epochs >= 1"),
                                                 ("ca_logit_norm", -0.1, ">= 0"), ("brightness", 2, "[0, 1]")])
def test_bad_options_are_one_line_naming_the_key(tmp_path, capsys, key, value, allowed):
    err = refused(tmp_path, capsys, {**slca_args(tmp_path), key: value})
    assert f"'{key}'" in err and allowed in err


def test_the_zero_shot_view_is_clip_and_the_trained_view_is_not(tmp_path):
    learner, dm = make(tmp_path)
    learner.incremental_train(dm)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    clip = load_clip("tiny-random")
    with torch.no_grad():
        plain = torch.nn.functional.normalize(clip.encode_image(x), dim=1)
    torch.testing.assert_close(learner.image_view(x, False), plain)
    assert not torch.allclose(learner.image_view(x, True), plain)


# ----------------------------------------------------------------------------- S1: the training images
def test_s1_training_images_are_the_official_crop_flip_and_brightness_jitter():
    from PIL import Image
    from torchvision import transforms as T

    from models.slca import slca_augment
    from utils.clip_backbone import CLIP_MEAN, CLIP_STD

    image = Image.fromarray(np.random.default_rng(3).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    official = T.Compose([T.RandomResizedCrop(24, interpolation=T.InterpolationMode.BICUBIC), T.RandomHorizontalFlip(),
                          T.ColorJitter(brightness=63 / 255), T.ToTensor(), T.Normalize(CLIP_MEAN, CLIP_STD)])
    augment = slca_augment(24, 63 / 255).fixed(11)
    for i in range(4):
        torch.manual_seed(11 + i)
        torch.testing.assert_close(augment(image, i), official(image))
    without = slca_augment(24, 0.0).fixed(5)  # ImageNet-R: no jitter
    assert not any(isinstance(t, T.ColorJitter) for t in without.pipeline.transforms)


def test_s5_the_first_alignment_batch_is_numpys_draws_from_the_class_gaussians_shuffled(tmp_path, monkeypatch):
    """The learner's first alignment batch against draws rebuilt with numpy from its own
    statistics: per class m normals from a twin of the store's generator, the scaled mean
    plus numpy's Cholesky factor times them, classes in order, then one shuffle."""
    learner, dm = make(tmp_path, ca_samples_per_class=6)
    learner.incremental_train(dm)
    learner.after_task()
    twin, batches = torch.Generator(), []
    real_align, real_logits = learner._align, learner._logits

    def align(task_size):
        twin.set_state(learner.stats.generator.get_state())
        return real_align(task_size)

    def logits(feats):
        batches.append(feats.detach().clone())
        return real_logits(feats)

    monkeypatch.setattr(learner, "_align", align)
    monkeypatch.setattr(learner, "_logits", logits)
    learner.incremental_train(dm)
    m, d = 6, learner._network.embed_dim
    draws = []
    for c in range(4):  # task 1 of two tasks of 2 classes: scales 0.9 + 0.1 (t + 1) / 2
        eps = torch.randn(m, d, generator=twin).double().numpy()
        mu, cov = learner.stats.means[c].double().numpy(), learner.stats.covs[c].double().numpy()
        draws.append((0.9 + 0.1 * (c // 2 + 1) / 2) * mu + eps @ np.linalg.cholesky(cov).T)
    order = torch.randperm(4 * m, generator=twin).numpy()
    np.testing.assert_allclose(batches[0].numpy(), np.concatenate(draws)[order[:m]], rtol=1e-4, atol=1e-4)
