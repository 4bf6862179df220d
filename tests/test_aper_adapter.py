"""APER-Adapter (docs/methods/aper_adapter.md, items A1-A6), each against an independent
computation: the adapter's formula by hand, parameter counts by formula, the schedule by
its closed form, merged features, prototypes and predictions recomputed with numpy from
the encoder's own outputs."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from main import main
from models.aper_adapter import CosineHead
from tests.conftest import make_learner, refused, tiny_args
from utils.adapter import adapter_parameters, adapter_state_dict, adapters_disabled, apply_adapters
from utils.clip_backbone import clip_transform, load_clip


def aper_args(tmp_path, **over):
    return tiny_args(tmp_path, **{"model_name": "aper_adapter", "epochs": 2, "batch_size": 4, "lr": 0.05,
                                  "preprocess": "pil", **over})


def make(tmp_path, **over):
    return make_learner(aper_args(tmp_path, **over))


# ----------------------------------------------------------------------------- A1
def test_a1_a_block_adds_the_scaled_bottleneck_of_its_stream_beside_the_mlp():
    net = load_clip("tiny-random")
    block = net.model.visual.transformer.resblocks[0]
    x = torch.randn(5, 2, 64, generator=torch.Generator().manual_seed(0))  # (tokens, batch, width): OpenAI layout
    plain = block(x)
    apply_adapters(net, bottleneck=4, scale=0.1, dropout=0.1)
    adapter = block.mlp.adapter
    with torch.no_grad():
        adapter.up.weight.normal_()
        adapter.up.bias.normal_()
    net.eval()  # no dropout
    h = x + block.attention(block.ln_1(x))  # the stream after attention
    by_hand = plain + 0.1 * (torch.relu(h @ adapter.down.weight.t() + adapter.down.bias) @ adapter.up.weight.t()
                             + adapter.up.bias)
    torch.testing.assert_close(block(x), by_hand)
    with adapters_disabled(net):
        torch.testing.assert_close(block(x), plain)  # the pre-trained branch


def test_a1_new_adapters_leave_clip_exactly_as_it_was_and_are_initialised_as_official():
    net = load_clip("tiny-random")
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    before = net.encode_image(images)
    adapters = apply_adapters(net, bottleneck=4, scale=0.1, dropout=0.1)
    assert torch.equal(net.encode_image(images), before)  # up = 0
    for a in adapters:
        bound = 1 / math.sqrt(a.down.in_features)  # kaiming-uniform with a = sqrt(5)
        assert a.down.weight.abs().max() <= bound and a.down.weight.std() > bound / 3
        assert not a.down.bias.any() and not a.up.weight.any() and not a.up.bias.any()
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable and all(".adapter." in n and "visual" in n for n in trainable)


# ----------------------------------------------------------------------------- A2
def test_a2_trainable_parameters_on_vit_b16_shapes():
    """Official (AdaptFormer, ffn_num 64, no adapter norm): per block 2 * 768 * 64 + 64 + 768;
    the first task's cosine head adds d * classes + sigma. CLIP ViT-B/16's image features
    are 512-d (the in21k ViT's official run: 768-d, so 1,189,632 + 7,681 = 1,197,313)."""
    net = load_clip("vit-b16-random")
    apply_adapters(net, bottleneck=64, scale=0.1, dropout=0.1)
    adapters = sum(p.numel() for p in adapter_parameters(net))
    assert adapters == 12 * (2 * 768 * 64 + 64 + 768) == 1_189_632
    head = CosineHead(net.embed_dim, 10)
    assert adapters + sum(p.numel() for p in head.parameters()) == 1_189_632 + 512 * 10 + 1 == 1_194_753


def test_a2_cosine_head_by_hand():
    head = CosineHead(6, 3)
    bound = 1 / math.sqrt(6)
    assert head.weight.abs().max() <= bound and float(head.sigma) == 1.0 and head.sigma.requires_grad
    with torch.no_grad():
        head.sigma.fill_(2.0)
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(0))
    xn = x.numpy() / np.linalg.norm(x.numpy(), axis=1, keepdims=True)
    w = head.weight.detach().numpy()
    wn = w / np.linalg.norm(w, axis=1, keepdims=True)
    np.testing.assert_allclose(head(x).detach().numpy(), 2.0 * xn @ wn.T, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- A3
def test_a3_only_the_first_task_trains_with_sgd_and_a_cosine_schedule(tmp_path, monkeypatch):
    learner, dm = make(tmp_path, epochs=4, lr=0.05, weight_decay=0.001)
    seen = []
    real_step = torch.optim.SGD.step

    def recording(self, *a, **k):
        group = self.param_groups[0]
        seen.append((group["lr"], group["momentum"], group["weight_decay"], sum(p.numel() for p in group["params"])))
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.SGD, "step", recording)
    learner.incremental_train(dm)
    learner.after_task()
    steps = len(seen) // 4
    lrs = [seen[e * steps][0] for e in range(4)]
    assert lrs == pytest.approx([0.05 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)])  # to min_lr 0
    assert {s[1:] for s in seen} == {(0.9, 0.001, learner.record["trainable_parameters"])}
    # tiny CLIP: 2 blocks of width 64, bottleneck 64; head 16-d over the first task's 2 classes
    assert learner.record["trainable_parameters"] == 2 * (2 * 64 * 64 + 64 + 64) + 16 * 2 + 1
    after_first = adapter_state_dict(learner._network)
    assert any(v.any() for k, v in after_first.items() if "up.weight" in k)  # they trained
    for _ in range(2):
        learner.incremental_train(dm)
        learner.after_task()
    assert len(seen) == 4 * steps  # no step after the first task
    later = adapter_state_dict(learner._network)
    assert all(torch.equal(later[k], v) for k, v in after_first.items())


