"""training.task_weighting: uncertainty and famo keep what the loop promises (exact resume, DDP = one process,
accumulation, masks, pos_weight), and move the weights as they should."""
import pytest
import torch

import train
from training import optim
from helpers import assert_same_weights, random_tsv, train_args
from test_distributed import check, common, torchrun

MORE = ["training.pos_weight=auto"]


@pytest.fixture(scope="module")
def masked(tmp_path_factory):
    """Multi-hot labels with unmeasured entries (NA)."""
    tmp = tmp_path_factory.mktemp("w")
    path = tmp / "d.tsv"
    src = random_tsv(str(tmp / "src.tsv"), ["a", "b", "c"], n=103)
    rows = open(src).read().splitlines()[1:]
    with open(path, "w") as f:
        f.write("sequence\tlabels\n")
        for i, row in enumerate(rows):
            seq, labels = (row.split("\t") + [""])[:2]
            cells = ["1" if n in labels.split(",") else "0" for n in "abc"]
            if i % 7 == 0:
                cells[i % 3] = "NA"
            f.write(f"{seq}\t{','.join(cells)}\n")  # joined by data.multi_label_sep
    return str(path), tmp


@pytest.mark.parametrize("kind", ["uncertainty", "famo"])
def test_weighting_resumes_exactly(masked, kind):
    path, tmp = masked
    args = [*common(path, tmp / f"full_{kind}", "training.max_steps=8", "training.save_strategy=steps",
                    "training.save_steps=3", "training.save_total_limit=5", f"training.task_weighting={kind}", *MORE,
                    "model.dropout=0.3")]
    assert train.main(["config.yaml", *args]) == 0
    resumed = [*common(path, tmp / f"res_{kind}", "training.max_steps=8", f"training.task_weighting={kind}", *MORE,
                       "model.dropout=0.3",
                       f"training.resume_from_checkpoint={tmp / f'full_{kind}' / 'step-3.pt'}",
                       "training.save_strategy=steps", "training.save_steps=100")]
    assert train.main(["config.yaml", *resumed]) == 0
    assert_same_weights(tmp / f"full_{kind}" / "last.pt", tmp / f"res_{kind}" / "last.pt", atol=1e-6)
    a, b = (torch.load(tmp / d / "last.pt", weights_only=True)["task_weighting"]["module"]
            for d in (f"full_{kind}", f"res_{kind}"))
    assert torch.allclose(a["s"], b["s"], atol=1e-6) and torch.allclose(a["previous"], b["previous"], atol=1e-6)
    assert not torch.equal(a["s"], torch.zeros(3))  # it moved


@pytest.mark.parametrize("kind", ["uncertainty", "famo"])
def test_weighting_is_the_same_under_ddp_and_accumulation(masked, kind):
    path, tmp = masked
    extra = [f"training.task_weighting={kind}", *MORE]
    check(torchrun(*common(path, tmp / f"one_{kind}", "training.per_device_train_batch_size=8", *extra)))
    check(torchrun(*common(path, tmp / f"two_{kind}", "training.per_device_train_batch_size=4", *extra), nproc=2))
    check(torchrun(*common(path, tmp / f"acc_{kind}", "training.per_device_train_batch_size=4",
                           "training.gradient_accumulation_steps=2", *extra)))
    for other in (f"two_{kind}", f"acc_{kind}"):
        assert_same_weights(tmp / f"one_{kind}" / "last.pt", tmp / other / "last.pt")
        a, b = (torch.load(tmp / d / "last.pt", weights_only=True)["task_weighting"]["module"]["s"]
                for d in (f"one_{kind}", other))
        assert torch.allclose(a, b, atol=1e-5)


def test_famo_weighs_up_the_label_whose_loss_falls_least():
    w = optim.TaskWeighting("famo", 2)
    w.step(torch.tensor([1.0, 1.0]), world=1)
    for _ in range(20):  # label 0's loss halves each step, label 1's stays
        w.step(torch.tensor([w.previous[0].item() / 2, 1.0]), world=1)
    z = torch.softmax(w.s, 0)
    assert z[1] > z[0]


def test_uncertainty_weighs_down_a_noisy_label():
    w = optim.TaskWeighting("uncertainty", 2)
    opt = torch.optim.SGD([w.s], lr=0.1)
    for _ in range(200):  # label 1 stays 4x as lossy: its log variance grows, its weight falls
        opt.zero_grad()
        w.loss(torch.tensor([0.5, 2.0]), last=True).backward()
        opt.step()
    assert w.weights()[1] < w.weights()[0]
    assert torch.allclose(w.s, torch.log(torch.tensor([1.0, 4.0])), atol=0.05)  # s = log(2 l): the optimum


def test_the_plain_sum_is_unchanged(tmp_path, tsv):
    out = [tmp_path / d for d in ("a", "b")]
    for d, extra in zip(out, ([], ["training.task_weighting=none"])):
        assert train.main(train_args(tsv, d, "training.max_steps=3", *extra)) == 0
    assert_same_weights(out[0] / "last.pt", out[1] / "last.pt", atol=0)
    assert "task_weighting" not in torch.load(out[0] / "last.pt", weights_only=True)
