"""Modality-gap and subspace analysis of a run: ``python -m toolbox.analysis RUN_DIR [--out DIR]``.

From the run's checkpoint (its last completed task), on a seeded subset of the seen
classes' test images, for zero-shot CLIP and for the trained model:
- gap measures (``toolbox.subspace.gap_measures``): mean cosine of each image with its own
  class's prompt, distance between the image and text centroids, the gap statistic;
- MG-CLIP supplementary Section 3: the image features' basis at 95 % energy, the bases
  of the text classifier (prompt features), of the visual classifier where the method has
  one, and of their union: ranks and principal angles;
- a 2-D picture of image and text features before and after training (UMAP where
  ``umap-learn`` is installed, PCA otherwise; needs matplotlib).
With ``--held-out SPEC`` (repeatable) it also measures zero-shot retention on held-out,
optionally corrupted data (``toolbox.retention``), so one command gives both.
Writes ``analysis.json`` (every number), ``analysis.md`` and ``analysis.csv`` (the tables)
and ``features_2d.png``. What a method lacks (e.g. RAPF and zero-shot CLIP have no visual
classifier) is skipped with a line saying so.
"""
from __future__ import annotations

import argparse
import csv
import io
import logging
import os
import sys
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from toolbox.data import DatasetError
from toolbox.io import atomic_write, write_json, write_text
from toolbox.restore import RunDirError, load_learner
from toolbox.retention import check_specs, evaluate
from toolbox.subspace import energy_rank, gap_measures, span_basis, subspace_report
from utils.clip_backbone import clip_transform
from utils.config import ConfigError

logger = logging.getLogger(__name__)


