"""bf16 autocast (an option) against the default numerics (``precision: auto``: fp32, TF32
matrix products on CUDA), on the same MG-CLIP work in one process.

    python benchmarks/numerics.py            # ViT-B/16 shapes, random weights, GPU
    python benchmarks/numerics.py --smoke    # tiny CLIP, tiny data, CPU (for tests)

- features: one batch of images encoded in strict fp32, in the default numerics and in
  bf16; cosine and largest absolute difference of the normalised features, each against
  strict fp32 and bf16 against the default;
- a whole run per numerics on the synthetic learnable data (same seed, data, class order):
  the gap statistic after every probe epoch, the chosen E, the accuracy after every task,
  Avg and Last (fused, text, visual) and the wall time.
Prints the tables and writes JSON (``--out``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Any, Dict, List

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from toolbox.configs import make_config  # noqa: E402
from toolbox.io import write_json  # noqa: E402
from toolbox.report import run_summary  # noqa: E402
from toolbox.trainer import run_one  # noqa: E402
from utils.clip_backbone import autocast, load_clip, resolve_device, set_matmul_precision  # noqa: E402

PRECISIONS = ("auto", "bf16")


@torch.no_grad()
def feature_agreement(backbone: str, device: torch.device, batch: int) -> Dict[str, Dict[str, float]]:
    """Normalised image features of one batch in each numerics, compared pairwise."""
    net = load_clip(backbone).to(device).eval()
    R = net.input_resolution
    images = torch.randn(batch, 3, R, R, generator=torch.Generator().manual_seed(0)).to(device)
    feats = {}
    for precision in ("fp32",) + PRECISIONS:
        set_matmul_precision(device, precision)
        with autocast(device, precision):
            feats[precision] = F.normalize(net.encode_image(images).float(), dim=1)
    set_matmul_precision(device, "auto")
    out = {}
    for a, b in (("auto", "fp32"), ("bf16", "fp32"), ("bf16", "auto")):
        cos = (feats[a] * feats[b]).sum(1)
        out[f"{a} vs {b}"] = {"cos_min": float(cos.min()), "cos_mean": float(cos.mean()),
                              "max_abs_diff": float((feats[a] - feats[b]).abs().max())}
    return out


def run_config(args, precision: str, logdir: str) -> Dict[str, Any]:
    smoke = args.smoke
    return {"model_name": "mgclip", "dataset": "synthetic", "synthetic_classes": 6 if smoke else 50,
            "synthetic_train_per_class": 8 if smoke else 100, "synthetic_test_per_class": 4 if smoke else 20,
            "synthetic_image_size": 32, "init_cls": 2 if smoke else 10, "increment": 2 if smoke else 10,
            "backbone": args.backbone, "device": args.device, "seed": 1993, "epochs": "auto",
            "probe_max_epochs": 3 if smoke else args.probe_epochs, "lr": args.lr,
            "batch_size": 8 if smoke else 64, "eval_batch_size": 32 if smoke else 256,
            "visual_batch_size": 8 if smoke else 64, "num_workers": 0 if smoke else args.workers,
            "precision": precision, "prefix": precision, "logdir": logdir}


def whole_run(args, precision: str, logdir: str) -> Dict[str, Any]:
    cfg = make_config(run_config(args, precision, logdir))
    start = time.perf_counter()
    run_dir = run_one(cfg, cfg.seeds()[0], summary=run_summary)
    wall = time.perf_counter() - start
    with open(os.path.join(run_dir, "results.json")) as f:
        r = json.load(f)
    return {"wall_s": wall, "epochs": r["epochs"]["chosen"], "neg0": r["epochs"].get("neg0"),
            "probe": [{"epoch": p["epoch"], "neg": p["neg"], "change": p["change"]} for p in r["epochs"]["probe"]],
            "accuracy": r["accuracy"], "avg": r["avg"], "last": r["last"],
            "text_last": r["task_metrics"]["text_accuracy"][-1],
            "visual_last": (r["task_metrics"].get("visual_accuracy") or [None])[-1]}


def tables(result: Dict[str, Any]) -> str:
    lines = ["features (normalised), one batch", "| pair | cos min | cos mean | max abs diff |", "|---|---|---|---|"]
    lines += [f"| {pair} | {v['cos_min']:.6f} | {v['cos_mean']:.6f} | {v['max_abs_diff']:.2e} |"
              for pair, v in result["features"].items()]
    a, b = (result["runs"][p] for p in PRECISIONS)
    lines += ["", "gap statistic (mean non-target logit) per probe epoch",
              "| epoch | auto | bf16 | bf16 - auto |", "|---|---|---|---|",
              f"| 0 (LoRA off) | {a['neg0']:.4f} | {b['neg0']:.4f} | {b['neg0'] - a['neg0']:+.4f} |"]
    for i in range(max(len(a["probe"]), len(b["probe"]))):
        va = a["probe"][i]["neg"] if i < len(a["probe"]) else None
        vb = b["probe"][i]["neg"] if i < len(b["probe"]) else None
        diff = f"{vb - va:+.4f}" if va is not None and vb is not None else "-"
        cells = ["-" if v is None else f"{v:.4f}" for v in (va, vb)]
        lines.append(f"| {i + 1} | {cells[0]} | {cells[1]} | {diff} |")

    def fmt(x):
        return "-" if x is None else f"{x:.2f}"

    lines += ["", "whole runs", "| numerics | E | accuracy per task | Avg | Last | text Last | visual Last | wall s |",
              "|---|---|---|---|---|---|---|---|"]
    for p in PRECISIONS:
        r = result["runs"][p]
        lines.append(f"| {p} | {r['epochs']} | {' '.join(f'{x:.1f}' for x in r['accuracy'])} | {fmt(r['avg'])} | "
                     f"{fmt(r['last'])} | {fmt(r['text_last'])} | {fmt(r['visual_last'])} | {r['wall_s']:.1f} |")
    return "\n".join(lines)


def main(argv: List[str] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="vit-b16-random")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch", type=int, default=256, help="images in the feature comparison")
    p.add_argument("--probe-epochs", type=int, default=6)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--smoke", action="store_true", help="tiny CLIP, tiny data, CPU (for tests)")
    p.add_argument("--out", default="benchmarks/results/numerics.json")
    args = p.parse_args(argv)
    if args.smoke:
        args.backbone, args.device, args.batch, args.lr = "tiny-random", "cpu", 16, 0.02
    device = resolve_device(args.device)
    result: Dict[str, Any] = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                              "torch": torch.__version__, "args": vars(args),
                              "features": feature_agreement(args.backbone, device, args.batch), "runs": {}}
    with tempfile.TemporaryDirectory() as logdir:
        for precision in PRECISIONS:
            result["runs"][precision] = whole_run(args, precision, logdir)
    print(f"device: {result['device']}, backbone {args.backbone}")
    print(tables(result))
    write_json(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