# ----------------------------------------------------------------------------- A4 / A5 / A6
def clip_images(dm, classes, source, resolution):
    ds = dm.get_dataset(classes, source=source, mode="test", transform=clip_transform(resolution))
    return torch.stack([ds[i][1] for i in range(len(ds))]), torch.as_tensor(np.asarray(ds.labels))


def test_a4_a5_a6_merged_features_prototypes_and_predictions_by_hand(tmp_path):
    learner, dm = make(tmp_path)
    for _ in range(3):
        learner.incremental_train(dm)
        cnn, _ = learner.eval_task()
        learner.after_task()
    net = learner._network
    with torch.no_grad():
        x, y = clip_images(dm, range(6), "train", net.input_resolution)
        adapted = net.encode_image(x).numpy()
        with adapters_disabled(net):
            plain = net.encode_image(x).numpy()
    merged = np.concatenate([plain, adapted], axis=1)  # A4: pre-trained first, both unnormalised
    protos = np.stack([merged[y.numpy() == c].mean(0) for c in range(6)])  # A5
    np.testing.assert_allclose(learner.prototypes.numpy(), protos, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        xt, yt = clip_images(dm, range(6), "test", net.input_resolution)
        test = np.concatenate([_plain(net, xt), net.encode_image(xt).numpy()], axis=1)
    cos = (test / np.linalg.norm(test, axis=1, keepdims=True)) @ (protos / np.linalg.norm(protos, axis=1,
                                                                                          keepdims=True)).T
    assert cnn["top1"] == pytest.approx(100 * np.mean(cos.argmax(1) == yt.numpy()), abs=0.01)  # A6


def _plain(net, x):
    with adapters_disabled(net):
        return net.encode_image(x).numpy()


# ----------------------------------------------------------------------------- runs, resume, errors
def test_aper_learns_on_the_demo_and_resumes_exactly(tmp_path, monkeypatch):
    from tests.test_resume import run_then_resume

    args = aper_args(tmp_path, synthetic_classes=6)
    reference, resumed = run_then_resume(args, tmp_path, monkeypatch)
    assert reference["finished"] and reference["last"] > 100 / 6
    assert resumed == reference


@pytest.mark.parametrize("key, value, allowed", [("adapter_dropout", 1.5, "[0, 1)"), ("optimizer", "rmsprop", "'sgd'"),
                                                 ("adapter_bottleneck", 0, ">= 1")])
def test_bad_options_are_one_line_naming_the_key(tmp_path, capsys, key, value, allowed):
    err = refused(tmp_path, capsys, {**aper_args(tmp_path), key: value})
    assert f"'{key}'" in err and allowed in err


def test_its_options_belong_to_it(tmp_path, capsys):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(tiny_args(tmp_path, model_name="rapf", adapter_bottleneck=8)))
    assert main(["--config", str(path), "-q"]) == 2
    assert "'adapter_bottleneck' is an option of aper_adapter, moe_adapters, not of 'rapf'" in capsys.readouterr().err


def test_the_merged_features_are_the_pre_trained_and_adapted_ones_after_the_first_task(tmp_path):
    learner, dm = make(tmp_path)
    learner.incremental_train(dm)
    feats, _ = learner.cache.get(dm, "test", range(2))
    d = learner._network.embed_dim
    assert feats.shape[1] == 2 * d and not torch.allclose(feats[:, :d], feats[:, d:])
    assert torch.allclose(F.normalize(feats[:, d:], dim=1),
                          F.normalize(learner.image_view(clip_images(dm, range(2), "test", 32)[0], True), dim=1),
                          atol=1e-5)


# ----------------------------------------------------------------------------- A7: the official augmentation
def test_a7_adaptation_images_are_the_official_random_resized_crop_and_flip(tmp_path, monkeypatch):
    from torchvision import transforms as T

    import models.aper_adapter as aper_module
    from tests.test_prompts import capture_batches, spy_reseeds, torchvision_official

    batches, bases = capture_batches(monkeypatch, aper_module), spy_reseeds(monkeypatch)
    learner, dm = make(tmp_path)  # the defaults: train_augment official
    assert learner.opts.train_augment == "official"
    learner.incremental_train(dm)
    images, _, _ = dm.get_dataset(range(2), source="train", mode="train", ret_data=True)
    adapt = [b for b in batches if b[0].startswith("adapt")]
    assert len(bases) == 2 and len(adapt) == 2 * 4  # 2 epochs of 16 images in batches of 4
    R = learner._network.input_resolution
    geometry = [T.RandomResizedCrop(R, scale=(0.05, 1.0), ratio=(3 / 4, 4 / 3)), T.RandomHorizontalFlip(p=0.5)]
    for desc, idx, x in adapt:
        base = bases[int(desc.split()[1].split("/")[0]) - 1]
        torch.testing.assert_close(x, torchvision_official(images, idx, lambda r: base + r, geometry), rtol=0,
                                   atol=1e-6)
    centre, labels = clip_images(dm, range(2), "train", R)
    assert (adapt[0][2] - centre[adapt[0][1]]).abs().max() > 0.1  # not CLIP's centre crop
    # the prototypes: CLIP's deterministic preprocessing (the official train_loader_for_protonet, mode "test")
    learner.eval_task()
    with torch.no_grad():
        merged = np.concatenate([_plain(learner._network, centre), learner._network.encode_image(centre).numpy()], 1)
    np.testing.assert_allclose(learner.prototypes[:2].numpy(),
                               np.stack([merged[labels.numpy() == c].mean(0) for c in range(2)]), rtol=1e-4, atol=1e-5)
