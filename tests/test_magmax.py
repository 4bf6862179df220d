"""MagMax (docs/methods/magmax.md, items M1-M7) against independent computations: the
max-magnitude merge by hand and with numpy (stack + argmax of |.|, the official tie rule),
the learner's evaluated weights rebuilt from snapshots taken in the test, the schedule by its
closed form, the classifier rows by hand, parameter counts by formula."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.magmax import CIFAR100_TEMPLATES, MagMax, max_magnitude, merge_step
from tests.conftest import make_learner, refused, shared_released, tiny_args
from utils.clip_backbone import load_clip


def magmax_args(tmp_path, **over):
    return tiny_args(tmp_path, **{"model_name": "magmax", "lr": 1e-3, "batch_size": 4, "epochs": 1,
                                  "warmup_steps": 2, "templates": ["a photo of a {}.", "art of the {}."], **over})


def make(tmp_path, **over):
    return make_learner(magmax_args(tmp_path, **over))


def numpy_merge(taus):
    """Independent max-magnitude merge: stack (T, ...), argmax of |.| over tasks; the official
    ``>=`` lets a later task win a tie, so the argmax runs over the reversed stack (numpy's
    argmax takes the first maximum)."""
    stack = np.stack(taus)
    last_max = stack.shape[0] - 1 - np.argmax(np.abs(stack[::-1]), axis=0)
    return np.take_along_axis(stack, last_max[None], axis=0)[0]


# ----------------------------------------------------------------------------- M4 / M5 / M7: the merge
def test_m4_m5_the_merge_by_hand():
    """Ties of equal magnitude and opposite sign go to the later task; a zero never beats a non-zero."""
    taus = [torch.tensor([1.0, -2.0, 0.0, 3.0]), torch.tensor([-1.0, 2.0, 0.5, -1.0]),
            torch.tensor([0.0, -3.0, -0.5, 3.0])]
    # by hand: [1 -> -1 (tie) -> -1], [-2 -> 2 (tie) -> -3], [0 -> 0.5 -> -0.5 (tie)], [3 -> 3 -> 3 (tie, later)]
    merged = max_magnitude([{"w": t} for t in taus])["w"]
    assert merged.tolist() == [-1.0, -3.0, -0.5, 3.0]
    theta0 = torch.full((4,), 10.0)
    assert (theta0 + 0.5 * merged).tolist() == [9.5, 8.5, 9.75, 11.5]  # M5: pre-trained + 0.5 * merge
    # the tie rule matters: the first task winning ties would give +1 and -2 in the first two places
    assert merged.tolist() != [1.0, -2.0, 0.5, 3.0]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_m7_running_merge_equals_the_stacked_merge_with_numpy(seed):
    """Small integers (many ties of both signs, zeros of both signs) and random floats,
    5 tasks, several shapes: the running vector after each task equals the stacked merge of
    the task vectors so far, bit for bit (signs of zeros included)."""
    rng = np.random.default_rng(seed)
    shapes = [(7,), (3, 4), (2, 3, 2)]
    taus = []
    for t in range(5):
        tau = {}
        for i, s in enumerate(shapes):
            ints = rng.integers(-2, 3, size=s).astype(np.float32)
            ints[rng.random(s) < 0.2] = -0.0
            tau[f"int{i}"] = ints
            tau[f"float{i}"] = rng.standard_normal(s).astype(np.float32)
        taus.append(tau)
    running = {}
    for t, tau in enumerate(taus):
        running = {k: merge_step(running.get(k), torch.from_numpy(v)) for k, v in tau.items()}
        for k in tau:
            expected = numpy_merge([x[k] for x in taus[:t + 1]])
            got = running[k].numpy()
            assert np.array_equal(got, expected) and np.array_equal(np.signbit(got), np.signbit(expected)), (t, k)
    # the data does exercise the tie rule: equal magnitudes of opposite sign between consecutive tasks
    opposite = sum(int(((a[k] == -b[k]) & (a[k] != 0)).sum()) for a, b in zip(taus, taus[1:]) for k in a)
    assert opposite >= 5


# ----------------------------------------------------------------------------- the whole learner
def test_m1_m5_m7_evaluated_weights_are_pretrained_plus_half_the_merge_of_snapshots(tmp_path, monkeypatch):
    """Three tasks on tiny CLIP. The test keeps its own snapshots: theta_0 from a fresh
    backbone, the encoder as each task's training starts and ends. After task t the encoder
    the learner evaluates is theta_0 + 0.5 * numpy_merge(theta_i - theta_0, i <= t); each task
    trains from the previous task's fine-tuned weights, not from the merged ones (M1)."""
    theta0 = {k: v.numpy().copy() for k, v in load_clip("tiny-random").model.visual.state_dict().items()}
    starts, ends = [], []
    real_train = MagMax._train

    def snap(net):
        return {k: v.detach().numpy().copy() for k, v in net.model.visual.state_dict().items()}

    def train(self, loader, augment=None):
        starts.append(snap(self._network))
        real_train(self, loader, augment)
        ends.append(snap(self._network))

    monkeypatch.setattr(MagMax, "_train", train)
    learner, dm = make(tmp_path, synthetic_classes=6, init_cls=2, increment=2)
    for t in range(3):
        learner.incremental_train(dm)
        learner.eval_task()
        learner.after_task()
        got = snap(learner._network)
        for k in theta0:
            merged = numpy_merge([e[k] - theta0[k] for e in ends[:t + 1]])
            np.testing.assert_array_equal(got[k], theta0[k] + np.float32(0.5) * merged, err_msg=f"task {t} {k}")
        start_from = theta0 if t == 0 else ends[t - 1]
        assert all(np.array_equal(starts[t][k], start_from[k]) for k in theta0)
        assert not all(np.array_equal(ends[t][k], start_from[k]) for k in theta0)  # it did train
    # the text encoder never changes
    fresh = load_clip("tiny-random").model
    for k, v in learner._network.model.state_dict().items():
        if not k.startswith("visual."):
            assert torch.equal(v, fresh.state_dict()[k]), k


