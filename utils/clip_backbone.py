"""Loading OpenAI CLIP and running it fast.

- ``load_clip(name, ...)``: an OpenAI model name (downloaded into a cache folder, SHA-256
  verified, written atomically), a local checkpoint (JIT archive or state dict),
  ``"tiny-random"`` (a tiny CLIP for tests and the offline demo) or ``"vit-b16-random"``
  (ViT-B/16 shapes with random weights, for speed benchmarks).
- ``ClipBackbone``: the CLIP model with every attention block running through
  ``scaled_dot_product_attention`` on separate q/k/v/out projections (so LoRA can wrap k
  and v), and a text encoder that trims the token context to the longest prompt.
"""
from __future__ import annotations

import contextlib
import difflib
import logging
import math
import os
import sys
import types
import warnings
from typing import Callable, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.download import fetch_verified

logger = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class BackboneError(RuntimeError):
    """CLIP weights could not be found, fetched or verified; the message says what to do."""


def ensure_pkg_resources() -> None:
    """Make ``import pkg_resources`` work on any setuptools. setuptools >= 81 no longer ships
    it; openai-clip imports ``pkg_resources.packaging`` and imagecorruptions
    ``pkg_resources.resource_filename`` (the path of a file inside a package), so where it is
    missing a minimal stand-in offering those two is registered."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pkg_resources' deprecation notice
        try:
            import pkg_resources  # noqa: F401
            return
        except ImportError:
            pass
    shim = types.ModuleType("pkg_resources")
    try:
        import packaging as _packaging
        import packaging.version  # noqa: F401
    except ImportError:  # pragma: no cover - packaging is nearly always present
        _packaging = types.ModuleType("packaging")
        _version = types.ModuleType("packaging.version")

        def parse(v: str):
            return tuple(int(p) for p in v.split("+")[0].split(".")[:3] if p.isdigit())

        _version.parse = parse
        _packaging.version = _version

    def resource_filename(module_name: str, resource: str) -> str:
        import importlib
        import os

        return os.path.join(os.path.dirname(importlib.import_module(module_name).__file__), resource)

    shim.packaging = _packaging
    shim.resource_filename = resource_filename
    sys.modules["pkg_resources"] = shim


def import_clip():
    """Import the ``clip`` package on any setuptools (see :func:`ensure_pkg_resources`)."""
    if "clip" in sys.modules:
        return sys.modules["clip"]
    ensure_pkg_resources()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import clip
    return clip


def clip_resize_crop(resolution: int) -> Callable:
    """The geometric part of CLIP's preprocessing: shorter side to ``resolution`` (bicubic),
    center crop; PIL image in, PIL image out."""
    from torchvision import transforms as T

    return T.Compose([T.Resize(resolution, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(resolution)])


def clip_transform(resolution: int) -> Callable:
    """CLIP's preprocessing (SPEC 3): ``clip_resize_crop``, RGB, tensor, CLIP normalization.
    Train and test alike, no augmentation."""
    from torchvision import transforms as T

    return T.Compose([
        clip_resize_crop(resolution),
        T.Lambda(lambda im: im.convert("RGB")),
        T.ToTensor(),
        T.Normalize(CLIP_MEAN, CLIP_STD),
    ])


# ----------------------------------------------------------------------------- attention
class SDPAttention(nn.Module):
    """Drop-in for the ``nn.MultiheadAttention`` inside CLIP's residual blocks.

    Separate q/k/v/out ``nn.Linear`` layers (LoRA wraps k and v) and fused attention via
    ``F.scaled_dot_product_attention``. CLIP's text mask is plain causal, so it is applied
    with ``is_causal`` and stays exact for any (trimmed) sequence length.
    Input and output layout is CLIP's (L, N, D).

    ``prefix``: None, or ``(pk, pv)`` of shape (N, P, D) each: P key and value vectors
    prepended to every head's keys and values after the projections (prefix-tuning, as the
    prompt methods' official ViT does; ``utils.prompt_pool.prefixed`` sets it per block).
    """

    def __init__(self, mha: nn.MultiheadAttention, causal: bool, batch_first: bool = False):
        super().__init__()
        d = mha.embed_dim
        self.num_heads = mha.num_heads
        self.causal = causal
        self.batch_first = batch_first  # OpenCLIP's transformers are batch-first (N, L, D)
        # skip_init: the weights are copied below, so draw no random numbers for them.
        self.q_proj, self.k_proj, self.v_proj = (nn.utils.skip_init(nn.Linear, d, d) for _ in range(3))
        w_q, w_k, w_v = mha.in_proj_weight.detach().chunk(3, dim=0)
        b_q, b_k, b_v = mha.in_proj_bias.detach().chunk(3, dim=0)
        for lin, w, b in ((self.q_proj, w_q, b_q), (self.k_proj, w_k, b_k), (self.v_proj, w_v, b_v)):
            lin.weight.data.copy_(w)
            lin.bias.data.copy_(b)
        self.out_proj = nn.utils.skip_init(nn.Linear, d, d)
        self.out_proj.weight.data.copy_(mha.out_proj.weight.detach())
        self.out_proj.bias.data.copy_(mha.out_proj.bias.detach())
        self.prefix: Optional[Tuple[torch.Tensor, torch.Tensor]] = None

    def forward(self, query: torch.Tensor, key=None, value=None, need_weights: bool = False, attn_mask=None):
        # CLIP calls attn(x, x, x, need_weights=False, attn_mask=mask): self-attention only.
        x = query.transpose(0, 1) if self.batch_first else query
        L, N, D = x.shape
        H = self.num_heads

        def split(t: torch.Tensor) -> torch.Tensor:  # (L, N, D) -> (N, H, L, D/H)
            return t.reshape(L, N, H, D // H).permute(1, 2, 0, 3)

        k, v = split(self.k_proj(x)), split(self.v_proj(x))
        if self.prefix is not None:
            if self.causal:
                raise ValueError("a key/value prefix on causal (text) attention is not supported")

            def heads(p: torch.Tensor) -> torch.Tensor:  # (N, P, D) -> (N, H, P, D/H)
                return p.reshape(N, p.shape[1], H, D // H).transpose(1, 2).to(k.dtype)

            k = torch.cat([heads(self.prefix[0]), k], dim=2)
            v = torch.cat([heads(self.prefix[1]), v], dim=2)
        out = F.scaled_dot_product_attention(split(self.q_proj(x)), k, v, is_causal=self.causal)
        out = self.out_proj(out.permute(2, 0, 1, 3).reshape(L, N, D))
        return (out.transpose(0, 1) if self.batch_first else out), None


def _swap_attention(transformer: nn.Module, causal: bool) -> None:
    batch_first = bool(getattr(transformer, "batch_first", False))
    for block in transformer.resblocks:
        block.attn = SDPAttention(block.attn, causal=causal, batch_first=batch_first)
        block.attn_mask = None  # causality is carried by SDPAttention.causal


# ----------------------------------------------------------------------------- backbone
class ClipBackbone(nn.Module):
    """CLIP image and text encoders (fp32 weights) with SDPA attention and text trimming:
    OpenAI's (the ``clip`` package) or OpenCLIP's (``open_clip``, batch-first transformers,
    its own tokenizer); the same interface and module names either way, so LoRA and every
    learner run on both."""

    def __init__(self, clip_model: nn.Module, tokenizer=None):
        super().__init__()
        clip_model = clip_model.float()
        _swap_attention(clip_model.visual.transformer, causal=False)
        _swap_attention(clip_model.transformer, causal=True)
        self.model = clip_model
        self.context_length = clip_model.context_length
        self.batch_first = bool(getattr(clip_model.transformer, "batch_first", False))
        self._tokenizer = tokenizer  # None: the clip package's

    @property
    def input_resolution(self) -> int:
        visual = self.model.visual
        if hasattr(visual, "input_resolution"):
            return visual.input_resolution
        size = visual.image_size  # OpenCLIP: an int or (H, W)
        return size[0] if isinstance(size, (tuple, list)) else int(size)

    @property
    def embed_dim(self) -> int:
        return self.model.text_projection.shape[1]

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale.exp()

    def tokenize(self, texts: Sequence[str], trim: bool = True) -> torch.Tensor:
        """(n_texts, L) token ids; with ``trim`` L is the longest prompt's end-of-text + 1."""
        if self._tokenizer is not None:
            tokens = self._tokenizer(list(texts)).long()
        else:
            clip = import_clip()
            tokens = clip.tokenize(list(texts), context_length=self.context_length, truncate=True)
        if trim:
            tokens = tokens[:, : int(tokens.argmax(dim=-1).max()) + 1]
        return tokens

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """images (N, 3, R, R) normalized -> features (N, embed_dim), not normalized."""
        return self.model.visual(images)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (n, L) with L <= context_length -> features (n, embed_dim), not normalized.

        Exact for trimmed tokens: attention is causal, so positions before the
        end-of-text token never see the padding that trimming removed."""
        m = self.model
        L = tokens.shape[1]
        x = m.token_embedding(tokens) + m.positional_embedding[:L]
        x = m.transformer(x) if self.batch_first else m.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)
        x = m.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]  # the end-of-text token
        return m.text_projection(x) if isinstance(m.text_projection, nn.Linear) else x @ m.text_projection


# ----------------------------------------------------------------------------- loading
TINY_RANDOM = dict(embed_dim=16, image_resolution=32, vision_layers=2, vision_width=64, vision_patch_size=8,
                   context_length=77, vocab_size=49408, transformer_width=32, transformer_heads=2,
                   transformer_layers=1)
VIT_B16 = dict(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768, vision_patch_size=16,
               context_length=77, vocab_size=49408, transformer_width=512, transformer_heads=8,
               transformer_layers=12)
RANDOM_MODELS = {"tiny-random": TINY_RANDOM, "vit-b16-random": VIT_B16}


def _random_clip(shape: dict) -> nn.Module:
    """CLIP with random weights drawn from a fixed seed (a stand-in for pretrained weights,
    the same in every run) without touching the global RNG; logit scale exp = 100 as in
    OpenAI's checkpoints."""
    clip = import_clip()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = clip.model.CLIP(**shape)
    model.logit_scale.data.fill_(math.log(100.0))
    return model


