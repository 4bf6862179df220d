"""Whole RAPF, PROOF, L2P++, DualPrompt or CODA-Prompt runs, ours vs the official code's
cost structure, in one process.

    python benchmarks/methods_end_to_end.py                   # RAPF, CIFAR-100 B0 Inc10 stand-in, ViT-B/16 shapes, GPU
    python benchmarks/methods_end_to_end.py --method proof    # PROOF, its official CIFAR-100 values
    python benchmarks/methods_end_to_end.py --method coda     # CODA-Prompt (or l2p, dualprompt), official CIFAR values
    python benchmarks/methods_end_to_end.py --smoke           # tiny CLIP, tiny data, CPU (for tests)

L2P++ / DualPrompt / CODA-Prompt: ours = ``models.prompts`` with ``query_cache: true`` (the
frozen query forward once per image); reference = the same learner with ``query_cache:
false``, which runs the frozen encoder a second time on every training batch and every
evaluated image, as the official ``ViTZoo.forward`` does; both without augmentation (the
cache is exact only then). A third path, ``augmented``, is the default run: the official
random resized crop and flip per image and step (PIL, per image) and the query forward of
every augmented batch. Their official CIFAR-100 values (20 epochs, batch 128, lr 1e-3;
``--epochs`` to shorten).

PROOF: ours = ``models.proof.PROOF`` (features once per image, prompts once per task, no
unreported evaluations); reference = ``benchmarks.proof_reference.ReferencePROOF``.

Workload: CIFAR-100 B0 Inc10 at full size on a synthetic stand-in (50,000 train / 10,000
test 32x32 images, 100 classes, in memory; random weights, so accuracies only show that
both paths run), RAPF's official CIFAR-100 10-10 values (15 epochs, batch 100, beta 2).
ours = ``models.rapf.RAPF`` (frozen features encoded once per image, prompts once per
task, cached Cholesky factors); reference = ``benchmarks.rapf_reference.ReferenceRAPF``
(encoder over the training images every epoch, prompts at 77 tokens every batch, a
Cholesky factorisation per draw), both with the official numerics (fp16 encoder on CUDA).
The reference runs the first ``--reference-tasks`` tasks (0: all) and the speed-up is read
at that task. Prints a table and writes JSON (``--out``) after every run.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.proof_reference import ReferencePROOF  # noqa: E402
from benchmarks.rapf_reference import ReferenceRAPF  # noqa: E402
from models.prompts import L2P, CODAPrompt, DualPrompt  # noqa: E402
from models.proof import PROOF  # noqa: E402
from models.rapf import RAPF  # noqa: E402
from toolbox import registry  # noqa: E402
from toolbox.configs import make_config  # noqa: E402
from toolbox.io import write_json  # noqa: E402
from toolbox.report import run_summary  # noqa: E402
from toolbox.trainer import run_dir_for, run_one  # noqa: E402


class _Limited:
    """Stops before task ``max_tasks`` + 1 and records the wall clock at every task's end."""
    max_tasks: Optional[int] = None
    task_end_s: List[float] = []
    started = 0.0

    def incremental_train(self, dm):
        if self.max_tasks is not None and self._cur_task + 1 >= self.max_tasks:
            raise StopIteration
        super().incremental_train(dm)

    def after_task(self):
        super().after_task()
        _Limited.task_end_s.append(time.perf_counter() - _Limited.started)


class BenchRAPF(_Limited, RAPF):
    pass


class BenchReferenceRAPF(_Limited, ReferenceRAPF):
    pass


class BenchPROOF(_Limited, PROOF):
    pass


class BenchReferencePROOF(_Limited, ReferencePROOF):
    pass


class BenchL2P(_Limited, L2P):
    pass


class BenchDualPrompt(_Limited, DualPrompt):
    pass


class BenchCODAPrompt(_Limited, CODAPrompt):
    pass


PROMPT_METHODS = {"l2p": "BenchL2P", "dualprompt": "BenchDualPrompt", "coda": "BenchCODAPrompt"}


