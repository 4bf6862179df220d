"""Compare runs side by side: ``python -m toolbox.report RUN_DIR [RUN_DIR ...] [--out DIR] [--include-partial]``.

Each RUN_DIR is a run directory (with ``results.json``) or a folder searched for them
(never entering hidden folders such as a run's ``.attempt/``). Only finished runs are
reported unless ``--include-partial`` (then marked); partial runs and run folders without a
usable results.json are listed (stdout, summary.md's "Left out", ``left_out.csv``).
Runs of the same method, dataset, split and prefix are grouped over seeds. Writes
``summary.md``, ``summary.csv`` and ``summary.tex`` (a LaTeX table) (mean +- std over seeds; std is the population std,
numpy's default; groups that run a published protocol also get a table against the
published Avg and Last, ``toolbox/published.py``) and, with matplotlib installed (``pip install -e .[plots]``),
``accuracy_curve.png``, ``accuracy_matrix_<run>.png`` per run and ``gap.png`` for MG-CLIP.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import os
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from toolbox.io import atomic_write, write_json, write_text
from toolbox.published import ACCURACY, ours, published_for
from toolbox.run_lock import ATTEMPT, LOCK_NAME, REPLACING  # hidden: the walk never enters them
from utils.config import PLACEMENT_KEYS

logger = logging.getLogger(__name__)

FIG_SIZE = (6.4, 4.0)  # inches; at FIG_DPI the PNGs are 640 x 400 pixels
FIG_DPI = 100
# summary.csv: these columns, then "<m>_last_mean" for each task metric m of the runs (see metric_label)
CSV_COLUMNS = ["method", "prefix", "dataset", "split", "seeds", "avg_mean", "avg_std", "last_mean", "last_std",
               "forgetting_mean", "bwt_mean", "epochs", "wall_s_mean"]


class ReportError(RuntimeError):
    """A run directory is missing or its results.json is unusable; the message names it."""


# ----------------------------------------------------------------------------- loading
# Files a run writes into its folder before its first task ends (results.json comes after
# each task): a folder holding one of them but no results.json is a run with no task done.
RUN_MARKERS = ("config.json", "run.log", "checkpoint.pt", LOCK_NAME)


def scan_runs(paths: Sequence[str]) -> Tuple[List[str], List[Tuple[str, str]], List[Tuple[str, str]]]:
    """The folders named by ``paths`` (a run directory, or a folder searched for them, never
    entering hidden folders): ``(runs, left_out, notes)``. ``runs`` hold a results.json;
    ``left_out`` are ``(folder, reason)`` for run folders without one and named folders with
    no run at all; ``notes`` are ``(folder, note)`` for a replacement run in ``.attempt/`` or
    ``.replacing/``. A named path that does not exist is an error."""
    runs: List[str] = []
    left_out: List[Tuple[str, str]] = []
    notes: List[Tuple[str, str]] = []
    seen = set()
    for p in paths:
        if not os.path.isdir(p):
            raise ReportError(f"{p}: no such run directory")
        found = 0
        for root, dirs, files in os.walk(p):
            hidden = {d for d in dirs if d.startswith(".")}
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            looks_like_run = "results.json" in files or any(m in files for m in RUN_MARKERS)
            if not looks_like_run and not hidden & {ATTEMPT, REPLACING}:
                continue
            found += 1
            real = os.path.realpath(root)
            if real in seen:  # a run named twice (overlapping paths, links) counts once
                continue
            seen.add(real)
            if "results.json" in files:
                runs.append(root)
            elif looks_like_run:
                left_out.append((root, "no task finished yet"))
            if REPLACING in hidden:
                notes.append((root, f"replacement pending: `python main.py --resume {root}` completes it"))
            if ATTEMPT in hidden:
                notes.append((root, f"a replacement run is in progress or stopped in {os.path.join(root, ATTEMPT)}"))
        if not found:
            left_out.append((p, "no run folder in it or below it (no results.json, config.json, run.log or "
                                "checkpoint.pt)"))
    return runs, left_out, notes


def find_runs(paths: Sequence[str]) -> List[str]:
    """Run directories with a results.json named by ``paths`` (see :func:`scan_runs`)."""
    return scan_runs(paths)[0]


REQUIRED = ("model_name", "dataset", "seed", "accuracy", "accuracy_matrix", "avg", "last", "config")


def _read_results(run_dir: str) -> Tuple[Optional[Dict[str, Any]], str]:
    """``(results, "")``, or ``(None, why results.json is unusable)``."""
    path = os.path.join(run_dir, "results.json")
    try:
        with open(path, "r", encoding="utf-8") as f:
            r = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return None, f"cannot be read as JSON ({e})"
    missing = [k for k in REQUIRED if k not in r] if isinstance(r, dict) else list(REQUIRED)
    if missing:
        return None, f"not a results file of this toolbox (missing {', '.join(missing)})"
    wrong = [k for k, kind in (("accuracy", list), ("accuracy_matrix", list), ("config", dict))
             if not isinstance(r[k], kind)]
    wrong += [k for k in ("nb_tasks", "completed_tasks") if k in r and not isinstance(r[k], int)]
    if wrong:
        return None, f"not a results file of this toolbox (wrong type of {', '.join(wrong)})"
    return r, ""


def load_run(run_dir: str) -> Dict[str, Any]:
    r, problem = _read_results(run_dir)
    if r is None:
        raise ReportError(f"{os.path.join(run_dir, 'results.json')}: {problem}")
    r["run_dir"] = run_dir
    return r


def run_progress(r: Dict[str, Any]) -> Tuple[int, int, bool]:
    """``(tasks completed, tasks planned, finished)`` of a loaded run (the trainer writes
    ``completed_tasks``, ``nb_tasks`` and ``finished`` after every task). A results.json
    written before the trainer recorded them lacks them: its completed tasks are then
    ``len(accuracy)``, and without ``nb_tasks`` it counts as finished, as every run was
    reported before (nothing in such a file tells a partial run from a finished one)."""
    done = r.get("completed_tasks", len(r["accuracy"]))
    planned = r.get("nb_tasks", done)
    return done, planned, bool(r.get("finished", done >= planned))


def partial_reason(done: int, planned: int) -> str:
    """Why a run that is not finished is left out: its tasks so far, or, with every task
    done, its held-out evaluation (``zero_shot_eval``) still to finish."""
    if done >= planned:
        return f"partial, all {planned} tasks but the held-out evaluation not finished"
    return f"partial, {done} of {planned} tasks"


def load_runs(paths: Sequence[str], include_partial: bool = False
              ) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]], List[Tuple[str, str]]]:
    """``(runs, left_out, notes)`` of ``paths``: the usable runs (finished ones; also the
    partial ones with ``include_partial``), what was left out (``run_dir``, ``reason``,
    ``completed_tasks``, ``nb_tasks``) and the notes of :func:`scan_runs`. An error only
    when no usable run is left, naming what was left out and why."""
    dirs, skipped, notes = scan_runs(paths)
    left_out = [{"run_dir": d, "reason": why, "completed_tasks": None, "nb_tasks": None} for d, why in skipped]
    runs = []
    for d in dirs:
        r, problem = _read_results(d)
        if r is None:
            left_out.append({"run_dir": d, "reason": f"results.json unreadable: {problem}", "completed_tasks": None,
                             "nb_tasks": None})
            continue
        r["run_dir"] = d
        done, planned, finished = run_progress(r)
        if finished or include_partial:
            runs.append(r)
        else:
            left_out.append({"run_dir": d, "reason": partial_reason(done, planned), "completed_tasks": done,
                             "nb_tasks": planned})
    left_out.sort(key=lambda x: x["run_dir"])
    if not runs:
        hint = " (--include-partial reports partial runs)" if any(x["nb_tasks"] for x in left_out) else ""
        raise ReportError(f"no usable run in {', '.join(paths)}: "
                          + "; ".join(f"{x['run_dir']}: {x['reason']}" for x in left_out) + hint)
    return runs, left_out, notes


def group_key(r: Dict[str, Any]) -> Tuple[str, str, str, str]:
    c = r["config"]
    return (r["model_name"], c.get("prefix", ""), r["dataset"], f"{c.get('init_cls')}/{c.get('increment')}")


# Keys that may differ between the seeds of one group: the seed, and where and how fast a
# run ran (the same keys a resumed run may change). Class-order and name files are compared
# by their config value here.
NOT_COMPARED = frozenset({"seed"}) | PLACEMENT_KEYS


def group_runs(runs: List[Dict[str, Any]]) -> Dict[Tuple[str, str, str, str], List[Dict[str, Any]]]:
    """Runs of one method, prefix, dataset and split, over seeds. Runs whose configs differ
    in anything but the seed (and run-only keys such as ``device``) are never pooled: they
    form separate groups whose prefix names the differing values (``demo [lr=0.01]``). Two
    runs of the same seed and config in one group are refused, naming both folders."""
    by_key: Dict[Tuple[str, str, str, str], List[Dict[str, Any]]] = {}
    for r in runs:
        by_key.setdefault(group_key(r), []).append(r)
    groups: Dict[Tuple[str, str, str, str], List[Dict[str, Any]]] = {}
    for key, members in by_key.items():
        differing = sorted(k for k in set().union(*(r["config"] for r in members)) - NOT_COMPARED
                           if len({json.dumps(r["config"].get(k), sort_keys=True) for r in members}) > 1)
        for r in members:
            label = ", ".join(f"{k}={r['config'].get(k)}" for k in differing)
            sub = key if not differing else (key[0], f"{key[1]} [{label}]", key[2], key[3])
            groups.setdefault(sub, []).append(r)
    for key, g in groups.items():
        g.sort(key=lambda r: r["seed"])
        for a, b in zip(g, g[1:]):
            if a["seed"] == b["seed"]:
                raise ReportError(f"{a['run_dir']} and {b['run_dir']} are two runs of seed {a['seed']} with the same "
                                  f"config ({_label(key)}): give only one of them (a copy of a run counts once)")
    return groups


# ----------------------------------------------------------------------------- tables
def _mean(values: List[Optional[float]]) -> Optional[float]:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def _std(values: List[Optional[float]]) -> Optional[float]:
    vals = [v for v in values if v is not None]
    return float(np.std(vals)) if vals else None


def metric_names(runs: List[Dict[str, Any]]) -> List[str]:
    """The learners' task metrics (results.json ``task_metrics``) in order of first appearance."""
    return list(dict.fromkeys(name for r in runs for name in (r.get("task_metrics") or {})))