def fetch_openai_weights(name: str, cache_dir: str) -> str:
    """Path of the verified checkpoint for an OpenAI model name, downloading it if needed
    (SHA-256 checked; an interrupted download never leaves a bad file behind)."""
    clip = import_clip()
    url = clip.clip._MODELS[name]
    cache_dir = os.path.expanduser(cache_dir)
    return fetch_verified(url, os.path.join(cache_dir, os.path.basename(url)), url.split("/")[-2], BackboneError,
                          f"or set config key 'clip_cache' to the folder that holds it, or set 'backbone' to the "
                          f"checkpoint's path (CLIP weights for '{name}').")


def _load_checkpoint(path: str) -> nn.Module:
    clip = import_clip()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit deprecation notice; OpenAI ships JIT archives
            state_dict = torch.jit.load(path, map_location="cpu").state_dict()
    except RuntimeError:
        try:
            state_dict = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise BackboneError(f"CLIP checkpoint {path} is neither a JIT archive nor a state dict ({e})") from None
    if isinstance(state_dict, dict) and "state_dict" in state_dict:
        state_dict = state_dict["state_dict"]
    try:
        return clip.model.build_model(state_dict)
    except (KeyError, RuntimeError) as e:
        raise BackboneError(f"CLIP checkpoint {path} does not hold CLIP weights ({e})") from None