def registered(method: str = "rapf"):
    """The two benchmark learners of ``method`` in the registry while measuring (subclasses:
    they declare the method's options and release)."""
    cls = {"rapf": ("BenchRAPF", "BenchReferenceRAPF"), "proof": ("BenchPROOF", "BenchReferencePROOF"),
           **{m: (c, c) for m, c in PROMPT_METHODS.items()}}[method]  # the reference: query_cache false
    extra = {f"bench_{method}_augmented": f"{__name__}:{cls[0]}"} if method in PROMPT_METHODS else {}
    return registry.registered({f"bench_{method}": f"{__name__}:{cls[0]}",
                                f"bench_{method}_reference": f"{__name__}:{cls[1]}", **extra})


def config(args, model: str) -> Dict[str, Any]:
    smoke = args.smoke
    method = model[len("bench_"):].replace("_reference", "").replace("_augmented", "")
    if method in PROMPT_METHODS:
        # the tiny CLIP's 64-wide keys hold at most 64 CODA components (10 tasks x 6)
        small_pool = {"pool_size": 8, "prompt_length": 4} if smoke else {"pool_size": 60}
        tiny_layers = {"l2p": {}, "dualprompt": {"prompt_layers": [1], "g_prompt_layers": [0]},
                       "coda": {"prompt_layers": [0, 1], **small_pool}}[method]
        return {"model_name": model, "dataset": "synthetic", "synthetic_classes": 8 if smoke else 100,
                "synthetic_train_per_class": 6 if smoke else 500, "synthetic_test_per_class": 3 if smoke else 100,
                "synthetic_image_size": 32, "init_cls": 2 if smoke else 10, "increment": 2 if smoke else 10,
                "backbone": "tiny-random" if smoke else args.backbone, "device": "cpu" if smoke else args.device,
                "seed": 1993, "epochs": 2 if smoke else args.epochs, "lr": 1e-3, "batch_size": 4 if smoke else 128,
                "eval_batch_size": 16 if smoke else 128, "query_cache": model == f"bench_{method}",
                "train_augment": "official" if model.endswith("_augmented") else "none",
                "num_workers": 0 if smoke else args.workers, "preprocess": "device", "prefix": model,
                **(tiny_layers if smoke or args.backbone == "tiny-random" else {})}  # tiny CLIP: 2 blocks
    if model.startswith("bench_proof"):
        return {"model_name": model, "dataset": "synthetic", "synthetic_classes": 8 if smoke else 100,
                "synthetic_train_per_class": 6 if smoke else 500, "synthetic_test_per_class": 3 if smoke else 100,
                "synthetic_image_size": 32, "init_cls": 2 if smoke else 10, "increment": 2 if smoke else 10,
                "backbone": "tiny-random" if smoke else args.backbone, "device": "cpu" if smoke else args.device,
                "seed": 1993, "epochs": 2 if smoke else 5, "lr": 1e-3, "batch_size": 4 if smoke else 64,
                "eval_batch_size": 16 if smoke else (512 if model == "bench_proof" else 64),
                "proof_memory_size": 8 if smoke else 2000, "templates": ["a photo of a {}.", "a sketch of a {}."],
                "num_workers": 0 if smoke else args.workers, "prefix": model}
    return {"model_name": model, "dataset": "synthetic", "synthetic_classes": 8 if smoke else 100,
            "synthetic_train_per_class": 6 if smoke else 500, "synthetic_test_per_class": 3 if smoke else 100,
            "synthetic_image_size": 32, "init_cls": 2 if smoke else 10, "increment": 2 if smoke else 10,
            "backbone": "tiny-random" if smoke else args.backbone, "device": "cpu" if smoke else args.device,
            "seed": 2, "epochs": 2 if smoke else 15, "lr": 1e-3, "batch_size": 4 if smoke else 100,
            "eval_batch_size": 16 if smoke else (512 if model == "bench_rapf" else 128), "beta": 2.0,
            "hard_pair_threshold": 0.55, "mix_bias": 0.6, "num_workers": 0 if smoke else args.workers,
            "preprocess": "device" if model == "bench_rapf" else "pil", "prefix": model}


