"""Every family of DNA language model fine-tunes (fully and with LoRA) through model.source=local, and predict.py
scores the test rows again from the run folder alone, in agreement with test_predictions.tsv."""
import re

import pytest

import train
import predict
import zoo
from helpers import random_tsv, read_tsv

# family -> the poolings auto reads the training data with (cls where the tokenizer starts with it), and the
# padding side of its tokenizer
FAMILIES = {
    "bert": ("cls", "right"), "gpt2": ("", "left"), "esm": ("cls", "right"), "gemma": ("", "left"),
    "mamba": ("", "left"), "modernbert": ("cls", "right"), "llama": ("", "left"),
    "mistral": ("", "right"), "bigbird": ("cls", "right"), "megatronbert": ("cls", "right"),
    "dnabert1": ("cls", "right"), "hyenadna": ("", "left"), "dnabert2": ("cls", "right"),
    "caduceus": ("", "right"),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("zoo")
    return {k: random_tsv(str(tmp / f"{k}.tsv"), ["a", "b", "c"], n=n, seed=i)
            for i, (k, n) in enumerate((("train", 64), ("validation", 16), ("test", 24)))}


@pytest.mark.parametrize("finetune", ["full", "lora"])
@pytest.mark.parametrize("family", FAMILIES)
def test_family_fine_tunes_and_predicts(tmp_path, files, family, finetune, capsys):
    folder = str(tmp_path / family)
    trust = zoo.build(family, folder)
    out = tmp_path / "out"
    args = ["config.yaml", "data.path=null", *(f"data.{k}={v}" for k, v in files.items()), "task.label_map=null",
            "task.num_labels=null", "model.source=local", f"model.name_or_path={folder}", "model.pooling=auto",
            f"model.trust_remote_code={str(trust).lower()}", f"model.finetune={finetune}", "data.max_length=128",
            "training.max_steps=4", "training.per_device_train_batch_size=16", "training.logging_steps=2",
            "training.per_device_eval_batch_size=32", "training.learning_rate=1e-2", f"training.output_dir={out}"]
    if finetune == "full" and not trust:  # every built-in family can recompute its activations
        args.append("training.gradient_checkpointing=true")
    assert train.main(args) == 0
    log = capsys.readouterr().out
    cls, side = FAMILIES[family]
    ways = ["mean", "max", "last"] + ([cls] if cls else [])
    line = next(x for x in log.splitlines() if x.startswith("pooling: auto chose "))
    measured = re.search(r"((?:\w+ (?:[0-9.]+|nan)(?:, )?)+)\)", line).group(1).split(", ")
    assert line.split()[3].rstrip(":") in ways and [m.split()[0] for m in measured] == ways, line
    assert predict.main([str(out), files["test"], "-o", str(tmp_path / "p.tsv"), "--batch-size", "32"]) == 0
    ours, theirs = read_tsv(tmp_path / "p.tsv"), read_tsv(out / "test_predictions.tsv")
    assert [r["id"] for r in ours] == [r["id"] for r in theirs] == [str(i) for i in range(1, 25)]
    for a, b in zip(ours, theirs):
        assert all(abs(float(a[n]) - float(b[n])) <= 1e-5 for n in "abc"), (a, b)
    from training import backbones
    tok = backbones.load_tokenizer(folder, trust)
    assert tok.padding_side == side
