"""Zero-shot retention: corruptions deterministic per seed, zero-shot CLIP's retention
equals a zero-shot run on the same data, results in results.json and the report."""
import json
import os

import numpy as np
import pytest

from main import main
from tests.conftest import tiny_args
from toolbox.configs import make_config
from toolbox.trainer import run_dir_for
from utils.config import ConfigError

pytest.importorskip("imagecorruptions", reason="pip install -e .[corruptions] (CI installs it)")


def test_corruptions_are_deterministic_per_seed_and_leave_numpy_alone():
    from toolbox.retention import corrupt_images

    images = (np.random.RandomState(0).rand(4, 32, 32, 3) * 255).astype(np.uint8)
    np.random.seed(5)
    before = np.random.get_state()[1].copy()
    a = corrupt_images(images, "gaussian_noise", 3, seed=1)
    assert np.array_equal(np.random.get_state()[1], before)  # the global generator is restored
    assert np.array_equal(a, corrupt_images(images, "gaussian_noise", 3, seed=1))
    assert not np.array_equal(a, corrupt_images(images, "gaussian_noise", 3, seed=2))
    assert not np.array_equal(a, images) and a.dtype == np.uint8 and a.shape == images.shape
    # per image: the same image at another position of the batch gets the seed of its index
    assert np.array_equal(corrupt_images(images[:2], "gaussian_noise", 3, seed=1), a[:2])


def test_every_imagenet_c_corruption_runs_here():
    """imagecorruptions 1.1.2 predates numpy 2 and scikit-image 0.19; fog, glass_blur and
    gaussian_blur fail there unless their two old spellings are translated."""
    from toolbox.retention import check_corruption, corrupt_images, corruptions_module

    _, names = corruptions_module()
    images = (np.random.RandomState(1).rand(2, 32, 32, 3) * 255).astype(np.uint8)
    assert len(names("all")) == 19
    for name in names("all"):
        for severity in (1, 5):
            check_corruption(name, severity)
            out = corrupt_images(images, name, severity, seed=0)
            assert out.dtype == np.uint8 and out.shape == images.shape and not np.array_equal(out, images), name


def test_corruptions_run_without_pkg_resources():
    """setuptools >= 81 has no pkg_resources; imagecorruptions' frost reads its frost images
    through pkg_resources.resource_filename. A fresh interpreter without it still corrupts,
    with the very images it gets with setuptools < 81."""
    import subprocess
    import sys

    from tests.conftest import ROOT
    from toolbox.retention import corrupt_images

    code = ("import sys; sys.modules['pkg_resources'] = None\n"
            "import numpy as np\n"
            "from toolbox.retention import corrupt_images\n"
            "images = (np.random.RandomState(3).rand(2, 40, 40, 3) * 255).astype(np.uint8)\n"
            "sys.stdout.write(corrupt_images(images, 'frost', 4, seed=1).tobytes().hex())")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    images = (np.random.RandomState(3).rand(2, 40, 40, 3) * 255).astype(np.uint8)
    assert bytes.fromhex(out.stdout) == corrupt_images(images, "frost", 4, seed=1).tobytes()


def test_gaussian_blur_is_a_per_channel_gaussian_filter_by_hand():
    """ImageNet-C's gaussian_blur: sigma 1, 2, 3, 4, 6 by severity, each colour channel
    blurred on its own (skimage's multichannel=True, channel_axis=-1 today), edges
    repeated, clipped to [0, 1], then x255 and truncated to uint8."""
    from scipy.ndimage import gaussian_filter

    from toolbox.retention import corrupt_images

    images = (np.random.RandomState(2).rand(2, 40, 48, 3) * 255).astype(np.uint8)
    for severity, sigma in zip(range(1, 6), (1, 2, 3, 4, 6)):
        hand = np.stack([np.uint8(np.clip(gaussian_filter(im / 255.0, sigma=(sigma, sigma, 0), mode="nearest",
                                                          truncate=4.0), 0, 1) * 255) for im in images])
        assert np.array_equal(corrupt_images(images, "gaussian_blur", severity, seed=0), hand)


def test_broken_or_unknown_corruptions_are_refused_before_the_run(tmp_path, capsys):
    args = tiny_args(tmp_path, zero_shot_eval=[{"dataset": "synthetic", "corruption": "gaussian_nois"}])
    path = tmp_path / "c.json"
    path.write_text(json.dumps(args))
    assert main(["--config", str(path), "-q"]) == 2
    assert "corruption 'gaussian_nois' is not one of" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "logs")
    with pytest.raises(ConfigError, match="unknown key 'severty'; did you mean 'severity'"):
        make_config({"zero_shot_eval": [{"dataset": "synthetic", "severty": 2}]})
    with pytest.raises(ConfigError, match="severity.*1-5"):
        make_config({"zero_shot_eval": [{"dataset": "synthetic", "severity": 9}]})


