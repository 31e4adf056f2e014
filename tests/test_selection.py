"""Pooling over the sequence's own tokens and auto's choice for decoders, model selection that cannot stall on a
tied or undefined metric, and the 6-mer baseline of compare.py."""
import csv
import math
from contextlib import nullcontext

import numpy as np
import pytest
import torch
import transformers

import cache
import compare
import config
import optim
import train
import zoo
from model import auto_pooling, build_model, load_backbone, load_tokenizer, own_tokens, pool
from scoring import choose_pooling
from test_train import TINY, random_tsv


def selection(**kw):
    return optim.Selection(kw.pop("metric", "f1_macro"), {**config.DEFAULTS["training"], **kw})


def test_a_tied_or_undefined_metric_is_decided_by_the_eval_loss(capsys):
    s = selection()
    assert s.update({"f1_macro": 0.0, "loss": 0.9}, 10)
    assert s.update({"f1_macro": 0.0, "loss": 0.7}, 20)  # tied at 0: the lower loss is the better model
    assert not s.update({"f1_macro": 0.0, "loss": 0.8}, 30)
    assert s.update({"f1_macro": 0.2, "loss": 0.95}, 40)  # once the metric moves, it decides
    assert (s.best, s.best_step) == (0.2, 40)
    log = capsys.readouterr().out
    assert log.count("the eval loss decides") == 1 and "f1_macro is tied at 0.0000 at step 20, as at step 10" in log
    s = selection(metric="auroc_macro")
    assert s.update({"auroc_macro": math.nan, "loss": 0.9}, 1)
    assert s.update({"auroc_macro": math.nan, "loss": 0.5}, 2)  # undefined: the loss decides too
    assert s.update({"auroc_macro": 0.6, "loss": 0.9}, 3)  # a number beats nan
    assert not s.update({"auroc_macro": math.nan, "loss": 0.1}, 4)
    assert "auroc_macro is undefined at step 2" in capsys.readouterr().out


def test_early_stopping_counts_a_tie_broken_by_the_loss_as_progress():
    s = selection(early_stopping_patience=2)
    for step, loss in ((1, 0.9), (2, 0.8), (3, 0.7), (4, 0.75), (5, 0.76)):
        s.update({"f1_macro": 0.0, "loss": loss}, step)
    assert s.stop and s.best_step == 3


def test_a_run_whose_f1_stays_0_tests_the_step_of_lowest_loss(tmp_path, capsys):
    tsv = random_tsv(str(tmp_path / "d.tsv"), ["a", "b"], n=160)
    out = tmp_path / "out"
    # threshold 1: no label is ever called, so every evaluation has an F1 of 0
    assert train.main(["config.yaml", f"data.path={tsv}", "task.label_map=null", "task.num_labels=null",
                       "task.threshold=1.0", f"training.output_dir={out}", "training.max_steps=12",
                       "training.evaluation_strategy=steps", "training.eval_steps=3", *TINY]) == 0
    log = capsys.readouterr().out
    losses = {int(line.split()[2][:-1]): float(line.split()[4]) for line in log.splitlines()
              if line.startswith("eval step")}
    assert len(losses) == 4 and "the eval loss decides between such evaluations" in log
    assert torch.load(out / "best.pt", weights_only=True)["step"] == min(losses, key=losses.get)


def test_mean_pools_a_sep_appending_decoder_over_its_own_tokens(tmp_path):
    folder = str(tmp_path / "hyena")
    zoo.build("hyenadna", folder)  # a decoder whose tokenizer appends [SEP], with left padding
    model_cfg = dict(config.DEFAULTS["model"], source="local", name_or_path=folder, trust_remote_code=True)
    backbone, tok, _ = load_backbone(model_cfg, 64)
    assert auto_pooling("local", backbone.config, tok)[0] == "mean"  # the rule where the data cannot decide
    net = build_model(backbone, ["a"], dict(model_cfg, pooling="mean", dropout=0.0), tok).eval()
    ids = torch.tensor([tok(["ACGTAC"])["input_ids"][0]])
    assert ids[0, -1].item() == tok.sep_token_id
    with torch.no_grad():
        states = net.token_states(ids, torch.ones_like(ids))
        assert torch.allclose(net(ids, torch.ones_like(ids)), net.head(states[:, :-1].mean(1)), atol=1e-6)
        net.pooling = "last"  # the last token, the SEP included: trained from scratch, it summarises best
        assert torch.allclose(net(ids, torch.ones_like(ids)), net.head(states[:, -1]), atol=1e-6)
        old = {k: v for k, v in model_cfg.items() if k != "pool_added_tokens"}  # a run saved before the key
        net = build_model(backbone, ["a"], dict(old, pooling="mean", dropout=0.0), tok).eval()
        assert torch.allclose(net(ids, torch.ones_like(ids)), net.head(states.mean(1)), atol=1e-6)


