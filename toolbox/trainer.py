"""The task loop: data manager + learner -> per-task evaluation -> run directory.

Run directory: ``<logdir>/<model>/<dataset>/<init_cls>/<increment>/<prefix>_<seed>/`` with
``config.json`` (resolved), ``results.json``, ``metrics.csv``, ``run.log`` and
``checkpoint.pt``; all are rewritten atomically after every task (the checkpoint also
after MG-CLIP's epoch probe), so a killed run leaves whole files and can be resumed.
"""
from __future__ import annotations

import csv
import io
import logging
import os
import random
import sys
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Union

import numpy as np
import torch

from toolbox.checkpoint import (
    CheckpointError,
    config_differences,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from toolbox.data_manager import DataManager
from toolbox.io import WriteError, remove_stale_temps, write_error, write_json, write_text
from toolbox.registry import get_model
from toolbox.report import group_key, group_runs, load_run, summary_row, summary_text
from toolbox.run_lock import RunLock
from utils.config import Config
from utils.errors import NonFiniteError, user_message
from utils.metrics import summarize

logger = logging.getLogger(__name__)

# metrics.csv: these columns, then the learner's own task_metrics() (models/base.py) before the timings
CSV_FIELDS = ["task", "classes", "accuracy", "top5", "old", "new"]
CSV_TIMINGS = ["train_s", "eval_s"]


def _duration(seconds: float) -> str:
    """``0.4 s``, ``42 s``, ``3 min 05 s``, ``2 h 07 min``."""
    if seconds < 9.95:
        return f"{seconds:.1f} s"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def seed_everything(seed: int) -> None:
    """The run's one seeding point: python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run_dir_for(cfg: Config, seed: int) -> str:
    return os.path.join(cfg.logdir, cfg.model_name, cfg.dataset, str(cfg.init_cls), str(cfg.increment),
                        f"{cfg.prefix}_{seed}")


def _metrics_csv(rows: List[Dict[str, Any]], metric_names: List[str]) -> str:
    columns = CSV_FIELDS + metric_names + CSV_TIMINGS
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    return buf.getvalue()


CHECKPOINT = "checkpoint.pt"
OUTPUTS = ("results.json", "metrics.csv", CHECKPOINT)  # what a fresh run replaces


class RunInterrupted(RuntimeError):
    """Ctrl-C (SIGINT) during a run; the message says where and how to resume."""


@dataclass
class _Prepared:
    """A run whose inputs have all been checked; nothing in its folder touched yet."""
    cfg: Config
    seed: int
    run_dir: str
    resolved: Dict[str, Any]
    dm: DataManager
    learner: Any
    resume: Union[bool, str]
    state: Optional[Dict[str, Any]]  # the checkpoint it continues from (None: starts)


def run_one(cfg: Config, seed: int, resume: Union[bool, str] = False, run_dir: Optional[str] = None) -> str:
    """Run every task for one seed; returns the run directory.

    ``resume``: False = start over (an earlier run's results and checkpoint in the run
    directory are replaced); True = continue from the checkpoint if there is one, else
    start; "required" = continue, or start if the directory holds only the config of a
    run stopped before its first checkpoint. ``run_dir`` defaults to the one the config names.

    Every input is checked first (config, folder writable, data, device, backbone, resume
    compatibility); only then is the folder locked for this process, and only then is
    anything in it created, removed or rewritten. A failed check leaves it as it was."""
    run_dir = run_dir or run_dir_for(cfg, seed)
    prepared = prepare_run(cfg, seed, run_dir, resume)
    with RunLock(run_dir):
        handler = _RunLogHandler(os.path.join(run_dir, "run.log"), mode="a" if resume else "w")
        logging.getLogger().addHandler(handler)
        where: Dict[str, Any] = {}
        try:
            return _run(prepared, where)
        except KeyboardInterrupt:
            message = _interrupted_message(run_dir, where)
            handler.write_line(f"error: {message}")
            raise RunInterrupted(message) from None
        except BaseException as e:
            handler.write_line(f"error: {user_message(e)}")
            raise
        finally:
            logging.getLogger().removeHandler(handler)
            handler.close()


def prepare_run(cfg: Config, seed: int, run_dir: str, resume: Union[bool, str]) -> _Prepared:
    """All checks of a run, reading only: the run folder can be written, the checkpoint
    (when resuming) belongs to this config and data, the data (every class with training
    and test images, names, class order), the device and the backbone."""
    resolved = {**cfg.to_dict(), "seed": seed}
    check_writable(run_dir)
    state = _load_resume_state(os.path.join(run_dir, CHECKPOINT), resume, resolved)
    seed_everything(seed)
    dm = DataManager(cfg.dataset, True, seed, cfg.init_cls, cfg.increment, cfg)
    learner = get_model(cfg.model_name, resolved)  # builds the backbone on the device
    if cfg.zero_shot_eval:
        from toolbox.retention import check_specs, check_views

        check_views(learner)
        check_specs(cfg.zero_shot_eval, cfg.released_cache)  # held-out data loads, corruptions run here
    if state is not None:
        _check_same_data(state, dm, os.path.join(run_dir, CHECKPOINT))
    return _Prepared(cfg, seed, run_dir, resolved, dm, learner, resume, state)


def check_writable(run_dir: str) -> None:
    """The run folder exists and is writable, or can be made in a writable folder."""
    path = os.path.abspath(run_dir)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        raise WriteError(f"cannot make run folder {run_dir}: {path} is a file, not a folder; "
                         f"remove it or change config key 'logdir' / 'prefix'")
    if not os.access(path, os.W_OK | os.X_OK):
        raise WriteError(f"cannot write run folder {run_dir}: {path} is not writable (read-only or no "
                         f"permission); point config key 'logdir' at a writable folder")


def _load_resume_state(ckpt_path: str, resume: Union[bool, str], resolved: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The checkpoint to continue from, checked against the config; None to start over."""
    if not resume:
        return None
    if not os.path.exists(ckpt_path):
        run_dir = os.path.dirname(ckpt_path)
        if resume is True or not os.path.exists(os.path.join(run_dir, "results.json")):
            return None  # nothing completed yet (or --resume of a config): start from the first task
    state = load_checkpoint(ckpt_path)
    diffs = config_differences(state["config"], resolved)
    if diffs:
        detail = "; ".join(f"{k}: was {state['config'].get(k)!r}, now {resolved.get(k)!r}" for k in diffs)
        raise CheckpointError(f"cannot resume {os.path.dirname(ckpt_path)}: the config differs in keys that change "
                              f"the results ({detail}). Use the original values, or start a new run "
                              f"(another prefix) without --resume.")
    return state


def _interrupted_message(run_dir: str, where: Dict[str, Any]) -> str:
    task = f"in task {where['task']}/{where['nb_tasks']}" if "task" in where else "before the first task"
    kept = (f"completed tasks are kept in {os.path.join(run_dir, CHECKPOINT)}"
            if os.path.exists(os.path.join(run_dir, CHECKPOINT)) else "no task had completed")
    return f"interrupted {task} ({kept}); resume with `python main.py --resume {run_dir}`"


class _RunLogHandler(logging.FileHandler):
    """run.log. A failing write (full disk) is reported once as one line, not as a
    traceback per log record; the run's own writes then fail with the path and reason."""

    def __init__(self, path: str, mode: str):
        try:
            super().__init__(path, mode=mode)
        except OSError as e:
            raise write_error(path, e) from None
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self._failed = False

    def handleError(self, record: logging.LogRecord) -> None:
        if not self._failed:
            self._failed = True
            print(f"warning: cannot write {self.baseFilename}; run.log stops here", file=sys.stderr)

    def emit(self, record: logging.LogRecord) -> None:
        if not self._failed:
            super().emit(record)

    def write_line(self, message: str) -> None:
        """Put ``message`` in run.log only (the console gets it from main)."""
        self.emit(logging.LogRecord("main", logging.ERROR, __file__, 0, message, None, None))


class _Progress:
    """The metrics gathered so far (saved in checkpoints)."""

    FIELDS = ("accuracies", "matrix", "rows", "task_timings", "grouped", "top5", "task_metrics")

    def __init__(self, saved: Optional[Dict[str, Any]] = None):
        for f in self.FIELDS:
            setattr(self, f, list(saved[f]) if saved and f in saved else [])
        if saved and "task_metrics" not in saved:  # a checkpoint written before task metrics: none for its tasks
            self.task_metrics = [{} for _ in self.accuracies]

    def to_dict(self) -> Dict[str, Any]:
        return {f: getattr(self, f) for f in self.FIELDS}

    def metric_names(self) -> List[str]:
        """The learner's task metrics, in order of first appearance."""
        return list(dict.fromkeys(name for metrics in self.task_metrics for name in metrics))

    def metrics_by_name(self) -> Dict[str, List[Optional[float]]]:
        """results.json's ``task_metrics``: each metric's value per task (None where a task lacks it)."""
        return {name: [m.get(name) for m in self.task_metrics] for name in self.metric_names()}


def _run(p: _Prepared, where: Dict[str, Any]) -> str:
    """The run itself, in its locked folder: from here on its files are ours to write."""
    began = time.perf_counter()
    cfg, seed, run_dir, resolved, dm, learner = p.cfg, p.seed, p.run_dir, p.resolved, p.dm, p.learner
    ckpt_path = os.path.join(run_dir, CHECKPOINT)
    remove_stale_temps(run_dir)  # left by a run killed while writing (no other process is here: we hold the lock)
    state = _load_resume_state(ckpt_path, p.resume, resolved)  # again, under the lock: it may have moved on
    if state is not None:
        _check_same_data(state, dm, ckpt_path)
    else:
        _clear_outputs(run_dir)
    write_json(os.path.join(run_dir, "config.json"), resolved)
    logger.info("run %s: %s on %s, seed %d", run_dir, cfg.model_name, cfg.dataset, seed)
    logger.info("%d tasks of %s classes; class order %s", dm.nb_tasks,
                [dm.get_task_size(t) for t in range(dm.nb_tasks)], dm.class_order)
    where["nb_tasks"] = dm.nb_tasks

    progress = _Progress(state["results"] if state else None)
    elapsed_before = state["elapsed_s"] if state else 0.0
    if state is not None:
        learner.load_state_dict(state["learner"])
        set_rng_state(state["rng"])
        logger.info("resuming %s after %d completed task(s)", run_dir, state["completed_tasks"])
    start_run = began - elapsed_before  # total time includes building data and model, and earlier sessions

    def save_checkpoint_now() -> None:
        save_checkpoint(ckpt_path, {
            "config": resolved, "class_order": dm.class_order, "completed_tasks": len(progress.accuracies),
            "learner": learner.state_dict(), "rng": rng_state(), "results": progress.to_dict(),
            "elapsed_s": time.perf_counter() - start_run})

    learner.on_checkpoint = save_checkpoint_now  # e.g. MG-CLIP calls it once the epoch probe has chosen E

    first = len(progress.accuracies)
    if first == dm.nb_tasks:
        logger.info("%s is already complete (%d tasks)", run_dir, first)
        return run_dir
    loop_start = time.perf_counter()
    for task in range(first, dm.nb_tasks):
        where["task"] = task + 1
        t0 = time.perf_counter()
        try:
            learner.incremental_train(dm)
            t1 = time.perf_counter()
            cnn_accy, _ = learner.eval_task()
        except NonFiniteError as e:
            kept = (f"{ckpt_path} (after {len(progress.accuracies)} completed task(s)) is intact"
                    if os.path.exists(ckpt_path) else "no checkpoint was written yet")
            raise NonFiniteError(f"{e}. The run stopped; {kept}. Lower 'lr' (or check the data) and start again, "
                                 f"or --resume to retry from the checkpoint.") from None
        t2 = time.perf_counter()
        learner.after_task()
        _record_task(progress, task, learner, cnn_accy, t1 - t0, t2 - t1)
        left = dm.nb_tasks - task - 1  # estimated from this session's mean time per task
        eta = f", about {_duration((t2 - loop_start) / (task + 1 - first) * left)} left" if left else ""
        logger.info("task %d/%d: accuracy %.2f %% on %d classes (per task %s); %s for this task%s",
                    task + 1, dm.nb_tasks, progress.accuracies[-1], learner._total_classes,
                    [round(a, 1) for a in progress.matrix[-1]], _duration(t2 - t0), eta)
        results = {
            "model_name": cfg.model_name, "dataset": cfg.dataset, "seed": seed,
            "nb_tasks": dm.nb_tasks, "completed_tasks": task + 1, "finished": task + 1 == dm.nb_tasks,
            "class_order": dm.class_order,
            "accuracy": progress.accuracies, "accuracy_matrix": progress.matrix, "top5": progress.top5,
            "grouped": progress.grouped, "task_metrics": progress.metrics_by_name(),
            **summarize(progress.accuracies, progress.matrix),
            **learner.results_extra(),
            "config": resolved,
            "timings": {"total_s": time.perf_counter() - start_run, "per_task": progress.task_timings},
        }
        write_json(os.path.join(run_dir, "results.json"), results)
        write_text(os.path.join(run_dir, "metrics.csv"), _metrics_csv(progress.rows, progress.metric_names()))
        save_checkpoint_now()
    if cfg.zero_shot_eval:
        from toolbox.retention import evaluate

        results["zero_shot_retention"] = [evaluate(learner, spec) for spec in cfg.zero_shot_eval]
        write_json(os.path.join(run_dir, "results.json"), results)
    logger.info("summary:\n%s", summary_text({group_key(results): [results]}))
    logger.info("done in %.1f s -> %s", time.perf_counter() - start_run, run_dir)
    return run_dir


def _clear_outputs(run_dir: str) -> None:
    """A fresh run replaces an earlier run's outputs (only once its inputs are checked),
    so the folder never mixes the new config with the old results."""
    old = [name for name in OUTPUTS if os.path.exists(os.path.join(run_dir, name))]
    if old:
        logger.warning("%s held an earlier run: replacing its %s (use --resume to continue a run instead)",
                       run_dir, ", ".join(old))
        for name in old:
            os.remove(os.path.join(run_dir, name))


def _check_same_data(state: Dict[str, Any], dm: DataManager, ckpt_path: str) -> None:
    if list(state["class_order"]) != dm.class_order:
        raise CheckpointError(f"cannot resume from {ckpt_path}: the class order differs from the checkpoint's "
                              f"(config key 'class_order' or the file it names changed)")
    names = state["learner"].get("names")
    if names is not None and list(names) != dm.get_class_names(range(len(names))):
        raise CheckpointError(f"cannot resume from {ckpt_path}: the class names differ from the checkpoint's "
                              f"(config key 'class_names' or the file it names changed)")


def _record_task(progress: _Progress, task: int, learner, cnn_accy: Dict[str, Any], train_s: float,
                 eval_s: float) -> None:
    progress.accuracies.append(float(cnn_accy["top1"]))
    progress.top5.append(cnn_accy.get(f"top{learner.topk}"))
    progress.matrix.append([float(a) for a in cnn_accy["per_task"]])
    progress.grouped.append(cnn_accy["grouped"])
    timing = {"train_s": train_s, "eval_s": eval_s}
    if learner.timings:
        timing["phases_cumulative_s"] = dict(learner.timings)
    progress.task_timings.append(timing)
    metrics = {name: float(value) for name, value in learner.task_metrics().items()}
    progress.task_metrics.append(metrics)
    progress.rows.append({
        "task": task, "classes": learner._total_classes, "accuracy": round(progress.accuracies[-1], 2),
        "top5": progress.top5[-1], "old": cnn_accy["grouped"].get("old"), "new": cnn_accy["grouped"].get("new"),
        **{name: round(value, 2) for name, value in metrics.items()},
        "train_s": round(train_s, 2), "eval_s": round(eval_s, 2)})


def precheck(cfg: Config, resume: bool = False) -> None:
    """The checks that cost nothing, for every seed of ``cfg``: each run folder can be
    written and, with ``resume``, each checkpoint fits the config (run before any seed,
    and in a side-by-side config before any method, starts)."""
    resolved = cfg.to_dict()
    for seed in cfg.seeds():
        check_writable(run_dir_for(cfg, seed))
        _load_resume_state(os.path.join(run_dir_for(cfg, seed), CHECKPOINT), resume, {**resolved, "seed": seed})


def check_only(cfg: Config, resume: Union[bool, str] = False, run_dir: Optional[str] = None) -> List[str]:
    """Every check a run makes before it starts (folder, checkpoint, data and official
    files, device, backbone and its weights, held-out sets), for every seed (or the one run
    in ``run_dir``), writing nothing; one line per run that would start."""
    lines = []
    for seed in cfg.seeds():
        folder = run_dir or run_dir_for(cfg, seed)
        p = prepare_run(cfg, seed, folder, resume)
        start = (f"continues after task {p.state['completed_tasks']}/{p.dm.nb_tasks}" if p.state is not None else
                 "starts" + (" over (replacing its results)" if os.path.exists(os.path.join(folder, "results.json"))
                             else ""))
        lines.append(f"ok: {cfg.model_name} seed {seed}: {p.dm.nb_tasks} tasks of "
                     f"{[p.dm.get_task_size(t) for t in range(p.dm.nb_tasks)]} classes on {cfg.dataset}, "
                     f"{cfg.backbone} on {p.learner._device}; {folder} {start}")
        del p
    return lines


def side_by_side_summary(run_dirs: List[str]) -> str:
    """The methods of a side-by-side config in one table (rows as ``toolbox.report`` makes
    them), and their rows against published figures where they run a published protocol."""
    return summary_text(group_runs([load_run(d) for d in run_dirs]))


def run(cfg: Config, resume: bool = False) -> List[str]:
    """All seeds of ``cfg`` (each continued from its checkpoint with ``resume``); with
    several seeds also writes ``<prefix>_summary.json`` (mean and std of Avg and Last)
    beside the run directories. Each seed's folder must be writable and, with ``resume``,
    each checkpoint must fit the config before the first seed starts."""
    precheck(cfg, resume)
    run_dirs = [run_one(cfg, seed, resume=resume) for seed in cfg.seeds()]
    if len(run_dirs) > 1:
        finals = [load_run(d) for d in run_dirs]
        row = summary_row(group_key(finals[0]), finals)  # the same figures the report prints
        summary = {"runs": run_dirs, "seeds": cfg.seeds()}
        for key in ("avg", "last"):
            summary[key] = {"mean": row[f"{key}_mean"], "std": row[f"{key}_std"], "values": [r[key] for r in finals]}
        path = os.path.join(os.path.dirname(run_dirs[0]), f"{cfg.prefix}_summary.json")
        write_json(path, summary)
        logger.info("summary over %d seeds -> %s:\n%s", len(run_dirs), path,
                    summary_text({group_key(finals[0]): finals}))
    return run_dirs
