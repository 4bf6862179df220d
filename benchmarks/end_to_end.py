"""Whole MG-CLIP runs, fast vs the released code's cost structure, in one process:
wall time per phase (data, probe, train, gap, features, classifier, eval).

    python benchmarks/end_to_end.py                       # both workloads, ViT-B/16 shapes, GPU
    python benchmarks/end_to_end.py --workloads cifar     # one of them
    python benchmarks/end_to_end.py --smoke               # tiny CLIP, tiny data, CPU (for tests)

Workloads (random weights: the accuracies only show that both paths run the same method):
- ``cifar``: CIFAR-100 B0 Inc10 at full size on a synthetic stand-in (50,000 train /
  10,000 test 32x32 images, 100 classes, in memory), CIFAR recipe, a 2-epoch probe and
  then E = 1 epoch per task.
- ``imagenet_r``: an ImageNet-R-shaped set written as real JPEG folders (200 classes,
  120 train / 30 test 256-px images each) and read through the ``imagenet_r`` dataset, so
  decoding (and its one-time cache) is measured; ImageNet-R recipe, 2-epoch probe, E = 2.
fast = bf16 autocast on CUDA, device preprocessing, decode cache, eval batch 512;
reference = ``benchmarks.reference.ReferenceMGCLIP``, fp32, PIL preprocessing, eval batch
as released. Prints a table and writes JSON (``--out``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Any, Dict, List

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.reference import ReferenceMGCLIP  # noqa: E402
from models.mgclip import MGCLIP  # noqa: E402
from utils import factory  # noqa: E402
from utils.config import Config  # noqa: E402
from utils.io import write_json  # noqa: E402
from utils.trainer import run_one  # noqa: E402

PHASES = ["data", "probe", "train", "gap", "features", "classifier", "eval"]


class _FixedBudget:
    """Run the probe for its cost, then train the workload's fixed E (``fixed_epochs``):
    with random weights the probe's own choice would make the two paths incomparable."""

    fixed_epochs = 1

    def _probe_epochs(self):
        ref = super()._probe_epochs()
        self.epochs = self.record["epochs"]["chosen"] = _FixedBudget.fixed_epochs
        return ref


class BenchFast(_FixedBudget, MGCLIP):
    pass


class BenchReference(_FixedBudget, ReferenceMGCLIP):
    pass


factory.LEARNERS["bench_fast"] = "benchmarks.end_to_end:BenchFast"
factory.LEARNERS["bench_reference"] = "benchmarks.end_to_end:BenchReference"


def write_jpeg_folders(root: str, classes: int, train: int, test: int, size: int) -> str:
    """ImageNet-R-shaped folders of class-coloured striped JPEGs (kept between runs)."""
    from PIL import Image

    done = os.path.join(root, f".complete_{classes}_{train}_{test}_{size}")
    if os.path.exists(done):
        return root
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for c in range(classes):
        rng = np.random.default_rng(c)
        colour, angle, freq = rng.uniform(0.15, 0.85, 3), rng.uniform(0, np.pi), rng.uniform(1.5, 5.0)
        for split, n in (("train", train), ("test", test)):
            folder = os.path.join(root, split, f"n{c:08d}")
            os.makedirs(folder, exist_ok=True)
            for i in range(n):
                stripes = np.sin(2 * np.pi * freq * (np.cos(angle) * xx + np.sin(angle) * yy) + rng.uniform(0, 6.3))
                img = np.clip(colour + 0.25 * stripes[..., None] + rng.normal(0, 0.05, (size, size, 3)), 0, 1)
                Image.fromarray((img * 255).astype(np.uint8)).save(os.path.join(folder, f"{i}.jpg"), quality=90)
    open(done, "w").close()
    return root


