"""The task loop: data manager + learner -> per-task evaluation -> run directory.

Run directory: ``<logdir>/<model>/<dataset>/<init_cls>/<increment>/<prefix>_<seed>/`` with
``config.json`` (resolved), ``results.json``, ``metrics.csv`` and ``run.log``; results
and metrics are rewritten atomically after every task, so a killed run leaves whole files.
"""
from __future__ import annotations

import csv
import io
import logging
import os
import random
import time
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from utils.config import Config
from utils.data_manager import DataManager
from utils.factory import get_model
from utils.io import write_json, write_text
from utils.metrics import summarize

logger = logging.getLogger(__name__)

CSV_FIELDS = ["task", "classes", "accuracy", "top5", "old", "new", "text_accuracy", "visual_accuracy",
              "train_s", "eval_s"]


def seed_everything(seed: int) -> None:
    """The run's one seeding point: python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run_dir_for(cfg: Config, seed: int) -> str:
    return os.path.join(cfg.logdir, cfg.model_name, cfg.dataset, str(cfg.init_cls), str(cfg.increment),
                        f"{cfg.prefix}_{seed}")


def _metrics_csv(rows: List[Dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in CSV_FIELDS})
    return buf.getvalue()


def run_one(cfg: Config, seed: int) -> str:
    """Run every task for one seed; returns the run directory."""
    run_dir = run_dir_for(cfg, seed)
    os.makedirs(run_dir, exist_ok=True)
    if os.path.exists(os.path.join(run_dir, "results.json")):
        logger.warning("%s already holds a run; its files are overwritten", run_dir)
    handler = logging.FileHandler(os.path.join(run_dir, "run.log"), mode="w")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    try:
        return _run(cfg, seed, run_dir)
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()


def _run(cfg: Config, seed: int, run_dir: str) -> str:
    resolved = {**cfg.to_dict(), "seed": seed}
    write_json(os.path.join(run_dir, "config.json"), resolved)
    logger.info("run %s: %s on %s, seed %d", run_dir, cfg.model_name, cfg.dataset, seed)
    start_run = time.perf_counter()
    seed_everything(seed)
    dm = DataManager(cfg.dataset, True, seed, cfg.init_cls, cfg.increment, cfg)
    learner = get_model(cfg.model_name, resolved)
    logger.info("%d tasks of %s classes; class order %s", dm.nb_tasks,
                [dm.get_task_size(t) for t in range(dm.nb_tasks)], dm.class_order)

    accuracies, matrix, rows, task_timings, grouped, top5 = [], [], [], [], [], []
    for task in range(dm.nb_tasks):
        t0 = time.perf_counter()
        learner.incremental_train(dm)
        t1 = time.perf_counter()
        cnn_accy, _ = learner.eval_task()
        t2 = time.perf_counter()
        learner.after_task()
        accuracies.append(float(cnn_accy["top1"]))
        top5.append(cnn_accy.get(f"top{learner.topk}"))
        matrix.append([float(a) for a in cnn_accy["per_task"]])
        grouped.append(cnn_accy["grouped"])
        timing = {"train_s": t1 - t0, "eval_s": t2 - t1}
        phases = getattr(learner, "timings", None)
        if phases:
            timing["phases_cumulative_s"] = dict(phases)
        task_timings.append(timing)
        rows.append({"task": task, "classes": learner._total_classes, "accuracy": round(accuracies[-1], 2),
                     "top5": top5[-1], "old": cnn_accy["grouped"].get("old"), "new": cnn_accy["grouped"].get("new"),
                     "text_accuracy": _round(cnn_accy.get("text_top1")),
                     "visual_accuracy": _round(cnn_accy.get("visual_top1")),
                     "train_s": round(timing["train_s"], 2), "eval_s": round(timing["eval_s"], 2)})
        logger.info("task %d/%d: accuracy %.2f %% on %d classes (per task %s)", task + 1, dm.nb_tasks,
                    accuracies[-1], learner._total_classes, [round(a, 1) for a in matrix[-1]])
        results = {
            "model_name": cfg.model_name, "dataset": cfg.dataset, "seed": seed,
            "nb_tasks": dm.nb_tasks, "completed_tasks": task + 1, "finished": task + 1 == dm.nb_tasks,
            "class_order": dm.class_order,
            "accuracy": accuracies, "accuracy_matrix": matrix, "top5": top5, "grouped": grouped,
            **summarize(accuracies, matrix),
            **learner.results_extra(),
            "config": resolved,
            "timings": {"total_s": time.perf_counter() - start_run, "per_task": task_timings},
        }
        write_json(os.path.join(run_dir, "results.json"), results)
        write_text(os.path.join(run_dir, "metrics.csv"), _metrics_csv(rows))
    s = summarize(accuracies, matrix)
    extra = learner.results_extra()
    parts = [f"{label} last {_fmt(extra[key][-1])}" for key, label in
             (("text_accuracy", "text-only"), ("visual_accuracy", "visual-only")) if extra.get(key)]
    logger.info("done: Avg %.2f, Last %.2f, forgetting %s, BWT %s%s (%.1f s) -> %s", s["avg"], s["last"],
                _fmt(s["forgetting"]), _fmt(s["bwt"]), "".join(", " + p for p in parts),
                time.perf_counter() - start_run, run_dir)
    return run_dir


def _round(x: Optional[float]) -> Optional[float]:
    return None if x is None else round(float(x), 2)


def _fmt(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.2f}"


def run(cfg: Config) -> List[str]:
    """All seeds of ``cfg``; with several seeds also writes ``<prefix>_summary.json``
    (mean and std of Avg and Last) beside the run directories."""
    run_dirs = [run_one(cfg, seed) for seed in cfg.seeds()]
    if len(run_dirs) > 1:
        import json

        finals = []
        for d in run_dirs:
            with open(os.path.join(d, "results.json")) as f:
                finals.append(json.load(f))
        summary = {"runs": run_dirs, "seeds": cfg.seeds()}
        for key in ("avg", "last"):
            vals = np.array([r[key] for r in finals], dtype=float)
            summary[key] = {"mean": float(vals.mean()), "std": float(vals.std()), "values": vals.tolist()}
        path = os.path.join(os.path.dirname(run_dirs[0]), f"{cfg.prefix}_summary.json")
        write_json(path, summary)
        logger.info("%d seeds: Avg %.2f +- %.2f, Last %.2f +- %.2f -> %s", len(run_dirs), summary["avg"]["mean"],
                    summary["avg"]["std"], summary["last"]["mean"], summary["last"]["std"], path)
    return run_dirs