def test_m5_merge_scale_is_read(tmp_path, monkeypatch):
    learner, dm = make(tmp_path, merge_scale=0.25)
    learner.incremental_train(dm)
    theta0 = load_clip("tiny-random").model.visual.state_dict()
    got = learner._network.model.visual.state_dict()
    for k in theta0:
        expected = theta0[k] + 0.25 * (learner.finetuned[k] - theta0[k])  # one task: the merge is tau_1
        torch.testing.assert_close(got[k], expected, rtol=0, atol=1e-7)


def test_zero_shot_view_is_pretrained_clip_and_the_merged_model_comes_back(tmp_path):
    learner, dm = make(tmp_path)
    learner.incremental_train(dm)
    x = torch.randn(3, 3, 32, 32)
    merged = learner.image_view(x, trained=True)
    ref = load_clip("tiny-random").eval()
    with torch.no_grad():
        zs = F.normalize(ref.encode_image(x), dim=1)
    torch.testing.assert_close(learner.image_view(x, trained=False), zs)
    assert not torch.allclose(merged, zs)
    torch.testing.assert_close(learner.image_view(x, trained=True), merged, rtol=0, atol=0)


# ----------------------------------------------------------------------------- M2 / M3 / M6
def test_m2_classifier_rows_are_the_normalised_mean_of_normalised_template_features(tmp_path):
    learner, _ = make(tmp_path)
    net = load_clip("tiny-random").eval()
    names = ["cat", "red fox"]
    with torch.no_grad():
        expected = []
        for n in names:
            f = torch.stack([net.encode_text(net.tokenize([t.format(n)], trim=False))[0]
                             for t in ["a photo of a {}.", "art of the {}."]])
            f = f / f.norm(dim=1, keepdim=True)
            m = f.mean(0)
            expected.append(m / m.norm())
    torch.testing.assert_close(learner.class_rows(names), torch.stack(expected), rtol=1e-5, atol=1e-6)


def test_m2_dataset_templates_cifar_list_equals_the_released_clip_list(tmp_path):
    """CIFAR-100's 18 CLIP templates, as PROOF's release also lists them (an independent copy)."""
    with open(shared_released("proof/utils/templates.json")) as f:
        assert list(CIFAR100_TEMPLATES) == json.load(f)["cifar224"]
    learner, _ = make(tmp_path, templates=["dataset"])
    assert learner.templates() == [learner.cfg.prompt_template]  # synthetic data: no official list


