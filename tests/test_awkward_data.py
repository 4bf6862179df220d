"""Every learner on awkward data: unequal classes (some with 2 training images, fewer than a
batch), a class count that does not divide into tasks (23 = 10 + 5 + 5 + 3), and image files
of every PIL mode (grey, CMYK, palette, RGBA, 16-bit) and shape. Counts are checked against
hand counts, accuracies against the predictions they were computed from."""
import json
import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import ROOT, tiny_args
from toolbox.configs import make_config
from toolbox.data import DatasetError, make_synthetic
from toolbox.data_manager import DataManager
from toolbox.registry import LEARNERS, get_model, learner_class, option_names
from utils import metrics
from utils.config import ConfigError

CLASSES, INIT, INC = 23, 10, 5
TASKS = [10, 5, 5, 3]  # by hand: 10 + 5 + 5 = 20, the remaining 3 are the last task
LARGEST, RATIO, TEST_PER_CLASS = 16, 8, 2
# by hand: 16 * (1/8) ** (c / 22), rounded; class 0 has 16 images, class 22 has 2
HAND_COUNTS = [16, 15, 13, 12, 11, 10, 9, 8, 8, 7, 6, 6, 5, 5, 4, 4, 4, 3, 3, 3, 2, 2, 2]


def awkward(tmp_path, **over):
    return tiny_args(tmp_path, **{"synthetic_classes": CLASSES, "synthetic_train_per_class": LARGEST,
                                   "synthetic_test_per_class": TEST_PER_CLASS, "synthetic_imbalance": RATIO,
                                   "init_cls": INIT, "increment": INC, "batch_size": 8, **over})


# ----------------------------------------------------------------------------- the synthetic data
def test_imbalance_spreads_counts_geometrically_with_two_in_the_smallest():
    raw = make_synthetic(CLASSES, LARGEST, TEST_PER_CLASS, 16, imbalance=RATIO)
    counts = np.bincount(raw.train_targets, minlength=CLASSES).tolist()
    assert counts == HAND_COUNTS
    assert counts == [round(LARGEST * RATIO ** (-c / (CLASSES - 1))) for c in range(CLASSES)]
    assert len(raw.train_images) == sum(HAND_COUNTS) == 158
    assert np.bincount(raw.test_targets).tolist() == [TEST_PER_CLASS] * CLASSES  # the test set stays equal
    # a ratio above the largest count: the smallest class keeps 2 images, the others 6 * (2/6) ** (c/3)
    assert np.bincount(make_synthetic(4, 6, 1, 8, imbalance=100).train_targets).tolist() == [6, 4, 3, 2]


def test_imbalance_one_is_the_equal_data_bit_for_bit():
    """The data of equal classes, drawn here as the generator always drew it (colour, angle and
    frequency per class, then each class's images in class order from one seeded generator)."""
    n, per, test, size = 5, 4, 3, 12
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    colours = rng.uniform(0.15, 0.85, size=(n, 3)).astype(np.float32)
    angles, freqs = rng.uniform(0, np.pi, size=n), rng.uniform(1.5, 5.0, size=n)

    def draw(c, k):
        phase = rng.uniform(0, 2 * np.pi, size=(k, 1, 1))
        stripes = np.sin(2 * np.pi * freqs[c] * (np.cos(angles[c]) * xx + np.sin(angles[c]) * yy)[None] + phase)
        img = colours[c][None, None, None, :] + 0.25 * stripes[..., None]
        return (np.clip(img + rng.normal(0, 0.05, size=img.shape), 0, 1) * 255).round().astype(np.uint8)

    train = np.concatenate([draw(c, per) for c in range(n)])
    test_images = np.concatenate([draw(c, test) for c in range(n)])
    for raw in (make_synthetic(n, per, test, size), make_synthetic(n, per, test, size, imbalance=1.0)):
        assert np.array_equal(raw.train_images, train) and np.array_equal(raw.test_images, test_images)
        assert raw.train_targets.tolist() == sum([[c] * per for c in range(n)], [])


def test_imbalance_below_one_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match="synthetic_imbalance"):
        make_config(tiny_args(synthetic_imbalance=0.5))


