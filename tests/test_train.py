"""train.py end to end: it learns, writes every output, reads the seed's and DNALLM's configs, and is
reproducible."""
import csv
import glob
import json
import os

import numpy as np
import pytest
import torch

import train
import predict
from training import figures
from genomics import planted
from helpers import ROOT, SEED_YAML, TINY, random_tsv, read_json


def run(args):
    assert train.main(args) == 0


def test_short_run_learns_and_writes_every_output(tmp_path):
    example = planted.make_example(str(tmp_path / "ex.tsv"), n=2000, seed=3)
    out = tmp_path / "out"
    run(["config.yaml" if os.path.exists("config.yaml") else os.path.join(ROOT, "config.yaml"),
         f"data.path={example}", f"training.output_dir={out}", "training.num_train_epochs=3",
         "training.per_device_train_batch_size=32", "training.logging_steps=10"])
    m = read_json(out / "test_metrics.json")
    for key in ("test_f1_macro", "test_f1_micro", "test_accuracy", "test_auroc_macro", "test_f1/leaf"):
        assert key in m
    # random guessing gives AUROC 0.5; planted motifs are learnable in a few epochs
    assert m["test_auroc_macro"] > 0.8, m
    assert m["test_f1_micro"] > 0.6, m
    for name in ("config.yaml", "run.json", "last.pt", "best.pt", "per_label.tsv", "tokenizer/kmer_tokenizer.json"):
        assert (out / name).exists(), name
    assert len(glob.glob(str(out / "tensorboard" / "*" / "events.*"))) >= 1  # tensorboard/<run name>/
    with open(out / "test_predictions.tsv") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    names = ["leaf", "root", "flower", "seed", "heat_stress", "cold_stress"]
    assert rows[0] == ["id", *names, "predicted", "labels", "unmeasured"] and len(rows) == 201
    with open(out / "per_label.tsv") as f:
        header = f.readline().rstrip("\n").split("\t")
    assert header == ["label", "support", "prevalence", "precision", "recall", "f1", "mcc", "auroc", "auprc",
                      "threshold"]
    ckpt = torch.load(out / "last.pt", weights_only=True)
    for key in ("model", "optimizer", "scheduler", "scaler", "step", "epoch", "config", "label_names", "thresholds",
                "rng"):
        assert key in ckpt
    assert ckpt["label_names"] == names and ckpt["step"] == 150


def test_seed_yaml_trains_with_only_data_and_model_added(tmp_path):
    tsv = random_tsv(str(tmp_path / "d.tsv"), ["label1", "label2", "label3", "label4"])
    cfg = tmp_path / "seed.yaml"
    cfg.write_text(SEED_YAML.replace("./outputs_multi_task", str(tmp_path / "out"))
                   .replace("./logs_multi_task", str(tmp_path / "logs"))
                   + f"data:\n  path: {tsv}\nmodel:\n  source: scratch\n")
    run([str(cfg), "training.num_train_epochs=1", *TINY])
    m = read_json(tmp_path / "out" / "test_metrics.json")
    assert {"test_f1_macro", "test_f1_micro", "test_accuracy"} <= set(m)
    assert glob.glob(str(tmp_path / "logs" / "*" / "events.*"))


def test_dnallm_multi_hot_csv_trains(tmp_path):
    csv_path = random_tsv(str(tmp_path / "d.csv"), ["a", "b", "c"], sep=";", multi_hot=True)
    run(["config.yaml", f"data.path={csv_path}", "data.label_col=label", "data.multi_label_sep=;",
         "task.label_map=null", "task.num_labels=null", f"training.output_dir={tmp_path / 'out'}",
         "training.num_train_epochs=1", *TINY])
    m = read_json(tmp_path / "out" / "test_metrics.json")
    assert "test_f1/label_0" in m and "test_f1/label_2" in m


def test_remote_code_model_with_left_padding_fine_tunes(tmp_path, tiny_remote):
    tsv = random_tsv(str(tmp_path / "d.tsv"), ["a", "b"])
    out = tmp_path / "out"
    run(["config.yaml", f"data.path={tsv}", "task.label_map=null", "task.num_labels=null", "model.source=local",
         f"model.name_or_path={tiny_remote}", "model.trust_remote_code=true", "model.pooling=last",
         f"training.output_dir={out}", "training.num_train_epochs=2", "training.learning_rate=1e-2", *TINY])
    assert read_json(out / "test_metrics.json")["test_loss"] > 0
    from safetensors.torch import load_file
    pretrained = load_file(os.path.join(tiny_remote, "model.safetensors"))["embed.weight"]
    tuned = torch.load(out / "last.pt", weights_only=True)["model"]["backbone.embed.weight"]
    assert not torch.equal(pretrained, tuned)  # the backbone itself was trained, not only the head


def test_same_config_and_seed_give_the_same_numbers(tmp_path):
    tsv = random_tsv(str(tmp_path / "d.tsv"), ["a", "b", "c"])
    results = []
    for name in ("one", "two"):
        run(["config.yaml", f"data.path={tsv}", "task.label_map=null", "task.num_labels=null",
             f"training.output_dir={tmp_path / name}", "training.num_train_epochs=1", *TINY])
        results.append(read_json(tmp_path / name / "test_metrics.json"))
    assert results[0] == results[1]


def test_threshold_list_must_match_the_labels(tmp_path, capsys):
    tsv = random_tsv(str(tmp_path / "d.tsv"), ["a", "b", "c"])
    assert train.main(["config.yaml", f"data.path={tsv}", "task.label_map=null", "task.num_labels=null",
                       "task.threshold=[0.5, 0.5]", f"training.output_dir={tmp_path}"]) == 2
    assert "task.threshold has 2 values for 3 labels" in capsys.readouterr().err


def test_tuned_thresholds_on_a_label_subset_with_stratified_split(tmp_path):
    tsv = random_tsv(str(tmp_path / "d.tsv"), ["a", "b", "c"], n=200)
    out = tmp_path / "out"
    run(["config.yaml", f"data.path={tsv}", "task.label_map=null", "task.num_labels=null", "task.labels=[c, a]",
         "task.threshold=tuned", "data.stratify=true", f"training.output_dir={out}", "training.num_train_epochs=2",
         *TINY])
    m = read_json(out / "test_metrics.json")
    assert "test_f1/c" in m and "test_f1/a" in m and "test_f1/b" not in m
    assert "test_f1_macro@0.5" in m
    thresholds = torch.load(out / "last.pt", weights_only=True)["thresholds"]
    assert len(thresholds) == 2 and thresholds != [0.5, 0.5]
    assert torch.load(out / "best.pt", weights_only=True)["thresholds"] == thresholds
    with open(out / "per_label.tsv") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert [r["label"] for r in rows] == ["c", "a"]
    assert [float(r["threshold"]) for r in rows] == pytest.approx(thresholds, abs=1e-6)
    # the resolved config still reads the full data; predict.py scores the subset with the tuned thresholds
    import predict
    assert predict.main([str(out), tsv, "-o", str(tmp_path / "p.tsv")]) == 0
    with open(tmp_path / "p.tsv") as f:
        assert f.readline().split() == ["id", "c", "a", "predicted", "labels", "unmeasured"]


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
    assert set(rows[0]) == {"label", "support", "prevalence", "precision", "recall", "f1", "mcc", "auroc", "auprc",
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
    assert (image.height, image.width) == figures.cooccurrence_figure(np.eye(3), ["a", "b", "rare"]).shape[:2]
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