def metric_label(name: str) -> str:
    """A task metric's short name in tables: ``text_accuracy`` -> ``text``."""
    return name[:-len("_accuracy")] if name.endswith("_accuracy") else name


def summary_row(key: Tuple[str, str, str, str], runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    """One group's figures; ``metrics`` holds the mean Last of each task metric."""
    method, prefix, dataset, split = key

    def last_of(r, name):
        values = (r.get("task_metrics") or {}).get(name) or []
        return values[-1] if values else None

    def epochs_of(ep):  # E, or each task's E with per-task estimation ("2/1/1")
        per_task = ep.get("per_task")
        return "/".join(str(t["chosen"]) for t in per_task) if per_task else ep["chosen"]

    epochs = sorted({epochs_of(r["epochs"]) for r in runs if isinstance(r.get("epochs"), dict)
                     and r["epochs"].get("chosen") is not None}, key=lambda e: (isinstance(e, str), e))
    progress = [(r["seed"], *run_progress(r)) for r in runs]
    return {
        "method": method, "prefix": prefix, "dataset": dataset, "split": split,
        "seeds": " ".join(str(r["seed"]) for r in runs),
        # tasks done of planned: "3/3" for the finished runs, "1/3 (seed 1994)" for each partial one
        "tasks": ", ".join(list(dict.fromkeys(f"{d}/{n}" for _, d, n, fin in progress if fin))
                           + [f"{d}/{n} (seed {seed})" for seed, d, n, fin in progress if not fin]),
        "partial_seeds": [seed for seed, _, _, fin in progress if not fin],
        "avg_mean": _mean([r["avg"] for r in runs]), "avg_std": _std([r["avg"] for r in runs]),
        "last_mean": _mean([r["last"] for r in runs]), "last_std": _std([r["last"] for r in runs]),
        "forgetting_mean": _mean([r.get("forgetting") for r in runs]),
        "bwt_mean": _mean([r.get("bwt") for r in runs]),
        "epochs": " ".join(str(e) for e in epochs),
        "wall_s_mean": _mean([(r.get("timings") or {}).get("total_s") for r in runs]),
        "metrics": {name: _mean([last_of(r, name) for r in runs]) for name in metric_names(runs)},
    }


def _fmt(x: Optional[float], digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _pm(mean: Optional[float], std: Optional[float]) -> str:
    return "-" if mean is None else f"{mean:.2f} ± {std:.2f}"


MD_COLUMNS = ["method", "prefix", "dataset", "split", "seeds", "Avg", "Last", "forgetting", "BWT", "E", "wall s"]


def _row_metrics(rows: List[Dict[str, Any]]) -> List[str]:
    return list(dict.fromkeys(name for r in rows for name in r["metrics"]))


def has_partial(rows: List[Dict[str, Any]]) -> bool:
    """Whether a row holds a partial run: then every table gets a "tasks" column after "seeds"."""
    return any(r.get("partial_seeds") for r in rows)


def _with_tasks(columns: List[str], rows: List[Dict[str, Any]]) -> List[str]:
    if not has_partial(rows):
        return list(columns)
    at = columns.index("seeds") + 1
    return columns[:at] + ["tasks"] + columns[at:]


def markdown_row(row: Dict[str, Any], metrics: Sequence[str], tasks: bool = False) -> str:
    cells = [row["method"], row["prefix"], row["dataset"], row["split"], row["seeds"]] + \
        ([row["tasks"]] if tasks else []) + \
        [_pm(row["avg_mean"], row["avg_std"]), _pm(row["last_mean"], row["last_std"]),
         _fmt(row["forgetting_mean"]), _fmt(row["bwt_mean"]), row["epochs"] or "-",
         _fmt(row["wall_s_mean"], 1)] + [_fmt(row["metrics"].get(name)) for name in metrics]
    return "| " + " | ".join(str(c) for c in cells) + " |"


def summary_markdown(rows: List[Dict[str, Any]]) -> str:
    """The table: the shared columns, then "<metric> Last" for each task metric of the rows;
    where a row holds a partial run, a "tasks" column after "seeds" (tasks done / planned)."""
    metrics = _row_metrics(rows)
    header = _with_tasks(MD_COLUMNS, rows) + [f"{metric_label(name)} Last" for name in metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + [markdown_row(r, metrics, has_partial(rows)) for r in rows]) + "\n"


def summary_csv(rows: List[Dict[str, Any]]) -> str:
    metrics = _row_metrics(rows)
    columns = _with_tasks(CSV_COLUMNS, rows) + [f"{metric_label(name)}_last_mean" for name in metrics]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns)
    w.writeheader()
    for r in rows:
        flat = {**r, **{f"{metric_label(name)}_last_mean": r["metrics"].get(name) for name in metrics}}
        w.writerow({k: ("" if flat[k] is None else flat[k]) for k in columns})
    return buf.getvalue()


def latex_escape(text: Any) -> str:
    """``text`` with LaTeX's special characters escaped (for table cells)."""
    return str(text).replace("\\", "\\textbackslash{}").replace("_", "\\_").replace("%", "\\%") \
        .replace("&", "\\&").replace("#", "\\#")


def latex_pm(mean: Optional[float], std: Optional[float]) -> str:
    """``$mean \\pm std$`` with two decimals, ``-`` without a mean."""
    return "-" if mean is None else f"${mean:.2f} \\pm {std:.2f}$"


def summary_latex(rows: List[Dict[str, Any]]) -> str:
    """The main figures as a LaTeX table body (method, dataset, split, Avg, Last as mean $\\pm$
    std over seeds; where a row holds a partial run, a Tasks column after Split), ready for
    ``\\input``; needs no LaTeX package."""
    tex, pm = latex_escape, latex_pm
    tasks = has_partial(rows)
    lines = ["\\begin{tabular}{lll" + ("l" if tasks else "") + "cc}", "\\hline",
             "Method & Dataset & Split & " + ("Tasks & " if tasks else "") + "Avg & Last \\\\", "\\hline"]
    lines += [f"{tex(r['method'])} & {tex(r['dataset'])} & {tex(r['split'])} & "
              + (f"{tex(r['tasks'])} & " if tasks else "")
              + f"{pm(r['avg_mean'], r['avg_std'])} & {pm(r['last_mean'], r['last_std'])} \\\\" for r in rows]
    return "\n".join(lines + ["\\hline", "\\end{tabular}"]) + "\n"


def published_rows(groups: Dict[Tuple[str, str, str, str], List[Dict[str, Any]]]) -> List[Dict[str, Any]]:
    """One row per group that runs a published protocol (``toolbox.published``): its mean
    Avg and Last beside the published ones, and the differences."""
    rows = []
    for key, runs in groups.items():
        pub = published_for(key[0], runs[0]["config"])
        if pub is None:
            continue
        row = summary_row(key, runs)
        row.update({"backbone": pub.backbone, "published_avg": pub.avg, "published_last": pub.last,
                    "source": pub.source, "accuracy": pub.accuracy})
        for m in ("avg", "last"):  # ours under the published figure's definition of accuracy
            row[f"{m}_mean"] = _mean([ours(r, m, pub.accuracy) for r in runs])
            mine, theirs = row[f"{m}_mean"], row[f"published_{m}"]
            row[f"{m}_diff"] = None if mine is None or theirs is None else mine - theirs
        rows.append(row)
    return rows


def published_markdown(rows: List[Dict[str, Any]]) -> str:
    if not rows:
        return ""
    tasks = has_partial(rows)
    header = _with_tasks(["method", "prefix", "dataset", "split", "backbone", "seeds", "Avg", "published Avg",
                          "diff", "Last", "published Last", "diff", "published in", "accuracy"], rows)
    lines = ["", "Against the published figures (ours under each figure's definition of accuracy):", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        diff = {m: "-" if r[f"{m}_diff"] is None else f"{r[f'{m}_diff']:+.2f}" for m in ("avg", "last")}
        lines.append(f"| {r['method']} | {r['prefix']} | {r['dataset']} | {r['split']} | {r['backbone']} | "
                     f"{r['seeds']} | " + (f"{r['tasks']} | " if tasks else "") +
                     f"{_fmt(r['avg_mean'])} | {_fmt(r['published_avg'])} | {diff['avg']} | "
                     f"{_fmt(r['last_mean'])} | {_fmt(r['published_last'])} | {diff['last']} | {r['source']} | "
                     f"{ACCURACY[r['accuracy']]} |")
    return "\n".join(lines) + "\n"


def summary_text(groups: Dict[Tuple[str, str, str, str], List[Dict[str, Any]]]) -> str:
    """The summary table of ``groups`` and, where they run a published protocol, the table
    against the published figures (what a run logs when it ends)."""
    return (summary_markdown([summary_row(k, g) for k, g in groups.items()]) +
            published_markdown(published_rows(groups))).rstrip()


def run_summary(results: Dict[str, Any]) -> str:
    """What a finished run logs as its "summary:" line (the trainer's ``summary``): its row and,
    where it runs a published protocol, its row against the published figures."""
    return summary_text({group_key(results): [results]})


def seeds_summary(run_dirs: List[str], seeds: List[int], prefix: str) -> str:
    """The seeds of one config: ``<prefix>_summary.json`` beside the run directories (mean and std
    of Avg and Last, the figures of the report's row), logged with the table; returns its path."""
    finals = [load_run(d) for d in run_dirs]
    row = summary_row(group_key(finals[0]), finals)
    summary: Dict[str, Any] = {"runs": run_dirs, "seeds": seeds}
    for key in ("avg", "last"):
        summary[key] = {"mean": row[f"{key}_mean"], "std": row[f"{key}_std"], "values": [r[key] for r in finals]}
    path = os.path.join(os.path.dirname(run_dirs[0]), f"{prefix}_summary.json")
    write_json(path, summary)
    logger.info("summary over %d seeds -> %s:\n%s", len(run_dirs), path, summary_text({group_key(finals[0]): finals}))
    return path


def side_by_side_summary(run_dirs: List[str]) -> str:
    """The methods of a side-by-side config in one table, and their rows against published
    figures where they run a published protocol."""
    return summary_text(group_runs([load_run(d) for d in run_dirs]))


def retention_rows(runs: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """One row per run and held-out set evaluated with ``zero_shot_eval``."""
    rows = []
    for r in runs:
        for z in r.get("zero_shot_retention") or []:
            rows.append({"method": r["model_name"], "prefix": r["config"].get("prefix", ""), "seed": r["seed"],
                         "held_out": z["name"], "images": z["images"], "zero_shot_clip": z["zero_shot_clip"],
                         "model": z["model"], "delta": z["delta"]})
    return rows


def retention_markdown(rows: List[Dict[str, Any]]) -> str:
    if not rows:
        return ""
    lines = ["", "Zero-shot retention (accuracy %, held-out data, the toolbox's prompt):", "",
             "| method | prefix | seed | held-out | images | zero-shot CLIP | after training | delta |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['prefix']} | {r['seed']} | {r['held_out']} | {r['images']} | "
              f"{r['zero_shot_clip']:.2f} | {r['model']:.2f} | {r['delta']:+.2f} |" for r in rows]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- plots
def _label(key: Tuple[str, str, str, str]) -> str:
    method, prefix, dataset, split = key
    return f"{method} ({prefix}, {dataset} {split})"


def _save(fig, path: str) -> None:
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=FIG_DPI), mode="wb")


def plot_accuracy_curve(groups, path: str, plt) -> None:
    """One line per group: after each task, mean (and std band) over the runs that reached
    it; a group holding a partial run is dashed and its label says which seeds are partial."""
    fig, ax = plt.subplots(figsize=FIG_SIZE)
    for key, runs in groups.items():
        T = max(len(r["accuracy"]) for r in runs)
        per_task = [np.array([r["accuracy"][t] for r in runs if len(r["accuracy"]) > t], dtype=float)
                    for t in range(T)]
        x = np.arange(1, T + 1)
        mean, std = np.array([a.mean() for a in per_task]), np.array([a.std() for a in per_task])
        row = summary_row(key, runs)
        partial = f" [partial: {row['tasks']}]" if row["partial_seeds"] else ""
        ax.plot(x, mean, marker="o", linestyle="--" if partial else "-", label=_label(key) + partial)
        if len(runs) > 1:
            ax.fill_between(x, mean - std, mean + std, alpha=0.2)
    ax.set_xlabel("task")
    _integer_ticks(ax.xaxis)
    ax.set_ylabel("accuracy on seen classes (%)")
    ax.set_title("Accuracy after each task (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_accuracy_matrix(run: Dict[str, Any], path: str, plt) -> None:
    M = run["accuracy_matrix"]
    T = len(M)
    grid = np.full((T, T), np.nan)
    for t, row in enumerate(M):
        grid[t, :len(row)] = row
    fig, ax = plt.subplots(figsize=FIG_SIZE)
    im = ax.imshow(grid, vmin=0, vmax=100, cmap="viridis")
    if T <= 20:
        for t in range(T):
            for j in range(len(M[t])):
                ax.text(j, t, f"{grid[t, j]:.0f}", ha="center", va="center", fontsize=7,
                        color="white" if grid[t, j] < 60 else "black")
    ax.set_xticks(range(T), [str(j + 1) for j in range(T)])
    ax.set_yticks(range(T), [str(t + 1) for t in range(T)])
    ax.set_xlabel("task j (its classes)")
    ax.set_ylabel("after task t")
    done, planned, finished = run_progress(run)
    partial = "" if finished else f" (partial: {done} of {planned} tasks)"
    ax.set_title(f"{run['model_name']} seed {run['seed']}: accuracy matrix (%){partial}")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_gap(runs: List[Dict[str, Any]], path: str, plt) -> None:
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=FIG_SIZE)
    for r in runs:
        name = f"{r['config'].get('prefix', '')} seed {r['seed']}" + ("" if run_progress(r)[2] else " (partial)")
        ep = r.get("epochs") or {}
        if ep.get("neg0") is not None and ep.get("probe"):
            neg0, alpha = ep["neg0"], ep.get("alpha", r["config"].get("gap_alpha", 0.1))
            values = [neg0] + [p["neg"] for p in ep["probe"]]
            line, = ax1.plot(range(len(values)), values, marker="o", label=name)
            lo, hi = sorted((neg0 * (1 - alpha), neg0 * (1 + alpha)))
            ax1.axhspan(lo, hi, color=line.get_color(), alpha=0.12)
            if ep.get("chosen") is not None:
                ax1.axvline(ep["chosen"], color=line.get_color(), linestyle=":")
        gaps = r.get("gap") or []
        if gaps:
            tasks = [g["task"] + 1 for g in gaps if "after" in g]
            line, = ax2.plot(tasks, [g["after"]["neg"] for g in gaps if "after" in g], marker="o",
                             label=f"{name} after")
            before = [(g["task"] + 1, g["before"]["neg"]) for g in gaps if "before" in g]
            if before:
                ax2.plot(*zip(*before), marker="x", linestyle="--", color=line.get_color(), label=f"{name} before")
    ax1.set_title("probe: gap per epoch (band: ±alpha)", fontsize=9)
    ax1.set_xlabel("probe epoch (0 = zero-shot)")
    ax1.set_ylabel("mean non-target logit")
    ax2.set_title("per task: before / after training", fontsize=9)
    ax2.set_xlabel("task")
    for ax in (ax1, ax2):
        _integer_ticks(ax.xaxis)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def _integer_ticks(axis) -> None:
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))