def run_path(cfg_dict: Dict[str, Any], logdir: str, max_tasks: Optional[int]) -> Dict[str, Any]:
    import json

    _Limited.max_tasks, _Limited.task_end_s, _Limited.started = max_tasks, [], time.perf_counter()
    cfg = make_config({**cfg_dict, "logdir": logdir})
    try:
        run_dir = run_one(cfg, cfg.seeds()[0], summary=run_summary)
    except StopIteration:
        run_dir = None
    wall = time.perf_counter() - _Limited.started
    if run_dir is None:
        run_dir = run_dir_for(cfg, cfg.seeds()[0])
    with open(os.path.join(run_dir, "results.json")) as f:
        results = json.load(f)
    out = {"wall_s": wall, "task_end_s": list(_Limited.task_end_s), "accuracy": results["accuracy"]}
    if "query_images" in results:  # the prompt methods: images through the frozen query forward
        out["query_images"] = results["query_images"]
    return out


def main(argv: List[str] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--method", default="rapf", choices=["rapf", "proof", *PROMPT_METHODS])
    p.add_argument("--epochs", type=int, default=20, help="epochs per task of the prompt methods (official: 20)")
    p.add_argument("--backbone", default="vit-b16-random")
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--reference-tasks", type=int, default=2, help="tasks the reference runs (0: all)")
    p.add_argument("--smoke", action="store_true", help="tiny CLIP and data on the CPU (for tests)")
    p.add_argument("--out", default=None, help="JSON output (default benchmarks/results/<method>_end_to_end.json)")
    args = p.parse_args(argv)
    args.out = args.out or f"benchmarks/results/{args.method}_end_to_end.json"
    import logging

    import torch

    logging.basicConfig(level=logging.WARNING)
    out: Dict[str, Any] = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() and not args.smoke
                           else "cpu", "torch": torch.__version__, "args": vars(args), "paths": {}}
    m = args.method
    with tempfile.TemporaryDirectory() as logdir, registered(m):
        # warm-up (CUDA context, library handles, lazy imports) so the first measured path pays none of it
        warm = config(argparse.Namespace(**{**vars(args), "smoke": True}), f"bench_{m}")
        run_path({**warm, "device": "cpu" if args.smoke else args.device}, os.path.join(logdir, "warm-up"), None)
        paths = [("ours", f"bench_{m}"), ("reference", f"bench_{m}_reference")]
        paths += [("augmented", f"bench_{m}_augmented")] if m in PROMPT_METHODS else []
        for path, model in paths:
            limit = args.reference_tasks if path != "ours" and args.reference_tasks > 0 else None
            out["paths"][path] = run_path(config(args, model), os.path.join(logdir, path), limit)
            write_json(args.out, out)
    ours, ref = out["paths"]["ours"], out["paths"]["reference"]
    k = len(ref["task_end_s"])
    at = ours["task_end_s"][k - 1] if k else ours["wall_s"]
    print(f"| {m.upper()}, CIFAR-100 stand-in | ours s | reference s | speed-up |\n|---|---|---|---|\n"
          f"| first {k} task(s) | {at:.1f} | {ref['task_end_s'][-1] if k else ref['wall_s']:.1f} | "
          f"{(ref['task_end_s'][-1] / at if k and at > 0 else float('nan')):.1f}x |\n"
          f"| all tasks (ours) | {ours['wall_s']:.1f} | - | - |")
    if "query_images" in ours:
        print(f"frozen query forwards (images): ours {ours['query_images']} in all; reference "
              f"{ref['query_images']} in {k or 'all'} task(s)")
    if "augmented" in out["paths"]:  # the default run: official crops and flips, the query forward every step
        aug = out["paths"]["augmented"]
        print(f"augmented (default): {aug['wall_s']:.1f} s, {aug['query_images']} query images, accuracy "
              f"{aug['accuracy']}")
    print(f"device: {out['device']}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    from benchmarks import methods_end_to_end

    sys.exit(methods_end_to_end.main())