def test_a_class_count_that_does_not_divide_ends_with_a_smaller_task(tmp_path):
    cfg = make_config(awkward(tmp_path))
    dm = DataManager("synthetic", True, 1993, INIT, INC, cfg)
    assert dm.nb_tasks == 4 and [dm.get_task_size(t) for t in range(4)] == TASKS
    assert [list(dm.task_range(t)) for t in range(4)] == [list(range(0, 10)), list(range(10, 15)),
                                                          list(range(15, 20)), list(range(20, 23))]
    order = dm.class_order  # label i is dataset class order[i]
    for t in range(4):
        labels = list(dm.task_range(t))
        train = dm.get_dataset(labels, "train", "train", raw=True)
        assert len(train) == sum(HAND_COUNTS[order[i]] for i in labels)
        assert len(dm.get_dataset(labels, "test", "test", raw=True)) == TEST_PER_CLASS * len(labels)


# ----------------------------------------------------------------------------- image files of every mode
MODES = ["L", "CMYK", "P", "RGBA", "I;16", "RGB", "LA", "1"]
SIZES = [(20, 34), (41, 23), (32, 32), (17, 50), (64, 9)]  # (width, height): none is the CLIP crop


def write_image(path, mode, size, value):
    """A uniform image of grey level ``value`` (0-255) in ``mode``; returns the RGB it should read as."""
    rgb = Image.new("RGB", size, (value, value, value))
    if mode == "I;16":
        Image.fromarray(np.full(size[::-1], value * 257, dtype=np.uint16)).save(path + ".png")
    elif mode == "CMYK":  # JPEG is the common CMYK file; C = M = Y = 0, K = 255 - value
        Image.new("CMYK", size, (0, 0, 0, 255 - value)).save(path + ".jpg", quality=100)
    elif mode == "1":
        value = 255 if value >= 128 else 0
        rgb.convert("1", dither=Image.Dither.NONE).save(path + ".png")
    elif mode == "P":  # palette entry 3 is the colour
        im = Image.new("P", size, 3)
        im.putpalette([0, 0, 0] * 3 + [value] * 3 + [255, 0, 0] * 252)
        im.save(path + ".png")
    elif mode == "RGBA":
        Image.new("RGBA", size, (value, value, value, 77)).save(path + ".png")
    elif mode == "LA":
        Image.new("LA", size, (value, 200)).save(path + ".png")
    else:
        rgb.convert(mode).save(path + ".png")
    return value


def write_mixed_folder(root, counts, test_per_class=TEST_PER_CLASS):
    """train/<class>/ and test/<class>/ of images cycling through ``MODES`` and ``SIZES``;
    returns {file path: the grey level it should read as}."""
    expected, k = {}, 0
    for c, n in enumerate(counts):
        for split, m in (("train", n), ("test", test_per_class)):
            folder = root / split / f"class {c:02d}"
            folder.mkdir(parents=True)
            for i in range(m):
                value = 40 + (7 * k) % 180
                base = str(folder / f"{i}")
                value = write_image(base, MODES[k % len(MODES)], SIZES[k % len(SIZES)], value)
                path = base + (".jpg" if MODES[k % len(MODES)] == "CMYK" else ".png")
                expected[path] = value
                k += 1
    return expected


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed")
    return root, write_mixed_folder(root, HAND_COUNTS)


def test_every_pil_mode_reaches_the_learner_as_rgb_of_the_right_colour(mixed_folder):
    root, expected = mixed_folder
    with Image.open(next(p for p in expected if p.endswith(".jpg"))) as im:
        assert im.mode == "CMYK"
    dm = DataManager("folder", True, 1993, INIT, INC, {"data_path": str(root), "class_order": "default"})
    assert dm.nb_tasks == 4 and [dm.get_task_size(t) for t in range(4)] == TASKS
    images, labels, _ = dm.get_dataset(range(CLASSES), "train", "train", raw=True, resolution=16, ret_data=True)
    assert images.shape == (sum(HAND_COUNTS), 16, 16, 3) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == HAND_COUNTS
    paths = dm._train_data
    want = np.array([expected[p] for p in paths], dtype=np.float64)
    got = images.reshape(len(images), -1, 3).astype(np.float64)
    # every pixel of every image: its grey level on all three channels (JPEG: within 3 levels)
    assert np.abs(got - want[:, None, None]).max() <= 3
    # the per-item path (PIL transform) gives 3-channel tensors too
    test = dm.get_dataset(range(CLASSES), "test", "test")
    assert len(test) == TEST_PER_CLASS * CLASSES
    for i in range(len(MODES)):
        _, x, _ = test[i]
        assert x.shape == (3, 224, 224) and torch.isfinite(x).all()


