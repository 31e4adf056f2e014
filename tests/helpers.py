"""What the tests share: the project on the import path, small data files and configs written on the spot, tiny
pretrained-style model folders (built and saved here; nothing is downloaded), and a few checks."""
import csv
import gzip
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from training import cache, config  # noqa: E402
from training.backbones import KmerTokenizer  # noqa: E402

# a tiny scratch model and short runs: seconds per training
TINY = ["model.n_embd=16", "model.n_head=2", "model.n_layer=1", "model.kmer=3", "data.max_length=128",
        "training.per_device_train_batch_size=16", "training.logging_steps=5", "training.num_train_epochs=5"]
LABELS_FROM_DATA = ["task.label_map=null", "task.num_labels=null"]  # config.yaml names the example's six labels
NO_DROPOUT = ["model.dropout=0", "model.backbone_dropout=0"]
TOK = KmerTokenizer(1)  # one token per base, so a split's tokens spell its sequences

SEED_YAML = """
# task configuration
task:
  task_type: "sequence_classification"
  problem_type: "multi_label_classification" # Specify multi-label problem
  num_labels: 4 # Total number of unique labels
  label_map:
    0: "label1"
    1: "label2"
    2: "label3"
    3: "label4"

# training configuration
training:
  output_dir: "./outputs_multi_task"
  num_train_epochs: 5
  per_device_train_batch_size: 16
  per_device_eval_batch_size: 16
  warmup_steps: 100
  weight_decay: 0.01
  logging_dir: "./logs_multi_task"
  logging_steps: 20
  evaluation_strategy: "epoch"
  save_strategy: "epoch"
  load_best_model_at_end: True
  metric_for_best_model: "f1_macro"
  greater_is_better: True
"""


def train_args(tsv, out, *more):
    """train.py's arguments for a tiny run on tsv into out."""
    return ["config.yaml", f"data.path={tsv}", *LABELS_FROM_DATA, f"training.output_dir={out}", *TINY, *more]


def random_tsv(path, names, n=120, sep=",", multi_hot=False, seed=0):
    """n random sequences of 20-60 bp, each label positive with probability 0.4."""
    rng = np.random.RandomState(seed)
    with open(path, "w") as f:
        f.write("sequence\tlabels\n" if not path.endswith(".csv") else "sequence,label\n")
        for _ in range(n):
            seq = "".join(rng.choice(list("ACGT"), rng.randint(20, 60)))
            y = rng.rand(len(names)) < 0.4
            cell = sep.join(str(int(v)) for v in y) if multi_hot else sep.join(np.array(names)[y])
            f.write(f"{seq}{',' if path.endswith('.csv') else chr(9)}{cell}\n")
    return path


def write_file(tmp_path, name, text, mode="w"):
    p = tmp_path / name
    if name.endswith(".gz"):
        with gzip.open(p, "wt", newline="") as f:
            f.write(text)
    else:
        with open(p, mode, newline="") as f:
            f.write(text)
    return str(p)


def write_config(tmp_path, text, data="data:\n  path: x.tsv\n"):
    p = tmp_path / "c.yaml"
    p.write_text(textwrap.dedent(text) + data)
    return str(p)


def read_tsv(path):
    with (gzip.open(path, "rt") if str(path).endswith(".gz") else open(path)) as f:
        return list(csv.DictReader(f, delimiter="\t"))


def read_json(path):
    with open(path) as f:
        return json.load(f)


def data_cfg(**kw):
    d = dict(config.DEFAULTS["data"])
    d.update(kw)
    return d


def load(path, names=None, **kw):
    split, names = cache.load_file(path, data_cfg(**kw), names, TOK)
    return split, names


def seqs(split):
    """The sequences back from their tokens, without the [CLS] and [SEP] ends."""
    return ["".join("ACGT"[t - 5] if t >= 5 else "N" for t in split.tokens[i][1:-1]) for i in range(len(split))]


def assert_same_weights(a, b, atol=1e-5):
    wa, wb = (torch.load(p, weights_only=True)["model"] for p in (a, b))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=atol), (k, (wa[k] - wb[k]).abs().max())


def char_tokenizer(padding_side="right"):
    """One token per base, [CLS] ... [SEP]."""
    import zoo
    return zoo.char_tokenizer(side=padding_side, **zoo.BERT_TOKENS)


def save_tiny(path, kind="bert", padding_side="right"):
    """Saves a tiny randomly initialised model and a base-level tokenizer, as from_pretrained expects them."""
    from transformers import BertConfig, BertModel, GPT2Config, GPT2Model
    path = str(path)
    if kind == "bert":
        BertModel(BertConfig(vocab_size=9, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=32, max_position_embeddings=512)).save_pretrained(path)
    else:
        GPT2Model(GPT2Config(vocab_size=9, n_embd=16, n_layer=1, n_head=2, n_positions=512)).save_pretrained(path)
    char_tokenizer(padding_side).save_pretrained(path)
    return path


def run_command(*args, script="train.py"):
    """A command as a user runs it, in its own process."""
    return subprocess.run([sys.executable, script, *args], cwd=ROOT, capture_output=True, text=True)


def one_line_error(p, start):
    """Bad input: exit 2 and one line on stderr that starts with start, no traceback."""
    assert p.returncode == 2, p.stdout[-2000:] + p.stderr[-2000:]
    assert p.stderr.startswith(start), p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr


def fasta(path, records):
    with open(path, "w") as f:
        f.writelines(f">{rid}\n{seq}\n" for rid, seq in records)
    return str(path)


def ism_top_in_planted_motif(tmp, example, out, folder, label="leaf", n=20):
    """interpret.py ism on n test sequences that carry label's planted motif (ex.motifs.tsv in tmp): the share of
    them whose top position for label lies in that motif, and the sequences."""
    import interpret
    rows = open(example).read().splitlines()
    sites = {}
    for r in read_tsv(tmp / "ex.motifs.tsv"):
        sites.setdefault((int(r["row"]), r["label"]), []).append((int(r["start"]), int(r["end"])))
    test = [r for r in read_tsv(out / "test_predictions.tsv") if (int(r["id"]), label) in sites]
    records = [(f"row{r['id']}", rows[int(r["id"])].split("\t")[0]) for r in test[:n]]
    assert len(records) == n
    assert interpret.main(["ism", str(out), fasta(folder / f"{label}.fa", records), "-o", str(folder / "ism"),
                           "--labels", label, "--pictures", "0", "--top", "1"]) == 0
    top = read_tsv(folder / "ism" / "ism_top.tsv")
    inside = [any(a < int(t["position"]) <= b for a, b in sites[(int(t["id"][3:]), label)]) for t in top]
    assert len(top) == n
    return float(np.mean(inside)), records  # 1-based positions in 0-based sites


def planted_run(tmp, *more):
    """The default experiment, shorter (2,000 sequences of the planted example, 3 epochs), trained in tmp with the
    settings more; (tmp, the example's path, the run folder). The motif sites are in tmp/ex.motifs.tsv."""
    import train
    from genomics import planted
    example = planted.make_example(str(tmp / "ex.tsv"), n=2000, seed=3)
    out = tmp / "out"
    assert train.main([os.path.join(ROOT, "config.yaml"), f"data.path={example}", f"training.output_dir={out}",
                       f"data.cache_dir={tmp / 'cache'}", "training.num_train_epochs=3",
                       "training.per_device_train_batch_size=32", "training.logging_steps=50", *more]) == 0
    return tmp, example, out