class OneHot(torch.nn.Module):
    """A frozen 'pretrained' backbone whose token states are its tokens, one-hot: a label that marks sequences
    with many G is read from the mean or the max of the states, not from the last one."""

    def __init__(self):
        super().__init__()
        self.config = transformers.PretrainedConfig()
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None):
        return (torch.nn.functional.one_hot(input_ids, 8).float() + self.unused,)


def test_auto_reads_the_training_data_and_keeps_the_pooling_it_reads_best(capsys):
    rng = np.random.RandomState(0)
    tok = load_tokenizer_of_chars()
    seqs = ["".join(rng.choice(list("ACGT"), 40, p=[0.3, 0.3, g, 0.4 - g])) for g in rng.uniform(0.05, 0.35, 400)]
    ids = [np.array(x, np.int32) for x in tok(seqs)["input_ids"]]
    labels = np.array([[s.count("G") > 8] for s in seqs], np.float32)
    split = cache.Split(cache.Tokens.from_list(ids), labels, np.ones_like(labels, bool))
    seeded = torch.get_rng_state()
    how, why = choose_pooling(dict(config.DEFAULTS["model"], source="local"), OneHot(), tok, split, ["g"],
                              torch.device("cpu"), nullcontext(), 0)
    assert torch.equal(torch.get_rng_state(), seeded)  # auto starts the model as the pooling it chose would
    scores = dict(x.split() for x in why.split("not fitted on: ")[1].rstrip(")").split(", "))
    assert how in ("mean", "max") and float(scores[how]) > 0.9 and float(scores["last"]) < 0.7, why
    assert choose_pooling(dict(config.DEFAULTS["model"]), OneHot(), tok, split, ["g"], torch.device("cpu"),
                          nullcontext(), 0)[0] == "max"  # the scratch model: its random weights say nothing yet


def load_tokenizer_of_chars():
    return zoo.char_tokenizer(side="right", **zoo.BERT_TOKENS)


@pytest.mark.parametrize("side", ["right", "left"])
def test_pooling_leaves_out_added_tokens_on_either_padding_side(side):
    h = torch.arange(12, dtype=torch.float32).reshape(1, 6, 2).repeat(2, 1, 1)
    ids = torch.tensor([[2, 7, 8, 9, 3, 0], [2, 7, 3, 0, 0, 0]]) if side == "right" else \
        torch.tensor([[0, 2, 7, 8, 9, 3], [0, 0, 0, 2, 7, 3]])
    mask = own_tokens(ids, (ids != 0).long(), torch.tensor([2, 3]))  # 2 and 3: CLS and SEP
    own = [[1, 2, 3], [1]] if side == "right" else [[2, 3, 4], [4]]  # the positions of 7, 8 and 9
    for how, expect in (("mean", lambda i, p: h[i, p].mean(0)), ("max", lambda i, p: h[i, p].max(0).values)):
        assert torch.allclose(pool(h, mask, how), torch.stack([expect(i, p) for i, p in enumerate(own)])), how
    only_added = torch.tensor([[2, 3, 0]])
    assert own_tokens(only_added, (only_added != 0).long(), torch.tensor([2, 3])).tolist() == [[1, 1, 0]]


def test_the_kmer_baseline_beside_the_model(tmp_path, capsys):
    import data
    example = data.make_example(str(tmp_path / "ex.tsv"), n=600, seed=5)
    out = tmp_path / "out"
    assert train.main(["config.yaml", f"data.path={example}", f"training.output_dir={out}",
                       "training.num_train_epochs=1", "training.logging_steps=100"]) == 0
    rows, penalty = compare.baseline(str(out))
    with open(out / "per_label.tsv") as f:
        model = {r["label"]: float(r["auroc"]) for r in csv.DictReader(f, delimiter="\t")}
    assert list(rows) == data.EXAMPLE_LABELS and penalty in (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
    assert np.allclose([rows[n][0] for n in rows], [model[n] for n in rows], equal_nan=True)
    baseline = [rows[n][2] for n in rows if not np.isnan(rows[n][2])]
    assert np.mean(baseline) > 0.75  # the planted motifs are 6-mer signal: a linear model finds them
    capsys.readouterr()
    compare.main(["--baseline", str(out)])
    lines = capsys.readouterr().out.splitlines()
    lines = lines[next(i for i, line in enumerate(lines) if line.startswith("label")):]
    assert lines[0].split()[:3] == ["label", "auroc", "model"] and len(lines) == 9 and lines[-2].startswith("macro")
    assert "6-mer baseline: logistic regression" in lines[-1]


def test_kmer_frequencies_count_both_strands_as_one():
    x = compare.kmer_frequencies(["ACGTTTAC", "GTAAACGT", "AC"])  # the second is the first's reverse complement
    assert x.shape == (3, 2080) and np.allclose(x[0], x[1]) and x[0].sum() == pytest.approx(1) and x[2].sum() == 0


def test_load_tokenizer_keeps_unk_among_the_pooled(tmp_path):
    from model import added_tokens
    folder = str(tmp_path / "b")
    zoo.build("bert", folder)
    tok = load_tokenizer(folder)
    assert tok.unk_token_id not in added_tokens(tok) and tok.cls_token_id in added_tokens(tok)
