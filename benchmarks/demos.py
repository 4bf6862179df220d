"""Wall and CPU time of the shipped offline demos (exps/*_demo.json), each a fresh
``python main.py --config <demo>`` process into a temporary log folder, as a user runs it.

    python benchmarks/demos.py                          # every demo, 3 runs each
    python benchmarks/demos.py --only magmax_demo slca_demo --repeat 5
    python benchmarks/demos.py --smoke                  # one demo, one run (for tests)

The demos run on the tiny random CLIP and synthetic images, on the CPU (their configs say
``device: cpu``), so the figures are the machine's CPU speed plus Python's start-up and
imports (about 2 s). Prints min / median / max wall seconds and the CPU seconds of the
median run per demo, and writes JSON (``--out``) after every demo.
"""
from __future__ import annotations

import argparse
import glob
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from toolbox.io import write_json  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def shipped_demos() -> List[str]:
    return sorted(os.path.basename(p)[:-5] for p in glob.glob(os.path.join(ROOT, "exps", "*_demo.json")))


def time_once(demo: str) -> Dict[str, float]:
    """One run of ``demo`` in a child process: wall seconds and the child's user + system CPU seconds."""
    with tempfile.TemporaryDirectory() as logdir:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        done = subprocess.run([sys.executable, os.path.join(ROOT, "main.py"), "--config", demo,
                               "--set", f"logdir={logdir}", "-q"], cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{demo} exited {done.returncode}: {done.stderr.strip()[-500:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", metavar="DEMO", help="demo names (exps/<name>.json); default: all")
    parser.add_argument("--repeat", type=int, default=3, help="runs per demo (default 3)")
    parser.add_argument("--smoke", action="store_true", help="mgclip_demo once (for tests)")
    parser.add_argument("--out", default="demos.json", help="JSON file written after every demo")
    args = parser.parse_args(argv)
    demos = ["mgclip_demo"] if args.smoke else (args.only or shipped_demos())
    unknown = [d for d in demos if d not in shipped_demos()]
    if unknown:
        parser.error(f"--only: no exps/<name>.json for {', '.join(unknown)}; shipped: {', '.join(shipped_demos())}")
    repeat = 1 if args.smoke else args.repeat
    if repeat < 1:
        parser.error("--repeat must be >= 1")
    record = {"machine": {"python": platform.python_version(), "platform": platform.platform(),
                          "cpus": os.cpu_count()}, "repeat": repeat, "demos": {}}
    print(f"{'demo':28s} {'wall min':>9s} {'median':>8s} {'max':>8s} {'CPU (median run)':>17s}")
    for demo in demos:
        runs = [time_once(demo) for _ in range(repeat)]
        walls = [r["wall_s"] for r in runs]
        median_run = sorted(runs, key=lambda r: r["wall_s"])[len(runs) // 2]
        row = {"wall_s": walls, "wall_min_s": min(walls), "wall_median_s": statistics.median(walls),
               "wall_max_s": max(walls), "cpu_median_run_s": median_run["cpu_s"]}
        record["demos"][demo] = row
        print(f"{demo:28s} {row['wall_min_s']:9.1f} {row['wall_median_s']:8.1f} {row['wall_max_s']:8.1f} "
              f"{row['cpu_median_run_s']:17.1f}", flush=True)
        write_json(args.out, record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
