"""The published Avg / Last of the protocols the shipped configs reproduce, so that a
report can set a run beside its published figure. Facts from the papers' tables and the
official logs (docs/configs.md's config tables list the same figures, and a test keeps them equal).

A run matches a protocol by method, dataset, split, backbone and, for MG-CLIP, the options
the published runs fixed (replay memory, few-shot cut, LoRA rank, beta, alpha, both
classifiers, the epoch rule, no EMA; each as released unless the row changes it).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

# How a source's Avg and Last define the accuracy after each task (utils/metrics.py; a run's
# results.json has both): over all seen test images (PyCIL, MG-CLIP, RAPF's continuum logger,
# PROOF, MoE-Adapters), or the mean over seen tasks of each task's accuracy (CODA-Prompt's
# trainer). Every figure below is of the first kind: the papers and logs they come from
# evaluate so (MG-CLIP's, RAPF's and PROOF's released evaluation code); MG-CLIP's Table 2 reports its
# comparators in MG-CLIP's own evaluation.
ACCURACY = {"seen": "accuracy over all seen test images", "task_mean": "mean over seen tasks of each task's accuracy"}
RESULT_KEYS = {"seen": ("avg", "last"), "task_mean": ("avg_task_mean", "last_task_mean")}


@dataclass(frozen=True)
class Published:
    method: str
    dataset: str
    init_cls: int
    increment: int
    backbone: str
    avg: Optional[float]
    last: Optional[float]
    source: str
    conditions: Dict[str, Any] = field(default_factory=dict)  # further config values the protocol has
    accuracy: str = "seen"  # the definition of its Avg and Last: a key of ACCURACY

    def matches(self, method: str, config: Dict[str, Any]) -> bool:
        own = (self.method, self.dataset, self.init_cls, self.increment, self.backbone)
        run = (method, config.get("dataset"), config.get("init_cls"), config.get("increment"), config.get("backbone"))
        return own == run and all(config.get(k, default) == v for k, (v, default) in self.conditions.items())


# MG-CLIP's published runs: the method as released (no replay, no few-shot cut, rank 8,
# beta 4, alpha 10 %, both classifiers, the epoch rule, no EMA); a row lists what it changes.
_MG_METHOD = {"memory_size": 0, "shots_per_class": None, "lora_rank": 8, "fusion_beta": 4.0, "gap_alpha": 0.10,
              "compensation": True, "gap_preservation": True, "lora_ema": 0.0, "epochs_per_task": False}


def _mg(**changes: Any) -> Dict[str, Any]:
    """(value, default when a config lacks the key) for each MG-CLIP option of a published run."""
    return {k: ({**_MG_METHOD, **changes}[k], v) for k, v in _MG_METHOD.items()}


_MG, _MG_REPLAY = _mg(), _mg(memory_size=2000)
_SUPP = "MG-CLIP supplementary"
_ABL = "MG-CLIP supplementary, ablation"

PUBLISHED = (
    Published("mgclip", "cifar100", 10, 10, "ViT-B/16", 86.79, 80.40, _SUPP, _MG),
    Published("mgclip", "cifar100", 20, 20, "ViT-B/16", None, 81.47, _SUPP, _MG),
    Published("mgclip", "cifar100", 5, 5, "ViT-B/16", None, 79.31, _SUPP, _MG),
    Published("mgclip", "imagenet100", 10, 10, "ViT-B/16", 87.31, 78.38, _SUPP, _MG),
    Published("mgclip", "imagenet_r", 20, 20, "ViT-B/16", 87.58, 82.67, "MG-CLIP supplementary, Table 9", _MG),
    Published("mgclip", "imagenet_r", 40, 40, "ViT-B/16", None, 83.13, _SUPP, _MG),
    Published("mgclip", "imagenet_r", 10, 10, "ViT-B/16", None, 82.12, _SUPP, _MG),
    Published("mgclip", "cifar100", 10, 10, "ViT-B/16", 88.48, 82.58, _SUPP + " (replay)", _MG_REPLAY),
    Published("mgclip", "imagenet100", 10, 10, "ViT-B/16", 88.50, 80.74, _SUPP + " (replay)", _MG_REPLAY),
    Published("mgclip", "cifar100", 10, 10, "ViT-L/14", 91.78, 87.03, _SUPP, _MG),
    Published("mgclip", "imagenet_r", 20, 20, "ViT-L/14", 93.66, 91.08, _SUPP, _MG),
    *(Published("mgclip", "cifar100", 10, 10, "ViT-B/16", None, last, _SUPP + f" (few-shot, {k} per class)",
                _mg(shots_per_class=k)) for k, last in ((100, 78.30), (50, 78.04), (25, 77.04), (5, 75.10))),
    *(Published("mgclip", "imagenet100", 10, 10, "ViT-B/16", None, last, _ABL, _mg(lora_rank=r))
      for r, last in ((4, 78.02), (16, 78.32), (32, 78.26))),
    *(Published("mgclip", "imagenet100", 10, 10, "ViT-B/16", None, last, _ABL, _mg(fusion_beta=b))
      for b, last in ((1.0, 77.58), (2.0, 77.92), (6.0, 77.98), (8.0, 77.32))),
    *(Published("mgclip", "imagenet100", 10, 10, "ViT-B/16", None, last, _ABL, _mg(gap_alpha=a))
      for a, last in ((0.05, 77.88), (0.20, 77.34), (0.30, 76.90))),
    Published("rapf", "cifar100", 10, 10, "ViT-B/16", 86.19, 79.04, "RAPF paper"),
    Published("rapf", "imagenet100", 10, 10, "ViT-B/16", 87.5, 80.2, "third-party tables"),
    Published("rapf", "imagenet_r", 20, 20, "ViT-B/16", 85.58, 80.28, "RAPF paper"),
    Published("rapf", "cub200", 20, 20, "ViT-B/16", 82.7, 76.2, "third-party tables"),
    Published("proof", "cifar100", 10, 10, "openclip:ViT-B-16/laion400m_e32", 86.77, 79.11, "PROOF official log"),
    Published("proof", "imagenet_r", 20, 20, "openclip:ViT-B-16/laion400m_e32", 84.19, 78.50, "PROOF official log"),
    Published("proof", "cub200", 20, 20, "openclip:ViT-B-16/laion400m_e32", 84.87, 79.86, "PROOF official log"),
    # PROOF's other benchmark protocols, each from logs/proof/<dataset>/<init>/<inc>/*.log: the last run in the
    # file that finished every task; Avg = its last "Average Accuracy (CNN)" line (the trainer's mean of the curve),
    # Last = the last entry of its "CNN top1 curve" (the Food logs' runs are of an older model, with other values
    # than exps/food*.json: no released code reproduces them)
    *(Published("proof", dataset, init, inc, "openclip:ViT-B-16/laion400m_e32", avg, last, source)
      for dataset, init, inc, avg, last, source in (
          ("cifar100", 50, 10, 83.32, 79.73, "PROOF official log"),
          ("imagenet_r", 100, 20, 81.06, 78.03, "PROOF official log"),
          ("cub200", 100, 20, 81.30, 78.92, "PROOF official log"),
          ("objectnet", 20, 20, 56.17, 43.66, "PROOF official log"),
          ("objectnet", 100, 20, 49.78, 43.81, "PROOF official log"),
          ("cars", 10, 10, 92.70, 88.39, "PROOF official log"),
          ("cars", 50, 10, 90.23, 88.32, "PROOF official log"),
          ("ucf101", 10, 10, 94.34, 90.60, "PROOF official log"),
          ("ucf101", 50, 10, 93.56, 91.32, "PROOF official log"),
          ("aircraft", 10, 10, 64.61, 55.81, "PROOF official log"),
          ("aircraft", 50, 10, 63.60, 58.81, "PROOF official log"),
          ("food101", 10, 10, 90.04, 84.73, "PROOF official log, of an older model than the released code"),
          ("food101", 50, 10, 87.52, 84.74, "PROOF official log, of an older model than the released code"),
          ("sun", 30, 30, 83.75, 76.91, "PROOF official log"),
          ("sun", 150, 30, 80.15, 76.13, "PROOF official log"))),
    Published("proof", "cifar100", 10, 10, "ViT-B/16", 86.2, 76.3, "third-party tables (RAPF's re-run)"),
    Published("moe_adapters", "cifar100", 10, 10, "ViT-B/16", 85.21, 77.52,
              "MoE-Adapters official log (its class order)"),
    Published("moe_adapters", "cifar100", 10, 10, "ViT-L/14", 90.98, 85.83, "MG-CLIP supplementary, Table 2"),
    Published("moe_adapters", "imagenet_r", 20, 20, "ViT-L/14", 93.27, 90.42, "MG-CLIP supplementary, Table 2"),
    # MagMax: MG-CLIP's runs of it (no ViT-B/16 row in MG-CLIP's main table); Table 8's 5/20-task and Table 7's
    # few-shot figures are Last only, ViT-B/16 (MG-CLIP's backbone there); Table 6 (ImageNet-C) is RETENTION below
    *(Published("magmax", dataset, inc, inc, "ViT-L/14", avg, last, "MG-CLIP supplementary, Table 2",
                {"shots_per_class": (None, None)})
      for dataset, inc, avg, last in (("cifar100", 10, 90.16, 86.06), ("imagenet_r", 20, 93.22, 89.55))),
    *(Published("magmax", dataset, inc, inc, "ViT-B/16", None, last, "MG-CLIP supplementary, Table 8",
                {"shots_per_class": (None, None)})
      for dataset, inc, last in (("cifar100", 20, 82.07), ("cifar100", 5, 76.84), ("imagenet_r", 40, 82.75),
                                 ("imagenet_r", 10, 80.18))),
    *(Published("magmax", "cifar100", 10, 10, "ViT-B/16", None, last, f"MG-CLIP supplementary, Table 7 ({k} per class)",
                {"shots_per_class": (k, None)}) for k, last in ((100, 75.82), (50, 75.02), (25, 72.53), (5, 67.66))),
    Published("slca", "cifar100", 10, 10, "ViT-L/14", 90.12, 84.62, "MG-CLIP supplementary, Table 2"),
    Published("slca", "imagenet_r", 20, 20, "ViT-L/14", 89.99, 86.83, "MG-CLIP supplementary, Table 2"),
    # CLAP4CLIP: MG-CLIP's Table 2 rows CLAP (with its exemplar memory: 2000 on CIFAR-100, 20 per class on
    # ImageNet-R) and CLAP* (our reading: without the memory; docs/methods/clap4clip.md); no ViT-B/16 row here
    *(Published("clap4clip", dataset, inc, inc, "ViT-L/14", avg, last, "MG-CLIP supplementary, Table 2", cond)
      for dataset, inc, avg, last, cond in (
          ("cifar100", 10, 87.94, 84.86, {"memory_size": (2000, 2000), "memory_per_class": (0, 0)}),
          ("imagenet_r", 20, 92.12, 88.63, {"memory_per_class": (20, 0)}))),
    *(Published("clap4clip_star", dataset, inc, inc, "ViT-L/14", avg, last, "MG-CLIP supplementary, Table 2 (CLAP*)",
                {"memory_size": (0, 0), "memory_per_class": (0, 0)})
      for dataset, inc, avg, last in (("cifar100", 10, 74.41, 71.57), ("imagenet_r", 20, 91.10, 87.55))),
    Published("aper_adapter", "cifar100", 10, 10, "ViT-L/14", 80.21, 71.95, "MG-CLIP supplementary, Table 2"),
    Published("aper_adapter", "imagenet_r", 20, 20, "ViT-L/14", 89.17, 85.40, "MG-CLIP supplementary, Table 2"),
    *(Published(method, dataset, inc, inc, "ViT-L/14", avg, last, "MG-CLIP supplementary, Table 2")
      for method, figures in (("l2p", (85.68, 77.86, 90.49, 86.73)), ("dualprompt", (86.63, 79.12, 90.66, 87.14)),
                              ("coda_prompt", (85.82, 78.67, 89.11, 84.56)))
      for dataset, inc, avg, last in (("cifar100", 10, *figures[:2]), ("imagenet_r", 20, *figures[2:]))),
)


def ours(results: Dict[str, Any], key: str, accuracy: str = "seen") -> Optional[float]:
    """A run's ``key`` ("avg" or "last") under the accuracy definition ``accuracy`` (a run
    written before both were recorded has only "seen")."""
    return results.get(RESULT_KEYS[accuracy][("avg", "last").index(key)])


def published_for(method: str, config: Dict[str, Any]) -> Optional[Published]:
    """The published protocol a run of ``method`` with ``config`` (its flat config.json) is
    a run of, or None."""
    return next((p for p in PUBLISHED if p.matches(method, config)), None)


@dataclass(frozen=True)
class PublishedRetention:
    """A published zero-shot top-1 (%) on held-out data after class-incremental training: the
    training protocol (matched as :class:`Published` matches it) and the held-out set (the
    ``zero_shot_eval`` spec's keys that identify it; ``severity`` defaults to 3, the others
    to None, so a seeded subset, ``max_images``, is another protocol)."""
    method: str
    dataset: str
    init_cls: int
    increment: int
    backbone: str
    held_out: Dict[str, Any]
    accuracy: float
    source: str
    conditions: Dict[str, Any] = field(default_factory=dict)

    def matches(self, method: str, config: Dict[str, Any], spec: Dict[str, Any]) -> bool:
        trained = Published(self.method, self.dataset, self.init_cls, self.increment, self.backbone, None, None,
                            self.source, self.conditions)
        return trained.matches(method, config) and all(
            spec.get(k, 3 if k == "severity" else None) == v for k, v in {"max_images": None, **self.held_out}.items())


IMAGENET_C_NAMES = "released:mgclip/dataset_reqs/imagenet_c_classes.txt"

# MG-CLIP supplementary Table 6: zero-shot top-1 on ImageNet-C (ImageNet's validation images, corrupted at severity
# 3) after class-incremental learning on CIFAR-100 B0 Inc10, ViT-B/16. CLIP = zero-shot CLIP (nothing trained),
# MOE4CL = MoE-Adapters, Ours = MG-CLIP as released.
RETENTION = tuple(
    PublishedRetention(method, "cifar100", 10, 10, "ViT-B/16",
                       {"dataset": "folder", "class_names": IMAGENET_C_NAMES, "corruption": corruption, "severity": 3},
                       accuracy, "MG-CLIP supplementary, Table 6", conditions)
    for method, conditions, figures in (
        ("zs_clip", {}, (41.95, 55.07, 38.23, 43.20)),
        ("magmax", {"shots_per_class": (None, None)}, (43.51, 52.10, 36.75, 41.43)),
        ("moe_adapters", {}, (44.24, 54.82, 34.75, 36.09)),
        ("mgclip", _MG, (44.65, 56.02, 37.71, 42.47)))
    for corruption, accuracy in zip(("defocus_blur", "contrast", "frost", "gaussian_noise"), figures))


def published_retention_for(method: str, config: Dict[str, Any], spec: Dict[str, Any]) -> Optional[PublishedRetention]:
    """The published zero-shot accuracy after training of a run of ``method`` with ``config``
    (its flat config.json) on the held-out set ``spec`` (one ``zero_shot_eval`` entry), or None."""
    return next((p for p in RETENTION if p.matches(method, config, spec)), None)