def test_m3_schedule_optimizer_and_clipping(tmp_path, monkeypatch):
    """Rates per step = the closed form (warm-up (s+1)/W, then the cosine); AdamW over the
    image encoder's parameters only, weight decay 0.1; gradients clipped to norm 1 before
    every step; cross-entropy over the task's own classes with labels 0..k-1."""
    lrs, groups, norms, ce = [], [], [], []
    real_step, real_ce = torch.optim.AdamW.step, F.cross_entropy

    def step(self, *a, **kw):
        lrs.append(self.param_groups[0]["lr"])
        groups.append((self.param_groups[0]["weight_decay"], sum(p.numel() for p in self.param_groups[0]["params"])))
        norms.append(math.sqrt(sum(float(p.grad.pow(2).sum()) for p in self.param_groups[0]["params"]
                                   if p.grad is not None)))
        return real_step(self, *a, **kw)

    def cross_entropy(logits, target, **kw):
        ce.append((logits.shape[1], int(target.min()), int(target.max())))
        return real_ce(logits, target, **kw)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    monkeypatch.setattr(F, "cross_entropy", cross_entropy)
    learner, dm = make(tmp_path, epochs=2, warmup_steps=3, weight_decay=0.1, synthetic_train_per_class=8)
    learner.incremental_train(dm)  # 2 classes x 8 images / batch 4 = 4 steps per epoch, 8 in all
    lr, W, S = 1e-3, 3, 8
    expected = [lr * (s + 1) / W if s < W else 0.5 * (1 + math.cos(math.pi * (s - W) / (S - W))) * lr for s in range(S)]
    assert lrs == pytest.approx(expected, rel=1e-12)
    visual = sum(p.numel() for p in load_clip("tiny-random").model.visual.parameters())
    assert set(groups) == {(0.1, visual)}
    assert max(norms) <= 1.0 + 1e-5
    assert set(c[0] for c in ce) == {2} and min(c[1] for c in ce) >= 0 and max(c[2] for c in ce) <= 1


def test_m6_prediction_is_the_nearest_seen_class_row(tmp_path):
    learner, dm = make(tmp_path)
    for _ in range(2):
        learner.incremental_train(dm)
        learner.after_task()
    cnn, _ = learner.eval_task()
    feats, labels = [], []
    with torch.no_grad():
        for _, x, y in learner.test_loader:
            feats.append(F.normalize(learner._network.encode_image(x), dim=1).numpy())
            labels.append(y.numpy())
    pred = np.argmax(np.concatenate(feats) @ learner.class_text.numpy().T, axis=1)
    assert learner.class_text.shape[0] == 4
    assert cnn["top1"] == pytest.approx(100 * np.mean(pred == np.concatenate(labels)), abs=0.01)


# ----------------------------------------------------------------------------- parameter counts
def test_m1_trainable_parameters_on_vit_b16_shapes():
    """The official code trains open_clip's whole ``visual`` (the text tower is frozen or gets
    no gradient): conv 3*768*16*16, class token 768, positions 197*768, ln_pre 2*768,
    12 blocks x (attention 768*2304+2304 + 768*768+768, MLP 768*3072+3072 + 3072*768+768,
    two LayerNorms 4*768), ln_post 2*768, projection 768*512. (q/k/v here are three Linear
    layers, the official one in_proj: the same numbers.)"""
    block = (768 * 2304 + 2304) + (768 * 768 + 768) + (768 * 3072 + 3072) + (3072 * 768 + 768) + 4 * 768
    by_hand = 3 * 768 * 16 * 16 + 768 + 197 * 768 + 2 * 768 + 12 * block + 2 * 768 + 768 * 512
    net = load_clip("vit-b16-random")
    assert sum(p.numel() for p in net.model.visual.parameters()) == by_hand == 86_192_640


def test_learner_trains_exactly_the_image_encoder(tmp_path):
    learner, _ = make(tmp_path)
    net = learner._network.model
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in net.named_parameters() if n.startswith("visual.")}
    assert learner.record["trainable_parameters"] == sum(p.numel() for p in net.visual.parameters())


