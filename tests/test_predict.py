"""predict.py: a finished run scores new sequences, with ids, thresholds and truth carried through, and clean
failures."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import data
import train
import predict
from helpers import ROOT, TINY, one_line_error, random_tsv, read_tsv, run_command, write_file


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A small trained run with separate train/validation/test files."""
    tmp = tmp_path_factory.mktemp("run")
    files = {k: random_tsv(str(tmp / f"{k}.tsv"), ["a", "b", "c"], n=80, seed=i)
             for i, k in enumerate(("train", "validation", "test"))}
    args = ["config.yaml", "data.path=null", *(f"data.{k}={v}" for k, v in files.items()), "task.label_map=null",
            "task.num_labels=null", f"training.output_dir={tmp / 'out'}", "training.num_train_epochs=2",
            f"data.cache_dir={tmp / 'cache'}",
            "task.threshold=0.4", *TINY]
    assert train.main(args) == 0
    return tmp


def test_predict_reproduces_test_predictions(run_dir):
    out = str(run_dir / "pred.tsv")
    assert predict.main([str(run_dir / "out"), str(run_dir / "test.tsv"), "-o", out, "--batch-size", "7"]) == 0
    ours, theirs = read_tsv(out), read_tsv(run_dir / "out" / "test_predictions.tsv")
    # one file holds truth and calls
    assert list(ours[0]) == ["id", "a", "b", "c", "predicted", "labels", "unmeasured"]
    assert [r["id"] for r in ours] == [str(i) for i in range(1, 81)]
    for a, b in zip(ours, theirs):
        assert a["id"] == b["id"] and a["predicted"] == b["predicted"] and a["labels"] == b["labels"]
        for name in "abc":
            assert abs(float(a[name]) - float(b[name])) <= 1e-4
    # the input had labels, so the metrics are saved too, and equal the test metrics
    saved = json.load(open(run_dir / "pred.metrics.json"))
    test = json.load(open(run_dir / "out" / "test_metrics.json"))
    assert saved["f1_macro"] == pytest.approx(test["test_f1_macro"], abs=1e-6)


def test_wrapped_fasta_gives_the_same_probabilities_in_order(run_dir):
    rows = read_tsv(run_dir / "test.tsv")
    fasta = run_dir / "test.fa"
    with open(fasta, "w") as f:
        for i, r in enumerate(rows):
            s = r["sequence"]
            f.write(f">seq{i} some description\n" + "\n".join(s[j:j + 13] for j in range(0, len(s), 13)) + "\n")
    out_tsv, out_fa = str(run_dir / "p1.tsv"), str(run_dir / "p2.tsv")
    assert predict.main([str(run_dir / "out"), str(run_dir / "test.tsv"), "-o", out_tsv]) == 0
    assert predict.main([str(run_dir / "out"), str(fasta), "-o", out_fa]) == 0
    a, b = read_tsv(out_tsv), read_tsv(out_fa)
    assert [r["id"] for r in b] == [f"seq{i}" for i in range(len(rows))]
    assert all(x[n] == y[n] for x, y in zip(a, b) for n in ("a", "b", "c", "predicted"))


def test_threshold_override_and_rc_average(run_dir):
    out = str(run_dir / "t.tsv")
    assert predict.main([str(run_dir / "out"), str(run_dir / "test.tsv"), "-o", out, "--threshold", "0"]) == 0
    assert all(r["predicted"] == "a,b,c" for r in read_tsv(out))
    # --rc-average equals averaging by hand with a reverse-complemented copy of the input
    flipped = run_dir / "flipped.tsv"
    with open(flipped, "w") as f:
        f.write("sequence\tlabels\n")
        for r in read_tsv(run_dir / "test.tsv"):
            f.write(f"{data.reverse_complement(r['sequence'])}\t{r['labels']}\n")
    paths = {k: str(run_dir / f"{k}.out.tsv") for k in ("plain", "flip", "avg")}
    assert predict.main([str(run_dir / "out"), str(run_dir / "test.tsv"), "-o", paths["plain"]]) == 0
    assert predict.main([str(run_dir / "out"), str(flipped), "-o", paths["flip"]]) == 0
    assert predict.main([str(run_dir / "out"), str(run_dir / "test.tsv"), "-o", paths["avg"], "--rc-average"]) == 0
    p = {k: np.array([[float(r[n]) for n in "abc"] for r in read_tsv(v)]) for k, v in paths.items()}
    assert np.allclose(p["avg"], (p["plain"] + p["flip"]) / 2, atol=2e-6)
    assert not np.allclose(p["avg"], p["plain"], atol=1e-4)


def test_invalid_fasta_exits_2_with_one_line(run_dir):
    bad = run_dir / "bad.fa"
    bad.write_text(">s1\nACGT\n>s2\nACGZ\n")
    p = subprocess.run([sys.executable, "predict.py", str(run_dir / "out"), str(bad), "-o", str(run_dir / "x.tsv")],
                       cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 2
    assert p.stderr.strip() == f"error: {bad}:4: invalid character 'Z' at position 4 of the sequence " \
                               f"(expected A, C, G, T, N or another IUPAC code)"
    assert not (run_dir / "x.tsv").exists()


def test_sharded_prediction_under_torchrun_matches_one_process(run_dir):
    one, two = str(run_dir / "one.tsv"), str(run_dir / "two.tsv")
    assert predict.main([str(run_dir / "out"), str(run_dir / "test.tsv"), "-o", one]) == 0
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "predict.py", str(run_dir / "out"),
           str(run_dir / "test.tsv"), "-o", two, "--batch-size", "5"]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    a, b = read_tsv(one), read_tsv(two)
    assert [r["id"] for r in a] == [r["id"] for r in b]
    for x, y in zip(a, b):
        assert x["predicted"] == y["predicted"]
        assert all(abs(float(x[n]) - float(y[n])) <= 1e-5 for n in "abc")


