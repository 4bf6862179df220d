"""Whole MG-CLIP runs, fast vs the released code's cost structure, in one process:
wall time per phase (data, probe, train, gap, features, classifier, eval).

    python benchmarks/end_to_end.py                       # both workloads, ViT-B/16 shapes, GPU
    python benchmarks/end_to_end.py --workloads cifar     # one of them
    python benchmarks/end_to_end.py --reference-tasks 0   # the reference runs every task too
    python benchmarks/end_to_end.py --smoke               # tiny CLIP, tiny data, CPU (for tests)

Workloads (random weights: the accuracies only show that both paths run the same method):
- ``cifar``: CIFAR-100 B0 Inc10 at full size on a synthetic stand-in (50,000 train /
  10,000 test 32x32 images, 100 classes, in memory), CIFAR recipe, a 2-epoch probe and
  then E = 1 epoch per task.
- ``imagenet_r``: an ImageNet-R-shaped set written as real JPEG folders (200 classes,
  120 train / 30 test 256-px images each) and read through the ``imagenet_r`` dataset, so
  decoding (and its one-time cache) is measured; ImageNet-R recipe, 2-epoch probe, E = 2.
fast = the default numerics (``--precision auto``: fp32, TF32 matrix products on CUDA; or
``bf16``), device preprocessing, decode cache, eval batch 512;
reference = ``benchmarks.reference.ReferenceMGCLIP`` in the released numerics (fp32, TF32
on CUDA, as the released code ran), PIL preprocessing, eval batch as released.

The reference takes minutes per workload on a GPU (the released code needs about 8 min for
CIFAR-100 and 11 min for ImageNet-R on an H100), so by default it runs the first
``--reference-tasks`` (3) tasks, probe included, and the speed-up is taken at that same
task of the fast run: both wall clocks are read at the end of every task. The fast path
always runs every task. Prints a table and writes JSON (``--out``) after every run, so a
stopped benchmark keeps what it measured.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.reference import ReferenceMGCLIP  # noqa: E402
from models.mgclip import MGCLIP  # noqa: E402
from toolbox.configs import make_config  # noqa: E402
from toolbox.io import write_json  # noqa: E402
from toolbox.registry import registered  # noqa: E402
from toolbox.report import run_summary  # noqa: E402
from toolbox.trainer import run_dir_for, run_one  # noqa: E402

PHASES = ["data", "probe", "train", "gap", "features", "classifier", "eval"]


class StopBenchmark(Exception):
    """Raised at the start of the task after the last one to run (``_FixedBudget.max_tasks``)."""


class _FixedBudget:
    """Run the probe for its cost, then train the workload's fixed E (``fixed_epochs``):
    with random weights the probe's own choice would make the two paths incomparable.
    Records the wall clock at the end of each task (``task_end_s``, from ``started``) and
    stops before task ``max_tasks`` + 1 (None: run all)."""

    fixed_epochs = 1
    max_tasks = None
    started = 0.0
    task_end_s: List[float] = []

    def _probe_epochs(self):
        ref = super()._probe_epochs()
        self.epochs = self.record["epochs"]["chosen"] = _FixedBudget.fixed_epochs
        return ref

    def incremental_train(self, data_manager):
        if _FixedBudget.max_tasks is not None and self._cur_task + 1 >= _FixedBudget.max_tasks:
            raise StopBenchmark()
        return super().incremental_train(data_manager)

    def after_task(self):
        super().after_task()
        _FixedBudget.task_end_s.append(time.perf_counter() - _FixedBudget.started)


class BenchFast(_FixedBudget, MGCLIP):
    pass


class BenchReference(_FixedBudget, ReferenceMGCLIP):
    pass


# both are MG-CLIP subclasses (its options and release): registered only while measuring (main)
LEARNERS = {"bench_fast": "benchmarks.end_to_end:BenchFast", "bench_reference": "benchmarks.end_to_end:BenchReference"}


def _write_class(job) -> None:
    """One class's train and test JPEGs (a process-pool job)."""
    from PIL import Image

    root, c, train, test, size = job
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    rng = np.random.default_rng(c)
    colour, angle, freq = rng.uniform(0.15, 0.85, 3), rng.uniform(0, np.pi), rng.uniform(1.5, 5.0)
    for split, n in (("train", train), ("test", test)):
        folder = os.path.join(root, split, f"n{c:08d}")
        os.makedirs(folder, exist_ok=True)
        for i in range(n):
            stripes = np.sin(2 * np.pi * freq * (np.cos(angle) * xx + np.sin(angle) * yy) + rng.uniform(0, 6.3))
            img = np.clip(colour + 0.25 * stripes[..., None] + rng.normal(0, 0.05, (size, size, 3)), 0, 1)
            Image.fromarray((img * 255).astype(np.uint8)).save(os.path.join(folder, f"{i}.jpg"), quality=90)


