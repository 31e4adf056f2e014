import numpy as np
import pytest
import torch
import torch.nn.functional as F

from config import ConfigError
import data
from model import bce_with_logits, resolve_pos_weight


def test_matches_torch_without_and_with_pos_weight():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 5, generator=g) * 4
    targets = (torch.rand(16, 5, generator=g) < 0.3).float()
    ref = F.binary_cross_entropy_with_logits(logits, targets)
    assert torch.allclose(bce_with_logits(logits, targets), ref, atol=1e-6)
    w = torch.tensor([1.0, 2.0, 0.5, 10.0, 3.0])
    ref = F.binary_cross_entropy_with_logits(logits, targets, pos_weight=w)
    assert torch.allclose(bce_with_logits(logits, targets, pos_weight=w), ref, atol=1e-6)


def test_stable_at_large_logits():
    logits = torch.tensor([[100.0, -100.0, 100.0, -100.0]])
    targets = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    w = torch.tensor([3.0, 3.0, 3.0, 3.0])
    ours = bce_with_logits(logits, targets, pos_weight=w, reduction="none")
    ref = F.binary_cross_entropy_with_logits(logits, targets, pos_weight=w, reduction="none")
    assert torch.isfinite(ours).all()
    assert torch.allclose(ours, ref)
    assert ours[0, 2].item() == pytest.approx(100.0) and ours[0, 3].item() == pytest.approx(300.0)
    # gradients stay finite too
    x = logits.clone().requires_grad_()
    bce_with_logits(x, targets, pos_weight=w).backward()
    assert torch.isfinite(x.grad).all()


def test_mask_averages_over_measured_entries_only():
    logits = torch.tensor([[2.0, -1.0], [0.5, 3.0]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    mask = torch.tensor([[True, False], [True, True]])
    per = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    expected = (per[0, 0] + per[1, 0] + per[1, 1]) / 3
    assert torch.allclose(bce_with_logits(logits, targets, mask), expected)
    # an unmeasured entry gets no gradient
    x = logits.clone().requires_grad_()
    bce_with_logits(x, targets, mask).backward()
    assert x.grad[0, 1] == 0


def test_pos_weight_forms():
    labels = np.array([[1, 0], [0, 0], [0, 1], [0, 0]], np.float32)
    mask = np.ones_like(labels, bool)
    names = ["a", "b"]

    def resolve(spec):
        return resolve_pos_weight(spec, names, *data.label_counts(labels, mask))

    assert resolve(None) is None
    assert resolve("auto").tolist() == [3.0, 3.0]
    assert resolve([1, 2]).tolist() == [1.0, 2.0]
    assert resolve({"b": 5}).tolist() == [1.0, 5.0]
    mask[1, 0] = False  # an unmeasured entry counts as neither
    assert resolve("auto").tolist()[0] == 2.0
    with pytest.raises(ConfigError, match="unknown labels"):
        resolve({"z": 2})
    with pytest.raises(ConfigError, match="2 labels"):
        resolve([1, 2, 3])