def _safe_name(run: Dict[str, Any]) -> str:
    parts = [run["model_name"], run["dataset"], str(run["config"].get("prefix", "")), str(run["seed"])]
    return "_".join("".join(ch if ch.isalnum() or ch in "-." else "-" for ch in p) for p in parts)


# ----------------------------------------------------------------------------- entry
LEFT_OUT_COLUMNS = ["run_dir", "reason", "completed_tasks", "nb_tasks"]


def left_out_markdown(left_out: List[Dict[str, Any]], notes: Sequence[Tuple[str, str]]) -> str:
    """The "Left out" section (folders searched whose runs are in no row, mean, plot or csv
    line, and why) and the notes on replacement runs; empty when there is neither."""
    text = ""
    if left_out:
        text += "\nLeft out (in no row, mean, plot or csv line above):\n\n" + \
            "".join(f"- {x['run_dir']}: {x['reason']}\n" for x in left_out)
    if notes:
        text += "\nNotes:\n\n" + "".join(f"- {d}: {note}\n" for d, note in notes)
    return text


def left_out_csv(left_out: List[Dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=LEFT_OUT_COLUMNS)
    w.writeheader()
    for x in left_out:
        w.writerow({k: "" if x[k] is None else x[k] for k in LEFT_OUT_COLUMNS})
    return buf.getvalue()


def make_report(paths: Sequence[str], out: str, include_partial: bool = False) -> Dict[str, Any]:
    """Write the tables (and plots if matplotlib is there) into ``out``; returns what was
    written. Partial runs (not every task done) are left out, listed with the folders
    that hold no usable results.json; with ``include_partial`` they are in the rows,
    marked in a "tasks" column."""
    runs, left_out, notes = load_runs(paths, include_partial)
    groups = group_runs(runs)
    rows = [summary_row(k, g) for k, g in groups.items()]
    os.makedirs(out, exist_ok=True)
    retention = retention_rows(runs)
    published = published_rows(groups)
    write_text(os.path.join(out, "summary.md"), summary_markdown(rows) + published_markdown(published)
               + retention_markdown(retention) + left_out_markdown(left_out, notes))
    write_text(os.path.join(out, "summary.csv"), summary_csv(rows))
    write_text(os.path.join(out, "summary.tex"), summary_latex(rows))
    write_text(os.path.join(out, "left_out.csv"), left_out_csv(left_out))
    written = {"rows": rows, "files": ["summary.md", "summary.csv", "summary.tex", "left_out.csv"], "plots": False,
               "retention": retention, "published": published, "left_out": left_out, "notes": notes}
    if retention:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(retention[0]))
        w.writeheader()
        w.writerows(retention)
        write_text(os.path.join(out, "retention.csv"), buf.getvalue())
        written["files"].append("retention.csv")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: tables written, no plots (pip install -e .[plots])")
        return written
    plot_accuracy_curve(groups, os.path.join(out, "accuracy_curve.png"), plt)
    written["files"].append("accuracy_curve.png")
    for r in runs:
        name = f"accuracy_matrix_{_safe_name(r)}.png"
        plot_accuracy_matrix(r, os.path.join(out, name), plt)
        written["files"].append(name)
    gap_runs = [r for r in runs if r.get("gap") or (r.get("epochs") or {}).get("probe")]
    if gap_runs:
        plot_gap(gap_runs, os.path.join(out, "gap.png"), plt)
        written["files"].append("gap.png")
    written["plots"] = True
    return written


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m toolbox.report", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="run directories, or folders that hold them")
    p.add_argument("--out", default="report", help="output folder (default: report)")
    p.add_argument("--include-partial", action="store_true",
                   help="also report runs that have not finished every task (marked in a 'tasks' column); "
                        "by default they are left out and listed")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        written = make_report(args.runs, args.out, include_partial=args.include_partial)
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary_markdown(written["rows"]) + published_markdown(written["published"])
          + left_out_markdown(written["left_out"], written["notes"]), end="")
    print(f"wrote {', '.join(written['files'])} to {args.out}")
    if not written["plots"]:
        print("no plots: matplotlib is not installed (pip install -e .[plots])")
    return 0


if __name__ == "__main__":
    sys.exit(main())
