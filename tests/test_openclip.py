"""OpenCLIP backbones (``backbone: openclip:MODEL/PRETRAINED``): the wrapper (SDPA
attention on batch-first transformers, trimmed text) equals the unmodified OpenCLIP model,
LoRA fits its attention, and the learners run on it with one config key changed."""
import json
import os

import pytest
import torch

open_clip = pytest.importorskip("open_clip", reason="pip install -e .[openclip] (CI installs it)")

from main import main  # noqa: E402
from tests.conftest import tiny_args  # noqa: E402
from toolbox.configs import make_config  # noqa: E402
from toolbox.trainer import run_dir_for  # noqa: E402
from utils.clip_backbone import TINY_OPENCLIP, BackboneError, load_clip  # noqa: E402


def reference_model():
    """The same tiny model, built by OpenCLIP and left as it is."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = CLIP(TINY_OPENCLIP["embed_dim"], CLIPVisionCfg(**TINY_OPENCLIP["vision"]),
                     CLIPTextCfg(**TINY_OPENCLIP["text"]))
    return model.eval()


def test_wrapper_equals_the_unmodified_openclip_model():
    ours, ref = load_clip("openclip:tiny-random").eval(), reference_model()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    texts = ["a good photo of a cat.", "a good photo of a very small red tractor.", "dog"]
    tokenizer = open_clip.get_tokenizer("ViT-B-16")
    with torch.no_grad():
        torch.testing.assert_close(ours.encode_image(x), ref.encode_image(x), atol=1e-5, rtol=1e-5)
        trimmed = ours.tokenize(texts)
        assert trimmed.shape[1] < 77  # trimmed to the longest prompt
        torch.testing.assert_close(ours.encode_text(trimmed), ref.encode_text(tokenizer(texts)), atol=1e-5, rtol=1e-5)
    assert ours.input_resolution == 32 and ours.embed_dim == 16 and float(ours.logit_scale) == pytest.approx(100.0)


def test_lora_fits_openclip_attention_and_starts_as_the_frozen_model():
    from utils.lora import apply_lora, lora_layers, lora_parameters

    net = load_clip("openclip:tiny-random").eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    tokens = net.tokenize(["a photo of a cat."])
    with torch.no_grad():
        before_img, before_txt = net.encode_image(x), net.encode_text(tokens)
    apply_lora(net, 4, 1.0, ["k", "v"], ["visual", "text"])
    assert len(lora_layers(net)) == 2 * (2 + 1)  # k and v of 2 vision blocks and 1 text block
    with torch.no_grad():
        torch.testing.assert_close(net.encode_image(x), before_img)  # B = 0: exactly the frozen model
        torch.testing.assert_close(net.encode_text(tokens), before_txt)
    loss = net.encode_image(x).sum() + net.encode_text(tokens).sum()
    for p in lora_parameters(net):
        p.requires_grad_(True)
    loss.backward()
    assert all(p.grad is not None for p in lora_parameters(net))


@pytest.mark.parametrize("model", ["mgclip", "rapf", "zs_clip"])
def test_each_learner_runs_on_openclip_with_one_key(tmp_path, model):
    args = tiny_args(tmp_path, model_name=model, backbone="openclip:tiny-random", synthetic_classes=6)
    (tmp_path / "c.json").write_text(json.dumps(args))
    assert main(["--config", str(tmp_path / "c.json"), "-q"]) == 0
    with open(os.path.join(run_dir_for(make_config(args), 1993), "results.json")) as f:
        r = json.load(f)
    assert r["finished"] and len(r["accuracy"]) == 3


def test_unknown_openclip_models_and_tags_are_named(monkeypatch):
    with pytest.raises(BackboneError, match="no model 'ViT-B-61'"):
        load_clip("openclip:ViT-B-61/laion400m_e32")
    with pytest.raises(BackboneError, match="tag one of .*laion400m_e32"):
        load_clip("openclip:ViT-B-16/laion999")

    def offline(*a, **k):
        raise RuntimeError("network is unreachable")

    monkeypatch.setattr(open_clip, "create_model", offline)
    with pytest.raises(BackboneError) as e:
        load_clip("openclip:ViT-B-16/laion400m_e32", "/tmp/oc-cache")
    msg = str(e.value)
    assert "vit_b_16-laion400m_e32" in msg and "/tmp/oc-cache" in msg and "clip_cache" in msg
