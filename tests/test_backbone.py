import os
import subprocess
import sys
import urllib.error
import warnings

import pytest
import torch

from utils.clip_backbone import TINY_RANDOM, BackboneError, fetch_openai_weights, import_clip, load_clip, resolve_device

clip = import_clip()


def reference_clip():
    """The clip package's own model with the same fixed random weights (nn.MultiheadAttention,
    full 77-token text): an independent reference for our SDPA / trimmed version."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return clip.model.CLIP(**TINY_RANDOM).float().eval()


PROMPTS = ["a good photo of a aquarium_fish.", "a good photo of a cat.", "a good photo of a sweet pepper in a bowl."]


def test_trimmed_text_features_equal_full_context(tiny_clip):
    ref = reference_clip()
    full = clip.tokenize(PROMPTS)  # (3, 77)
    trimmed = tiny_clip.tokenize(PROMPTS)
    assert trimmed.shape[1] < 77 and trimmed.shape[1] == int(full.argmax(-1).max()) + 1
    with torch.no_grad():
        ours_trim = tiny_clip.encode_text(trimmed)
        ours_full = tiny_clip.encode_text(tiny_clip.tokenize(PROMPTS, trim=False))
        theirs = ref.encode_text(full)
    torch.testing.assert_close(ours_trim, theirs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours_trim, ours_full, atol=1e-5, rtol=1e-5)


def test_image_features_equal_reference_attention(tiny_clip):
    ref = reference_clip()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(tiny_clip.encode_image(x), ref.encode_image(x), atol=1e-5, rtol=1e-5)


def test_random_backbones_are_fixed_and_do_not_touch_global_rng():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = load_clip("tiny-random")
    after = torch.rand(1)
    b = load_clip("tiny-random")
    assert torch.equal(before, after)  # global RNG untouched
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert float(a.logit_scale.detach()) == pytest.approx(100.0)


def test_unknown_backbone_names_the_key():
    with pytest.raises(BackboneError, match="'backbone'.*ViT-B/16"):
        load_clip("ViT-B/61")


def test_offline_download_says_where_to_put_the_file(tmp_path, monkeypatch):
    def no_network(*a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr("urllib.request.urlopen", no_network)
    with pytest.raises(BackboneError) as e:
        fetch_openai_weights("ViT-B/16", str(tmp_path))
    msg = str(e.value)
    assert str(tmp_path / "ViT-B-16.pt") in msg and "clip_cache" in msg and "5806e77c" in msg
    assert os.listdir(tmp_path) == []  # no partial download left behind


def test_wrong_sha_is_not_used(tmp_path, monkeypatch):
    (tmp_path / "ViT-B-16.pt").write_bytes(b"not the weights")

    def no_network(*a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr("urllib.request.urlopen", no_network)
    with pytest.raises(BackboneError, match="could not be downloaded"):
        fetch_openai_weights("ViT-B/16", str(tmp_path))


def test_verified_cached_file_is_used_without_network(tmp_path, monkeypatch):
    import hashlib

    payload = b"pretend weights"
    sha = hashlib.sha256(payload).hexdigest()
    monkeypatch.setitem(clip.clip._MODELS, "ViT-B/16", f"https://example.invalid/clip/models/{sha}/ViT-B-16.pt")
    (tmp_path / "ViT-B-16.pt").write_bytes(payload)
    monkeypatch.setattr("urllib.request.urlopen", lambda *a, **k: pytest.fail("must not download"))
    assert fetch_openai_weights("ViT-B/16", str(tmp_path)) == str(tmp_path / "ViT-B-16.pt")


@pytest.mark.parametrize("kind", ["state_dict", "jit"])
def test_local_checkpoint(tmp_path, kind):
    # build_model infers heads as width // 64, so use widths of 64 here.
    shape = dict(TINY_RANDOM, transformer_width=64, transformer_heads=1)
    torch.manual_seed(0)
    model = clip.model.CLIP(**shape).float().eval()
    path = tmp_path / "tiny.pt"
    if kind == "jit":  # OpenAI's released files are JIT archives
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(model, (torch.randn(1, 3, 32, 32), clip.tokenize(["a cat"])), check_trace=False)
        traced.save(str(path))
    else:
        torch.save(model.state_dict(), path)
    loaded = load_clip(str(path))
    clip.model.convert_weights(model)  # OpenAI checkpoints are fp16: the loader rounds the same way
    model.float()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_image(x), model.encode_image(x), atol=1e-5, rtol=1e-5)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    with pytest.raises(BackboneError, match="bad.pt"):
        load_clip(str(bad))


def test_clip_imports_without_pkg_resources():
    # Simulate setuptools >= 81 (no pkg_resources) in a fresh interpreter.
    code = ("import sys; sys.modules['pkg_resources'] = None\n"
            "from utils.clip_backbone import import_clip\n"
            "clip = import_clip(); print(len(clip.available_models()))")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip()) >= 9


def test_cuda_device_without_cuda_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(BackboneError, match="'device'"):
        resolve_device("cuda")


def test_downloaded_file_with_wrong_sha_is_refused_and_removed(tmp_path, monkeypatch):
    import io

    class FakeResponse(io.BytesIO):
        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

    monkeypatch.setattr("urllib.request.urlopen", lambda *a, **k: FakeResponse(b"tampered bytes"))
    with pytest.raises(BackboneError, match="SHA-256 .* expected 5806e77c"):
        fetch_openai_weights("ViT-B/16", str(tmp_path))
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(os.environ.get("MGCLIP_SLOW_TESTS") != "1",
                    reason="compiles for ~40 s on a CPU; MGCLIP_SLOW_TESTS=1")
def test_compiled_image_encoder_equals_eager():
    from utils.clip_ops import compile_image_encoder
    from utils.lora import apply_lora, load_lora_state_dict, lora_disabled, lora_layers, lora_state_dict

    eager, compiled = load_clip("tiny-random"), load_clip("tiny-random")
    apply_lora(eager)
    apply_lora(compiled)
    for layer in lora_layers(eager):
        torch.nn.init.normal_(layer.lora_B, std=0.05)
    load_lora_state_dict(compiled, lora_state_dict(eager))
    compile_image_encoder(compiled)
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(compiled.encode_image(x), eager.encode_image(x), atol=1e-4, rtol=1e-4)
        with lora_disabled(compiled), lora_disabled(eager):
            torch.testing.assert_close(compiled.encode_image(x[:3]), eager.encode_image(x[:3]), atol=1e-4, rtol=1e-4)
    assert set(compiled.state_dict()) == set(eager.state_dict())
