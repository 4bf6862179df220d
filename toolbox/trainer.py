"""The task loop: data manager + learner -> per-task evaluation -> run directory.

Run directory: ``<logdir>/<model>/<dataset>/<init_cls>/<increment>/<prefix>_<seed>/`` with
``config.json`` (resolved), ``results.json``, ``metrics.csv``, ``run.log`` and
``checkpoint.pt``; all are rewritten atomically after every task (the checkpoint also
after MG-CLIP's epoch probe), so a killed run leaves whole files and can be resumed.

An earlier run in the folder is never lost to a later one (docs/reliability.md): a fresh
run into a folder that holds a run's results or checkpoint is refused unless
``overwrite``; the replacement then works in ``<run dir>/.attempt/`` and its files are
moved over the earlier run's only once it has finished (through ``.replacing/``, so a
process killed while moving them is completed by the next process that takes the folder).
"""
from __future__ import annotations

import csv
import io
import json
import logging
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Union

import numpy as np
import torch

from toolbox import interrupts
from toolbox.checkpoint import (
    CheckpointError,
    config_differences,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from toolbox.data_manager import DataManager
from toolbox.io import WriteError, fsync_folder, remove_stale_temps, write_error, write_json, write_text
from toolbox.registry import get_model, method_data
from toolbox.retention import check_specs, check_views, evaluate
from toolbox.run_lock import ATTEMPT, REPLACING, RunLock, check_not_in_use
from utils.config import Config
from utils.errors import NonFiniteError, user_message
from utils.metrics import summarize, task_mean_accuracies

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
OUTPUTS = ("results.json", "metrics.csv", CHECKPOINT)  # a run's outputs (besides config.json and run.log)


class RunInterrupted(RuntimeError):
    """Ctrl-C (SIGINT) during a run; the message says where and how to resume."""


class ExistingRunError(RuntimeError):
    """A fresh run would replace an earlier run's results or checkpoint without ``overwrite``."""


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
    overwrite: bool = False
    work_dir: str = ""  # where its files are written: run_dir, or run_dir/.attempt for a replacement

    @property
    def replacing(self) -> bool:
        return self.work_dir != self.run_dir


def run_one(cfg: Config, seed: int, resume: Union[bool, str] = False, run_dir: Optional[str] = None,
            overwrite: bool = False, summary: Optional[Callable[[Dict[str, Any]], str]] = None) -> str:
    """Run every task for one seed; returns the run directory. ``summary``: the text a
    finished run logs as its "summary:" line, from its results (``toolbox.report.run_summary``;
    None: no such line). The trainer does not import the report: its caller passes it.

    ``resume``: False = start (refused if the folder holds an earlier run's results or
    checkpoint, unless ``overwrite``); True = continue from the checkpoint if there is
    one, else start; "required" = continue, or start if the directory holds only the
    config of a run stopped before its first checkpoint. A folder with a stopped
    replacement (``.attempt``) continues that. ``overwrite``: replace an earlier run, which
    is kept untouched until this run has finished. ``run_dir`` defaults to the config's.

    Every input is checked first (config, folder writable, earlier run, data, device,
    backbone, resume compatibility); only then is the folder locked for this process, and
    only then is anything in it created, removed or rewritten. A failed check leaves it
    as it was; a failure after that leaves an earlier run as it was too."""
    run_dir = run_dir or run_dir_for(cfg, seed)
    interrupts.release()  # a Ctrl-C held since the previous run of this command finished stops here
    p = prepare_run(cfg, seed, run_dir, resume, overwrite)
    with RunLock(run_dir):
        _take_folder(p)
        if _already_complete(p):
            logger.info("%s is already complete (%d tasks); nothing to do", run_dir, p.state["completed_tasks"])
            interrupts.hold()
            return run_dir
        handler = _RunLogHandler(os.path.join(p.work_dir, "run.log"), mode="a" if p.state is not None or resume
                                 else "w")
        root = logging.getLogger()
        root.addHandler(handler)
        level = root.level
        root.setLevel(min(root.getEffectiveLevel(), logging.INFO))  # run.log has every INFO line, whatever -q says
        where: Dict[str, Any] = {}
        try:
            _run(p, where, summary)
        except KeyboardInterrupt:
            message = _interrupted_message(p, where)
            handler.write_line(f"error: {message}")
            raise RunInterrupted(message) from None
        except BaseException as e:
            handler.write_line(f"error: {user_message(e)}")
            raise
        finally:
            root.removeHandler(handler)
            root.setLevel(level)
            handler.close()
        if p.replacing:
            _move_in(p.work_dir, run_dir)
            logger.info("%s: the finished new run has replaced the earlier one", run_dir)
    return run_dir


def prepare_run(cfg: Config, seed: int, run_dir: str, resume: Union[bool, str], overwrite: bool = False) -> _Prepared:
    """All checks of a run, reading only: the run folder can be written, an earlier run in
    it is not replaced unasked, the checkpoint (when resuming) belongs to this config and
    data, the data (every class with training and test images, names, class order), the
    device and the backbone."""
    resolved = {**cfg.to_dict(), "seed": seed}
    check_writable(run_dir)
    work_dir = choose_work_dir(run_dir, resume, overwrite)
    ckpt = _checkpoint_before_lock(run_dir, work_dir)
    state = _load_resume_state(ckpt, resume, resolved)
    seed_everything(seed)
    dm = DataManager(cfg.dataset, True, seed, cfg.init_cls, cfg.increment, cfg, **method_data(cfg.model_name))
    learner = get_model(cfg.model_name, resolved)  # builds the backbone on the device
    if cfg.zero_shot_eval:
        check_views(learner)
        check_specs(cfg.zero_shot_eval, cfg.released_cache, cfg.data_path)  # held-out data loads, corruptions run
    if state is not None:
        _check_same_data(state, dm, ckpt)
    return _Prepared(cfg, seed, run_dir, resolved, dm, learner, resume, state, overwrite, work_dir)


# ----------------------------------------------------------------------------- earlier runs
def pending_path(run_dir: str, name: str) -> str:
    """The path of ``name`` as the folder holds it once a move-in that a killed process
    began is completed (the next process that takes the folder completes it)."""
    staged = os.path.join(run_dir, REPLACING, name)
    return staged if os.path.exists(staged) else os.path.join(run_dir, name)


def _checkpoint_before_lock(run_dir: str, work_dir: str) -> str:
    """The checkpoint a run working in ``work_dir`` would continue, as the checks see it
    before the lock (a move-in that a killed process began counts as done)."""
    return pending_path(run_dir, CHECKPOINT) if work_dir == run_dir else os.path.join(work_dir, CHECKPOINT)


def read_results(path: str) -> Optional[Dict[str, Any]]:
    """A results.json as a dict, or None when it is missing, unreadable or not an object."""
    try:
        with open(path, "r", encoding="utf-8") as f:
            results = json.load(f)
    except (OSError, ValueError):
        return None
    return results if isinstance(results, dict) else None


def describe_run(folder: str) -> Optional[str]:
    """What ``folder`` holds that a fresh run there would replace, in words ("a finished
    run (3/3 tasks, Last 45.20 %)"); None when nothing would be lost (no task completed
    and no checkpoint: a run that stopped in its first task, or nothing)."""
    results_path = pending_path(folder, "results.json")
    results = read_results(results_path)
    if results is not None:
        done = results.get("completed_tasks", len(results.get("accuracy") or []))
        total = results.get("nb_tasks", "?")
        if results.get("finished"):
            last = results.get("last")
            return f"a finished run ({done}/{total} tasks" + (f", Last {last:.2f} %)" if isinstance(
                last, (int, float)) else ")")
        return f"an unfinished run ({done} of {total} tasks completed)"
    if os.path.exists(results_path):
        return "a run whose results.json cannot be read"
    if os.path.exists(pending_path(folder, CHECKPOINT)):
        return "an unfinished run (a checkpoint; no task completed yet)"
    return None


def choose_work_dir(run_dir: str, resume: Union[bool, str], overwrite: bool, locked_here: bool = False) -> str:
    """Where a run into ``run_dir`` writes: the folder itself, or ``.attempt`` when it
    replaces an earlier run (``overwrite``) or continues such a replacement (``resume``).
    A fresh run into a folder holding an earlier run (or a stopped replacement) without
    ``overwrite`` is refused, naming what the folder holds and the three ways on; first,
    unless this process holds the folder (``locked_here``), a folder another process is
    running in is refused as such (its run may have written results already)."""
    attempt = os.path.join(run_dir, ATTEMPT)
    if resume:
        return attempt if os.path.isdir(attempt) else run_dir
    held, stopped = describe_run(run_dir), describe_run(attempt) if os.path.isdir(attempt) else None
    if held is None and stopped is None:
        return run_dir
    if not locked_here:
        check_not_in_use(run_dir)
    if not overwrite:
        what = held or ""
        if stopped is not None:
            what += (" and " if held else "") + f"a stopped replacement run in {ATTEMPT}/, {stopped}"
        ways = ["keep it and run into another folder (--set prefix=<new name>)"]
        if stopped is not None or (held is not None and not held.startswith("a finished")):
            ways.append("continue it (--resume)")
        ways.append("replace it (--overwrite: the earlier run stays untouched until the new one has finished)")
        raise ExistingRunError(f"run folder {run_dir} holds {what}; a new run would replace it, so nothing was "
                               f"started. To go on: {'; or '.join(ways)}")
    return attempt if held is not None else run_dir


def _take_folder(p: _Prepared) -> None:
    """Under the run's lock, before anything of this run is written: complete a move-in
    that a killed process began, decide again where the run works (the folder may have
    changed since the checks), and give a run that starts a clean place and its config."""
    run_dir = p.run_dir
    remove_stale_temps(run_dir)  # left by a run killed while writing (no other process is here: we hold the lock)
    if os.path.isdir(os.path.join(run_dir, REPLACING)):
        _finish_move_in(run_dir)
        logger.warning("%s: completed moving in a finished replacement run that a stopped process had begun",
                       run_dir)
    p.work_dir = choose_work_dir(run_dir, p.resume, p.overwrite, locked_here=True)
    ckpt_path = os.path.join(p.work_dir, CHECKPOINT)
    p.state = _load_resume_state(ckpt_path, p.resume, p.resolved)  # again, under the lock: it may have moved on
    if p.state is not None:
        remove_stale_temps(p.work_dir)
        _check_same_data(p.state, p.dm, ckpt_path)
        return
    attempt = os.path.join(run_dir, ATTEMPT)
    try:
        if os.path.isdir(attempt):  # a replacement starts afresh; a run into the folder itself drops a stopped one
            shutil.rmtree(attempt)
        os.makedirs(p.work_dir, exist_ok=True)
    except OSError as e:
        raise write_error(attempt, e) from None
    if not p.replacing:
        _clear_outputs(run_dir)
    write_json(os.path.join(p.work_dir, "config.json"), p.resolved)


def _already_complete(p: _Prepared) -> bool:
    """A resumed run in its own folder with every task done (and its held-out evaluation,
    if asked): nothing is written, not even run.log."""
    if p.state is None or p.replacing or p.state["completed_tasks"] < p.dm.nb_tasks:
        return False
    results = read_results(os.path.join(p.run_dir, "results.json")) or {}
    return not p.cfg.zero_shot_eval or held_out_done(p.cfg, results) == len(p.cfg.zero_shot_eval)


def _move_in(attempt: str, run_dir: str) -> None:
    """The finished replacement's files take the earlier run's place. ``.attempt`` is first
    renamed ``.replacing`` (one atomic step: from here the replacement is decided), then its
    files are moved over the earlier run's, results.json last."""
    try:
        os.replace(attempt, os.path.join(run_dir, REPLACING))
        fsync_folder(run_dir)
    except OSError as e:
        raise WriteError(f"cannot move the finished run in {attempt} into {run_dir}: {e.strerror or e}; the earlier "
                         f"run there is untouched; `python main.py --resume {run_dir}` tries again") from None
    _finish_move_in(run_dir)


def _finish_move_in(run_dir: str) -> None:
    """Moves every file of ``.replacing`` into the run folder (results.json last) and
    removes it; a process killed half-way leaves the rest for the next one to move."""
    replacing = os.path.join(run_dir, REPLACING)
    try:
        for name in sorted(os.listdir(replacing), key=lambda n: (n == "results.json", n)):
            if name.startswith(".tmp-"):
                os.remove(os.path.join(replacing, name))
            else:
                os.replace(os.path.join(replacing, name), os.path.join(run_dir, name))
        fsync_folder(run_dir)
        os.rmdir(replacing)
    except OSError as e:
        raise WriteError(f"cannot move the finished run in {replacing} into {run_dir}: {e.strerror or e}; "
                         f"`python main.py --resume {run_dir}` completes it") from None


def run_config_path(run_dir: str) -> str:
    """The config a ``--resume RUN_DIR`` continues: a stopped replacement's, else the run's."""
    attempt = os.path.join(run_dir, ATTEMPT, "config.json")
    return attempt if os.path.isfile(attempt) else os.path.join(run_dir, "config.json")


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
        if not os.path.exists(os.path.join(run_dir, "results.json")):
            return None  # nothing completed yet: start from the first task
    state = load_checkpoint(ckpt_path)
    diffs = config_differences(state["config"], resolved)
    if diffs:
        detail = "; ".join(f"{k}: was {state['config'].get(k)!r}, now {resolved.get(k)!r}" for k in diffs)
        raise CheckpointError(f"cannot resume {os.path.dirname(ckpt_path)}: the config differs in keys that change "
                              f"the results ({detail}). Use the original values, or start a new run "
                              f"(another prefix) without --resume.")
    return state


def _interrupted_message(p: _Prepared, where: Dict[str, Any]) -> str:
    ckpt = os.path.join(p.work_dir, CHECKPOINT)
    if where.get("finished"):
        task, kept = "after the last task", f"every task is complete in {ckpt}"
    elif "held_out" in where:
        task = f"in the held-out evaluation ({where['held_out']} sets)"
        kept = f"every task is complete in {ckpt}, and the sets evaluated before are in results.json"
    else:
        task = f"in task {where['task']}/{where['nb_tasks']}" if "task" in where else "before the first task"
        kept = f"completed tasks are kept in {ckpt}" if os.path.exists(ckpt) else "no task had completed"
    if p.replacing:
        kept += f"; the earlier run in {p.run_dir} is untouched"
    return f"interrupted {task} ({kept}); resume with `python main.py --resume {p.run_dir}`"


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


def _run(p: _Prepared, where: Dict[str, Any], summary: Optional[Callable[[Dict[str, Any]], str]] = None) -> None:
    """The run itself, in its locked folder (``p.work_dir``: the run folder, or the
    replacement's ``.attempt``): from here on its files are ours to write. Ends with
    Ctrl-C held (``interrupts.hold``) once every result is written."""
    began = time.perf_counter()
    cfg, seed, resolved, dm, learner, state = p.cfg, p.seed, p.resolved, p.dm, p.learner, p.state
    ckpt_path = os.path.join(p.work_dir, CHECKPOINT)
    results_path = os.path.join(p.work_dir, "results.json")
    logger.info("run %s: %s on %s, seed %d%s", p.run_dir, cfg.model_name, cfg.dataset, seed,
                f" (replacing the earlier run once finished; until then in {p.work_dir})" if p.replacing else "")
    logger.info("%d tasks of %s classes; class order %s", dm.nb_tasks,
                [dm.get_task_size(t) for t in range(dm.nb_tasks)], dm.class_order)
    where["nb_tasks"] = dm.nb_tasks

    progress = _Progress(state["results"] if state else None)
    elapsed_before = state["elapsed_s"] if state else 0.0
    if state is not None:
        learner.load_state_dict(state["learner"])
        set_rng_state(state["rng"])
        logger.info("resuming %s after %d completed task(s)", p.work_dir, state["completed_tasks"])
    start_run = began - elapsed_before  # total time includes building data and model, and earlier sessions

    def save_checkpoint_now() -> None:
        save_checkpoint(ckpt_path, {
            "config": resolved, "class_order": dm.class_order, "completed_tasks": len(progress.accuracies),
            "learner": learner.state_dict(), "rng": rng_state(), "results": progress.to_dict(),
            "elapsed_s": time.perf_counter() - start_run})

    learner.on_checkpoint = save_checkpoint_now  # e.g. MG-CLIP calls it once the epoch probe has chosen E

    first = len(progress.accuracies)
    results = read_results(results_path) if first == dm.nb_tasks else None
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
            "nb_tasks": dm.nb_tasks, "completed_tasks": task + 1,
            # finished = every result written: with held-out sets, once they are evaluated too (below)
            "finished": task + 1 == dm.nb_tasks and not cfg.zero_shot_eval,
            "class_order": dm.class_order,
            "accuracy": progress.accuracies, "accuracy_task_mean": task_mean_accuracies(progress.matrix),
            "accuracy_matrix": progress.matrix, "top5": progress.top5,
            "grouped": progress.grouped, "task_metrics": progress.metrics_by_name(),
            **summarize(progress.accuracies, progress.matrix),
            **learner.results_extra(),
            "config": resolved,
            "timings": {"total_s": time.perf_counter() - start_run, "per_task": progress.task_timings},
        }
        if state is not None and task == first:  # a resumed run records the config it continues with
            write_json(os.path.join(p.work_dir, "config.json"), resolved)
        write_json(results_path, results)
        write_text(os.path.join(p.work_dir, "metrics.csv"), _metrics_csv(progress.rows, progress.metric_names()))
        save_checkpoint_now()
    if results is None:
        raise CheckpointError(f"{results_path} is missing or unreadable although {ckpt_path} has every task; "
                              f"restore it, or start the run over with --overwrite")
    if cfg.zero_shot_eval:
        _evaluate_held_out(cfg, learner, results, results_path, where)
    where["finished"] = True
    interrupts.hold()  # every result is written: a Ctrl-C from here on no longer stops anything
    if summary is not None:
        logger.info("summary:\n%s", summary(results))
    logger.info("done in %.1f s -> %s", time.perf_counter() - start_run, p.run_dir)


