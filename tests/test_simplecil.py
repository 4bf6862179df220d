"""SimpleCIL (docs/methods/simplecil.md, items S1-S3) against numpy: prototypes are the
means of the frozen encoder's features, predictions the nearest prototype by cosine, and
each image is encoded once."""

import numpy as np
import pytest
import torch

from tests.conftest import make_learner, tiny_args
from tests.test_aper_adapter import clip_images


def make(tmp_path, **over):
    return make_learner(tiny_args(tmp_path, model_name="simplecil", preprocess="pil", **over))


def test_s1_s2_prototypes_are_feature_means_and_predictions_the_nearest_by_cosine(tmp_path):
    learner, dm = make(tmp_path)
    accuracies = []
    for _ in range(3):
        learner.incremental_train(dm)
        accuracies.append(learner.eval_task()[0]["top1"])
        learner.after_task()
    net = learner._network
    with torch.no_grad():
        x, y = clip_images(dm, range(6), "train", net.input_resolution)
        train = net.encode_image(x).numpy()
        xt, yt = clip_images(dm, range(6), "test", net.input_resolution)
        test = net.encode_image(xt).numpy()
    protos = np.stack([train[y.numpy() == c].mean(0) for c in range(6)])  # S1: not normalised first
    np.testing.assert_allclose(learner.prototypes.numpy(), protos, rtol=1e-5, atol=1e-6)
    unit = test / np.linalg.norm(test, axis=1, keepdims=True)
    cos = unit @ (protos / np.linalg.norm(protos, axis=1, keepdims=True)).T
    assert accuracies[-1] == pytest.approx(100 * np.mean(cos.argmax(1) == yt.numpy()), abs=0.01)  # S2
    first = yt.numpy() < 2  # after the first task: only its two classes compete
    assert accuracies[0] == pytest.approx(100 * np.mean(cos[first, :2].argmax(1) == yt.numpy()[first]), abs=0.01)


def test_s3_each_image_is_encoded_once(tmp_path, monkeypatch):
    learner, dm = make(tmp_path)
    calls = []
    real = learner._network.encode_image
    monkeypatch.setattr(learner._network, "encode_image", lambda x: calls.append(len(x)) or real(x))
    for _ in range(3):
        learner.incremental_train(dm)
        learner.eval_task()
        learner.after_task()
    assert sum(calls) == 6 * (8 + 4)  # every training and test image of the 6 classes, once


def test_simplecil_resumes_exactly(tmp_path, monkeypatch):
    from tests.test_resume import run_then_resume

    args = tiny_args(tmp_path, model_name="simplecil")
    reference, resumed = run_then_resume(args, tmp_path, monkeypatch)
    assert resumed == reference
