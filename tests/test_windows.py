"""data.long_sequences: windows. Long sequences cut into overlapping windows, cached once, trained on (every window
pooled, or one drawn per epoch), and pooled into one score per label in evaluation and predict.py."""
import numpy as np
import pytest
import torch

import data
import train
import predict
from model import build_model
from training import cache, config
from training.backbones import KmerTokenizer, load_backbone
from analysis import baseline
from analysis.trained import Scorer
from helpers import TOK, data_cfg, random_tsv, read_tsv, train_args


def test_windows_cover_every_base_and_auto_fills_max_length():
    seq = "".join(np.random.RandomState(0).choice(list("ACGT"), 1000))
    windows, counts = data.cut_windows([seq, seq[:90], seq[:101]], 100, 40)
    assert counts.tolist() == [24, 1, 2]
    first = windows[:24]
    assert all(len(w) == 100 for w in first) and first[-1] == seq[-100:]
    starts = [seq.index(w) for w in first]
    assert starts[:3] == [0, 40, 80] and starts[-1] == 900  # the last window ends at the sequence's end
    assert windows[24] == seq[:90] and windows[25:] == [seq[:100], seq[1:101]]
    for k, stride in ((6, 1), (6, 3), (1, 1), (3, 2)):  # exact for characters and k-mers at any stride
        tok = KmerTokenizer(k, stride)
        size = data.window_bases(tok, 170)
        assert len(tok([seq[:size]])["input_ids"][0]) <= 170 < len(tok([seq[:size + stride]])["input_ids"][0])


def test_the_cache_stores_each_window_once_and_maps_it_again(tmp_path, capsys):
    path = random_tsv(str(tmp_path / "d.tsv"), ["a", "b"], n=30)
    cfg = data_cfg(long_sequences="windows", window_size=25, window_stride=10, cache_dir=str(tmp_path / "c"))
    split, _ = cache.load_file(path, cfg, ["a", "b"], TOK, reverse=True)
    assert "as windows of 25 bp, 10 apart" in capsys.readouterr().out
    plain = [r["sequence"] for r in read_tsv(path)]
    windows, counts = data.cut_windows(plain, 25, 10)
    assert split.tokens.counts.tolist() == counts.tolist() and len(split) == 30 and counts.max() > 1
    assert len(split.tokens.offsets) - 1 == len(windows)  # every window stored, once
    got = ["".join("ACGT"[t - 5] for t in w[1:-1]) for i in range(len(split)) for w in split.tokens[i]]
    assert got == windows
    rc = ["".join("ACGT"[t - 5] for t in split.rc_tokens.window(i, 0)[1:-1]) for i in range(len(split))]
    assert rc == [data.reverse_complement(s)[:25] for s in plain]
    # a subset keeps each sequence's windows; the second load maps the cache instead of tokenising again
    part = split.subset(np.array([4, 2]))
    assert [len(x) for x in (part.tokens[0], part.tokens[1])] == counts[[4, 2]].tolist()
    again, _ = cache.load_file(path, cfg, ["a", "b"], TOK, reverse=True)
    assert "tokenised" not in capsys.readouterr().out and again.tokens.counts.tolist() == counts.tolist()
    cache.load_file(path, dict(cfg, window_stride=12), ["a", "b"], TOK, reverse=True)  # other windows, new cache
    assert "as windows of 25 bp, 12 apart" in capsys.readouterr().out


@pytest.mark.parametrize("how", ["max", "mean"])
def test_window_pooling_equals_pooling_the_windows_scored_one_by_one(how):
    torch.manual_seed(0)
    model_cfg = dict(config.DEFAULTS["model"], pooling="mean", kmer=3, n_layer=1, n_head=2, n_embd=16)
    backbone, tok, _ = load_backbone(model_cfg, 64)
    net = build_model(backbone, ["a", "b"], model_cfg, tok, how).eval()
    rng = np.random.RandomState(1)
    seqs = ["".join(rng.choice(list("ACGT"), n)) for n in (200, 57, 130, 61)]
    pooled, _ = Scorer(net, tok, 64, batch_size=5, device=torch.device("cpu"), windows=(60, 25))(seqs)
    windows, counts = data.cut_windows(seqs, 60, 25)
    alone, _ = Scorer(net, tok, 64, batch_size=1, device=torch.device("cpu"))(windows)
    parts = torch.split(alone, counts.tolist())
    expected = torch.stack([p.max(0).values if how == "max" else p.mean(0) for p in parts])
    assert counts.tolist() == [7, 1, 4, 2]
    torch.testing.assert_close(pooled, expected, atol=1e-5, rtol=1e-5)


