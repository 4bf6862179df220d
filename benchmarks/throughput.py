"""Training-step and eval throughput (images/s) and peak GPU memory: fast path vs the
released code's cost structure, measured in the same process.

    python benchmarks/throughput.py                 # ViT-B/16 shapes, random weights, GPU
    python benchmarks/throughput.py --smoke         # tiny CLIP on the CPU, a few steps

Rows:
- train step: LoRA CLIP forward + backward + Adam on one batch. fast = each of
  ``--precisions`` (default: "auto", fp32 with TF32 on CUDA, and the "bf16" option),
  current task's prompts trimmed to their longest; reference = the released numerics
  (fp32, TF32 on CUDA, as the released code ran), all ``--prompts`` prompts at the full 77
  tokens.
- eval: image features of one batch (no grad). fast = each of ``--precisions``,
  ``--eval-batch``; reference = the released numerics, ``--batch``.
- preprocess: 32x32 uint8 -> CLIP input. fast = one batched resize on the device;
  reference = PIL per image in a DataLoader with ``--workers`` processes.
Writes a JSON file (``--out``) with every figure and the device.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Callable, Dict, List

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from toolbox.io import write_json  # noqa: E402
from utils.clip_backbone import autocast, clip_transform, load_clip, resolve_device, set_matmul_precision  # noqa: E402
from utils.clip_ops import compile_image_encoder  # noqa: E402
from utils.lora import apply_lora, lora_parameters  # noqa: E402
from utils.preprocess import DevicePreprocess  # noqa: E402


def timed(fn: Callable[[], None], steps: int, warmup: int, device: torch.device) -> float:
    """Seconds per call of ``fn`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def peak_memory_gb(device: torch.device):
    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def profile_ops(fn: Callable[[], None], device: torch.device, steps: int = 3, top: int = 15) -> List[Dict]:
    """The ``top`` operators by self time (device time on CUDA) over ``steps`` calls of ``fn``:
    where a step's time goes, for the next optimisation."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if getattr(e, attr, 0) > 0]
    events.sort(key=lambda e: getattr(e, attr), reverse=True)
    total = sum(getattr(e, attr) for e in events) or 1.0
    return [{"op": e.key, "ms_per_step": getattr(e, attr) / 1000 / steps, "share": getattr(e, attr) / total,
             "calls_per_step": e.count / steps} for e in events[:top]]


def profile_table(rows: List[Dict]) -> str:
    out = []
    for r in rows:
        if r.get("profile"):
            out += [f"\nprofile: {r['what']} ({r['path']}, batch {r['batch']}), top operators by self time",
                    "| operator | ms / step | share | calls / step |", "|---|---|---|---|"]
            out += [f"| {p['op'][:60]} | {p['ms_per_step']:.2f} | {100 * p['share']:.1f} % "
                    f"| {p['calls_per_step']:.0f} |" for p in r["profile"]]
    return "\n".join(out)


def measure(args) -> List[Dict]:
    device = resolve_device(args.device)
    net = load_clip(args.backbone)
    apply_lora(net)
    if args.compile:
        compile_image_encoder(net)  # applies to both paths; the warm-up steps absorb compilation
    net = net.to(device)
    R = net.input_resolution
    names = [f"class number {i}" for i in range(args.prompts)]
    prompts = [f"a good photo of a {n}." for n in names]
    task_prompts = prompts[-10:]
    opt = torch.optim.Adam(lora_parameters(net), lr=1e-5)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch, 3, R, R, generator=g).to(device)
    eval_images = torch.randn(args.eval_batch, 3, R, R, generator=g).to(device)
    labels = torch.randint(0, 10, (args.batch,), generator=g).to(device)
    rows = []

    def train_step(tokens: torch.Tensor, precision: str, columns: slice) -> Callable[[], None]:
        def step():
            with autocast(device, precision):
                img = net.encode_image(images)
                txt = net.encode_text(tokens)
            logits = 100 * F.normalize(img.float(), dim=1) @ F.normalize(txt.float(), dim=1).t()
            loss = F.cross_entropy(logits[:, columns], labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return step

    def eval_step(batch: torch.Tensor, precision: str) -> Callable[[], None]:
        @torch.no_grad()
        def step():
            with autocast(device, precision):
                net.encode_image(batch)
        return step

    variants = []
    for precision in args.precisions:  # the default numerics (auto: fp32, TF32 on CUDA) and the bf16 option
        set_matmul_precision(device, precision)
        variants += [("train step", f"fast {precision}", args.batch,
                      train_step(net.tokenize(task_prompts).to(device), precision, slice(None))),
                     ("eval", f"fast {precision}", args.eval_batch, eval_step(eval_images, precision))]
    if args.reference:
        variants += [("train step", "reference", args.batch,
                      train_step(net.tokenize(prompts, trim=False).to(device), "auto", slice(-10, None))),
                     ("eval", "reference", args.batch, eval_step(images, "auto"))]
    for what, path, batch, fn in variants:
        set_matmul_precision(device, path.split()[-1] if path.startswith("fast") else "auto")
        net.train(what == "train step")
        reset_peak(device)
        sec = timed(fn, args.steps, args.warmup, device)
        rows.append({"what": what, "path": path, "batch": batch, "images_per_s": batch / sec,
                     "peak_gb": peak_memory_gb(device)})
        if args.profile and path.startswith("fast"):
            rows[-1]["profile"] = profile_ops(fn, device)

    # preprocessing of small images
    raw = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (args.batch * 4, 32, 32, 3), dtype=np.uint8))
    prep = DevicePreprocess(R, device)
    raw_dev = raw.pin_memory() if device.type == "cuda" else raw
    sec = timed(lambda: prep(raw_dev), max(2, args.steps // 4), 1, device)
    rows.append({"what": "preprocess 32->%d" % R, "path": "fast", "batch": len(raw), "images_per_s": len(raw) / sec,
                 "peak_gb": None})
    if args.reference:
        from PIL import Image
        from torch.utils.data import DataLoader, Dataset

        class PILSet(Dataset):
            def __init__(self):
                self.t = clip_transform(R)

            def __len__(self):
                return len(raw)

            def __getitem__(self, i):
                return self.t(Image.fromarray(raw[i].numpy()))

        loader = DataLoader(PILSet(), batch_size=args.batch, num_workers=args.workers)
        start = time.perf_counter()
        for _ in loader:
            pass
        sec = time.perf_counter() - start
        rows.append({"what": "preprocess 32->%d" % R, "path": "reference", "batch": len(raw),
                     "images_per_s": len(raw) / sec, "peak_gb": None})
    return rows


def _gb(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def table(rows: List[Dict]) -> str:
    """One line per fast variant (numerics in brackets), against the reference of the same step."""
    refs = {r["what"]: r for r in rows if r["path"] == "reference"}
    lines = ["| what | fast img/s | reference img/s | speed-up | fast peak GB | reference peak GB |",
             "|---|---|---|---|---|---|"]
    for f in (r for r in rows if r["path"].startswith("fast")):
        ref = refs.get(f["what"])
        label = f["what"] + (f" ({f['path'].split()[1]})" if " " in f["path"] else "")
        ratio = f"{f['images_per_s'] / ref['images_per_s']:.2f}x" if ref else "-"
        lines.append(f"| {label} | {f['images_per_s']:,.0f} | {ref['images_per_s']:,.0f} | {ratio} | "
                     f"{_gb(f['peak_gb'])} | {_gb(ref['peak_gb'])} |" if ref else
                     f"| {label} | {f['images_per_s']:,.0f} | - | - | {_gb(f['peak_gb'])} | - |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="vit-b16-random")
    p.add_argument("--device", default="auto")
    p.add_argument("--precisions", nargs="+", default=["auto", "bf16"], choices=["auto", "fp32", "bf16"],
                   help="numerics of the fast path: auto (fp32, TF32 on CUDA; the default), bf16 (option)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--eval-batch", type=int, default=512)
    p.add_argument("--prompts", type=int, default=100)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--compile", action="store_true", help="torch.compile the image encoder")
    p.add_argument("--no-reference", dest="reference", action="store_false", help="measure the fast path only")
    p.add_argument("--profile", action="store_true", help="also print the top operators of the fast train/eval steps")
    p.add_argument("--smoke", action="store_true", help="tiny CLIP on the CPU, a few steps (for tests)")
    p.add_argument("--out", default="benchmarks/results/throughput.json")
    args = p.parse_args(argv)
    if args.smoke:
        args.backbone, args.device, args.batch, args.eval_batch = "tiny-random", "cpu", 8, 16
        args.steps, args.warmup, args.workers, args.prompts = 2, 1, 0, 20
    torch.manual_seed(0)
    rows = measure(args)
    device = resolve_device(args.device)
    info = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "args": vars(args), "rows": rows}
    print(f"device: {info['device']}, backbone {args.backbone}, batch {args.batch}, eval batch {args.eval_batch}")
    print(table(rows))
    if args.profile:
        print(profile_table(rows))
    write_json(args.out, json.loads(json.dumps(info, default=str)))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
