"""Gap and subspace analysis: the linear algebra against hand-made matrices with known
ranks and angles, and the command on real (tiny) runs of each method."""
import json
import math
import os

import numpy as np
import pytest
import torch

from main import main
from models.base import BaseLearner
from models.zs_clip import ZSCLIP
from tests.conftest import tiny_args
from toolbox.configs import make_config
from toolbox.subspace import energy_rank, gap_measures, principal_angles, span_basis, subspace_report
from toolbox.trainer import run_dir_for


def test_energy_rank_by_hand():
    u, _ = torch.linalg.qr(torch.randn(6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    s = torch.tensor([3.0, 2.0, 1.0, 0.1], dtype=torch.float64)
    x = u[:, :4] @ torch.diag(s) @ v.t()  # singular values 3, 2, 1, 0.1: energies 9, 4, 1, 0.01
    assert energy_rank(x, 0.95)[0] == 3  # 13/14.01 = 0.928 < 0.95 <= 14/14.01
    assert energy_rank(x, 0.60)[0] == 1 and energy_rank(x, 0.9999)[0] == 4
    k, basis = energy_rank(x, 0.95)
    torch.testing.assert_close(basis.t() @ basis, torch.eye(3, dtype=torch.float64))


def test_qr_rank_principal_angles_and_union_by_hand():
    e = torch.eye(4, dtype=torch.float64)
    assert span_basis(torch.stack([e[0], e[1], e[0] + e[1]], 1)).shape[1] == 2  # a dependent column
    a = span_basis(torch.stack([e[0], e[1]], 1))
    b = span_basis(torch.stack([e[0], (e[1] + e[2]) / math.sqrt(2)], 1))
    angles = principal_angles(a, b)
    assert [math.degrees(float(t)) for t in angles] == pytest.approx([0.0, 45.0], abs=1e-6)
    rep = subspace_report(a, b)
    assert rep["rank_union"] == 3 and rep["overlap"] == pytest.approx((1 + 0.5) / 2)
    assert rep["angle_max_deg"] == pytest.approx(45.0)
    assert subspace_report(a, span_basis(torch.stack([e[2], e[3]], 1)))["angle_min_deg"] == pytest.approx(90.0)


def test_gap_measures_by_hand():
    image = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    labels = torch.tensor([0, 1])
    m = gap_measures(image, labels, text)
    assert m["matched_cosine"] == pytest.approx((1.0 + 0.8) / 2)
    # non-target cosines: image 0 -> (0 + -1)/2, image 1 -> (0.6 + -0.6)/2
    assert m["gap_statistic"] == pytest.approx(100 * (-0.5 + 0.0) / 2)
    centroid_image = np.array([0.8, 0.4])
    centroid_text = np.array([0.0, 1 / 3])
    assert m["centroid_distance"] == pytest.approx(float(np.linalg.norm(centroid_image - centroid_text)))


def run(tmp_path, model, **over):
    args = tiny_args(tmp_path, model_name=model, synthetic_classes=6, **over)
    path = tmp_path / f"{model}.json"
    path.write_text(json.dumps(args))
    assert main(["--config", str(path), "-q"]) == 0
    return run_dir_for(make_config(args), args["seed"])


def analyse_cli(run_dir, out):
    from toolbox.analysis import main as analysis_main

    assert analysis_main([run_dir, "--out", str(out), "--per-class", "3"]) == 0
    with open(out / "analysis.json") as f:
        return json.load(f)


def test_analysis_of_each_method_and_zero_shot_agreement(tmp_path):
    mg = analyse_cli(run(tmp_path, "mgclip"), tmp_path / "mg")
    zs = analyse_cli(run(tmp_path, "zs_clip"), tmp_path / "zs")
    rapf = analyse_cli(run(tmp_path, "rapf", epochs=2), tmp_path / "rapf")
    # the same images, the same frozen CLIP: the zero-shot side is the same for every method
    for key in ("matched_cosine", "centroid_distance", "gap_statistic", "image_energy_rank", "text_rank"):
        assert mg["zero_shot"][key] == pytest.approx(zs["zero_shot"][key], rel=1e-5)
        assert rapf["zero_shot"][key] == pytest.approx(zs["zero_shot"][key], rel=1e-5)
        assert zs["trained"][key] == pytest.approx(zs["zero_shot"][key], rel=1e-9)  # nothing trained
    assert mg["trained"]["gap_statistic"] != pytest.approx(mg["zero_shot"]["gap_statistic"])  # LoRA changed it
    assert "text_vs_visual" in mg["trained"] and mg["trained"]["visual_rank"] >= 1
    assert any("no visual classifier" in s for s in rapf["skipped"]) and "text_vs_visual" not in rapf["trained"]
    assert mg["images"] == 6 * 3 and mg["classes"] == 6
    for name in ("analysis.md", "analysis.csv", "features_2d.png"):
        assert os.path.isfile(tmp_path / "mg" / name)


def test_a_proof_run_is_analysed_as_trained_not_as_zero_shot_clip(tmp_path):
    """PROOF trains projections on frozen CLIP: its trained view is the projected features
    (once reported as untrained zero-shot CLIP, the method guessed from attribute names)."""
    proof = analyse_cli(run(tmp_path, "proof", epochs=2), tmp_path / "proof")
    zs = analyse_cli(run(tmp_path, "zs_clip"), tmp_path / "zs")
    assert "projections" in proof["trains"] and zs["trains"] == ""
    for key in ("matched_cosine", "centroid_distance", "gap_statistic"):
        assert proof["zero_shot"][key] == pytest.approx(zs["zero_shot"][key], rel=1e-5)  # the same frozen CLIP
        assert proof["trained"][key] != pytest.approx(proof["zero_shot"][key], rel=1e-3)
    assert not any("trains nothing" in s for s in proof["skipped"])
    assert any("trains nothing" in s for s in zs["skipped"])


def test_a_learner_without_the_analysis_hooks_fails_loudly(tmp_path, capsys):
    from toolbox.analysis import main as analysis_main
    from toolbox.registry import registered

    with registered({"bare_zs": "tests.test_analysis:BareLearner"}):
        run_dir = run(tmp_path, "bare_zs")
        assert analysis_main([run_dir, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "BareLearner does not say what it trains" in err and not os.path.exists(tmp_path / "out")


class BareLearner(ZSCLIP):
    """Zero-shot CLIP without the contract's analysis hooks (``trains``, the views)."""
    trains = BaseLearner.trains
    image_view = BaseLearner.image_view
    text_view = BaseLearner.text_view


def test_analysis_errors_name_the_folder(tmp_path, capsys):
    from toolbox.analysis import main as analysis_main

    assert analysis_main([str(tmp_path / "nope")]) == 2
    assert "no config.json" in capsys.readouterr().err


def test_one_command_gives_analysis_and_retention(tmp_path):
    pytest.importorskip("imagecorruptions", reason="pip install -e .[corruptions] (CI installs it)")
    from toolbox.analysis import main as analysis_main

    run_dir = run(tmp_path, "mgclip")
    out = tmp_path / "both"
    assert analysis_main([run_dir, "--out", str(out), "--per-class", "2",
                          "--held-out", "{dataset: synthetic, synthetic_classes: 4, corruption: contrast}"]) == 0
    with open(out / "analysis.json") as f:
        r = json.load(f)
    (z,) = r["zero_shot_retention"]
    assert z["name"] == "synthetic contrast-3" and z["delta"] == pytest.approx(z["model"] - z["zero_shot_clip"])
    assert "zero-shot accuracy on synthetic contrast-3" in (out / "analysis.csv").read_text()


def test_the_images_per_class_are_counted_not_the_cap(tmp_path, capsys):
    """A run with 4 test images per class, analysed with the default cap of 20: the line
    says 4 per class (20 was once printed as if it were the count)."""
    from toolbox.analysis import main as analysis_main
    from toolbox.analysis import per_class_text

    run_dir = run(tmp_path, "zs_clip", synthetic_test_per_class=4)
    capsys.readouterr()
    assert analysis_main([run_dir, "--out", str(tmp_path / "out")]) == 0
    with open(tmp_path / "out" / "analysis.json") as f:
        r = json.load(f)
    assert r["images_per_class"] == [4] * 6 and r["images"] == 24 and r["per_class"] == 20  # by hand: min(4, 20)
    assert "6 classes, 24 test images (4 per class, up to 20 asked, seed 0)" in capsys.readouterr().out
    assert per_class_text({"per_class": 3, "images_per_class": [3, 3]}) == "3 per class"
    assert per_class_text({"per_class": 20, "images_per_class": [10, 8, 10]}) == "8-10 per class, up to 20 asked"