# ----------------------------------------------------------------------------- runs, resume, errors
def test_magmax_resumes_exactly(tmp_path, monkeypatch):
    from tests.test_resume import run_then_resume

    args = magmax_args(tmp_path)
    reference, resumed = run_then_resume(args, tmp_path, monkeypatch)
    assert reference["finished"]
    assert resumed == reference


def test_state_round_trip_restores_the_merged_model(tmp_path):
    learner, dm = make(tmp_path)
    learner.incremental_train(dm)
    learner.after_task()
    fresh, _ = make(tmp_path)
    fresh.load_state_dict(learner.state_dict())
    a, b = learner._network.state_dict(), fresh._network.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(learner.finetuned[k], fresh.finetuned[k]) for k in learner.finetuned)


@pytest.mark.parametrize("key, value, allowed", [("warmup_steps", 0, ">= 1"), ("grad_clip", 0.0, "> 0"),
                                                 ("templates", ["no placeholder"], "one '{}'"),
                                                 ("merge_scale", float("nan"), "finite")])
def test_bad_options_are_one_line_naming_the_key(tmp_path, capsys, key, value, allowed):
    err = refused(tmp_path, capsys, {**magmax_args(tmp_path), key: value})
    assert f"'{key}'" in err and allowed in err


def test_demo_and_check_through_main(tmp_path):
    from main import main

    cfg = json.loads(open("exps/magmax_demo.json").read())
    path = tmp_path / "demo.json"
    path.write_text(json.dumps({**cfg, "logdir": str(tmp_path / "logs")}))
    assert main(["--config", str(path), "--check", "-q"]) == 0
    assert main(["--config", str(path), "-q"]) == 0


def test_zero_shot_retention_runs_on_it_and_its_zero_shot_side_is_clip(tmp_path):
    """toolbox/retention.py on a MagMax run: its zero-shot side (theta_0, one template as
    zero-shot CLIP's prompt) equals a zero-shot CLIP run's, image for image; the model side
    is the merged encoder's."""
    from main import main
    from toolbox.configs import make_config
    from toolbox.trainer import run_dir_for

    held_out = [{"dataset": "synthetic", "synthetic_classes": 5, "synthetic_test_per_class": 4, "name": "clean"}]
    out = {}
    for model, extra in (("magmax", {"templates": ["a good photo of a {}."]}), ("zs_clip", {})):
        args = {**tiny_args(tmp_path, model_name=model, zero_shot_eval=held_out), **extra}
        if model == "magmax":
            args.update(lr=1e-3, warmup_steps=2)
        (tmp_path / f"{model}.json").write_text(json.dumps(args))
        assert main(["--config", str(tmp_path / f"{model}.json"), "-q"]) == 0
        with open(f"{run_dir_for(make_config(args), 1993)}/results.json") as f:
            out[model] = json.load(f)["zero_shot_retention"][0]
    assert out["magmax"]["zero_shot_clip"] == out["zs_clip"]["zero_shot_clip"] == out["zs_clip"]["model"]
    assert out["magmax"]["images"] == 20
    assert out["magmax"]["delta"] == pytest.approx(out["magmax"]["model"] - out["magmax"]["zero_shot_clip"])


def test_memory_benchmark_smoke(tmp_path):
    """benchmarks/magmax_memory.py on tiny CLIP: the running merge equals the official re-merge
    after every task; the memory it reports is 4 encoders (+ one key's temporaries) against the
    official t + 3, counted from the shapes here."""
    from benchmarks import magmax_memory

    out = tmp_path / "m.json"
    assert magmax_memory.main(["--smoke", "--tasks", "3", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    visual = load_clip("tiny-random").model.visual
    encoder = 4 * sum(p.numel() for p in visual.parameters())  # fp32, no buffers
    largest = 4 * max(p.numel() for p in visual.parameters())
    assert result["encoder_bytes"] == encoder
    assert [r["equal"] for r in result["rows"]] == [True] * 3
    assert [r["ours_bytes"] for r in result["rows"]] == [4 * encoder + 3 * largest] * 3
    assert [r["official_bytes"] for r in result["rows"]] == [(t + 3) * encoder for t in (1, 2, 3)]
