import numpy as np
import pytest
import torch
import torch.nn.functional as F

import data
from model import entry_loss, resolve_pos_weight
from training.config import ConfigError


def bce_with_logits(logits, targets, mask=None, pos_weight=None):
    """The mean over measured entries, as evaluation reduces entry_loss."""
    loss = entry_loss(logits, targets, mask, pos_weight=pos_weight)
    return loss.sum() / (mask.sum() if mask is not None else loss.numel())


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
    ours = entry_loss(logits, targets, pos_weight=w)
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


def test_focal_with_gamma_0_is_bce_and_otherwise_matches_its_definition():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(32, 4, generator=g) * 5
    targets = (torch.rand(32, 4, generator=g) < 0.3).float()
    mask = torch.rand(32, 4, generator=g) > 0.2
    w = torch.tensor([1.0, 2.0, 0.5, 4.0])
    bce = entry_loss(logits, targets, mask, pos_weight=w)
    assert torch.allclose(entry_loss(logits, targets, mask, pos_weight=w, kind="focal", gamma=0.0), bce, atol=1e-6)
    p, y = torch.sigmoid(logits.double()), targets.double()  # the definition, in float64
    ref = -(w * y * (1 - p) ** 2 * torch.log(p) + (1 - y) * p ** 2 * torch.log(1 - p)) * mask
    focal = entry_loss(logits, targets, mask, pos_weight=w, kind="focal", gamma=2.0)
    assert torch.allclose(focal.double(), ref, atol=1e-6)
    easy = mask & (bce < 0.1 * torch.where(targets > 0, w, torch.ones_like(w)))  # p of the true class > 0.9
    assert (focal <= bce + 1e-7).all() and (focal[easy] <= 0.01 * bce[easy] + 1e-12).all()  # (1 - 0.9)^2
    big = entry_loss(torch.tensor([[100.0, -100.0]]), torch.tensor([[0.0, 1.0]]), kind="focal", gamma=2.0)
    assert torch.allclose(big, torch.tensor([[100.0, 100.0]]))  # confidently wrong: p^gamma = 1, still exact


def test_a_loss_that_is_not_known_is_one_line_naming_the_choices():
    import model
    from training import config
    with pytest.raises(ConfigError, match=r"config: training.loss is 'hinge' \(expected one of bce, focal\)"):
        model.check_names(config.load(None, ["data.path=x", "training.loss=hinge"]))


def test_a_run_with_focal_loss_at_gamma_0_is_the_bce_run_and_at_gamma_2_another(tsv, tmp_path):
    import train
    from helpers import assert_same_weights, train_args
    for name, extra in (("bce", []), ("focal0", ["training.loss=focal", "training.focal_gamma=0"]),
                        ("focal2", ["training.loss=focal"])):
        assert train.main(train_args(tsv, tmp_path / name, "training.max_steps=6", *extra)) == 0
    assert_same_weights(tmp_path / "bce" / "last.pt", tmp_path / "focal0" / "last.pt", atol=1e-6)
    with pytest.raises(AssertionError):
        assert_same_weights(tmp_path / "bce" / "last.pt", tmp_path / "focal2" / "last.pt", atol=1e-6)
