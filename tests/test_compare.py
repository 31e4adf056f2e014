"""compare.py: runs against runs (one seed or several per arm, or single-task runs) and a run against the 6-mer
baseline, each difference with a paired bootstrap interval."""
import csv
import json

import numpy as np
import pytest

import metrics
import train
import compare
from training.config import ConfigError
from analysis import baseline
from genomics import planted
from helpers import TINY, random_tsv


def predictions(name, n=40, L=2, seed=0, ids=None, names=("a", "b")):
    rng = np.random.default_rng(seed)
    truth = np.random.default_rng(99).random((n, L)) < 0.4  # the same truth in every run
    mask = np.ones((n, L), bool)
    mask[3, L - 1] = False
    probs = np.clip(truth * 0.3 + rng.random((n, L)) * 0.7, 0, 1)
    return compare.Predictions(name, ids or [str(i) for i in range(n)], names, probs, truth, mask, [0.5] * L)


def test_bootstrap_interval_matches_a_direct_computation():
    a, b = predictions("A", seed=1), predictions("B", seed=2)
    table, n = compare.paired([a], [b], resamples=200, seed=7)
    rows = np.random.default_rng(7).integers(0, n, (200, n))
    diffs = {m: [] for m in ("auroc", "auprc", "f1")}
    for idx in rows:  # each resample scored by metrics.compute_metrics, as a run's test report is
        ra, rb = (metrics.compute_metrics(p.labels[idx], p.probs[idx], p.names, 0.5, p.mask[idx]) for p in (a, b))
        for m in diffs:
            diffs[m].append(ra[f"{m}_macro"] - rb[f"{m}_macro"])
    full = [metrics.compute_metrics(p.labels, p.probs, p.names, 0.5, p.mask) for p in (a, b)]
    for m in diffs:
        row = next(r for r in table if r["label"] == "macro" and r["metric"] == m)
        assert row["a"] == pytest.approx(full[0][f"{m}_macro"]) and row["b"] == pytest.approx(full[1][f"{m}_macro"])
        low, high = np.percentile(diffs[m], [2.5, 97.5])
        assert (row["low"], row["high"]) == (pytest.approx(low), pytest.approx(high))
        assert row["called"] == (low > 0 or high < 0)
    label_b = next(r for r in table if r["label"] == "b" and r["metric"] == "auroc")
    assert label_b["a"] == pytest.approx(full[0]["auroc/b"])  # the unmeasured entry is left out


def test_large_splits_take_auroc_and_auprc_to_first_order_with_the_same_intervals(monkeypatch):
    n = 3000
    truth = np.random.default_rng(0).random((n, 3)) < 0.2
    runs = [compare.Predictions(f"r{s}", [str(i) for i in range(n)], list("abc"), np.clip(
        truth * 0.3 + np.random.default_rng(s).random((n, 3)), 0, 1), truth, np.ones((n, 3), bool), [0.5] * 3)
        for s in (1, 2)]
    exact, _ = compare.paired(*([r] for r in runs))
    monkeypatch.setattr(metrics, "EXACT_WORK", 0)
    linear, _ = compare.paired(*([r] for r in runs))
    for e, f in zip(exact, linear):
        width = e["high"] - e["low"]
        assert e["diff"] == pytest.approx(f["diff"]) and width > 0.01
        assert abs(e["low"] - f["low"]) < 0.05 * width and abs(e["high"] - f["high"]) < 0.05 * width, (e, f)


def test_a_clear_difference_is_called_and_noise_is_not():
    n = 400
    truth = np.random.default_rng(0).random((n, 1)) < 0.3
    good = compare.Predictions("good", [str(i) for i in range(n)], ["a"], truth * 0.5 + np.random.default_rng(1)
                               .random((n, 1)) * 0.6, truth, np.ones((n, 1), bool), [0.5])
    noise = [compare.Predictions(f"noise{s}", good.ids, ["a"], np.random.default_rng(s).random((n, 1)), truth,
                                 np.ones((n, 1), bool), [0.5]) for s in (2, 3)]
    table, _ = compare.paired([good], noise[:1])
    assert next(r for r in table if r["metric"] == "auroc")["called"]
    table, _ = compare.paired(noise[:1], noise[1:])
    assert not next(r for r in table if r["metric"] == "auroc")["called"]