def held_out_done(cfg: Config, results: Dict[str, Any]) -> int:
    """How many of the run's held-out sets (``zero_shot_eval``, in order) results.json holds
    the evaluation of: a result counts only under its own spec, as far as the first that differs."""
    done = results.get("zero_shot_retention") or []
    count = 0
    for spec, result in zip(cfg.zero_shot_eval or [], done):
        if not isinstance(result, dict) or result.get("spec") != dict(spec):
            break
        count += 1
    return count


def _evaluate_held_out(cfg: Config, learner, results: Dict[str, Any], results_path: str,
                       where: Dict[str, Any]) -> None:
    """After the last task: each held-out set not yet evaluated, results.json written after
    each (an evaluation of ImageNet-C can take hours on the CPU: one killed in its third set
    keeps the first two, and --resume evaluates the rest); then the run is finished."""
    kept = held_out_done(cfg, results)
    results["zero_shot_retention"] = list(results.get("zero_shot_retention") or [])[:kept]
    if kept:
        logger.info("held-out sets already evaluated: %d of %d", kept, len(cfg.zero_shot_eval))
    for i, spec in enumerate(cfg.zero_shot_eval[kept:], start=kept):
        where["held_out"] = f"{i + 1} of {len(cfg.zero_shot_eval)}"
        results["zero_shot_retention"].append(evaluate(learner, spec))
        write_json(results_path, results)
    if not results.get("finished"):
        results["finished"] = True
        write_json(results_path, results)


