"""A paper's table in one command: ``python -m toolbox.table CONFIG [--dry-run] [--executor ...]``.

A table config (JSON or YAML; a path or a shipped one, ``exps/tables/``) names the methods,
the protocols, the seeds and what every run shares::

    methods: [mgclip, rapf, zs_clip]
    protocols:
      - cifar                             # each method's shipped config <method>_cifar
      - cifar_5task:                      # a protocol of its own:
          configs: cifar                  #   <method>_cifar, or {method: config, ...}
          set: {init_cls: 20, increment: 20}   # and keys of this protocol
    seeds: [1993, 1994, 1995]
    set: {data_path: /data}               # keys for every run (backbone, logdir, ...)
    rapf: {batch_size: 100}               # keys for one method's runs
    executor: {name: local}               # or submitit (SLURM arrays; see docs/tables.md)

It expands into one run per method x protocol x seed (each its own run folder and lock),
skips runs already finished with the same config, continues interrupted ones from their
checkpoints, runs the rest, and writes ``table.md``, ``table.csv`` and ``table.tex``: rows
= methods, columns = protocol (dataset, split, backbone weights) x {Avg, Last}, each cell
mean +- std over the finished seeds (``[2 of 3 seeds]`` where fewer finished than planned;
the others listed below the table) with the published figure and the difference beside it.
The output folder is ``tables/<name>`` or, with ``--set`` overrides, ``tables/<name>_<overrides>``;
its ``table.json`` says which table it holds, and a folder holding another table is refused.
``columns: retention`` makes a zero-shot retention table instead: one column per ``zero_shot_eval``
held-out set, the trained model's zero-shot accuracy beside its published figure.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import logging
import os
import re
import sys
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from toolbox import interrupts
from toolbox.checkpoint import CheckpointError, config_differences, load_checkpoint
from toolbox.configs import load_config_file, make_config, parse_overrides, shipped_configs_dir
from toolbox.exit_codes import exit_code
from toolbox.io import write_text
from toolbox.published import ACCURACY, ours, published_for, published_retention_for
from toolbox.registry import LEARNERS, check_model_name
from toolbox.report import _mean, _std, latex_escape, latex_pm, partial_reason, run_summary
from toolbox.retention import held_out_label
from toolbox.run_lock import ATTEMPT, REPLACING
from toolbox.trainer import CHECKPOINT, read_results, run_dir_for, run_one
from utils.config import Config, ConfigError

logger = logging.getLogger(__name__)

TABLE_KEYS = {"name", "methods", "protocols", "seeds", "set", "executor", "out", "columns"}
# columns: "avg_last" (default: protocol x {Avg, Last}) or "retention" (one column per zero_shot_eval held-out set:
# the zero-shot top-1 after training, beside its published figure)
COLUMNS = ("avg_last", "retention")
EXECUTOR_KEYS = {"name", "cluster", "folder", "partition", "gpus_per_node", "cpus_per_task", "timeout_min",
                 "array_parallelism", "mem_gb"}


@dataclass
class PlannedRun:
    method: str
    protocol: str
    seed: int
    config: Dict[str, Any]  # the run's resolved one-seed config (as config.json holds it)
    run_dir: str
    status: str  # "start", "continue after task k/n" or "skip (finished)"


# ----------------------------------------------------------------------------- expansion
def table_config_path(path: str) -> str:
    """The file of a table config: ``path`` itself, or a shipped one (``exps/tables/<name>``)."""
    if not os.path.isfile(path):
        shipped = os.path.join(shipped_configs_dir(), "tables")
        for candidate in (path, path + ".yaml", path + ".json"):
            if os.path.isfile(os.path.join(shipped, candidate)):
                return os.path.join(shipped, candidate)
    return path


def load_table_config(path: str) -> Dict[str, Any]:
    """A table config: a path, or a shipped one (``exps/tables/<name>``)."""
    path = table_config_path(path)
    data = load_config_file(path)
    unknown = sorted(set(data) - TABLE_KEYS - set(LEARNERS))
    if unknown:
        raise ConfigError(f"table config {path}: unknown key(s) {', '.join(unknown)} (keys: "
                          f"{', '.join(sorted(TABLE_KEYS))}, and a section per method)")
    for key in ("methods", "protocols"):
        if not data.get(key):
            raise ConfigError(f"table config {path}: '{key}' must list at least one entry")
    if data.get("columns", "avg_last") not in COLUMNS:
        raise ConfigError(f"table config {path}: 'columns' = {data['columns']!r} must be one of {', '.join(COLUMNS)}")
    data.setdefault("name", os.path.splitext(os.path.basename(path))[0])
    return data


def _protocols(table: Dict[str, Any]) -> Dict[str, Tuple[Dict[str, str], Dict[str, Any]]]:
    """protocol label -> ({method: config name or path}, the protocol's own keys)."""
    out: Dict[str, Tuple[Dict[str, str], Dict[str, Any]]] = {}
    for entry in table["protocols"]:
        if isinstance(entry, str):
            label, spec = entry, {}
        elif isinstance(entry, dict) and len(entry) == 1 and isinstance(next(iter(entry.values())), dict):
            (label, spec), = entry.items()
            unknown = sorted(set(spec) - {"configs", "set"})
            if unknown:
                raise ConfigError(f"table protocol '{label}': unknown key(s) {', '.join(unknown)} (configs, set)")
        else:
            raise ConfigError(f"table config: protocol {entry!r} must be a name (configs <method>_<name>) or "
                              f"{{name: {{configs: ..., set: {{...}}}}}}")
        configs = spec.get("configs", label)
        if isinstance(configs, str):
            configs = {m: f"{m}_{configs}" for m in table["methods"]}
        out[str(label)] = ({m: str(configs.get(m, f"{m}_{label}")) for m in table["methods"]}, spec.get("set") or {})
    return out


def plan(table: Dict[str, Any], overrides: Sequence[str] = ()) -> List[PlannedRun]:
    """Every run of the table with what it would do; nothing is written. Every config is
    built (and so checked) first; a run folder that holds another config is refused."""
    methods = [check_model_name(m) for m in table["methods"]]
    shared, command_line = table.get("set") or {}, parse_overrides(overrides)
    runs = []
    for label, (configs, own) in _protocols(table).items():
        for method in methods:
            try:
                base = load_config_file(configs[method])
            except ConfigError as e:
                raise ConfigError(f"table protocol '{label}', method {method}: {e} (name a config in the protocol's "
                                  f"mapping, e.g. {{{label}: {{{method}: my_config.json}}}})") from None
            base = {k: v for k, v in base.items() if k not in LEARNERS and k != "model_name"}
            seeds = table.get("seeds") or base.get("seed", Config.seed)
            for seed in seeds if isinstance(seeds, list) else [seeds]:
                # the more specific wins: table < protocol < method section < command line
                d = {**base, **shared, **own, **(table.get(method) or {}), **command_line, "model_name": method,
                     "seed": int(seed)}
                cfg = make_config(d)
                resolved = {**cfg.to_dict(), "seed": int(seed)}
                run_dir = run_dir_for(cfg, int(seed))
                runs.append(PlannedRun(method, label, int(seed), resolved, run_dir, status_of(run_dir, resolved)))
    dirs = [r.run_dir for r in runs]
    twice = sorted({d for d in dirs if dirs.count(d) > 1})
    if twice:
        raise ConfigError(f"table: several runs would share the run folder {twice[0]}: give the protocols "
                          f"different prefixes (set: {{prefix: ...}} or a method section)")
    if table.get("columns") == "retention":
        for r in runs:
            labels = [held_out_label(spec) for spec in r.config["zero_shot_eval"]]
            if not labels or len(set(labels)) < len(labels):
                raise ConfigError(f"table 'columns: retention': the runs of {r.method} {r.protocol} need config key "
                                  f"'zero_shot_eval' with held-out sets of distinct names (have: {labels or 'none'})")
    return runs


def status_of(run_dir: str, resolved: Dict[str, Any]) -> str:
    """What a run would do: skip a finished run of this config, continue one with a
    checkpoint of it (or a stopped replacement in ``.attempt``, which a run with resume
    continues; or a finished one whose move-in a killed process left in ``.replacing``),
    start otherwise; a folder holding another config is refused."""
    attempt = os.path.join(run_dir, ATTEMPT)
    if os.path.isdir(attempt):
        status = status_of(attempt, resolved)
        status = "continue (moves it in)" if status.startswith("skip") else status
        return f"{status} (the replacement in {ATTEMPT}/)"
    if os.path.isdir(os.path.join(run_dir, REPLACING)):
        return "continue (moves in the finished replacement in .replacing/)"
    ckpt = os.path.join(run_dir, CHECKPOINT)
    saved = read_results(os.path.join(run_dir, "results.json"))
    if saved and saved.get("finished"):
        diffs = config_differences(saved.get("config", {}), resolved)
        if not diffs:
            return "skip (finished)"
        raise ConfigError(f"run folder {run_dir} holds a finished run of another config (differs in "
                          f"{', '.join(diffs)}): give this table another prefix, or remove the folder")
    if os.path.isfile(ckpt):
        try:
            state = load_checkpoint(ckpt)
        except CheckpointError as e:
            raise ConfigError(str(e)) from None
        diffs = config_differences(state["config"], resolved)
        if diffs:
            raise ConfigError(f"run folder {run_dir} holds a checkpoint of another config (differs in "
                              f"{', '.join(diffs)}): give this table another prefix, or remove the folder")
        return f"continue after task {state['completed_tasks']}"
    return "start"


# ----------------------------------------------------------------------------- running
def run_planned(config: Dict[str, Any]) -> str:
    """One run (start or continue from its checkpoint); what an executor's job calls."""
    return run_one(make_config(config), int(config["seed"]), resume=True, summary=run_summary)


class _Job:
    """A submitit job function that is requeued on preemption or timeout: submitit calls
    ``checkpoint`` then, and the requeued job continues from the run's own checkpoint.pt."""

    def __call__(self, config: Dict[str, Any]) -> str:
        return run_planned(config)

    def checkpoint(self, config: Dict[str, Any]):
        import submitit

        return submitit.helpers.DelayedSubmission(_Job(), config)


def execute(runs: List[PlannedRun], executor: Dict[str, Any]) -> None:
    """Runs the runs that are not finished: here one after another (``local``), or as a
    submitit job array (``submitit``: SLURM, or its ``local`` / ``debug`` executors)."""
    todo = [r for r in runs if not r.status.startswith("skip")]
    name = executor.get("name", "local")
    if not todo:
        return
    if name == "local":
        for r in todo:
            logger.info("%s %s seed %d: %s", r.method, r.protocol, r.seed, r.status)
            run_planned(r.config)
        return
    if name != "submitit":
        raise ConfigError(f"table config 'executor.name' = {name!r}: 'local' or 'submitit'")
    try:
        import submitit
    except ImportError:
        raise ConfigError("table config 'executor.name' = 'submitit' needs the submitit package: "
                          "pip install -e .[cluster]") from None
    ex = submitit.AutoExecutor(folder=executor.get("folder", "logs/submitit/%j"), cluster=executor.get("cluster"))
    params = {"timeout_min": executor.get("timeout_min", 24 * 60), "slurm_array_parallelism": executor.get(
        "array_parallelism", 32)}
    for key, param in (("partition", "slurm_partition"), ("gpus_per_node", "gpus_per_node"),
                       ("cpus_per_task", "cpus_per_task"), ("mem_gb", "mem_gb")):
        if key in executor:
            params[param] = executor[key]
    ex.update_parameters(**params)
    jobs = ex.map_array(_Job(), [r.config for r in todo])
    logger.info("submitted %d run(s) as job array %s", len(jobs), jobs[0].job_id.split("_")[0] if jobs else "-")
    failed = []
    for run, job in zip(todo, jobs):
        try:
            job.result()
        except Exception as e:  # the job's own error, raised here by submitit with its traceback
            failed.append(f"{run.run_dir} (job {job.job_id}: {_job_error(e)}; log {job.paths.stderr})")
    if failed:
        raise TableJobError(f"{len(failed)} of {len(jobs)} run(s) failed: " + "; ".join(failed)
                            + ". Finished runs are kept; run the table again to continue the others.")


def _job_error(e: Exception) -> str:
    """The exception line of a failed job's traceback (submitit adds log paths after it)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    raised = [line for line in lines if re.match(r"^[\w.]*(Error|Exception|Interrupt)\b", line)]
    return raised[-1] if raised else (lines[-1] if lines else repr(e))


class TableJobError(RuntimeError):
    """Jobs of a table failed; the message names each run folder and its job's log."""


# ----------------------------------------------------------------------------- the table
def collect(runs: List[PlannedRun]) -> List[Dict[str, Any]]:
    """One cell per method x protocol: Avg and Last over the seeds whose run has finished,
    and the published figures of that protocol. ``missing`` lists the planned runs left
    out (``seed``, ``run_dir``, ``reason``: "partial, 1 of 3 tasks", "not started", ...);
    ``incomplete`` is "2 of 3 seeds" where fewer seeds than planned finished, else ""."""
    cells = []
    for method in dict.fromkeys(r.method for r in runs):
        for protocol in dict.fromkeys(r.protocol for r in runs):
            mine = [r for r in runs if r.method == method and r.protocol == protocol]
            states = [(r, *run_state(r.run_dir)) for r in mine]
            results = [x for _, x, _ in states if x is not None]
            missing = [{"seed": r.seed, "run_dir": r.run_dir, "reason": why} for r, x, why in states if x is None]
            cfg = mine[0].config
            pub = published_for(method, cfg)
            cell = {"method": method, "protocol": protocol, "dataset": cfg["dataset"],
                    "split": f"{cfg['init_cls']}/{cfg['increment']}", "backbone": cfg["backbone"],
                    "seeds": " ".join(str(x["seed"]) for x in results), "runs": len(results), "planned": len(mine),
                    "incomplete": f"{len(results)} of {len(mine)} seeds" if len(results) < len(mine) else "",
                    "missing": missing,
                    "published_avg": pub.avg if pub else None, "published_last": pub.last if pub else None,
                    "source": pub.source if pub else None}
            cell["accuracy"] = pub.accuracy if pub else "seen"  # the cell's definition: the published figure's
            for key in ("avg", "last"):
                values = [ours(x, key, cell["accuracy"]) for x in results]
                cell[f"{key}_mean"], cell[f"{key}_std"] = _mean(values), _std(values)
                theirs = cell[f"published_{key}"]
                cell[f"{key}_diff"] = None if theirs is None or cell[f"{key}_mean"] is None else \
                    cell[f"{key}_mean"] - theirs
            cells.append(cell)
    return cells


def run_state(run_dir: str) -> Tuple[Optional[Dict[str, Any]], str]:
    """``(results, "")`` for a finished run (results.json says ``finished``, as
    :func:`status_of` needs to skip it), else ``(None, why it is not in the table)``."""
    path = os.path.join(run_dir, "results.json")
    if not os.path.isfile(path):
        started = any(os.path.exists(os.path.join(run_dir, name)) for name in ("config.json", "run.log", CHECKPOINT))
        return None, "no task finished yet" if started else "not started"
    try:
        with open(path, encoding="utf-8") as f:
            r = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return None, f"results.json unreadable: {e}"
    if not isinstance(r, dict):
        return None, "results.json unreadable: not a results file of this toolbox"
    if r.get("finished"):
        return r, ""
    done = r.get("completed_tasks", len(r.get("accuracy") or []))
    planned = r.get("nb_tasks")
    if planned:
        return None, partial_reason(done, planned)
    return None, f"results.json not marked finished ({done} task(s) in it; written before runs recorded it?)"


def collect_retention(runs: List[PlannedRun]) -> List[Dict[str, Any]]:
    """A retention table (``columns: retention``): one cell per method x held-out set (the
    name of each ``zero_shot_eval`` entry, across protocols): the zero-shot top-1 after
    training (``model``) and of zero-shot CLIP (``zero_shot_clip``) in each finished run's
    results.json, mean and std over seeds, and the published figure after training."""
    cells = []
    for method in dict.fromkeys(r.method for r in runs):
        for protocol in dict.fromkeys(r.protocol for r in runs):
            mine = [r for r in runs if r.method == method and r.protocol == protocol]
            states = [(r, *run_state(r.run_dir)) for r in mine]
            for spec in mine[0].config["zero_shot_eval"]:
                label = held_out_label(spec)
                found = [(r, next((z for z in (x.get("zero_shot_retention") or []) if z.get("name") == label), None))
                         for r, x, _ in states if x is not None]
                done = [(r, z) for r, z in found if z is not None]
                missing = [{"seed": r.seed, "run_dir": r.run_dir, "reason": why} for r, x, why in states if x is None]
                missing += [{"seed": r.seed, "run_dir": r.run_dir, "reason": f"no zero-shot result for {label}"}
                            for r, z in found if z is None]
                pub = published_retention_for(method, mine[0].config, spec)
                cell = {"method": method, "protocol": protocol, "held_out": label, "images": _images(done),
                        "seeds": " ".join(str(r.seed) for r, _ in done), "runs": len(done), "planned": len(mine),
                        "incomplete": f"{len(done)} of {len(mine)} seeds" if len(done) < len(mine) else "",
                        "missing": missing, "published": pub.accuracy if pub else None,
                        "source": pub.source if pub else None}
                for key in ("model", "zero_shot_clip"):
                    values = [z[key] for _, z in done]
                    cell[f"{key}_mean"], cell[f"{key}_std"] = _mean(values), _std(values)
                cell["diff"] = None if pub is None or cell["model_mean"] is None else cell["model_mean"] - pub.accuracy
                cells.append(cell)
    return cells


def _images(done: List[Tuple[PlannedRun, Dict[str, Any]]]) -> str:
    """The number of held-out images of a retention cell's runs ("" before any finished)."""
    return " ".join(str(n) for n in dict.fromkeys(z.get("images") for _, z in done))


def _retention_columns(cells: List[Dict[str, Any]]) -> List[Tuple[str, str]]:
    return list(dict.fromkeys((c["protocol"], c["held_out"]) for c in cells))


def _retention_cell(cells: List[Dict[str, Any]], method: str, column: Tuple[str, str]) -> Optional[Dict[str, Any]]:
    return next((c for c in cells if c["method"] == method and (c["protocol"], c["held_out"]) == column), None)


def _retention_text(c: Optional[Dict[str, Any]]) -> str:
    if c is None:
        return ""
    mark = f" [{c['incomplete']}]" if c["incomplete"] else ""
    if c["model_mean"] is None:
        return "-" + mark
    text = f"{c['model_mean']:.2f} ± {c['model_std']:.2f}" + mark
    if c["published"] is not None:
        text += f" ({c['published']:.2f}, {c['diff']:+.2f})"
    return text


def retention_table_markdown(cells: List[Dict[str, Any]]) -> str:
    """Rows = methods, columns = held-out sets (with the protocol where the table has several)."""
    cols = _retention_columns(cells)
    several = len({p for p, _ in cols}) > 1
    head = ["method"] + [f"{p}: {h}" if several else h for p, h in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method in dict.fromkeys(c["method"] for c in cells):
        lines.append("| " + " | ".join([method] + [_retention_text(_retention_cell(cells, method, col))
                                                   for col in cols]) + " |")
    notes = sorted({f"{c['method']} on {c['held_out']}: {c['source']}" for c in cells if c["source"]})
    text = "\n".join(lines) + "\n\nCells: zero-shot top-1 (%) on each held-out set after the last task (the trained " \
                              "model; zero_shot_eval), mean ± std over the finished seeds (population std); in " \
                              "parentheses the published figure and the difference. table.csv also has zero-shot " \
                              "CLIP's accuracy on the same images.\n"
    return text + _markdown_notes(notes, cells, "have a result")


RETENTION_CSV = ["method", "protocol", "held_out", "images", "seeds", "runs", "planned", "incomplete", "left_out",
                 "model_mean", "model_std", "zero_shot_clip_mean", "zero_shot_clip_std", "published", "diff", "source"]


def retention_table_csv(cells: List[Dict[str, Any]]) -> str:
    return cells_csv(cells, RETENTION_CSV)


def retention_table_latex(cells: List[Dict[str, Any]]) -> str:
    tex = latex_escape
    cols = _retention_columns(cells)
    lines = ["\\begin{tabular}{l" + "c" * len(cols) + "}", "\\hline",
             "Method & " + " & ".join(tex(h) for _, h in cols) + " \\\\", "\\hline"]
    for method in dict.fromkeys(c["method"] for c in cells):
        row = [tex(method)]
        for col in cols:
            c = _retention_cell(cells, method, col)
            row.append("" if c is None else latex_pm(c["model_mean"], c["model_std"])
                       + (f" [{c['incomplete']}]" if c["incomplete"] else ""))
        lines.append(" & ".join(row) + " \\\\")
    lines += ["\\hline", "\\end{tabular}"] + [f"% in no cell: {latex_escape(line)}" for line in left_out_lines(cells)]
    return "\n".join(lines) + "\n"


def _columns(cells: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    seen: Dict[str, Dict[str, Any]] = {}
    for c in cells:
        seen.setdefault(c["protocol"], c)
    return list(seen.values())


def _cell_text(c: Dict[str, Any], key: str) -> str:
    mark = f" [{c['incomplete']}]" if c["incomplete"] else ""
    if c[f"{key}_mean"] is None:
        return "-" + mark
    text = f"{c[f'{key}_mean']:.2f} ± {c[f'{key}_std']:.2f}" + mark
    if c[f"published_{key}"] is not None:
        text += f" ({c[f'published_{key}']:.2f}, {c[f'{key}_diff']:+.2f})"
    return text


def left_out_lines(cells: List[Dict[str, Any]]) -> List[str]:
    """One line per planned run that is in no cell, and why: ``mgclip cifar seed 3: partial,
    1 of 10 tasks (<run dir>)``."""
    return list(dict.fromkeys(f"{c['method']} {c['protocol']} seed {m['seed']}: {m['reason']} ({m['run_dir']})"
                              for c in cells for m in c["missing"]))  # once, where a run is missing from several cells


def _markdown_notes(notes: List[str], cells: List[Dict[str, Any]], seeds_counted: str) -> str:
    """The lines under a Markdown table (both kinds): where each published figure is from, then
    each planned run in no cell and why."""
    text = "".join(f"- published: {n}\n" for n in notes)
    missing = left_out_lines(cells)
    if missing:
        text += f"\n[k of n seeds]: only k of the n planned seeds {seeds_counted}; the mean and std are over " \
                "those k. Runs in no cell:\n\n" + "".join(f"- {line}\n" for line in missing)
    return text


def table_markdown(cells: List[Dict[str, Any]]) -> str:
    cols = _columns(cells)
    head = ["method"] + [f"{c['dataset']} {c['split']} ({c['backbone']}) {m}" for c in cols for m in ("Avg", "Last")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method in dict.fromkeys(c["method"] for c in cells):
        row = [method]
        for col in cols:
            cell = next(c for c in cells if c["method"] == method and c["protocol"] == col["protocol"])
            row += [_cell_text(cell, "avg"), _cell_text(cell, "last")]
        lines.append("| " + " | ".join(row) + " |")
    notes = sorted({f"{c['method']} on {c['dataset']} {c['split']}: {c['source']} ({ACCURACY[c['accuracy']]})"
                    for c in cells if c["source"]})
    text = "\n".join(lines) + "\n\nCells: mean ± std over the finished seeds (population std); in parentheses " \
                              "the published figure and the difference; a cell uses its published figure's " \
                              "definition of accuracy (named below; without one: over all seen test images).\n"
    return text + _markdown_notes(notes, cells, "have finished")


# incomplete: "2 of 3 seeds" where fewer seeds than planned finished; left_out: each run in no cell and why
TABLE_CSV = ["method", "protocol", "dataset", "split", "backbone", "seeds", "runs", "planned", "incomplete",
             "left_out", "avg_mean", "avg_std", "last_mean", "last_std", "published_avg", "published_last",
             "avg_diff", "last_diff", "source"]


def cells_csv(cells: List[Dict[str, Any]], fields: List[str]) -> str:
    """One CSV row per cell with ``fields``; ``left_out`` names each run in no cell and why."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    for c in cells:
        flat = {**c, "left_out": "; ".join(f"seed {m['seed']}: {m['reason']}" for m in c["missing"])}
        w.writerow({k: "" if flat[k] is None else flat[k] for k in fields})
    return buf.getvalue()


def table_csv(cells: List[Dict[str, Any]]) -> str:
    return cells_csv(cells, TABLE_CSV)


def table_latex(cells: List[Dict[str, Any]]) -> str:
    tex = latex_escape
    cols = _columns(cells)
    lines = ["\\begin{tabular}{l" + "cc" * len(cols) + "}", "\\hline",
             "Method & " + " & ".join(f"\\multicolumn{{2}}{{c}}{{{tex(c['dataset'])} {tex(c['split'])} "
                                      f"({tex(c['backbone'])})}}" for c in cols) + " \\\\",
             " & " + " & ".join("Avg & Last" for _ in cols) + " \\\\", "\\hline"]
    for method in dict.fromkeys(c["method"] for c in cells):
        row = [tex(method)]
        for col in cols:
            cell = next(c for c in cells if c["method"] == method and c["protocol"] == col["protocol"])
            mark = f" [{cell['incomplete']}]" if cell["incomplete"] else ""
            row += [latex_pm(cell[f"{key}_mean"], cell[f"{key}_std"]) + mark for key in ("avg", "last")]
        lines.append(" & ".join(row) + " \\\\")
    lines += ["\\hline", "\\end{tabular}"] + [f"% in no cell: {latex_escape(line)}" for line in left_out_lines(cells)]
    return "\n".join(lines) + "\n"


def write_table(cells: List[Dict[str, Any]], out: str, identity: Optional[Dict[str, Any]] = None) -> List[str]:
    """table.md, table.csv and table.tex into ``out``; with ``identity`` (:func:`table_identity`)
    first ``table.json``, which says which table the folder holds. Retention cells
    (:func:`collect_retention`) get the retention table's files."""
    if cells and "held_out" in cells[0]:
        files = {"table.md": retention_table_markdown(cells), "table.csv": retention_table_csv(cells),
                 "table.tex": retention_table_latex(cells)}
    else:
        files = {"table.md": table_markdown(cells), "table.csv": table_csv(cells), "table.tex": table_latex(cells)}
    if identity is not None:
        files = {"table.json": json.dumps(identity, indent=2, sort_keys=True, default=str) + "\n", **files}
    for name, text in files.items():
        write_text(os.path.join(out, name), text)
    return list(files)


# ----------------------------------------------------------------------------- the output folder
TABLE_FILES = ("table.md", "table.csv", "table.tex")


def overrides_slug(overrides: Sequence[str]) -> str:
    """The ``--set`` overrides as a folder-name part: ``prefix=x`` -> ``prefix-x``, several
    sorted by key and joined by ``_`` (the order on the command line does not matter, a key
    set twice counts as the last). A value that does not read back from its name exactly
    (``/``, ``_``, spaces, lists, quoted numbers) or a long name gets a short hash of all
    the overrides, so distinct overrides never share a name. ``""`` without overrides."""
    parsed = parse_overrides(overrides)
    parts, exact = [], True
    for key in sorted(parsed):
        value = parsed[key]
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
        name, shown = re.sub(r"[^A-Za-z0-9_.]+", "-", key).strip("-"), re.sub(r"[^A-Za-z0-9.+]+", "-", text).strip("-")
        exact = exact and name == key and shown == text and _reads_back(key, text, value)
        parts.append(f"{name}-{shown}")
    slug = "_".join(parts)
    if parts and (not exact or len(slug) > 60):
        digest = hashlib.sha1(json.dumps(parsed, sort_keys=True, default=str).encode()).hexdigest()[:8]
        slug = slug[:60].rstrip("-_.") + "_" + digest
    return slug


def _reads_back(key: str, text: str, value: Any) -> bool:
    try:
        again = parse_overrides([f"{key}={text}"])[key]
    except ConfigError:
        return False
    return type(again) is type(value) and again == value


def default_out(table: Dict[str, Any], overrides: Sequence[str]) -> str:
    """``tables/<name>``, or ``tables/<name>_<overrides>`` with ``--set`` overrides (see
    :func:`overrides_slug`); a table config's own ``out`` wins."""
    if table.get("out"):
        return str(table["out"])
    slug = overrides_slug(overrides)
    return os.path.join("tables", table["name"] + (f"_{slug}" if slug else ""))


def table_identity(config_path: str, table: Dict[str, Any], overrides: Sequence[str],
                   runs: List[PlannedRun]) -> Dict[str, Any]:
    """What ``table.json`` records: the table's name, its config file, the ``--set``
    overrides (as given and as read) and the run folders."""
    return {"name": table["name"], "config": os.path.abspath(config_path), "set": list(overrides),
            "overrides": parse_overrides(overrides), "runs": [r.run_dir for r in runs]}


def check_out(out: str, identity: Dict[str, Any]) -> None:
    """Refuses an output folder that holds another table (its table.json names another
    config or other overrides, cannot be read, or table files lie there without one);
    the same table is regenerated in place."""
    todo = f"give --out another folder, or remove {out}"
    path = os.path.join(out, "table.json")
    if not os.path.exists(path):
        there = [name for name in TABLE_FILES if os.path.exists(os.path.join(out, name))]
        if there:
            raise ConfigError(f"table folder {out} holds {', '.join(there)} without a table.json saying which table "
                              f"they are (written by hand or by an earlier version): {todo}")
        return
    try:
        with open(path, encoding="utf-8") as f:
            theirs = json.load(f)
        config, overrides = theirs["config"], theirs["overrides"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise ConfigError(f"table folder {out}: its table.json cannot be read ({e}): {todo}") from None

    def same(a, b):
        return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)

    if config != identity["config"] or not same(overrides, identity["overrides"]):
        sets = " ".join(f"--set {o}" for o in theirs.get("set") or []) or "no --set"
        raise ConfigError(f"table folder {out} holds another table ({config}, {sets}): {todo}")


def _published_text(run: PlannedRun) -> str:
    """``  published Avg 86.77 / Last 79.11 (PROOF official log)`` for a run of a published protocol, else ""."""
    pub = published_for(run.method, run.config)
    if pub is None:
        return ""
    avg, last = ("-" if v is None else f"{v:.2f}" for v in (pub.avg, pub.last))
    return f"  published Avg {avg} / Last {last} ({pub.source})"


def _published_retention_text(run: PlannedRun) -> str:
    """``  published after training: <held-out> 44.65, ... (MG-CLIP supplementary, Table 6)``
    for a run of a retention table whose held-out sets have published figures, else ""."""
    found = [(held_out_label(spec), published_retention_for(run.method, run.config, spec))
             for spec in run.config.get("zero_shot_eval") or []]
    found = [(label, pub) for label, pub in found if pub is not None]
    if not found:
        return ""
    sources = "; ".join(dict.fromkeys(pub.source for _, pub in found))
    return "  published after training: " + ", ".join(f"{label} {pub.accuracy:.2f}" for label, pub in found) + \
        f" ({sources})"


# ----------------------------------------------------------------------------- command line
def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m toolbox.table", description=__doc__.split("\n\n")[0])
    p.add_argument("config", help="a table config (a path, or a shipped one in exps/tables/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="a key for every run (e.g. --set data_path=/data --set logdir=runs)")
    p.add_argument("--dry-run", action="store_true", help="list the runs and what each would do, write nothing")
    p.add_argument("--executor", choices=["local", "submitit"], help="overrides the config's executor.name")
    p.add_argument("--cluster", help="submitit's cluster: slurm, local or debug (default: slurm where available)")
    p.add_argument("--out", help="output folder of the table (default: tables/<name>, with --set overrides "
                                 "tables/<name>_<overrides>, e.g. tables/demo_prefix-x)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    with interrupts.installed(exiting=argv is None):  # argv None: the command line, which exits after this
        try:
            return _main(args)
        except BaseException as e:
            code = exit_code(e, stopped=(TableJobError,))
            if code is None:
                raise
            return code


def _main(args: argparse.Namespace) -> int:
    table = load_table_config(args.config)
    executor = dict(table.get("executor") or {"name": "local"})
    unknown = sorted(set(executor) - EXECUTOR_KEYS)
    if unknown:
        raise ConfigError(f"table config 'executor': unknown key(s) {', '.join(unknown)} "
                          f"(keys: {', '.join(sorted(EXECUTOR_KEYS))})")
    if args.executor:
        executor["name"] = args.executor
    if args.cluster:
        executor["cluster"] = args.cluster
    runs = plan(table, args.overrides)
    out = args.out or default_out(table, args.overrides)
    identity = table_identity(table_config_path(args.config), table, args.overrides, runs)
    check_out(out, identity)  # before any run starts
    retention = table.get("columns") == "retention"
    for r in runs:
        published = _published_retention_text(r) if retention else _published_text(r)
        print(f"{r.method:14s} {r.protocol:14s} seed {r.seed}: {r.status}  ({r.run_dir}){published}")
    print(f"table -> {out}")
    if args.dry_run:
        print(f"{len(runs)} run(s); nothing was written (run without --dry-run to run them)")
        return 0
    failed = None
    try:
        execute(runs, executor)
    except TableJobError as e:  # the table of what finished is still written, its gaps marked
        failed = e
    cells = collect_retention(runs) if retention else collect(runs)
    written = write_table(cells, out, identity)
    print((retention_table_markdown if retention else table_markdown)(cells), end="")
    print(f"wrote {', '.join(written)} to {out}")
    if failed is not None:
        raise failed
    return 0


if __name__ == "__main__":
    sys.exit(main())