def test_an_undecodable_image_is_one_line_naming_the_file(tmp_path):
    write_mixed_folder(tmp_path, [3, 2], test_per_class=1)
    bad = tmp_path / "train" / "class 01" / "1.png"
    bad.write_bytes(b"not an image")
    dm = DataManager("folder", True, 1993, 1, 1, {"data_path": str(tmp_path), "class_order": "default"})
    with pytest.raises(DatasetError) as e:
        dm.get_dataset([0, 1], "train", "train", raw=True, resolution=16)
    assert str(e.value).startswith(f"image file could not be read: {bad} (") and "\n" not in str(e.value)


# ----------------------------------------------------------------------------- every learner
@pytest.fixture
def spy_accuracy(monkeypatch):
    """Records the (predictions, labels, task ranges) of every accuracy the learners compute, wherever
    they import ``accuracy_dict`` from; the real function computes the result."""
    calls, real = [], metrics.accuracy_dict
    for model in LEARNERS:  # their modules imported, so that each one's name is replaced
        learner_class(model)

    def recorded(y_pred, y_true, task_ranges, known_classes, topk=5):
        out = real(y_pred, y_true, task_ranges, known_classes, topk)
        calls.append((np.asarray(y_pred), np.asarray(y_true), list(task_ranges), out))
        return out

    for module in list(sys.modules.values()):
        if getattr(module, "accuracy_dict", None) is real:
            monkeypatch.setattr(module, "accuracy_dict", recorded)
    return calls


def tiny_options(model):
    with open(os.path.join(ROOT, "exps", "compare_demo.json")) as f:
        return {k: v for k, v in json.load(f).get(model, {}).items() if k in option_names(model)}


def run_every_task(args, calls, test_counts):
    """The learner of ``args`` through every task; checks each task's evaluation against hand counts."""
    cfg = make_config(args)
    torch.manual_seed(0)
    dm = DataManager(cfg.dataset, True, 1993, cfg.init_cls, cfg.increment, cfg)
    learner = get_model(cfg.model_name, {**cfg.to_dict(), "seed": 1993})
    assert dm.nb_tasks == len(TASKS)
    for t in range(dm.nb_tasks):
        learner.incremental_train(dm)
        assert learner._total_classes == sum(TASKS[:t + 1]) and dm.get_task_size(t) == TASKS[t]
        n_calls = len(calls)
        cnn, _ = learner.eval_task()
        learner.after_task()
        assert len(calls) > n_calls, f"{cfg.model_name}'s eval_task did not compute accuracy_dict"
        y_pred, y_true, ranges, out = calls[-1]
        assert [len(r) for r in ranges] == TASKS[:t + 1]
        # the right test images: each seen task's hand count, and nothing else
        per_task_n = [int(np.isin(y_true, list(r)).sum()) for r in ranges]
        assert per_task_n == [test_counts(r) for r in ranges] and len(y_true) == sum(per_task_n)
        hand = [100.0 * np.mean(y_pred[np.isin(y_true, list(r)), 0] == y_true[np.isin(y_true, list(r))])
                for r in ranges]
        assert out["per_task"] == pytest.approx(hand) and cnn["top1"] == pytest.approx(
            100.0 * np.mean(y_pred[:, 0] == y_true))
        assert np.isfinite(out["per_task"]).all() and np.isfinite(cnn["top1"])
        assert all(np.isfinite(v) for v in learner.task_metrics().values())
    assert learner._total_classes == CLASSES


@pytest.mark.parametrize("model", sorted(LEARNERS))
def test_every_learner_runs_every_task_on_unequal_classes_and_a_smaller_last_task(tmp_path, model, spy_accuracy):
    """Synthetic data, 23 classes from 16 down to 2 training images, tasks 10, 5, 5, 3 (the last
    one 20 training images with this seed's order), batches of 32: larger than the smallest class
    and than the whole last task; one epoch."""
    args = awkward(tmp_path, model_name=model, epochs=1, **{**tiny_options(model), "batch_size": 32})
    run_every_task(args, spy_accuracy, lambda r: TEST_PER_CLASS * len(r))


# exemplar memories with more slots per class than the small classes have images
# (MG-CLIP: 46 slots = 4.6 per class after the first task, PROOF: 230 = 23 per class > every class)
MEMORY = {"mgclip": {"memory_size": 46}, "proof": {"proof_memory_size": 230}}