def test_retention_in_results_and_report_and_zero_shot_clip_retains_exactly(tmp_path):
    from toolbox.report import make_report

    held_out = [{"dataset": "synthetic", "synthetic_classes": 5, "synthetic_test_per_class": 4, "name": "clean"},
                {"dataset": "synthetic", "synthetic_classes": 5, "synthetic_test_per_class": 4,
                 "corruption": "contrast", "severity": 3}]
    dirs = {}
    for model in ("mgclip", "zs_clip"):
        args = tiny_args(tmp_path, model_name=model, zero_shot_eval=held_out)
        (tmp_path / f"{model}.json").write_text(json.dumps(args))
        assert main(["--config", str(tmp_path / f"{model}.json"), "-q"]) == 0
        dirs[model] = run_dir_for(make_config(args), 1993)
    with open(os.path.join(dirs["zs_clip"], "results.json")) as f:
        zs = json.load(f)["zero_shot_retention"]
    with open(os.path.join(dirs["mgclip"], "results.json")) as f:
        mg = json.load(f)["zero_shot_retention"]
    assert [z["name"] for z in mg] == ["clean", "synthetic contrast-3"] and mg[0]["images"] == 20
    for a, b in zip(zs, mg):
        assert a["model"] == a["zero_shot_clip"] and a["delta"] == 0  # zero-shot CLIP is untouched
        assert b["zero_shot_clip"] == a["zero_shot_clip"]  # MG-CLIP with LoRA off = zero-shot CLIP
    # and equal to a zero-shot run's own accuracy on the same images (the clean set = the
    # synthetic test split of 5 classes, evaluated as one task)
    args = tiny_args(tmp_path / "zs5", model_name="zs_clip", synthetic_classes=5, synthetic_test_per_class=4,
                     init_cls=5, increment=5, class_order="default")
    (tmp_path / "zs5.json").write_text(json.dumps(args))
    assert main(["--config", str(tmp_path / "zs5.json"), "-q"]) == 0
    with open(os.path.join(run_dir_for(make_config(args), 1993), "results.json")) as f:
        assert json.load(f)["accuracy"][0] == pytest.approx(zs[0]["zero_shot_clip"])
    written = make_report([str(tmp_path / "logs")], str(tmp_path / "report"))
    assert len(written["retention"]) == 4 and "retention.csv" in written["files"]
    assert "Zero-shot retention" in (tmp_path / "report" / "summary.md").read_text()


def test_retention_command_on_a_finished_run(tmp_path):
    from toolbox.retention import main as retention_main

    args = tiny_args(tmp_path)
    (tmp_path / "a.json").write_text(json.dumps(args))
    assert main(["--config", str(tmp_path / "a.json"), "-q"]) == 0
    run_dir = run_dir_for(make_config(args), 1993)
    assert retention_main([run_dir, "--dataset", "synthetic", "--corruption", "defocus_blur", "--severity", "2",
                           "--max-images", "10"]) == 0
    with open(os.path.join(run_dir, "retention.json")) as f:
        r = json.load(f)
    assert r["images"] == 10 and r["name"] == "synthetic defocus_blur-2"
    assert r["delta"] == pytest.approx(r["model"] - r["zero_shot_clip"])


def test_evaluation_in_chunks_equals_all_images_at_once_by_hand(tmp_path):
    """evaluate reads, resizes and corrupts the held-out images a chunk at a time (50,000
    ImageNet images would not fit at once): the same accuracies as corrupting the whole set
    at once and classifying each image by hand with the learner's views."""
    import torch

    from toolbox.restore import load_learner
    from toolbox.retention import corrupt_images, evaluate, held_out_images

    args = tiny_args(tmp_path)
    (tmp_path / "a.json").write_text(json.dumps(args))
    assert main(["--config", str(tmp_path / "a.json"), "-q"]) == 0
    learner, _, _ = load_learner(run_dir_for(make_config(args), 1993))
    spec = {"dataset": "synthetic", "synthetic_classes": 6, "synthetic_test_per_class": 5,
            "corruption": "gaussian_noise", "severity": 5, "max_images": 23, "seed": 4}
    images, labels, names = held_out_images(spec, learner._network.input_resolution, learner.cfg.released_cache)
    whole = corrupt_images(images, "gaussian_noise", 5, seed=4)  # the whole set at once
    assert np.array_equal(corrupt_images(images[5:10], "gaussian_noise", 5, seed=4, first=5), whole[5:10])
    assert not np.array_equal(corrupt_images(images[5:10], "gaussian_noise", 5, seed=4), whole[5:10])
    images = whole
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    pixels = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - mean) / std
    hand = {}
    with torch.no_grad():
        for trained in (False, True):
            scores = learner.image_view(pixels, trained) @ learner.text_view(names, trained).t()
            hand[trained] = 100.0 * float((scores.argmax(1).numpy() == labels).mean())
    for chunk in (5, 1024):
        got = evaluate(learner, spec, chunk=chunk)
        assert got["images"] == 23
        assert got["zero_shot_clip"] == pytest.approx(hand[False]) and got["model"] == pytest.approx(hand[True])


