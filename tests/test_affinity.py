"""Task affinity: the cosines of the labels' loss gradients on the backbone, the suggested grouping, and the run
that writes them."""
import numpy as np
import torch
from transformers import AutoModel, BertConfig

import train
from model import build_model, entry_loss
from training import affinity, config
from training.backbones import KmerTokenizer
from helpers import NO_DROPOUT, read_tsv, train_args


def tiny_net(n_labels):
    torch.manual_seed(0)
    backbone = AutoModel.from_config(BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=1,
                                                num_attention_heads=2, intermediate_size=16))
    return build_model(backbone, [f"l{j}" for j in range(n_labels)], dict(config.DEFAULTS["model"], pooling="mean",
                                                                          dropout=0.0), KmerTokenizer(1))


def batch(labels, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 20, (len(labels), 12), generator=g)
    labels = torch.tensor(labels, dtype=torch.float32)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
            "mask": torch.ones_like(labels, dtype=torch.bool)}


def test_identical_labels_agree_and_opposite_ones_conflict():
    net = tiny_net(3)
    with torch.no_grad():  # label 1 is read as label 0, label 2 as its opposite
        net.head.weight[1] = net.head.weight[0]
        net.head.weight[2] = -net.head.weight[0]
        net.head.bias.zero_()
    y = (np.random.default_rng(0).random(32) < 0.5).astype(float)
    # labels 0 and 1 are the same truth; label 2 is the same truth too, so its head (the opposite of label 0's)
    # asks the backbone for the opposite of what label 0 asks: a conflict
    measure = affinity.Affinity(["a", "b", "c"], seed=0)
    measure.measure(net, [batch(np.stack([y, y, y], 1).tolist(), s) for s in (1, 2)], entry_loss, torch.device("cpu"),
                    torch.autocast("cpu", enabled=False), step=1)
    m = measure.matrix
    assert m[0, 1] > 0.99 and m[0, 2] < -0.9, m
    assert affinity.suggest_groups(m, ["a", "b", "c"]) == [["a", "b"], ["c"]]


def test_grouping_joins_while_the_mean_cosine_is_clearly_positive():
    m = np.array([[1, .8, .1, -.5], [.8, 1, -.3, -.4], [.1, -.3, 1, .2], [-.5, -.4, .2, 1]])
    assert affinity.suggest_groups(m, list("abcd")) == [["a", "b"], ["c", "d"]]
    m[2, 3] = m[3, 2] = 0.04  # near 0: no reason to share a head
    assert affinity.suggest_groups(m, list("abcd")) == [["a", "b"], ["c"], ["d"]]
    lines = affinity.grouping_lines([["a", "b"], ["c", "d"]])
    assert lines[0] == "model.head_groups={g1: [a, b], g2: [c, d]}"
    assert config.load(None, ["data.path=x.tsv", lines[0]])["model"]["head_groups"] == {"g1": ["a", "b"],
                                                                                          "g2": ["c", "d"]}
    assert lines[2] == "task.labels=[c,d] training.output_dir=out/group_2"


def test_many_labels_are_sampled_and_large_backbones_sketched(monkeypatch):
    monkeypatch.setattr(affinity, "MAX_LABELS", 4)
    monkeypatch.setattr(affinity, "SKETCH", 64)
    net = tiny_net(6)
    y = (np.random.default_rng(1).random((16, 6)) < 0.5).astype(float).tolist()
    measure = affinity.Affinity([f"l{j}" for j in range(6)], seed=0)
    for step in range(1, 4):
        assert measure.measure(net, [batch(y)], entry_loss, torch.device("cpu"), torch.autocast("cpu", enabled=False),
                               step) == 4
    m = measure.matrix
    assert np.isfinite(np.diag(m)).sum() == 6 and np.allclose(np.diag(m), 1, atol=1e-5)  # every label was sampled
    assert np.nanmax(np.abs(m)) <= 1 + 1e-5


def test_a_run_writes_the_matrix_and_suggests_groups(tmp_path, tsv, capsys):
    out = tmp_path / "out"
    assert train.main(train_args(tsv, out, "training.task_affinity=true", "training.max_steps=4",
                                 "training.evaluation_strategy=steps", "training.eval_steps=2", *NO_DROPOUT)) == 0
    log = capsys.readouterr().out
    assert log.count("task affinity: 3 labels x 2 batches, 6 backward passes in") == 2
    assert "suggested grouping" in log and "  model.head_groups={" in log
    rows = read_tsv(out / "task_affinity.tsv")
    assert [r["label"] for r in rows] == ["a", "b", "c"] and all(float(r[r["label"]]) > 0.999 for r in rows)