def _clear_outputs(run_dir: str) -> None:
    """A run that starts in the folder itself removes stray outputs (a metrics.csv without
    results: ``choose_work_dir`` has made sure no task's results or checkpoint are here),
    so the folder never mixes the new config with old files."""
    old = [name for name in OUTPUTS if os.path.exists(os.path.join(run_dir, name))]
    if old:
        logger.warning("%s: removing stray %s of an earlier run that had no results", run_dir, ", ".join(old))
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


def precheck(cfg: Config, resume: bool = False, overwrite: bool = False) -> None:
    """The checks that cost nothing, for every seed of ``cfg``: each run folder can be
    written, holds no earlier run that a fresh run would replace unasked and, with
    ``resume``, each checkpoint fits the config (run before any seed, and in a
    side-by-side config before any method, starts)."""
    resolved = cfg.to_dict()
    for seed in cfg.seeds():
        run_dir = run_dir_for(cfg, seed)
        check_writable(run_dir)
        ckpt = _checkpoint_before_lock(run_dir, choose_work_dir(run_dir, resume, overwrite))
        _load_resume_state(ckpt, resume, {**resolved, "seed": seed})


def check_only(cfg: Config, resume: Union[bool, str] = False, run_dir: Optional[str] = None,
               overwrite: bool = False) -> List[str]:
    """Every check a run makes before it starts (folder, checkpoint, data and official
    files, device, backbone and its weights, held-out sets), for every seed (or the one run
    in ``run_dir``), writing nothing; one line per run that would start."""
    lines = []
    for seed in cfg.seeds():
        folder = run_dir or run_dir_for(cfg, seed)
        p = prepare_run(cfg, seed, folder, resume, overwrite)
        p.dm.verify_images()  # every image the run's tasks read decodes, as the run decodes it
        if p.state is not None:
            start = f"continues after task {p.state['completed_tasks']}/{p.dm.nb_tasks}" + (
                f" (the stopped replacement in {ATTEMPT}/)" if p.replacing else "")
        elif p.replacing:
            start = f"starts a replacement of {describe_run(folder)}, which is kept until the new run has finished"
        else:
            start = "starts"
        lines.append(f"ok: {cfg.model_name} seed {seed}: {p.dm.nb_tasks} tasks of "
                     f"{[p.dm.get_task_size(t) for t in range(p.dm.nb_tasks)]} classes on {cfg.dataset}, "
                     f"{cfg.backbone} on {p.learner._device}; {folder} {start}")
        del p
    return lines


def run(cfg: Config, resume: bool = False, overwrite: bool = False,
        summary: Optional[Callable[[Dict[str, Any]], str]] = None) -> List[str]:
    """All seeds of ``cfg`` (each continued from its checkpoint with ``resume``; each
    replacing an earlier run once finished with ``overwrite``; ``summary`` as for
    ``run_one``). Each seed's folder must be writable, hold no earlier run unasked and,
    with ``resume``, each checkpoint must fit the config before the first seed starts. The
    summary over several seeds is the report's (``toolbox.report.seeds_summary``)."""
    precheck(cfg, resume, overwrite)
    return [run_one(cfg, seed, resume=resume, overwrite=overwrite, summary=summary) for seed in cfg.seeds()]