def test_mismatched_test_sets_and_labels_are_errors():
    a = predictions("out/a")
    other = predictions("out/b", ids=[str(i) for i in range(39)] + ["x"])
    with pytest.raises(ConfigError, match="out/b: its test set differs from out/a's: id '39' is in out/a only"):
        compare.paired([a], [other])
    with pytest.raises(ConfigError, match="out/a: label 'c' is not in it"):
        compare.paired([a], [predictions("out/c", L=1, names=("c",))])
    flipped = predictions("out/d")
    flipped.labels = flipped.labels.copy()
    flipped.labels[5, 0] = not flipped.labels[5, 0]
    with pytest.raises(ConfigError, match="true labels of id '5' differ"):
        compare.paired([a], [flipped])


def test_multi_task_against_single_task_runs_with_seeds(tmp_path, capsys):
    tsv = random_tsv(str(tmp_path / "d.tsv"), ["a", "b", "c"], n=150)
    base = ["config.yaml", f"data.path={tsv}", "task.label_map=null", "task.num_labels=null",
            "training.num_train_epochs=1", *TINY]
    for seed in (1, 2):
        assert train.main([*base, f"training.seed={seed}", f"training.output_dir={tmp_path / f'multi{seed}'}"]) == 0
        for label in ("a", "c"):
            assert train.main([*base, f"training.seed={seed}", f"task.labels=[{label}]",
                               f"training.output_dir={tmp_path / f'{label}{seed}'}"]) == 0
    capsys.readouterr()
    assert compare.main([str(tmp_path / "multi1"), str(tmp_path / "a1"), str(tmp_path / "c1"), "--json"]) == 0
    table = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert [r["label"] for r in table[::3]] == ["macro", "a", "c"]
    with open(tmp_path / "multi1" / "per_label.tsv") as f:
        multi = {r["label"]: r for r in csv.DictReader(f, delimiter="\t")}
    with open(tmp_path / "c1" / "per_label.tsv") as f:
        single = next(csv.DictReader(f, delimiter="\t"))
    row = next(r for r in table if r["label"] == "c" and r["metric"] == "auroc")
    assert row["a"] == pytest.approx(float(multi["c"]["auroc"]), abs=1e-3)
    assert row["b"] == pytest.approx(float(single["auroc"]), abs=1e-3)
    assert row["low"] <= row["diff"] <= row["high"]
    # two seeds per arm: mean ± sd
    assert compare.main([str(tmp_path / "multi1"), str(tmp_path / "multi2"), "--vs", *(str(tmp_path / f"{x}{s}")
                         for x in "ac" for s in (1, 2)), "--resamples", "100"]) == 0
    out = capsys.readouterr().out
    assert "A = 2 seeds" in out and "B = 2 seeds" in out and " ± " in out and "standard error across seeds" in out


def test_the_kmer_baseline_beside_the_model(tmp_path, capsys):
    example = planted.make_example(str(tmp_path / "ex.tsv"), n=600, seed=5)
    out = tmp_path / "out"
    assert train.main(["config.yaml", f"data.path={example}", f"training.output_dir={out}",
                       "training.num_train_epochs=1", "training.logging_steps=100"]) == 0
    fitted, penalty = compare.baseline(str(out))
    assert fitted.names == planted.EXAMPLE_LABELS and penalty in (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
    scored = metrics.compute_metrics(fitted.labels, fitted.probs, fitted.names, mask=fitted.mask)
    assert scored["auroc_macro"] > 0.75  # the planted motifs are 6-mer signal: a linear model finds them
    capsys.readouterr()
    assert compare.main(["--baseline", str(out), "--resamples", "100", "--json"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == "B = 6-mer baseline" and "the 6-mer baseline's L2 penalty" in lines[2]
    table = json.loads(lines[-1])
    with open(out / "per_label.tsv") as f:
        model = {r["label"]: float(r["auroc"]) for r in csv.DictReader(f, delimiter="\t")}
    for r in table:
        if r["metric"] == "auroc" and r["label"] != "macro":  # null: no positive in the test split
            assert r["a"] == (None if np.isnan(model[r["label"]]) else pytest.approx(model[r["label"]], abs=1e-3))
            assert r["b"] == (None if r["a"] is None else pytest.approx(scored[f"auroc/{r['label']}"], abs=1e-6))


def test_kmer_frequencies_count_both_strands_as_one():
    x = baseline.kmer_frequencies(["ACGTTTAC", "GTAAACGT", "AC"])  # the second is the first's reverse complement
    assert x.shape == (3, 2080) and np.allclose(x[0], x[1]) and x[0].sum() == pytest.approx(1) and x[2].sum() == 0
