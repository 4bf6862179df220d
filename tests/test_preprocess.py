import numpy as np
import pytest
import torch
from PIL import Image

from toolbox.data_manager import DataManager
from utils.clip_backbone import CLIP_STD, clip_transform
from utils.preprocess import DevicePreprocess, resized_size


@pytest.mark.parametrize("h, w, R", [(32, 32, 224), (32, 32, 96), (40, 30, 64), (30, 45, 64), (300, 200, 224),
                                     (64, 64, 32), (224, 224, 224)])
def test_device_preprocess_matches_pil_within_one_grey_level(h, w, R):
    rng = np.random.default_rng(h * w + R)
    # noise is the hard case: bicubic overshoots, and PIL clips and rounds after each pass
    arr = rng.integers(0, 256, size=(3, h, w, 3), dtype=np.uint8)
    ref = torch.stack([clip_transform(R)(Image.fromarray(a)) for a in arr])
    ours = DevicePreprocess(R, torch.device("cpu"))(torch.from_numpy(arr))
    assert ours.shape == ref.shape == (3, 3, R, R)
    # back to grey levels: x * std * 255 (the mean cancels in a difference)
    diff_levels = (ours - ref).abs() * torch.tensor(CLIP_STD).view(1, 3, 1, 1) * 255
    assert diff_levels.max() <= 1.0 + 1e-3
    assert (diff_levels > 0.5).float().mean() < 0.01  # almost every pixel is exact


def test_resized_size_follows_torchvision():
    assert resized_size(32, 32, 224) == (224, 224)
    assert resized_size(300, 200, 224) == (336, 224)
    assert resized_size(375, 500, 224) == (224, 298)  # int(224 * 500 / 375) = 298


def test_rejects_wrong_input():
    with pytest.raises(ValueError, match="uint8"):
        DevicePreprocess(32, torch.device("cpu"))(torch.zeros(2, 32, 32, 3))


def test_decoded_jpeg_cache_equals_the_pil_pipeline(tmp_path):
    from tests.test_data import write_jpeg_split

    write_jpeg_split(tmp_path / "imagenet-r", ["a", "b"], per_split=(3, 2), size=50)
    dm = DataManager("imagenet_r", False, 0, 1, 1, {"data_path": str(tmp_path), "class_order": "default"})
    raw = dm.get_dataset([0, 1], "train", "train", raw=True, resolution=40)
    pil = dm.get_dataset([0, 1], "train", "train", transform=clip_transform(40))
    prep = DevicePreprocess(40, torch.device("cpu"))
    for i in range(len(pil)):
        _, img, y = raw[i]
        _, ref, y_ref = pil[i]
        assert img.dtype == torch.uint8 and img.shape == (40, 40, 3) and y == y_ref
        torch.testing.assert_close(prep(img[None])[0], ref, atol=1e-5, rtol=0)
    assert dm.decoded_images("train", 40) is dm.decoded_images("train", 40)  # decoded once


def test_cache_decision(tmp_path):
    from tests.test_data import write_jpeg_split

    write_jpeg_split(tmp_path / "imagenet-r", ["a", "b"])
    dm = DataManager("imagenet_r", False, 0, 1, 1, {"data_path": str(tmp_path)})
    assert dm.supports_raw(224, "auto", 8.0) and not dm.supports_raw(224, "auto", 1e-9)
    assert dm.supports_raw(224, "true", 0.0) and not dm.supports_raw(224, "false", 100.0)
    mem = DataManager("synthetic", False, 0, 2, 2, {"synthetic_classes": 4})
    assert mem.supports_raw(224, "false", 0.0)  # in-memory arrays need no cache


def test_device_and_pil_paths_give_nearly_the_same_run(tmp_path):
    from models.mgclip import MGCLIP
    from tests.conftest import tiny_args
    from utils.clip_ops import encode_dataset

    feats = {}
    for mode in ("device", "pil"):
        args = tiny_args(tmp_path, preprocess=mode, synthetic_image_size=20)  # 20 px -> resized to 32
        torch.manual_seed(0)
        dm = DataManager("synthetic", True, 1993, 2, 2, args)
        learner = MGCLIP(args)
        learner.incremental_train(dm)
        feats[mode], _ = encode_dataset(learner._network, learner.test_loader, learner._device)
    cos = torch.nn.functional.cosine_similarity(feats["device"], feats["pil"], dim=1)
    assert cos.min() > 0.999


def test_cached_classifier_features_equal_recomputed_ones(tmp_path):
    """The fast path computes the classifier's features once per task; the released code
    recomputes them in every classifier epoch. CLIP is frozen then: bit-identical on CPU."""
    from benchmarks.reference import ReferenceMGCLIP
    from models.mgclip import MGCLIP
    from tests.conftest import tiny_args
    from utils.clip_ops import encode_dataset

    args = tiny_args(tmp_path)
    dm = DataManager("synthetic", True, 1993, 2, 2, args)
    learner = MGCLIP(args)
    learner.incremental_train(dm)
    feats, labels = encode_dataset(learner._network, learner.ordered_train_loader, learner._device)
    for _ in range(3):  # one per classifier epoch
        again, again_labels = ReferenceMGCLIP._classifier_features(learner, feats, labels)
        assert torch.equal(again, feats) and torch.equal(again_labels, labels)
    assert MGCLIP._classifier_features(learner, feats, labels)[0] is feats


def test_reference_loss_equals_fast_loss(tmp_path):
    """All 77-token prompts then slicing (released) vs the current task's trimmed prompts."""
    from benchmarks.reference import ReferenceMGCLIP
    from tests.conftest import tiny_args
    from utils.lora import lora_layers

    args = tiny_args(tmp_path)
    dm = DataManager("synthetic", True, 1993, 2, 2, args)
    learner = ReferenceMGCLIP(args)
    for t in range(2):
        learner.incremental_train(dm)
        if t == 0:
            learner.after_task()
    with torch.no_grad():
        for layer in lora_layers(learner._network):
            layer.lora_B.normal_(0, 0.05)
    _, x, y = next(iter(learner.train_loader))
    from models.mgclip import MGCLIP

    torch.testing.assert_close(MGCLIP._loss(learner, x, y), learner._loss(x, y), atol=1e-4, rtol=1e-5)