OPENCLIP = "openclip:"
TINY_OPENCLIP = dict(embed_dim=16, vision=dict(image_size=32, layers=2, width=64, patch_size=8, head_width=32),
                     text=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=1))


def import_open_clip():
    try:
        import open_clip
    except ImportError:
        raise BackboneError("config key 'backbone' names an OpenCLIP model, which needs the 'open_clip_torch' "
                            "package: pip install -e .[openclip]") from None
    return open_clip


def load_openclip(spec: str, cache_dir: str) -> ClipBackbone:
    """``openclip:MODEL/PRETRAINED`` (e.g. ``openclip:ViT-B-16/laion400m_e32``; OpenCLIP
    downloads the weights into ``cache_dir`` and checks the checksum its release names,
    where it names one) or ``openclip:tiny-random`` (a fixed-seed tiny model for tests)."""
    open_clip = import_open_clip()
    body = spec[len(OPENCLIP):]
    if body == "tiny-random":
        from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = CLIP(TINY_OPENCLIP["embed_dim"], CLIPVisionCfg(**TINY_OPENCLIP["vision"]),
                         CLIPTextCfg(**TINY_OPENCLIP["text"]))
        model.logit_scale.data.fill_(math.log(100.0))
        return ClipBackbone(model, tokenizer=open_clip.get_tokenizer("ViT-B-16"))
    name, _, tag = body.partition("/")
    if name not in open_clip.list_models():
        close = difflib.get_close_matches(name, open_clip.list_models(), n=3)
        raise BackboneError(f"config key 'backbone' = {spec!r}: OpenCLIP has no model '{name}'"
                            + (f"; did you mean {', '.join(close)}?" if close else ""))
    tags = open_clip.list_pretrained_tags_by_model(name)
    if tag not in tags:
        raise BackboneError(f"config key 'backbone' = {spec!r}: give the pretrained weights as "
                            f"openclip:{name}/<tag>, tag one of {', '.join(tags)}")
    cache_dir = os.path.expanduser(cache_dir)
    try:
        model = open_clip.create_model(name, pretrained=tag, cache_dir=cache_dir)
    except Exception as e:
        cfg = open_clip.get_pretrained_cfg(name, tag)
        source = cfg.get("url") or f"the Hugging Face hub ({cfg.get('hf_hub')})"
        raise BackboneError(f"OpenCLIP weights {name}/{tag} are not in {cache_dir} and could not be downloaded "
                            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). Fetch them from "
                            f"{source} on a machine with internet into that folder (config key 'clip_cache'), "
                            f"or set 'backbone' to a local checkpoint.") from None
    return ClipBackbone(model, tokenizer=open_clip.get_tokenizer(name))