@pytest.mark.parametrize("broken", ["truncated", "foreign"])
def test_a_broken_checkpoint_is_one_line_with_exit_2_in_predict_and_resume(run_dir, broken):
    path = run_dir / f"{broken}.pt"
    good = (run_dir / "out" / "last.pt").read_bytes()
    if broken == "truncated":  # a copy that stopped half way
        path.write_bytes(good[:len(good) // 2])
        expected = f"error: {path}: not a readable checkpoint ("
    else:  # a plain state dict, as another tool saves it
        import torch
        torch.save({"weight": torch.zeros(2)}, path)
        expected = f"error: {path}: not a checkpoint of train.py (it has no model, step, config"
    p = subprocess.run([sys.executable, "predict.py", str(path), str(run_dir / "test.tsv"), "-o",
                        str(run_dir / "y.tsv")], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.startswith(expected), p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr
    p = subprocess.run([sys.executable, "train.py", "config.yaml", f"data.train={run_dir / 'train.tsv'}",
                        "data.path=null", "task.label_map=null", "task.num_labels=null", *TINY,
                        f"data.cache_dir={run_dir / 'cache'}", f"training.output_dir={run_dir / 'resumed'}",
                        f"training.resume_from_checkpoint={path}"], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.startswith(expected), p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr


def test_predict_carries_ids_thresholds_and_truth(run_dir, tmp_path, capsys):
    named = tmp_path / "named.tsv"
    named.write_text("name\tsequence\tlabels\nwin1\tACGTACGTAAAC\ta,b\nwin2\tCCCCGGGGTTTA\t\n")
    out = tmp_path / "p.tsv"
    assert predict.main([str(run_dir / "out"), str(named), "-o", str(out), "--threshold", "a=0,c=1"]) == 0
    rows = read_tsv(out)
    assert list(rows[0]) == ["id", "a", "b", "c", "predicted", "labels", "unmeasured"]
    assert [r["id"] for r in rows] == ["win1", "win2"] and [r["labels"] for r in rows] == ["a,b", ""]
    assert all(r["predicted"].split(",")[0] == "a" and "c" not in r["predicted"] for r in rows)
    assert read_tsv(tmp_path / "p.thresholds.tsv") == [{"label": "a", "threshold": "0"},
                                                      {"label": "b", "threshold": "0.5"},
                                                      {"label": "c", "threshold": "1"}]
    assert "thresholds from --threshold: a=0 b=0.5 c=1" in capsys.readouterr().out
    assert predict.main([str(run_dir / "out"), str(named), "-o", str(out), "--threshold", "1,1,0"]) == 0
    assert [r["predicted"] for r in read_tsv(out)] == ["c", "c"]
    capsys.readouterr()
    assert predict.main([str(run_dir / "out"), str(named), "--threshold", "high"]) == 2  # one line, as any bad input
    assert capsys.readouterr().err.startswith("error: command line: argument --threshold: 'high' is not a threshold")
    assert predict.main([str(run_dir / "out"), str(named), "-o", str(out), "--threshold", "0.5,0.5"]) == 2
    assert "--threshold has 2 values for 3 labels" in capsys.readouterr().err


def test_predict_with_swapped_arguments_or_interrupted_leaves_no_file(run_dir, tmp_path, monkeypatch, capsys):
    fa = write_file(tmp_path, "s.fa", ">s1\nACGTACGTAA\n>s1\nACGTTTTTAA\n")
    p = run_command(fa, str(run_dir / "out"), "-o", str(tmp_path / "x.tsv"), script="predict.py")
    one_line_error(p, f"error: {fa}: not a run folder or a checkpoint (the first argument must be a run folder")
    out = tmp_path / "p.tsv"
    assert predict.main([str(run_dir / "out"), fa, "-o", str(out)]) == 0
    assert "warning: " + fa + ": 1 ids appear more than once (s1); the output keeps every row" in \
        capsys.readouterr().out
    os.remove(out)
    os.remove(tmp_path / "p.thresholds.tsv")

    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(predict.torch, "sigmoid", interrupted)  # after the output file was opened
    assert predict.main([str(run_dir / "out"), fa, "-o", str(out)]) == 130
    assert os.listdir(tmp_path) == ["s.fa"]  # neither p.tsv nor p.tsv.tmp


def test_a_label_without_positives_is_marked_and_warned_about(run_dir, tmp_path, capsys):
    only_a = tmp_path / "a.tsv"
    only_a.write_text("sequence\tlabels\nACGTACGTAAAC\ta\nCCCCGGGGTTTA\t\n")
    assert predict.main([str(run_dir / "out"), str(only_a), "-o", str(tmp_path / "p.tsv")]) == 0
    out = capsys.readouterr().out
    table = {line.split()[0]: line for line in out.splitlines() if line.split() and line.split()[0] in "abc"}
    assert table["b"].endswith(" *") and table["c"].endswith(" *") and not table["a"].endswith("*")
    assert "warning: * no positives in the input split for b, c: an F1 of 0 that counts in f1_macro" in out