def write_jpeg_folders(root: str, classes: int, train: int, test: int, size: int, workers: int = 0) -> str:
    """ImageNet-R-shaped folders of class-coloured striped JPEGs (kept between runs; the
    same files whatever ``workers``, the number of writing processes)."""
    done = os.path.join(root, f".complete_{classes}_{train}_{test}_{size}")
    if os.path.exists(done):
        return root
    jobs = [(root, c, train, test, size) for c in range(classes)]
    if workers > 1:
        from multiprocessing import get_context

        with get_context("spawn").Pool(workers) as pool:
            pool.map(_write_class, jobs)
    else:
        for job in jobs:
            _write_class(job)
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
                                  6 if smoke else 120, 3 if smoke else 30, 64 if smoke else 256, args.workers)
        names = os.path.join(args.data_dir, f"class_names_{4 if smoke else 200}.txt")  # wnid folders need names
        with open(names, "w") as f:
            f.write("".join(f"striped pattern {c}\n" for c in range(4 if smoke else 200)))
        base = {**common, "dataset": "imagenet_r", "data_path": os.path.dirname(root), "class_names": names,
                "init_cls": 2 if smoke else 20, "increment": 2 if smoke else 20, "lr": 1e-3, "batch_size": 64,
                "visual_lr": 5e-4, "visual_batch_size": 32, "bench_epochs": 2}
        ref_eval = 32
    fast = {**base, "model_name": "bench_fast", "precision": args.precision, "preprocess": "device",
            "eval_batch_size": 32 if smoke else 512, "cache_images": "true", "compile": bool(args.compile)}
    reference = {**base, "model_name": "bench_reference", "precision": "auto", "preprocess": "pil",
                 "eval_batch_size": ref_eval, "cache_images": "false"}
    return {"fast": fast, "reference": reference}


def run_path(args_dict: Dict[str, Any], logdir: str, max_tasks: Optional[int] = None) -> Dict[str, Any]:
    """One MG-CLIP run (at most ``max_tasks`` tasks): wall time, per-phase times at every
    task's end (``data`` = the rest: data loading and decoding, model build, bookkeeping)."""
    args_dict = dict(args_dict)
    _FixedBudget.fixed_epochs = int(args_dict.pop("bench_epochs"))
    _FixedBudget.max_tasks, _FixedBudget.task_end_s = max_tasks, []
    cfg = make_config({**args_dict, "logdir": logdir})
    _FixedBudget.started = start = time.perf_counter()
    try:
        run_one(cfg, cfg.seeds()[0], summary=run_summary)
    except StopBenchmark:
        pass
    wall = time.perf_counter() - start
    with open(os.path.join(run_dir_for(cfg, cfg.seeds()[0]), "results.json")) as f:
        results = json.load(f)
    per_task = []
    for end_s, timing in zip(_FixedBudget.task_end_s, results["timings"]["per_task"]):
        phases = dict(timing.get("phases_cumulative_s", {}))
        phases["data"] = end_s - sum(phases.values())
        per_task.append({"wall_s": end_s, "phases_s": phases})
    return {"wall_s": wall, "tasks": len(per_task), "nb_tasks": results["nb_tasks"], "per_task": per_task,
            "phases_s": per_task[-1]["phases_s"], "accuracy": results["accuracy"], "last": results["last"],
            "avg": results["avg"], "epochs": results["epochs"]["chosen"]}