@pytest.mark.parametrize("case", sorted(MEMORY))
def test_exemplar_memories_larger_than_a_class(tmp_path, case, spy_accuracy):
    model = case.split("-")[0]
    args = awkward(tmp_path, model_name=model, epochs=1, **{**tiny_options(model), **MEMORY[case]})
    run_every_task(args, spy_accuracy, lambda r: TEST_PER_CLASS * len(r))


@pytest.mark.parametrize("model", sorted(LEARNERS))
def test_every_learner_reads_image_files_of_every_mode(tmp_path, model, mixed_folder, spy_accuracy):
    """The same classes as files of every mode and shape (the ``folder`` dataset, decoded once per run)."""
    run_every_task(on_files(tmp_path, model, mixed_folder), spy_accuracy, lambda r: TEST_PER_CLASS * len(r))


@pytest.mark.parametrize("model, per_item", [("simplecil", False), ("mgclip", True)])
def test_image_files_of_every_mode_in_every_run(tmp_path, model, per_item, mixed_folder, spy_accuracy):
    """Files opened and transformed per item (no decoded cache, PIL preprocessing) and, for
    comparison, decoded once per run."""
    args = on_files(tmp_path, model, mixed_folder)
    if per_item:
        args.update(cache_images="false", preprocess="pil")
    run_every_task(args, spy_accuracy, lambda r: TEST_PER_CLASS * len(r))


@pytest.mark.parametrize("model", sorted(LEARNERS))
def test_classes_of_one_training_image(tmp_path, model, spy_accuracy):
    """``shots_per_class: 1``: every class one training image (RAPF's and SLCA's class Gaussians
    have no spread to estimate); the test images as before."""
    args = awkward(tmp_path, model_name=model, epochs=1, shots_per_class=1, **tiny_options(model))
    run_every_task(args, spy_accuracy, lambda r: TEST_PER_CLASS * len(r))


def test_a_class_gaussian_of_one_image_is_its_features_and_the_ridge():
    from utils.gaussian import ClassGaussians

    x = torch.tensor([[1.0, -2.0, 0.5]])
    for kw in ({}, {"half": True}, {"double": True}):
        stats = ClassGaussians(ridge=0.25)
        stats.add(7, x, **kw)
        assert torch.equal(stats.means[7], x[0]) and torch.equal(stats.covs[7], 0.25 * torch.eye(3))
        draws = stats.sample(7, 4000)
        assert torch.isfinite(draws).all()
        assert (draws - x[0]).std(0).numpy() == pytest.approx([0.5] * 3, abs=0.03)  # sqrt(0.25)
    two = ClassGaussians(ridge=0.0)  # two images: the unbiased covariance, by hand
    two.add(0, torch.tensor([[0.0, 0.0], [2.0, 4.0]]))
    assert torch.allclose(two.covs[0], torch.tensor([[2.0, 4.0], [4.0, 8.0]]))


def on_files(tmp_path, model, mixed_folder):
    args = awkward(tmp_path, model_name=model, dataset="folder", data_path=str(mixed_folder[0]), epochs=1,
                   **{**tiny_options(model), "batch_size": 32})
    for key in ("synthetic_classes", "synthetic_train_per_class", "synthetic_test_per_class", "synthetic_imbalance"):
        args.pop(key)
    return args


def test_a_run_records_the_smaller_last_task_and_weighs_tasks_by_their_test_images(tmp_path):
    """Through main.py: the trainer's records of tasks 10, 5, 5, 3 (23 classes, unequal training sets)."""
    import csv

    from main import main
    from toolbox.trainer import run_dir_for

    args = awkward(tmp_path, model_name="simplecil", synthetic_test_per_class=3)
    (tmp_path / "c.json").write_text(json.dumps(args))
    assert main(["--config", str(tmp_path / "c.json"), "-q"]) == 0
    run = run_dir_for(make_config(args), 1993)
    with open(os.path.join(run, "results.json")) as f:
        r = json.load(f)
    with open(os.path.join(run, "metrics.csv")) as f:
        assert [int(row["classes"]) for row in csv.DictReader(f)] == [10, 15, 20, 23]
    assert r["nb_tasks"] == 4 and [len(row) for row in r["accuracy_matrix"]] == [1, 2, 3, 4]
    for t, row in enumerate(r["accuracy_matrix"]):  # accuracy over all seen test images: 3 per class
        weights = [3 * n for n in TASKS[:t + 1]]
        assert r["accuracy"][t] == pytest.approx(np.average(row, weights=weights), abs=0.01)
        correct = np.array(row) * weights / 100  # whole images on each task
        assert correct == pytest.approx(correct.round(), abs=1e-6)