def test_an_epoch_draws_one_window_per_sequence_from_the_seed():
    counts = np.array([1, 5, 3, 8, 2, 6])
    a = data.global_batches(6, 3, seed=1, epoch=0, windows=counts)
    b = data.global_batches(6, 3, seed=1, epoch=0, windows=counts)
    c = data.global_batches(6, 3, seed=1, epoch=1, windows=counts)
    rows = np.concatenate(a)
    assert all(np.array_equal(x, y) for x, y in zip(a, b)) and rows.shape == (6,) and rows.dtype == data.ROW
    assert ((0 <= rows["window"]) & (rows["window"] < counts[rows["index"]])).all()
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    # without windows the order is the one every earlier run had, and every window is read
    plain = data.global_batches(6, 3, seed=1, epoch=0)
    assert all(np.array_equal(x[["index", "flip"]], y[["index", "flip"]]) for x, y in zip(a, plain))
    assert (np.concatenate(plain)["window"] == data.ALL).all()


@pytest.mark.parametrize("training", ["all", "sample"])
def test_a_run_on_long_sequences_trains_and_predict_reads_its_windows(tmp_path, training):
    path = random_tsv(str(tmp_path / "d.tsv"), ["a", "b", "c"], n=120)
    out = tmp_path / "out"
    args = train_args(path, out, "data.long_sequences=windows", "data.max_length=24",
                      f"data.window_training={training}", "training.num_train_epochs=2", "task.threshold=0.4")
    assert train.main(args) == 0
    saved = config.load(str(out / "config.yaml"))["data"]
    assert (saved["window_size"], saved["window_stride"]) == (24, 12)  # auto: 3-mers, 24 tokens hold 24 bp
    rows = read_tsv(out / "test_predictions.tsv")
    test = str(tmp_path / "test.tsv")
    with open(path) as f:
        lines = f.read().splitlines()
    ids = {int(r["id"]) for r in rows}
    with open(test, "w") as f:
        f.write("\n".join([lines[0]] + [lines[i] for i in sorted(ids)]) + "\n")
    assert predict.main([str(out), test, "-o", str(tmp_path / "p.tsv")]) == 0
    again = {r["id"]: r for r in read_tsv(tmp_path / "p.tsv")}
    by_row = dict(zip(sorted(ids), range(1, len(ids) + 1)))
    for r in rows:  # predict.py pools the same windows as the test report did
        assert abs(float(again[str(by_row[int(r["id"])])]["a"]) - float(r["a"])) < 1e-4
    if training == "all":  # the 6-mer baseline of compare.py --baseline reads each test sequence whole
        (ids, names, probs, truth, _), _ = baseline.fit(str(out))
        assert sorted(ids.tolist()) == sorted(r["id"] for r in rows) and probs.shape == (len(rows), 3)
        labels = {r["id"]: set(filter(None, r["labels"].split(","))) for r in rows}
        assert all({n for n, t in zip(names, row) if t} == labels[i] for i, row in zip(ids.tolist(), truth))


def test_window_settings_are_checked():
    for key, value, message in (("long_sequences", "slide", "expected one of truncate, windows"),
                                ("window_size", 0, "auto or a positive number of bases"),
                                ("window_pooling", "sum", "expected one of max, mean")):
        with pytest.raises(config.ConfigError, match=message):
            config.load("config.yaml", [f"data.{key}={value}"])
    with pytest.raises(config.ConfigError, match="data.window_stride 300 is larger than data.window_size 200"):
        config.load("config.yaml", ["data.window_size=200", "data.window_stride=300"])
