"""
Is a label better off with the others, and does the language model earn its cost? Two comparisons, label by label,
on the test split:

    python compare.py out/multi out/single_*      # the multi-task run against single-task runs (negative transfer)
    python compare.py --baseline out/example      # the run against 6-mer frequencies with a linear model

The first reads each run's per_label.tsv: a negative difference means the label does worse in the multi-task
model than on its own. The second fits, on the run's own training split (50,000 of its sequences at most), a
logistic regression per label on the frequencies of the 2,080 canonical 6-mers of each sequence (its L2 penalty
chosen on the validation split), and prints its test AUROC and AUPRC beside the run's: a fine-tuned model that
does not beat it has not earned its cost.
"""
import csv
import os
import sys

import numpy as np

import cache
import cli
import config
import data
import metrics
from config import ConfigError
from model import load_tokenizer
from scoring import fit_logistic

METRICS = ("f1", "auroc", "auprc")


def read_per_label(run):
    path = os.path.join(run, "per_label.tsv")
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: no such file (expected a finished train.py run folder)")
    with open(path) as f:
        return {row["label"]: row for row in csv.DictReader(f, delimiter="\t")}


def compare(multi_run, single_runs):
    multi = read_per_label(multi_run)
    rows = []
    for run in single_runs:
        for label, single in read_per_label(run).items():
            if label not in multi:
                raise ConfigError(f"{run}: label '{label}' is not in {multi_run} (expected single-task runs of its "
                                  f"labels)")
            row = [label]
            for m in METRICS:
                a, b = float(multi[label][m]), float(single[m])
                row += [a, b, a - b]
            rows.append(row)
    return rows


# -----------------------------------------------------------------------------
# the k-mer baseline

def kmer_frequencies(seqs, k=6):
    """(n, 2080): the share of each canonical k-mer (a k-mer and its reverse complement count as one) among the
    k-mers of each sequence that hold only A, C, G and T."""
    code = np.full(256, -1, np.int64)
    code[list(b"ACGT")] = [0, 1, 2, 3]
    ids = np.arange(4 ** k)
    digits = (ids[:, None] // 4 ** np.arange(k - 1, -1, -1)) % 4
    reverse = ((3 - digits[:, ::-1]) * 4 ** np.arange(k - 1, -1, -1)).sum(1)
    canonical = np.unique(np.minimum(ids, reverse), return_inverse=True)[1]
    out = np.zeros((len(seqs), canonical.max() + 1), np.float32)
    for i, seq in enumerate(seqs):
        x = code[np.frombuffer(seq.encode(), np.uint8)]
        if len(x) < k:
            continue
        windows = np.lib.stride_tricks.sliding_window_view(x, k)
        windows = windows[(windows >= 0).all(1)]
        counts = np.bincount(canonical[windows @ 4 ** np.arange(k - 1, -1, -1)], minlength=out.shape[1])
        out[i] = counts / max(counts.sum(), 1)
    return out


def sequences_of(split, data_cfg, limit=None, seed=0):
    """The sequences of a split's rows, read again from its file; at most limit of them, drawn at random."""
    rows = split.tokens.rows if limit is None or len(split) <= limit else \
        np.sort(np.random.RandomState(seed).choice(split.tokens.rows, limit, replace=False))
    keep, seqs = set(rows.tolist()), {}
    for i, (_, _, seq, _) in enumerate(data.iter_records(split.path, data_cfg, labels_optional=True)):
        if i in keep:
            seqs[i] = seq
    which = np.searchsorted(split.tokens.rows, rows)
    return [seqs[r] for r in rows.tolist()], np.asarray(split.labels[which]), np.asarray(split.mask[which])


def baseline(run, max_train=50_000):
    """Per label: (the run's test AUROC and AUPRC, the 6-mer baseline's)."""
    cfg = config.load(os.path.join(run, "config.yaml"))
    data_cfg = cfg["data"]
    tokenizer = load_tokenizer(os.path.join(run, "tokenizer"), cfg["model"]["trust_remote_code"])
    found, names = cache.load_splits(data_cfg, tokenizer, config.label_names_from_config(cfg["task"]))
    if cfg["task"]["labels"]:
        names = cache.select_labels(found, names, cfg["task"]["labels"])
    if found["test"] is None:
        raise ConfigError(f"{run}: the run has no test split to compare on")
    (x, y, m), (tx, ty, tm) = ((kmer_frequencies(s), y, m) for s, y, m in (
        sequences_of(found["train"], data_cfg, max_train), sequences_of(found["test"], data_cfg)))
    mean, std = x.mean(0), x.std(0) + 1e-6
    x, tx = (x - mean) / std, (tx - mean) / std
    penalty = 1e-3
    if found["validation"] is not None:  # the penalty with the best validation AUROC
        vs, vy, vm = sequences_of(found["validation"], data_cfg, max_train)
        vx = (kmer_frequencies(vs) - mean) / std
        scores = {p: metrics.compute_metrics(vy, fit_logistic(x, y, m, p)(vx), names, mask=vm)["auroc_macro"]
                  for p in (1e-4, 1e-3, 1e-2, 1e-1, 1.0)}
        penalty = max(scores, key=lambda p: -np.inf if np.isnan(scores[p]) else scores[p])
    ours = metrics.compute_metrics(ty, fit_logistic(x, y, m, penalty)(tx), names, mask=tm)
    model = read_per_label(run)
    return {n: (float(model[n]["auroc"]), float(model[n]["auprc"]), ours[f"auroc/{n}"], ours[f"auprc/{n}"])
            for n in names}, penalty


def report(args):
    if args.baseline:
        rows, penalty = baseline(args.baseline)
        print(f"{'label':<20} {'auroc model':>12} {'auroc 6-mer':>12} {'diff':>7} {'auprc model':>12} "
              f"{'auprc 6-mer':>12} {'diff':>7}")
        for label, (a, p, b, q) in list(rows.items()) + [("macro", tuple(np.nanmean(list(rows.values()), 0)))]:
            print(f"{label:<20} {a:>12.4f} {b:>12.4f} {a - b:>+7.4f} {p:>12.4f} {q:>12.4f} {p - q:>+7.4f}")
        print(f"(6-mer baseline: logistic regression on canonical 6-mer frequencies, L2 penalty {penalty:g})")
        return
    if len(args.runs) < 2:
        raise ConfigError("command line: a multi-task run and at least one single-task run to compare it with "
                          "(or --baseline RUN)")
    rows = compare(args.runs[0], args.runs[1:])  # read whole before anything is printed
    print(f"{'label':<20}" + "".join(f" {m + ' multi':>12} {m + ' single':>12} {'diff':>7}" for m in METRICS))
    for label, *values in rows:
        cells = [f" {values[i]:>12.4f} {values[i + 1]:>12.4f} {values[i + 2]:>+7.4f}" for i in range(0, 9, 3)]
        print(f"{label:<20}" + "".join(cells))


def options(p):
    p.add_argument("runs", nargs="*", help="the multi-task run folder, then single-task run folders")
    p.add_argument("--baseline", metavar="RUN", help="compare RUN with a 6-mer logistic regression instead")


def main(argv):
    return cli.run(report, __doc__, argv, options=options)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
