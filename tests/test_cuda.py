"""The CUDA paths: the default numerics (fp32, TF32 matmuls), the bf16 option, device
preprocessing on the GPU, pinned loaders, a whole run, torch.compile. Skipped where there is
no GPU (CI); ``benchmarks/gpu.sh`` runs them on a lent GPU machine before it measures anything.

Each check compares the GPU path with an independent CPU / fp32 computation."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import tiny_args
from toolbox.configs import make_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = torch.device("cuda")


def test_device_preprocess_on_the_gpu_matches_pil():
    from utils.clip_backbone import CLIP_STD, clip_transform
    from utils.preprocess import DevicePreprocess

    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8)
    ref = torch.stack([clip_transform(224)(Image.fromarray(a)) for a in arr])
    ours = DevicePreprocess(224, CUDA)(torch.from_numpy(arr).pin_memory()).cpu()
    diff_levels = (ours - ref).abs() * torch.tensor(CLIP_STD).view(1, 3, 1, 1) * 255
    assert diff_levels.max() <= 1.0 + 1e-3
    assert (diff_levels > 0.5).float().mean() < 0.01


def test_bf16_features_agree_with_fp32_on_vit_b16_shapes():
    from utils.clip_backbone import autocast, load_clip

    net = load_clip("vit-b16-random").to(CUDA).eval()
    x = torch.randn(8, 3, 224, 224, generator=torch.Generator().manual_seed(0)).to(CUDA)
    tokens = net.tokenize(["a good photo of a cat.", "a good photo of a tractor."]).to(CUDA)
    with torch.no_grad():
        img32, txt32 = net.encode_image(x).float(), net.encode_text(tokens).float()
        with autocast(CUDA, "bf16"):
            img16, txt16 = net.encode_image(x), net.encode_text(tokens)
    assert img16.dtype == torch.bfloat16  # autocast really ran the encoder in bf16
    cos_img = torch.nn.functional.cosine_similarity(img16.float(), img32, dim=1)
    cos_txt = torch.nn.functional.cosine_similarity(txt16.float(), txt32, dim=1)
    print(f"bf16 vs fp32 features: cos image min {cos_img.min():.5f}, text min {cos_txt.min():.5f}")
    assert cos_img.min() > 0.99 and cos_txt.min() > 0.99


def test_default_numerics_are_fp32_with_tf32_and_match_strict_fp32():
    from utils.clip_backbone import autocast, load_clip, set_matmul_precision

    net = load_clip("vit-b16-random").to(CUDA).eval()
    x = torch.randn(8, 3, 224, 224, generator=torch.Generator().manual_seed(0)).to(CUDA)
    out = {}
    for precision in ("fp32", "auto"):
        set_matmul_precision(CUDA, precision)
        with torch.no_grad(), autocast(CUDA, precision):
            out[precision] = net.encode_image(x)
    assert torch.backends.cuda.matmul.allow_tf32  # auto: TF32 matrix products, as released
    assert out["auto"].dtype == torch.float32  # and fp32 activations (no autocast)
    cos = torch.nn.functional.cosine_similarity(out["auto"], out["fp32"], dim=1)
    print(f"TF32 vs strict fp32 features: cos min {cos.min():.6f}")
    assert cos.min() > 0.999
    set_matmul_precision(CUDA, "auto")


def test_bf16_gap_statistic_agrees_with_fp32():
    from utils.clip_backbone import autocast, load_clip, set_matmul_precision
    from utils.gap import gap_statistic

    net = load_clip("vit-b16-random").to(CUDA).eval()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(48, 3, 224, 224, generator=g).to(CUDA)
    y = torch.arange(48, device=CUDA) % 6
    tokens = net.tokenize([f"a good photo of a class {i}." for i in range(6)]).to(CUDA)
    stats = {}
    for precision in ("auto", "bf16"):
        set_matmul_precision(CUDA, precision)
        with torch.no_grad(), autocast(CUDA, precision):
            img = torch.nn.functional.normalize(net.encode_image(x).float(), dim=1)
            txt = torch.nn.functional.normalize(net.encode_text(tokens).float(), dim=1)
        stats[precision] = gap_statistic(img, y, txt, 100.0, 16)
    rel = abs(stats["bf16"][0] - stats["auto"][0]) / abs(stats["auto"][0])
    print(f"gap statistic: default {stats['auto'][0]:.5f}, bf16 {stats['bf16'][0]:.5f}, relative difference {rel:.2e}")
    assert rel < 0.01  # far inside the 10 % rule
    set_matmul_precision(CUDA, "auto")


def test_bf16_lora_training_step_matches_fp32_gradients():
    from utils.clip_backbone import autocast, load_clip
    from utils.lora import apply_lora, lora_parameters

    grads = {}
    for precision in ("auto", "bf16"):
        net = load_clip("tiny-random")
        apply_lora(net, 8, 1.0, ["k", "v"], ["visual", "text"])
        with torch.no_grad():  # B != 0 so that the A gradients are not all zero
            for p in lora_parameters(net):
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.05)
        net = net.to(CUDA).train()
        x = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(1)).to(CUDA)
        y = torch.arange(16, device=CUDA) % 4
        tokens = net.tokenize([f"a good photo of a class {i}." for i in range(4)]).to(CUDA)
        with autocast(CUDA, precision):
            img, txt = net.encode_image(x), net.encode_text(tokens)
        img = torch.nn.functional.normalize(img.float(), dim=1)
        txt = torch.nn.functional.normalize(txt.float(), dim=1)
        loss = torch.nn.functional.cross_entropy(net.logit_scale * img @ txt.t(), y)
        loss.backward()
        grads[precision] = torch.cat([p.grad.flatten().float() for p in lora_parameters(net)])
    cos = torch.nn.functional.cosine_similarity(grads["bf16"], grads["auto"], dim=0)
    print(f"one LoRA training step, bf16 vs default gradients: cos {cos:.5f}")
    assert torch.isfinite(grads["bf16"]).all() and cos > 0.95


def test_a_whole_run_on_the_gpu(tmp_path):
    from toolbox.trainer import run_one

    args = tiny_args(tmp_path, device="cuda", precision="auto", synthetic_classes=12, synthetic_train_per_class=40,
                     synthetic_test_per_class=10, init_cls=4, increment=4, epochs="auto", probe_max_epochs=3,
                     lr=3e-3, batch_size=32, num_workers=2)
    cfg = make_config(args)
    run_dir = run_one(cfg, cfg.seeds()[0])
    with open(os.path.join(run_dir, "results.json")) as f:
        r = json.load(f)
    assert r["finished"] and len(r["accuracy"]) == 3 and all(0 <= a <= 100 for a in r["accuracy"])
    assert np.isfinite([g["after"]["neg"] for g in r["gap"]]).all()
    assert max(r["task_metrics"]["visual_accuracy"]) > 100 / 12 * 3  # learns well above chance on the GPU too


@pytest.mark.parametrize("model, over", [
    ("rapf", {"epochs": 3}), ("proof", {"epochs": 2, "lr": 0.01}), ("zs_clip", {}), ("simplecil", {}),
    ("aper_adapter", {"epochs": 2, "lr": 0.01}), ("moe_adapters", {"epochs": 1, "warmup_steps": 2}),
    ("l2p", {"epochs": 2, "lr": 0.01}), ("dualprompt", {"epochs": 2, "prompt_layers": [1], "g_prompt_layers": [0]}),
    ("coda_prompt", {"epochs": 2, "prompt_layers": [0, 1], "pool_size": 60})])
def test_every_other_method_runs_on_the_gpu_in_its_default_numerics(tmp_path, model, over):
    """RAPF's default on CUDA is its official fp16 path; the others' fp32 (TF32 matrix products)."""
    from toolbox.trainer import run_one

    args = tiny_args(tmp_path, model_name=model, device="cuda", precision="auto", synthetic_classes=12,
                     synthetic_train_per_class=20, init_cls=4, increment=4, batch_size=16, num_workers=2, **over)
    cfg = make_config(args)
    with open(os.path.join(run_one(cfg, cfg.seeds()[0]), "results.json")) as f:
        r = json.load(f)
    print(f"{model} on the GPU: accuracy per task {r['accuracy']}")
    assert r["finished"] and len(r["accuracy"]) == 3 and all(0 <= a <= 100 for a in r["accuracy"])


def test_compiled_image_encoder_equals_eager_on_the_gpu():
    from utils.clip_backbone import autocast, load_clip
    from utils.clip_ops import compile_image_encoder

    net = load_clip("tiny-random").to(CUDA).eval()
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(2)).to(CUDA)
    with torch.no_grad(), autocast(CUDA, "bf16"):
        eager = net.encode_image(x).float()
        compile_image_encoder(net)
        compiled = net.encode_image(x).float()
        shorter = net.encode_image(x[:5]).float()  # a short last batch runs too
    cos = torch.nn.functional.cosine_similarity(eager, compiled, dim=1)
    assert cos.min() > 0.999
    torch.testing.assert_close(shorter, compiled[:5], atol=2e-2, rtol=2e-2)


def test_prefix_attention_on_the_gpu_matches_the_cpu():
    """The prompt methods' key/value prefixes through SDPA on CUDA (strict fp32) against the CPU."""
    from utils.clip_backbone import SDPAttention, set_matmul_precision

    torch.manual_seed(0)
    attn = SDPAttention(torch.nn.MultiheadAttention(64, 4), causal=False)
    x = torch.randn(17, 3, 64)
    pk, pv = torch.randn(3, 10, 64), torch.randn(3, 10, 64)
    attn.prefix = (pk, pv)
    with torch.no_grad():
        cpu = attn(x, x, x)[0]
        set_matmul_precision(CUDA, "fp32")
        attn = attn.to(CUDA)
        attn.prefix = (pk.to(CUDA), pv.to(CUDA))
        gpu = attn(x.to(CUDA), x.to(CUDA), x.to(CUDA))[0].cpu()
    set_matmul_precision(CUDA, "auto")
    torch.testing.assert_close(gpu, cpu, rtol=1e-4, atol=1e-5)


def test_the_query_cache_is_exact_on_the_gpu(tmp_path):
    from toolbox.trainer import run_one

    accuracies = []
    for cache in (True, False):
        args = tiny_args(tmp_path / str(cache), model_name="coda_prompt", device="cuda", prompt_layers=[0, 1],
                         pool_size=60, synthetic_classes=12, synthetic_train_per_class=20, init_cls=4, increment=4,
                         batch_size=16, epochs=2, query_cache=cache, train_augment="none")
        cfg = make_config(args)
        with open(os.path.join(run_one(cfg, cfg.seeds()[0]), "results.json")) as f:
            accuracies.append(json.load(f)["accuracy_matrix"])
    print(f"CODA-Prompt on the GPU, with and without the query cache: {accuracies}")
    # equal on the CPU (tests/test_prompts.py); on the GPU a kernel may round a batch of another size
    # differently, so allow one test image of a task (16) to change its prediction
    a, b = (np.array([v for row in m for v in row if v is not None], dtype=float) for m in accuracies)
    assert a.shape == b.shape and np.abs(a - b).max() <= 100 / 16 + 1e-6
