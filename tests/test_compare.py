"""compare.py: the multi-task run against single-task runs, and a run against the 6-mer baseline."""
import csv

import numpy as np
import pytest

import compare
import data
import train
from helpers import TINY, random_tsv


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


def test_the_kmer_baseline_beside_the_model(tmp_path, capsys):
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
