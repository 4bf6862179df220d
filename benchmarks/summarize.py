"""One table from a folder of GPU measurements (the JSON files ``gpu.sh`` writes), each
figure beside its target, ready for docs/performance.md.

    python benchmarks/summarize.py benchmarks/results/<date>-<gpu>/

Reads whichever of throughput.json, throughput_compiled.json, end_to_end_cifar.json,
end_to_end_imagenet_r.json, numerics.json, rapf_end_to_end.json, proof_end_to_end.json
are there (a missing one is listed as not measured), prints the table and writes it to
``summary.md`` in the folder.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict, List, Optional, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.end_to_end import compare_at  # noqa: E402
from toolbox.io import write_text  # noqa: E402

# The performance issue's targets on one H100: (measure, bound, at least?)
TARGETS = {
    ("train step", "fast bf16"): (2500.0, True),
    ("eval", "fast bf16"): (8000.0, True),
    "cifar wall": (60.0, False),
    "cifar speed-up": (8.0, True),
    "imagenet_r wall": (90.0, False),
}
FILES = ("throughput", "throughput_compiled", "end_to_end_cifar", "end_to_end_imagenet_r", "numerics",
         "rapf_end_to_end", "proof_end_to_end")


def _read(folder: str, name: str) -> Optional[Dict[str, Any]]:
    path = os.path.join(folder, name + ".json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def _judge(value: float, target: Optional[Tuple[float, bool]]) -> Tuple[str, str]:
    """(target text, met text) for a figure."""
    if target is None:
        return "-", "-"
    bound, at_least = target
    met = value >= bound if at_least else value <= bound
    return f"{'>=' if at_least else '<='} {bound:g}", "yes" if met else "**no**"


def rows(folder: str) -> Tuple[List[Tuple[str, str, str, str]], List[str], List[str]]:
    """(measure, figure, target, met) rows; the devices named in the files; the files missing."""
    out, devices, missing = [], [], []
    data = {name: _read(folder, name) for name in FILES}
    for name, d in data.items():
        if d is None:
            missing.append(name)
        elif d.get("device") not in devices:
            devices.append(d.get("device"))

    def add(measure: str, value: float, unit: str, target=None, digits: int = 0) -> None:
        out.append((measure, f"{value:,.{digits}f}{unit}", *_judge(value, target)))

    for name, label in (("throughput", ""), ("throughput_compiled", ", compiled")):
        for r in (data[name] or {}).get("rows", []):
            numerics = f" ({r['path'].split()[1]})" if r["path"].startswith("fast ") else f" ({r['path']})"
            target = TARGETS.get((r["what"], r["path"])) if not label else None
            add(f"{r['what']}{numerics}{label}, batch {r['batch']}", r["images_per_s"], " img/s", target)
    for workload in ("cifar", "imagenet_r"):
        d = data[f"end_to_end_{workload}"]
        if d is None:
            continue
        res = d["workloads"][workload]
        fast = res["fast"]
        add(f"{workload} end to end, fast, all {fast['tasks']} tasks", fast["wall_s"], " s",
            TARGETS.get(f"{workload} wall"), 1)
        k = compare_at(res)
        if k:
            ratio = res["reference"]["per_task"][k - 1]["wall_s"] / fast["per_task"][k - 1]["wall_s"]
            add(f"{workload} speed-up over the reference, first {k} of {fast['nb_tasks']} tasks", ratio, "x",
                TARGETS.get(f"{workload} speed-up"), 1)
    for method in ("rapf", "proof"):
        d = data[f"{method}_end_to_end"]
        if d is None:
            continue
        ours, ref = d["paths"]["ours"], d["paths"].get("reference")
        add(f"{method.upper()} end to end, ours, all {len(ours['task_end_s'])} tasks", ours["wall_s"], " s", None, 1)
        if ref and ref["task_end_s"]:
            k = min(len(ref["task_end_s"]), len(ours["task_end_s"]))
            add(f"{method.upper()} speed-up over its official cost structure, first {k} tasks",
                ref["task_end_s"][k - 1] / ours["task_end_s"][k - 1], "x", None, 1)
    num = data["numerics"]
    if num is not None:
        add("bf16 vs fp32 features, lowest cosine", num["features"]["bf16 vs fp32"]["cos_min"], "", None, 5)
        add("default vs fp32 features, lowest cosine", num["features"]["auto vs fp32"]["cos_min"], "", None, 5)
        for precision, run in num["runs"].items():
            out.append((f"MG-CLIP on learnable synthetic data, {precision}: E, Last", f"{run['epochs']}, "
                        f"{run['last']:.2f}", "-", "-"))
    return out, devices, missing


def table(folder: str) -> str:
    found, devices, missing = rows(folder)
    lines = [f"Measured on: {', '.join(str(d) for d in devices) or 'nothing'}", "",
             "| measure | figure | target | met |", "|---|---|---|---|"]
    lines += [f"| {m} | {v} | {t} | {ok} |" for m, v, t, ok in found]
    if missing:
        lines += ["", f"Not measured: {', '.join(f + '.json' for f in missing)}"]
    return "\n".join(lines)


def main(argv: List[str] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder")
    args = p.parse_args(argv)
    if not os.path.isdir(args.folder):
        print(f"error: {args.folder} is not a folder of measurements (gpu.sh writes them to $OUT)", file=sys.stderr)
        return 2
    text = table(args.folder)
    print(text)
    write_text(os.path.join(args.folder, "summary.md"), text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
