"""bench.py runs the real code paths end to end and reports every promised figure (tiny sizes, so it is quick)."""
import json
import subprocess
import sys

import pytest

from helpers import ROOT

KEYS = ["tokenize_seqs_per_s", "train_samples_per_s", "train_tokens_per_s", "bare_samples_per_s", "loop_vs_bare",
        "data_wait_fraction", "padding_fraction_random", "padding_fraction_grouped", "eval_seqs_per_s",
        "peak_rss_mb", "device"]


@pytest.mark.parametrize("backbone", ["bert", "gpt2", "cnn"])
def test_bench_json_has_every_figure(backbone):
    p = subprocess.run([sys.executable, "bench.py", "--json", "--n", "400", "--steps", "3", "--rounds", "1",
                        "--batch-size", "8", "--eval-n", "50", "--metrics-rows", "5000", "--backbone", backbone],
                       cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    result = json.loads(p.stdout.strip().splitlines()[-1])
    assert all(k in result for k in KEYS), set(KEYS) - set(result)
    assert result["device"].startswith("cpu") and "mfu" not in result
    assert result["padding_fraction_grouped"] < result["padding_fraction_random"]
    assert 0 < result["loop_vs_bare"] and 0 <= result["data_wait_fraction"] < 1
    assert result["metrics_s_5k_x_919"] > 0


def test_bench_pooling_reports_every_pooling_and_what_auto_chose():
    p = subprocess.run([sys.executable, "bench.py", "--pooling", "--json", "--n", "200", "--pretrain-steps", "5"],
                       cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    result = json.loads(p.stdout.strip().splitlines()[-1])
    runs = [f"{family}_{how}_auroc" for family in ("bert", "gpt2", "llama", "gpt2_pretrained")
            for how in ("last", "mean", "max")] + ["bert_cls_auroc", "gpt2_pretrained_auto_auroc"]
    assert sorted(k for k in result if k.endswith("_auroc")) == sorted(runs)
    assert all(0 <= result[k] <= 1 for k in runs)
    assert result["gpt2_pretrained_auto_chose"] in ("mean", "max", "last")