def sample_images(dm, classes: int, per_class: int, seed: int, resolution: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Up to ``per_class`` test images of each of the first ``classes`` classes, drawn with
    ``seed``, CLIP-preprocessed: (N, 3, R, R), labels (N,)."""
    ds = dm.get_dataset(range(classes), source="test", mode="test", transform=clip_transform(resolution))
    labels = np.asarray(ds.labels)
    rng = np.random.RandomState(seed)
    keep = np.sort(np.concatenate([rng.choice(idx, size=min(per_class, len(idx)), replace=False)
                                   for idx in (np.nonzero(labels == c)[0] for c in range(classes)) if len(idx)]))
    return torch.stack([ds[int(i)][1] for i in keep]), torch.as_tensor(labels[keep])


# ----------------------------------------------------------------------------- the analysis
def analyse(run_dir: str, per_class: int = 20, seed: int = 0, energy: float = 0.95,
            held_out: Optional[List[Dict[str, Any]]] = None) -> Dict[str, Any]:
    """The measures of the module doc; with ``held_out`` specs (see ``toolbox.retention``)
    also the zero-shot retention on each."""
    learner, dm, cfg = load_learner(run_dir)
    if held_out:
        check_specs(held_out, cfg.released_cache)
    trains = learner.trains  # what "trained" means below; a learner that does not say fails here
    classes = learner._known_classes
    names = learner._names[:classes]
    x, y = sample_images(dm, classes, per_class, seed, learner._network.input_resolution)
    counts = np.bincount(y.numpy(), minlength=classes)[:classes]
    out: Dict[str, Any] = {"run": run_dir, "model_name": cfg.model_name, "trains": trains, "classes": classes,
                           "images": len(y), "per_class": per_class, "images_per_class": counts.tolist(),
                           "seed": seed, "energy": energy, "skipped": []}
    feats = {}
    for trained in (False, True):
        key = "trained" if trained else "zero_shot"
        img = torch.cat([learner.image_view(x[i:i + 256].to(learner._device), trained)
                         for i in range(0, len(y), 256)]).cpu()
        txt = learner.text_view(names, trained).cpu()
        feats[key] = (img, txt)
        k, basis = energy_rank(img, energy)
        out[key] = {**gap_measures(img, y, txt), "image_energy_rank": k,
                    "text_rank": span_basis(txt.t()).shape[1],
                    "image_vs_text": subspace_report(basis, span_basis(txt.t()))}
    text_basis = span_basis(feats["trained"][1].t())
    visual = learner.visual_classifier()
    if visual is None:
        out["skipped"].append(f"{cfg.model_name} has no visual classifier: no visual or union basis")
    else:
        out["trained"]["visual_rank"] = span_basis(visual.t().cpu()).shape[1]
        out["trained"]["text_vs_visual"] = subspace_report(text_basis, span_basis(visual.t().cpu()))
    if not trains:
        out["skipped"].append(f"{cfg.model_name} trains nothing: 'trained' repeats 'zero_shot'")
    if held_out:
        out["zero_shot_retention"] = [evaluate(learner, spec) for spec in held_out]
    out["_features"] = feats
    out["_labels"] = y
    return out


ROWS = [("matched image-text cosine", "matched_cosine"), ("centroid distance", "centroid_distance"),
        ("gap statistic (mean non-target logit)", "gap_statistic"), ("image basis rank at energy", "image_energy_rank"),
        ("text classifier rank", "text_rank")]


def per_class_text(result: Dict[str, Any]) -> str:
    """The images each class has in the analysis ("10 per class" or "8-10 per class"), and
    the cap asked where a class has fewer ("up to 20 asked")."""
    counts = result.get("images_per_class")
    asked = result["per_class"]
    if not counts:  # an analysis.json written before the counts were recorded
        return f"up to {asked} per class"
    low, high = min(counts), max(counts)
    text = f"{low} per class" if low == high else f"{low}-{high} per class"
    return text if low == asked else f"{text}, up to {asked} asked"


def tables(result: Dict[str, Any]) -> Tuple[str, str]:
    """(markdown, csv) of the measures: zero-shot CLIP vs trained."""
    rows = [(label, result["zero_shot"][key], result["trained"][key]) for label, key in ROWS]
    for model in ("zero_shot", "trained"):
        rep = result[model]["image_vs_text"]
        if model == "trained":
            rows.append(("image vs text bases: mean principal angle (deg)", result["zero_shot"]["image_vs_text"]
                         ["angle_mean_deg"], rep["angle_mean_deg"]))
    tv = result["trained"].get("text_vs_visual")
    if tv:
        rows += [("visual classifier rank", None, result["trained"]["visual_rank"]),
                 ("text + visual union rank", None, tv["rank_union"]),
                 ("text vs visual: mean principal angle (deg)", None, tv["angle_mean_deg"]),
                 ("text vs visual: overlap (mean cos^2)", None, tv["overlap"])]

    def fmt(v):
        return "-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)

    md = [f"{result['model_name']}: {result['classes']} classes, {result['images']} test images "
          f"({per_class_text(result)}, seed {result['seed']})", "",
          "| measure | zero-shot CLIP | trained |", "|---|---|---|"]
    md += [f"| {label} | {fmt(a)} | {fmt(b)} |" for label, a, b in rows]
    if result.get("zero_shot_retention"):
        md += ["", "| held-out (zero-shot) | images | zero-shot CLIP | trained | delta |", "|---|---|---|---|---|"]
        md += [f"| {z['name']} | {z['images']} | {z['zero_shot_clip']:.2f} | {z['model']:.2f} | {z['delta']:+.2f} |"
               for z in result["zero_shot_retention"]]
        rows += [(f"zero-shot accuracy on {z['name']}", z["zero_shot_clip"], z["model"])
                 for z in result["zero_shot_retention"]]
    md += [""] + [f"- skipped: {s}" for s in result["skipped"]]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["measure", "zero_shot", "trained"])
    w.writerows([(label, "" if a is None else a, "" if b is None else b) for label, a, b in rows])
    return "\n".join(md) + "\n", buf.getvalue()


def project_2d(points: np.ndarray) -> Tuple[np.ndarray, str]:
    """2-D coordinates of ``points`` (n, d): UMAP where umap-learn is installed, else PCA."""
    try:
        import umap  # type: ignore

        return umap.UMAP(n_components=2, random_state=0).fit_transform(points), "UMAP"
    except ImportError:
        centred = points - points.mean(0)
        _, _, vh = np.linalg.svd(centred, full_matrices=False)
        return centred @ vh[:2].T, "PCA"


def plot_features(result: Dict[str, Any], path: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: no features_2d.png (pip install -e .[plots])")
        return False
    fig, axes = plt.subplots(1, 2, figsize=(8.0, 4.0))
    y = result["_labels"].numpy()
    for ax, key, title in zip(axes, ("zero_shot", "trained"), ("zero-shot CLIP", result["model_name"])):
        img, txt = (t.numpy() for t in result["_features"][key])
        xy, method = project_2d(np.concatenate([img, txt]))
        ax.scatter(xy[:len(img), 0], xy[:len(img), 1], c=y, cmap="tab20", s=6, alpha=0.6, label="images")
        ax.scatter(xy[len(img):, 0], xy[len(img):, 1], c=np.arange(len(txt)), cmap="tab20", marker="*", s=90,
                   edgecolors="black", linewidths=0.5, label="class prompts")
        ax.set_title(f"{title} ({method})", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100), mode="wb")
    plt.close(fig)
    return True


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m toolbox.analysis", description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="a run directory (with config.json and checkpoint.pt)")
    p.add_argument("--out", help="output folder (default: RUN/analysis)")
    p.add_argument("--per-class", type=int, default=20,
                   help="test images per seen class, at most (default 20; a class with fewer gives all it has)")
    p.add_argument("--seed", type=int, default=0, help="seed of the image subset (default 0)")
    p.add_argument("--energy", type=float, default=0.95, help="energy share of the image basis (default 0.95)")
    p.add_argument("--held-out", dest="held_out", action="append", default=[], metavar="SPEC",
                   help="also zero-shot retention on a held-out set, a YAML mapping such as "
                        "'{dataset: cifar100, corruption: gaussian_noise, severity: 3}' (repeatable)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    import yaml

    try:
        specs = [yaml.safe_load(text) for text in args.held_out]
        if not all(isinstance(spec, dict) for spec in specs):
            raise ConfigError("--held-out takes a YAML mapping, e.g. '{dataset: cifar100, corruption: contrast}'")
        result = analyse(args.run, args.per_class, args.seed, args.energy, specs)
    except yaml.YAMLError as e:
        print(f"error: --held-out is not a YAML mapping ({e})", file=sys.stderr)
        return 2
    except (RunDirError, DatasetError, ConfigError, NotImplementedError) as e:  # the last: a hook the learner lacks
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = args.out or os.path.join(args.run, "analysis")
    md, csv_text = tables(result)
    write_json(os.path.join(out, "analysis.json"), {k: v for k, v in result.items() if not k.startswith("_")})
    write_text(os.path.join(out, "analysis.md"), md)
    write_text(os.path.join(out, "analysis.csv"), csv_text)
    plotted = plot_features(result, os.path.join(out, "features_2d.png"))
    print(md, end="")
    print(f"wrote analysis.json, analysis.md, analysis.csv{', features_2d.png' if plotted else ''} to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
