"""The multi-task switches: head groups, LoRA and frozen backbones, oversampling, reverse complements."""
import csv
import glob
import json

import numpy as np
import pytest
import torch

import config
import data
import pictures
import predict
import train
from config import ConfigError
from conftest import save_tiny
from lora import LoRA, add_lora, merge_lora
from model import MultiLabelModel, build_model, head_groups
from test_train import TINY, random_tsv


def model_cfg(**kw):
    d = dict(config.DEFAULTS["model"])
    d.update(kw)
    return d


def test_head_groups_put_each_logit_back_in_label_order(tiny_bert):
    from transformers import AutoModel
    names = ["a", "b", "c", "d"]
    groups = head_groups({"g1": ["c", "a"]}, names)
    assert groups == [[2, 0], [1, 3]]  # b and d, not named, share the default group
    net = MultiLabelModel(AutoModel.from_pretrained(tiny_bert), 4, "mean", 0.0, groups)
    for head, g in zip(net.heads, groups):  # each head outputs the index of its labels as constants
        last = head[-1]
        torch.nn.init.zeros_(last.weight)
        last.bias.data = torch.tensor([float(i) for i in g])
    ids = torch.tensor([[2, 4, 5, 3]])
    assert net(ids, torch.ones_like(ids)).tolist() == [[0.0, 1.0, 2.0, 3.0]]
    with pytest.raises(ConfigError, match="unknown labels"):
        head_groups({"g": ["z"]}, names)
    with pytest.raises(ConfigError, match="in two groups"):
        head_groups({"g": ["a"], "h": ["a", "b"]}, names)