def test_held_out_folder_dataset_with_the_released_pet_name_table(tmp_path, released_cache):
    from tests.test_data import write_jpeg_split
    from toolbox.retention import held_out_images

    with open(os.path.join(released_cache, "mgclip", "f40bfceae673", "dataset_reqs", "oxford_pet_classes.txt")) as f:
        names = [line.split("\t")[-1].strip() for line in f if line.strip()]
    write_jpeg_split(tmp_path / "pets", [f"{i:02d}" for i in range(37)], per_split=(1, 2), size=40)
    spec = {"dataset": "folder", "data_path": str(tmp_path / "pets"),
            "class_names": "released:mgclip/dataset_reqs/oxford_pet_classes.txt"}
    images, labels, got = held_out_images(spec, 32, released_cache)
    assert got == names and got[0] == "abyssinian" and images.shape == (74, 32, 32, 3)
    assert list(labels[:4]) == [0, 0, 1, 1]


def test_a_run_stopped_in_its_held_out_evaluation_keeps_what_it_evaluated_and_resumes_the_rest(
        tmp_path, monkeypatch, capsys):
    """results.json says finished only once every held-out set is evaluated; each set's
    result is written as it comes, so a run stopped in the second of three keeps the first,
    a table continues it (not "skip"), and --resume evaluates only the other two: the same
    results as a run never stopped."""
    from toolbox import trainer
    from toolbox.table import run_state, status_of

    held_out = [{"dataset": "synthetic", "synthetic_classes": 5, "synthetic_test_per_class": 4, "name": n,
                 **({"corruption": c} if c else {})} for n, c in (("clean", None), ("noise", "gaussian_noise"),
                                                                  ("contrast", "contrast"))]
    real_evaluate = trainer.evaluate
    calls = []

    def stopped_in_the_second(learner, spec):
        calls.append(spec["name"])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_evaluate(learner, spec)

    args = tiny_args(tmp_path, zero_shot_eval=held_out)
    (tmp_path / "a.json").write_text(json.dumps(args))
    run_dir = run_dir_for(make_config(args), 1993)
    monkeypatch.setattr(trainer, "evaluate", stopped_in_the_second)
    assert main(["--config", str(tmp_path / "a.json"), "-q"]) == 130
    assert "interrupted in the held-out evaluation (2 of 3 sets)" in capsys.readouterr().err
    with open(os.path.join(run_dir, "results.json")) as f:
        stopped = json.load(f)
    assert stopped["completed_tasks"] == stopped["nb_tasks"] == 3 and not stopped["finished"]
    assert [r["name"] for r in stopped["zero_shot_retention"]] == ["clean"]
    assert status_of(run_dir, stopped["config"]).startswith("continue")
    assert run_state(run_dir) == (None, "partial, all 3 tasks but the held-out evaluation not finished")

    calls.clear()
    monkeypatch.setattr(trainer, "evaluate", lambda learner, spec: calls.append(spec["name"]) or
                        real_evaluate(learner, spec))
    assert main(["--resume", run_dir, "-q"]) == 0
    assert calls == ["noise", "contrast"]  # the first set is not evaluated again
    with open(os.path.join(run_dir, "results.json")) as f:
        resumed = json.load(f)
    clean_args = tiny_args(tmp_path / "clean", zero_shot_eval=held_out)
    (tmp_path / "clean.json").write_text(json.dumps(clean_args))
    assert main(["--config", str(tmp_path / "clean.json"), "-q"]) == 0
    with open(os.path.join(run_dir_for(make_config(clean_args), 1993), "results.json")) as f:
        clean = json.load(f)
    assert resumed["finished"] and resumed["zero_shot_retention"] == clean["zero_shot_retention"]
    assert calls == ["noise", "contrast", "clean", "noise", "contrast"]
    assert main(["--resume", run_dir, "-q"]) == 0 and len(calls) == 5  # finished: nothing evaluated again
