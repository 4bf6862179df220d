import pytest
import torch

from utils.gap import EpochProbe, GapAccumulator, batch_gap_terms, choose_epochs, gap_statistic, relative_change


def test_batch_terms_by_hand():
    logits = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 2.0]])
    labels = torch.tensor([2, 0])
    neg, pos = batch_gap_terms(logits, labels)
    # image 0: non-targets 1, 2 -> 1.5; image 1: non-targets 0, 2 -> 1.0; batch mean 1.25
    assert neg == pytest.approx(1.25)
    assert pos == pytest.approx((3.0 + 4.0) / 2)


def test_mean_over_batches_not_over_images():
    # Batch A: 2 images with non-target means 1 and 3 -> 2; batch B: one image with mean 10.
    acc = GapAccumulator()
    acc.add(torch.tensor([[0.0, 1.0], [0.0, 3.0]]), torch.tensor([0, 0]))
    acc.add(torch.tensor([[10.0, 0.0]]), torch.tensor([1]))
    assert acc.negative == pytest.approx((2.0 + 10.0) / 2)  # per-batch, then over batches
    assert acc.negative != pytest.approx((1 + 3 + 10) / 3)  # not the per-image mean


def test_gap_statistic_from_features_matches_hand_batches():
    torch.manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(5, 4), dim=1)
    txt = torch.nn.functional.normalize(torch.randn(3, 4), dim=1)
    y = torch.tensor([0, 1, 2, 0, 1])
    neg, pos = gap_statistic(img, y, txt, 100.0, batch_size=2)
    logits = (100 * img @ txt.T).tolist()
    per_batch = []
    for b in ([0, 1], [2, 3], [4]):
        per_batch.append(sum(sum(logits[i][c] for c in range(3) if c != y[i]) / 2 for i in b) / len(b))
    assert neg == pytest.approx(sum(per_batch) / 3, rel=1e-5)


def test_relative_change():
    assert relative_change(-8.0, -8.8) == pytest.approx(0.1)
    assert relative_change(-8.0, -7.2) == pytest.approx(0.1)


@pytest.mark.parametrize("values, expected", [
    ([-8.5], 1),                          # violation at epoch 1 -> at least 1
    ([-10.1, -10.5, -11.2], 2),           # violation at epoch 3 -> the 2 epochs before it
    ([-10.2] * 10, 10),                   # never violates -> max_epochs
    ([-10.0, -11.0, -11.01], 2),          # -11.0 is exactly 10 %: allowed (strictly greater violates)
])
def test_epoch_rule(values, expected):
    neg0 = -10.0
    assert choose_epochs(neg0, values, alpha=0.10, max_epochs=10) == expected


def test_probe_records_changes_and_refuses_more_updates():
    probe = EpochProbe(neg0=-10.0, alpha=0.1, max_epochs=10)
    assert not probe.update(-10.5)
    assert probe.update(-12.0)
    assert probe.budget == 1 and probe.changes == pytest.approx([0.05, 0.2])
    with pytest.raises(RuntimeError):
        probe.update(-10.0)