@pytest.mark.parametrize("kind", ["bert", "gpt2"])  # nn.Linear and GPT-2's Conv1D
def test_lora_starts_at_the_base_model_and_merges_exactly(tmp_path, kind):
    from transformers import AutoModel
    torch.manual_seed(0)
    backbone = AutoModel.from_pretrained(save_tiny(tmp_path / kind, kind)).eval()
    ids = torch.tensor([[2, 4, 5, 6, 7, 3]])
    before = backbone(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
    n = add_lora(backbone, r=4, alpha=8, dropout=0.0)
    assert n > 0 and any(isinstance(m, LoRA) and m.conv1d == (kind == "gpt2") for m in backbone.modules())
    same = backbone(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
    assert torch.allclose(before, same)  # B starts at zero
    for m in backbone.modules():
        if isinstance(m, LoRA):
            torch.nn.init.normal_(m.B)
    lora_out = backbone(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
    assert not torch.allclose(before, lora_out)
    merge_lora(backbone)
    assert not any(isinstance(m, LoRA) for m in backbone.modules())
    merged_out = backbone(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
    assert torch.allclose(lora_out, merged_out, atol=1e-5)


def test_finetune_modes_choose_what_trains(tiny_bert):
    from transformers import AutoModel

    def trained(mode, **kw):
        cfg = model_cfg(finetune=mode, pooling="cls", **kw)
        net = build_model(AutoModel.from_pretrained(tiny_bert), ["a", "b"], cfg, None)
        return {n for n, p in net.named_parameters() if p.requires_grad}

    assert any(n.startswith("backbone.") for n in trained("full"))
    assert trained("head") == {"head.weight", "head.bias"}
    lora = trained("lora", lora={"r": 2, "targets": ["query", "value"]})
    assert lora - {"head.weight", "head.bias"} and all(n.endswith((".A", ".B")) for n in lora if "backbone" in n)
    assert all("query" in n or "value" in n for n in lora if "backbone" in n)
    with pytest.raises(ConfigError, match="has no linear layer whose name contains one of .'nothing'. to wrap"):
        trained("lora", lora={"targets": ["nothing"]})
    with pytest.raises(ConfigError, match="expected one of full, head, lora"):
        trained("adapters")


def test_oversample_weights_favour_the_rarest_label():
    labels = np.array([[1, 0], [1, 1], [0, 0], [1, 0]], np.float32)  # prevalence 0.75 and 0.25
    w, share = data.oversample_weights(labels, np.ones_like(labels, bool), 1.0)
    w = w.tolist()
    assert w == pytest.approx([4 / 3, 4.0, 1.0, 4 / 3])
    assert share == pytest.approx([(4 / 3 + 4 + 4 / 3) / sum(w), 4 / sum(w)])  # the shares the draws will give
    # a global batch does not depend on anything but the seed and the epoch
    a = data.global_batches(4, 2, seed=1, epoch=3, weights=torch.tensor(w), flip=True)
    b = data.global_batches(4, 2, seed=1, epoch=3, weights=torch.tensor(w), flip=True)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_every_switch_together(tmp_path):
    """A short run with the whole toolkit on: it finishes, and predict.py reproduces its test predictions."""
    tsv = str(tmp_path / "d.tsv")
    rng = np.random.RandomState(0)
    with open(tsv, "w") as f:
        f.write("sequence\tlabels\n")
        for _ in range(300):
            labels = [n for n, p in (("a", 0.4), ("b", 0.3), ("c", 0.2), ("rare", 0.04)) if rng.rand() < p]
            f.write("".join(rng.choice(list("ACGT"), rng.randint(20, 60))) + "\t" + ",".join(labels) + "\n")
    out = tmp_path / "out"
    args = ["config.yaml", f"data.path={tsv}", "task.label_map=null", "task.num_labels=null",
            "task.labels=[a, b, rare]", "task.threshold=tuned", "data.stratify=true", "data.oversample_rare=0.5",
            "data.rc_augment=true", "model.rc_average=true", "model.head_groups={g: [a, b]}",
            "model.finetune=lora", "model.lora={r: 4}", "training.pos_weight=auto",
            f"training.output_dir={out}", "training.num_train_epochs=2", *TINY]
    assert train.main(args) == 0
    with open(out / "per_label.tsv") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert [r["label"] for r in rows] == ["a", "b", "rare"]
    assert set(rows[0]) == {"label", "support", "prevalence", "precision", "recall", "f1", "auroc", "auprc",
                            "threshold"}
    assert int(rows[2]["support"]) >= 1  # the rare label made it into the stratified test split
    thresholds = torch.load(out / "last.pt", weights_only=True)["thresholds"]
    assert len(thresholds) == 3 and thresholds != [0.5] * 3
    m = json.load(open(out / "test_metrics.json"))
    assert "test_f1/c" not in m and "test_f1/rare" in m
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(glob.glob(str(out / "tensorboard" / "*"))[0])
    events.Reload()
    assert "train/label_cooccurrence" in events.Tags()["images"]
    image = events.Images("train/label_cooccurrence")[0]  # the label names drawn on its axes, not a bare matrix
    assert (image.height, image.width) == pictures.cooccurrence_figure(np.eye(3), ["a", "b", "rare"]).shape[:2]
    assert "eval/f1/rare" in events.Tags()["scalars"] and "eval/auroc/rare" in events.Tags()["scalars"]
    # test split rows, scored again by predict.py (LoRA merged, both strands averaged)
    test_rows = list(csv.DictReader(open(out / "test_predictions.tsv"), delimiter="\t"))
    lines = open(tsv).read().splitlines()
    sub = tmp_path / "test.tsv"
    sub.write_text("sequence\tlabels\n" + "".join(lines[int(r["id"])] + "\n" for r in test_rows))
    assert predict.main([str(out), str(sub), "-o", str(tmp_path / "p.tsv")]) == 0
    again = list(csv.DictReader(open(tmp_path / "p.tsv"), delimiter="\t"))
    for x, y in zip(test_rows, again):
        assert all(abs(float(x[n]) - float(y[n])) <= 1e-4 for n in ("a", "b", "rare"))
        assert x["predicted"] == y["predicted"]


def test_negative_transfer_table_against_single_task_baselines(tmp_path, capsys):
    import compare
    tsv = random_tsv(str(tmp_path / "d.tsv"), ["a", "b", "c"], n=150)
    base = ["config.yaml", f"data.path={tsv}", "task.label_map=null", "task.num_labels=null",
            "training.num_train_epochs=1", *TINY]
    assert train.main([*base, f"training.output_dir={tmp_path / 'multi'}"]) == 0
    for label in ("a", "c"):
        assert train.main([*base, f"task.labels=[{label}]", f"training.output_dir={tmp_path / label}"]) == 0
    rows = compare.compare(str(tmp_path / "multi"), [str(tmp_path / "a"), str(tmp_path / "c")])
    assert [r[0] for r in rows] == ["a", "c"]
    multi = {r["label"]: r for r in csv.DictReader(open(tmp_path / "multi" / "per_label.tsv"), delimiter="\t")}
    single = next(csv.DictReader(open(tmp_path / "c" / "per_label.tsv"), delimiter="\t"))
    f1_multi, f1_single, diff = rows[1][1:4]
    assert f1_multi == float(multi["c"]["f1"]) and f1_single == float(single["f1"])
    assert diff == pytest.approx(f1_multi - f1_single)
    capsys.readouterr()
    compare.main([str(tmp_path / "multi"), str(tmp_path / "a")])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["label", "f1", "multi", "f1"] and lines[1].startswith("a ")
