"""MagMax's merge on ViT-B/16 shapes: memory held and time per task, the running
max-magnitude vector (this toolbox, models/magmax.py) against the official code's cost
structure (one saved encoder per task; after task t the task vectors of tasks 1..t loaded
and merged anew, ``merge_max_abs`` over the list), measured in the same process.

    python benchmarks/magmax_memory.py                    # ViT-B/16 shapes, random weights, CPU, 10 tasks
    python benchmarks/magmax_memory.py --tasks 20
    python benchmarks/magmax_memory.py --smoke            # tiny CLIP, a second

No training is timed: each task's fine-tuned encoder is the pre-trained one plus seeded
Gaussian noise (the merge does not care how the weights were reached). Memory is the bytes
of the image-encoder tensors each approach holds at its peak (counted, exact), not a
process measurement; the official code also writes one encoder per task to disk (its
``finetuned_{t}.pt``), counted as disk bytes. Both merges are checked equal, bit for bit,
after every task. GPU memory and time: not measured here (no GPU in the session that wrote it).
Writes a JSON file (``--out``) with every figure.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from typing import Dict, List

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from models.magmax import float_state, max_magnitude, merge_step  # noqa: E402
from toolbox.io import write_json  # noqa: E402
from utils.clip_backbone import load_clip  # noqa: E402

State = Dict[str, torch.Tensor]


def nbytes(state: State) -> int:
    return sum(v.numel() * v.element_size() for v in state.values())


def fine_tuned(theta0: State, task: int, scale: float = 1e-3) -> State:
    g = torch.Generator().manual_seed(task)
    return {k: v + scale * torch.randn(v.shape, generator=g) for k, v in theta0.items()}


def main(argv: List[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10)
    parser.add_argument("--smoke", action="store_true", help="tiny random CLIP instead of ViT-B/16 shapes")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=os.path.join("benchmarks", "results", "magmax_memory.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    backbone = "tiny-random" if args.smoke else "vit-b16-random"
    theta0 = float_state(load_clip(backbone).model.visual)
    encoder = nbytes(theta0)
    params = sum(v.numel() for v in theta0.values())
    largest = max(v.numel() * v.element_size() for v in theta0.values())

    rows = []
    running: State = {}
    saved: List[State] = []  # the official code's per-task checkpoints (on disk there; here in memory to merge)
    for t in range(args.tasks):
        theta_t = fine_tuned(theta0, t)
        # this toolbox: fold tau_t into the running vector, then theta_0 + 0.5 * merge into the network
        start = time.perf_counter()
        network = {k: v.clone() for k, v in theta_t.items()}  # the encoder as training left it
        for k in theta0:  # as models/magmax.py MagMax._merge and _load_merged: key by key
            running[k] = merge_step(running.get(k), theta_t[k] - theta0[k])
            network[k].copy_(theta0[k] + 0.5 * running[k])
        ours_s = time.perf_counter() - start
        # official: task vectors of every saved encoder so far, merged from scratch
        saved.append(theta_t)
        start = time.perf_counter()
        taus = [{k: s[k] - theta0[k] for k in theta0} for s in saved]
        merged_official = {k: theta0[k] + 0.5 * v for k, v in max_magnitude(taus).items()}
        official_s = time.perf_counter() - start
        equal = all(torch.equal(network[k], merged_official[k]) for k in theta0)
        # peak bytes held: ours = network, theta_0, theta_t, running vector (4 encoders) + one key's
        # temporaries (tau, the new entry, theta_0 + 0.5 * entry); official merge step = the model loaded,
        # theta_0, t task vectors, the running max of merge_max_abs, the merged model (t + 3 encoders and more:
        # its TaskVector also loads each fine-tuned checkpoint once)
        ours_peak = 4 * encoder + 3 * largest
        rows.append({"task": t + 1, "ours_s": ours_s, "official_s": official_s, "equal": equal,
                     "ours_bytes": ours_peak, "official_bytes": (len(saved) + 3) * encoder,
                     "official_disk_bytes": len(saved) * encoder})
        del taus, merged_official, network
        print(f"task {t + 1:3d}: ours {ours_s:7.3f} s  official {official_s:7.3f} s  "
              f"held ours {ours_peak / 2**20:8.1f} MiB  official {(len(saved) + 3) * encoder / 2**20:8.1f} MiB  "
              f"equal {equal}", flush=True)
        if not equal:
            print("the running merge differs from the official merge", file=sys.stderr)
            return 1

    print("\n| tasks | encoder MiB | ours: s per task (mean) | official: s per task (mean) | ours peak MiB | "
          "official peak MiB | official disk MiB |")
    print("|---|---|---|---|---|---|---|")
    mean = lambda key: sum(r[key] for r in rows) / len(rows)  # noqa: E731
    print(f"| {args.tasks} | {encoder / 2**20:.1f} | {mean('ours_s'):.3f} | {mean('official_s'):.3f} | "
          f"{rows[-1]['ours_bytes'] / 2**20:.1f} | {rows[-1]['official_bytes'] / 2**20:.1f} | "
          f"{rows[-1]['official_disk_bytes'] / 2**20:.1f} |")
    write_json(args.out, {"backbone": backbone, "device": "cpu", "threads": args.threads, "tasks": args.tasks,
                          "encoder_parameters": params, "encoder_bytes": encoder, "rows": rows,
                          "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
                          "gpu": "not measured"})
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
