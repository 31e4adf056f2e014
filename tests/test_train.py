import csv
import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import data
import train
from conftest import ROOT
from test_config import SEED_YAML

TINY = ["model.n_embd=16", "model.n_head=2", "model.n_layer=1", "model.kmer=3", "data.max_length=128",
        "training.per_device_train_batch_size=16", "training.logging_steps=5"]


def random_tsv(path, names, n=120, sep=",", multi_hot=False, seed=0):
    rng = np.random.RandomState(seed)
    with open(path, "w") as f:
        f.write("sequence\tlabels\n" if not path.endswith(".csv") else "sequence,label\n")
        for _ in range(n):
            seq = "".join(rng.choice(list("ACGT"), rng.randint(20, 60)))
            y = rng.rand(len(names)) < 0.4
            cell = sep.join(str(int(v)) for v in y) if multi_hot else sep.join(np.array(names)[y])
            f.write(f"{seq}{',' if path.endswith('.csv') else chr(9)}{cell}\n")
    return path


def run(args):
    assert train.main(args) == 0


def read_json(path):
    with open(path) as f:
        return json.load(f)


def test_short_run_learns_and_writes_every_output(tmp_path):
    example = data.make_example(str(tmp_path / "ex.tsv"), n=2000, seed=3)
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
    assert rows[0] == ["id", *names, "predicted", "labels"] and len(rows) == 201
    with open(out / "per_label.tsv") as f:
        header = f.readline().rstrip("\n").split("\t")
    assert header == ["label", "support", "prevalence", "precision", "recall", "f1", "auroc", "auprc", "threshold"]
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


@pytest.mark.parametrize("args, message", [
    (["data.path=/nonexistent/x.tsv"], "error: /nonexistent/x.tsv: no such file"),
    (["training.learning_rat=1"], "error: command line 'training.learning_rat=1': unknown key 'training.learning_rat'"),
])
def test_cli_errors_are_one_line_with_exit_status_2(tmp_path, args, message):
    p = subprocess.run([sys.executable, "train.py", "config.yaml", *args,
                        f"training.output_dir={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert p.stderr.strip().startswith(message), p.stderr
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1


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
        assert f.readline().split() == ["id", "c", "a", "predicted", "labels"]
