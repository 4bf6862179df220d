import math

import pytest
import torch

from utils.clip_backbone import load_clip
from utils.lora import (
    LoRALinear,
    apply_lora,
    load_lora_state_dict,
    lora_disabled,
    lora_layers,
    lora_parameters,
    lora_state_dict,
)

X_IMG = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def lora_clip(**kw):
    b = load_clip("tiny-random")
    apply_lora(b, **kw)
    return b


def randomize_b(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model):
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * 0.1)


def test_default_targets_are_k_and_v_of_every_block_of_both_encoders():
    b = lora_clip(rank=8, alpha=1.0)
    for enc in (b.model.visual.transformer, b.model.transformer):
        for block in enc.resblocks:
            assert isinstance(block.attn.k_proj, LoRALinear) and isinstance(block.attn.v_proj, LoRALinear)
            assert not isinstance(block.attn.q_proj, LoRALinear) and not isinstance(block.attn.out_proj, LoRALinear)
            assert not any(isinstance(m, LoRALinear) for m in block.mlp.modules())
    assert len(lora_layers(b)) == 2 * (2 + 1)  # k, v in 2 visual + 1 text blocks
    trainable = [n for n, p in b.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith(("lora_A", "lora_B")) for n in trainable)
    assert not b.model.logit_scale.requires_grad


def test_targets_and_encoders_are_configurable():
    b = lora_clip(targets=["q", "out"], encoders=["visual"])
    blk = b.model.visual.transformer.resblocks[0].attn
    assert isinstance(blk.q_proj, LoRALinear) and isinstance(blk.out_proj, LoRALinear)
    assert not isinstance(blk.k_proj, LoRALinear)
    assert not any(isinstance(m, LoRALinear) for m in b.model.transformer.modules())


def test_init_a_xavier_b_zero_and_scaling():
    b = lora_clip(rank=4, alpha=2.0)
    for layer in lora_layers(b):
        r, fan_in = layer.lora_A.shape
        bound = math.sqrt(6.0 / (r + fan_in))  # Xavier-uniform bound
        assert layer.lora_A.abs().max() <= bound and layer.lora_A.abs().max() > 0.5 * bound
        assert torch.count_nonzero(layer.lora_B) == 0
        assert layer.scaling == pytest.approx(2.0 / 4)


def test_b_zero_equals_plain_clip(tiny_clip):
    b = lora_clip()
    toks = tiny_clip.tokenize(["a good photo of a cat.", "a good photo of a dog."])
    with torch.no_grad():
        torch.testing.assert_close(b.encode_image(X_IMG), tiny_clip.encode_image(X_IMG), atol=1e-6, rtol=0)
        torch.testing.assert_close(b.encode_text(toks), tiny_clip.encode_text(toks), atol=1e-6, rtol=0)


def test_kv_outputs_equal_hand_formula():
    b = lora_clip(rank=8, alpha=1.0)
    randomize_b(b)
    layer = b.model.visual.transformer.resblocks[0].attn.k_proj
    x = torch.randn(5, 7, layer.in_features)
    W, bias, A, B = layer.weight, layer.bias, layer.lora_A, layer.lora_B
    expected = x @ W.T + bias + (1.0 / 8) * (x @ A.T @ B.T)
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)
    with lora_disabled(b):
        torch.testing.assert_close(layer(x), x @ W.T + bias, atol=1e-5, rtol=1e-5)


def test_lora_disabled_equals_plain_clip_and_restores(tiny_clip):
    b = lora_clip()
    randomize_b(b)
    with torch.no_grad():
        with_lora = b.encode_image(X_IMG)
        with lora_disabled(b):
            off = b.encode_image(X_IMG)
        again = b.encode_image(X_IMG)
    torch.testing.assert_close(off, tiny_clip.encode_image(X_IMG), atol=1e-6, rtol=0)
    assert not torch.allclose(with_lora, off)
    assert torch.equal(with_lora, again)


def test_frozen_weights_bit_identical_after_a_step():
    b = lora_clip()
    frozen = {n: p.detach().clone() for n, p in b.named_parameters() if not p.requires_grad}
    opt = torch.optim.Adam(lora_parameters(b), lr=1e-2)
    toks = b.tokenize(["a good photo of a cat."])
    for _ in range(2):
        loss = (b.encode_image(X_IMG) @ b.encode_text(toks).T).pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    b.eval()
    b.train()
    for n, p in b.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n
    assert any(torch.count_nonzero(layer.lora_B) > 0 for layer in lora_layers(b))


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_lora_state_round_trip(tmp_path, mode):
    a = lora_clip()
    randomize_b(a, seed=3)
    path = tmp_path / "lora.pt"
    torch.save(lora_state_dict(a), path)
    b = lora_clip()
    load_lora_state_dict(b, torch.load(path))
    a.train(mode == "train"), b.train(mode == "train")
    with torch.no_grad():
        assert torch.equal(a.encode_image(X_IMG), b.encode_image(X_IMG))
    with pytest.raises(KeyError):
        load_lora_state_dict(lora_clip(encoders=["visual"]), torch.load(path))


def test_vit_b16_has_about_half_a_million_lora_parameters():
    b = load_clip("vit-b16-random")
    apply_lora(b)
    # 12 visual blocks x 2 x (8*768 + 768*8) + 12 text blocks x 2 x (8*512 + 512*8)
    assert sum(p.numel() for p in lora_parameters(b)) == 12 * 2 * 2 * 8 * 768 + 12 * 2 * 2 * 8 * 512 == 491_520