def workload_configs(name: str, args) -> Dict[str, Dict[str, Any]]:
    smoke = args.smoke
    common = {"backbone": "tiny-random" if smoke else args.backbone, "device": "cpu" if smoke else args.device,
              "seed": 0, "epochs": "auto", "probe_max_epochs": args.probe_epochs, "prefix": name,
              "num_workers": 0 if smoke else args.workers, "track_gap": False}
    if name == "cifar":
        base = {**common, "dataset": "synthetic", "synthetic_classes": 20 if smoke else 100,
                "synthetic_train_per_class": 8 if smoke else 500, "synthetic_test_per_class": 4 if smoke else 100,
                "synthetic_image_size": 32, "init_cls": 10, "increment": 10, "lr": 1e-3, "batch_size": 128,
                "visual_lr": 5e-4, "visual_batch_size": 64, "bench_epochs": 1}
        ref_eval = 128
    else:
        root = write_jpeg_folders(os.path.join(args.data_dir, "imagenet-r"), 4 if smoke else 200,
                                  6 if smoke else 120, 3 if smoke else 30, 64 if smoke else 256)
        base = {**common, "dataset": "imagenet_r", "data_path": os.path.dirname(root),
                "init_cls": 2 if smoke else 20, "increment": 2 if smoke else 20, "lr": 1e-3, "batch_size": 64,
                "visual_lr": 5e-4, "visual_batch_size": 32, "bench_epochs": 2}
        ref_eval = 32
    fast = {**base, "model_name": "bench_fast", "precision": "auto", "preprocess": "device",
            "eval_batch_size": 32 if smoke else 512, "cache_images": "true"}
    reference = {**base, "model_name": "bench_reference", "precision": "fp32", "preprocess": "pil",
                 "eval_batch_size": ref_eval, "cache_images": "false"}
    return {"fast": fast, "reference": reference}


def run_path(args_dict: Dict[str, Any], logdir: str) -> Dict[str, Any]:
    args_dict = dict(args_dict)
    _FixedBudget.fixed_epochs = int(args_dict.pop("bench_epochs"))
    cfg = Config.from_dict({**args_dict, "logdir": logdir})
    start = time.perf_counter()
    run_dir = run_one(cfg, cfg.seeds()[0])
    wall = time.perf_counter() - start
    with open(os.path.join(run_dir, "results.json")) as f:
        results = json.load(f)
    phases = dict(results["timings"]["per_task"][-1].get("phases_cumulative_s", {}))
    phases["data"] = wall - sum(phases.values())  # data loading / decoding, model build, bookkeeping
    return {"wall_s": wall, "phases_s": phases, "last": results["last"], "avg": results["avg"],
            "epochs": results["epochs"]["chosen"]}


def table(name: str, res: Dict[str, Dict[str, Any]]) -> str:
    f, r = res["fast"], res.get("reference")
    lines = ["| phase | fast s | reference s | speed-up |", "|---|---|---|---|"]
    for ph in PHASES + ["total"]:
        fv = f["wall_s"] if ph == "total" else f["phases_s"].get(ph, 0.0)
        rv = None if r is None else (r["wall_s"] if ph == "total" else r["phases_s"].get(ph, 0.0))
        ratio = f"{rv / fv:.1f}x" if rv is not None and fv > 0 else "-"
        lines.append(f"| {ph} | {fv:.1f} | {'-' if rv is None else f'{rv:.1f}'} | {ratio} |")
    acc = f"Last: fast {f['last']:.2f}" + (f", reference {r['last']:.2f}" if r else "")
    return f"### {name}\n" + "\n".join(lines) + f"\n{acc}"


def main(argv: List[str] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workloads", nargs="+", default=["cifar", "imagenet_r"], choices=["cifar", "imagenet_r"])
    p.add_argument("--backbone", default="vit-b16-random")
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--probe-epochs", type=int, default=2)
    p.add_argument("--no-reference", dest="reference", action="store_false")
    p.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(), "mgclip_bench"))
    p.add_argument("--smoke", action="store_true", help="tiny CLIP and data on the CPU (for tests)")
    p.add_argument("--out", default="benchmarks/results/end_to_end.json")
    args = p.parse_args(argv)
    if args.smoke:
        args.data_dir = os.path.join(args.data_dir, "smoke")
    import logging

    import torch

    logging.basicConfig(level=logging.WARNING)
    out: Dict[str, Any] = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() and not args.smoke
                           else "cpu", "torch": torch.__version__, "args": vars(args), "workloads": {}}
    with tempfile.TemporaryDirectory() as logdir:
        # warm-up (CUDA context, library handles, lazy imports) so the first measured path pays none of it
        warm = workload_configs("cifar", argparse.Namespace(**{**vars(args), "smoke": True}))["fast"]
        run_path({**warm, "device": "cpu" if args.smoke else args.device}, logdir)
        for name in args.workloads:
            cfgs = workload_configs(name, args)
            res = {"fast": run_path(cfgs["fast"], logdir)}
            if args.reference:
                res["reference"] = run_path(cfgs["reference"], logdir)
            out["workloads"][name] = res
            print(table(name, res), flush=True)
    write_json(args.out, out)
    print(f"device: {out['device']}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