def compare_at(res: Dict[str, Dict[str, Any]]) -> Optional[int]:
    """The task count at which fast and reference are compared (the reference's last)."""
    r = res.get("reference")
    return None if r is None else min(r["tasks"], res["fast"]["tasks"])


def table(name: str, res: Dict[str, Dict[str, Any]]) -> str:
    f, r = res["fast"], res.get("reference")
    k = compare_at(res)
    head = f"### {name}: fast, all {f['tasks']} tasks: {f['wall_s']:.1f} s"
    if k is None:
        lines = ["| phase | fast s |", "|---|---|"]
        lines += [f"| {ph} | {f['phases_s'].get(ph, 0.0):.1f} |" for ph in PHASES]
        return head + "\n" + "\n".join(lines) + f"\nLast: fast {f['last']:.2f}"
    fk, rk = f["per_task"][k - 1], r["per_task"][k - 1]
    lines = [f"| first {k} of {f['nb_tasks']} tasks | fast s | reference s | speed-up |", "|---|---|---|---|"]
    for ph in PHASES + ["total"]:
        fv = fk["wall_s"] if ph == "total" else fk["phases_s"].get(ph, 0.0)
        rv = rk["wall_s"] if ph == "total" else rk["phases_s"].get(ph, 0.0)
        ratio = f"{rv / fv:.1f}x" if fv > 0 else "-"
        lines.append(f"| {ph} | {fv:.1f} | {rv:.1f} | {ratio} |")
    acc = (f"accuracy after task {k}: fast {f['accuracy'][k - 1]:.2f}, "
           f"reference {r['accuracy'][k - 1]:.2f}; Last (fast): {f['last']:.2f}")
    return head + "\n" + "\n".join(lines) + f"\n{acc}"


def main(argv: List[str] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workloads", nargs="+", default=["cifar", "imagenet_r"], choices=["cifar", "imagenet_r"])
    p.add_argument("--backbone", default="vit-b16-random")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                   help="numerics of the fast path: auto (fp32, TF32 on CUDA; the default) or bf16 (option)")
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--probe-epochs", type=int, default=2)
    p.add_argument("--no-reference", dest="reference", action="store_false")
    p.add_argument("--reference-tasks", type=int, default=3,
                   help="tasks the reference runs (0: all); the speed-up is read at that task")
    p.add_argument("--compile", action="store_true", help="compile: true for the fast path")
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
    with tempfile.TemporaryDirectory() as logdir, registered(LEARNERS):
        # warm-up (CUDA context, library handles, lazy imports) so the first measured path pays none of it
        warm = workload_configs("cifar", argparse.Namespace(**{**vars(args), "smoke": True}))["fast"]
        run_path({**warm, "device": "cpu" if args.smoke else args.device}, os.path.join(logdir, "warm-up"))
        for name in args.workloads:
            cfgs = workload_configs(name, args)
            res = out["workloads"][name] = {}
            for path in ("fast", "reference") if args.reference else ("fast",):
                limit = args.reference_tasks if path == "reference" and args.reference_tasks > 0 else None
                res[path] = run_path(cfgs[path], logdir, limit)
                write_json(args.out, out)  # what is measured so far survives a stopped benchmark
            print(table(name, res), flush=True)
    print(f"device: {out['device']}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    # run the imported module's main: the factory builds learners from ``benchmarks.end_to_end``,
    # and the budget settings must live on that module's classes, not on a second copy here
    from benchmarks import end_to_end

    sys.exit(end_to_end.main())