def load_clip(name: str, cache_dir: str = "~/.cache/clip") -> ClipBackbone:
    """Build a ``ClipBackbone`` (fp32, on CPU) from a model name or checkpoint path (OpenAI
    CLIP), or ``openclip:MODEL/PRETRAINED`` (OpenCLIP)."""
    if name.startswith(OPENCLIP):
        return load_openclip(name, cache_dir)
    clip = import_clip()
    if name in RANDOM_MODELS:
        model = _random_clip(RANDOM_MODELS[name])
    elif name in clip.available_models():
        model = _load_checkpoint(fetch_openai_weights(name, cache_dir))
    elif os.path.isfile(os.path.expanduser(name)):
        model = _load_checkpoint(os.path.expanduser(name))
    else:
        known = list(RANDOM_MODELS) + clip.available_models()
        raise BackboneError(
            f"config key 'backbone' = {name!r} is neither a known model ({', '.join(known)}) "
            f"nor an existing checkpoint file")
    return ClipBackbone(model)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BackboneError(f"config key 'device' = {device!r} but CUDA is not available; use 'cpu' or 'auto'")
    return torch.device(device)


def autocast(device: torch.device, precision: str = "auto"):
    """bf16 autocast with ``precision: bf16`` (an option: faster, a deviation from the
    released numerics); full fp32 otherwise ("auto", "fp32")."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def set_matmul_precision(device: torch.device, precision: str = "auto") -> None:
    """The released numerics (``precision: auto``): fp32 weights and activations, with
    matrix products and convolutions in TF32 on CUDA GPUs that have it (what the released
    code's PyTorch 1.8 did by default on Ampere and newer). ``fp32``: strict fp32 (TF32
    off). Process-wide flags, set when a learner builds its backbone."""
    if device.type == "cuda":
        tf32 = precision in ("auto", "bf16")
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
