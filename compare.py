"""
Is a difference between runs real, or noise? Runs against runs, and runs against a 6-mer baseline, label by label
on the test split, each difference with a 95% interval:

    python compare.py out/a out/b                    # any run A against a run B on the same labels
    python compare.py out/multi out/single_*         # the multi-task run against single-task runs of its labels
    python compare.py out/multi_s* --vs out/single_* # several seeds per arm: mean +- sd across seeds
    python compare.py --baseline out/example         # a run (or its seeds) against 6-mer frequencies

It reads each run's test_predictions.tsv and pairs the runs by sequence id. The interval is a paired bootstrap:
1,000 resamples of the test sequences, each scored by every run, so that what the runs share (an easy or a hard
sequence) cancels. A difference is marked * when its interval excludes 0 and, where an arm has several seeds, when
it is also larger than twice its standard error across seeds: a gap that a new seed could close is not called.
Runs of one arm on the same labels are seeds; runs on different labels (single-task runs) are put together, the
k-th run of each label set in the k-th seed. A negative difference means A does worse than B.

The baseline is fitted, on the run's own training split (50,000 of its sequences at most), as a logistic
regression per label on the frequencies of the 2,080 canonical 6-mers of each sequence (its L2 penalty chosen on
the validation split), and compared on AUROC and AUPRC (its probabilities are not made for a threshold). A
fine-tuned model that does not beat it has not earned its cost.
"""
import csv
import json
import os
import sys
import warnings

import numpy as np

import metrics
from training import cli, config
from training.config import ConfigError
from analysis import baseline as kmer_baseline

METRICS = ("auroc", "auprc", "f1")
RESAMPLES = 1000


class Predictions:
    """One run's (or the baseline's) test predictions: ids, label names, probabilities, truth, mask, thresholds."""

    def __init__(self, name, ids, names, probs, labels, mask, thresholds):
        self.name, self.ids, self.names = name, list(ids), list(names)
        self.probs, self.labels, self.mask = probs, labels, mask
        self.thresholds = np.asarray(thresholds, np.float64)

    def columns(self, names):
        idx = [self.names.index(n) for n in names]
        return Predictions(self.name, self.ids, names, self.probs[:, idx], self.labels[:, idx], self.mask[:, idx],
                           self.thresholds[idx])

    def rows(self, ids):
        where = {rid: i for i, rid in enumerate(self.ids)}
        idx = [where[rid] for rid in ids]
        return Predictions(self.name, ids, self.names, self.probs[idx], self.labels[idx], self.mask[idx],
                           self.thresholds)


def read_run(run):
    """A run folder's test_predictions.tsv, with its thresholds from per_label.tsv."""
    path = os.path.join(run, "test_predictions.tsv")
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: no such file (expected a finished train.py run folder with a test split)")
    sep = config.load(os.path.join(run, "config.yaml"))["data"]["multi_label_sep"]
    with open(path) as f:
        rows = list(csv.reader(f, delimiter="\t"))
    header = rows[0]
    if header[-2:] != ["labels", "unmeasured"]:
        raise ConfigError(f"{path}:1: expected the columns id, one per label, predicted, labels, unmeasured (a run "
                          f"of an older version: score its test split again with predict.py)")
    names = header[1:-3]
    probs = np.array([[float(x) for x in r[1:1 + len(names)]] for r in rows[1:]], np.float64).reshape(-1, len(names))
    labels, mask = np.zeros(probs.shape, bool), np.ones(probs.shape, bool)
    for i, r in enumerate(rows[1:]):
        for cell, out, value in ((r[-2], labels, True), (r[-1], mask, False)):
            for n in filter(None, cell.split(sep)):
                out[i, names.index(n)] = value
    with open(os.path.join(run, "per_label.tsv")) as f:
        thresholds = {r["label"]: float(r["threshold"]) for r in csv.DictReader(f, delimiter="\t")}
    return Predictions(run, [r[0] for r in rows[1:]], names, probs, labels, mask, [thresholds[n] for n in names])


def same_ids(a, b):
    """Raises, naming the first id that one has and the other lacks."""
    for one, other in ((a, b), (b, a)):
        theirs = set(other.ids)
        only = next((x for x in one.ids if x not in theirs), None)
        if only is not None:
            raise ConfigError(f"{other.name}: its test set differs from {one.name}'s: id '{only}' is in {one.name} "
                              f"only (compare runs on the same test split)")


def arm(runs):
    """An arm's seeds, each one Predictions over every label of the arm. Runs on the same labels are seeds; runs
    on different labels are put together, the k-th run of each label set in the k-th seed."""
    sets = {}
    for p in (r if isinstance(r, Predictions) else read_run(r) for r in runs):
        sets.setdefault(tuple(p.names), []).append(p)
    counts = {len(v) for v in sets.values()}
    if len(counts) > 1:
        raise ConfigError("command line: the label sets of an arm have different numbers of runs (" +
                          "; ".join(f"{', '.join(k)}: {len(v)}" for k, v in sets.items()) + "); give each as many "
                          "seeds")
    seen = [n for names in sets for n in names]
    if len(seen) != len(set(seen)):
        twice = sorted({n for n in seen if seen.count(n) > 1})
        raise ConfigError(f"command line: label {twice[0]} is in runs of two label sets of one arm (give runs on the "
                          f"same labels, or on disjoint labels)")
    seeds = []
    for parts in zip(*sets.values()):
        for p in parts[1:]:
            same_ids(parts[0], p)
        parts = [parts[0]] + [p.rows(parts[0].ids) for p in parts[1:]]
        seeds.append(Predictions(" + ".join(p.name for p in parts), parts[0].ids, seen,
                                 *(np.hstack([getattr(p, k) for p in parts])
                                   for k in ("probs", "labels", "mask", "thresholds"))))
    return seeds


def paired(arm_a, arm_b, resamples=RESAMPLES, seed=0):
    """The table of A against B: for each label of B, and the macro average, and each metric, the arms' values
    (mean, sd across seeds), the difference of the means, its 95% paired bootstrap interval, and whether it is
    called. Returns (rows, number of test sequences)."""
    names = arm_b[0].names
    missing = [n for n in names if n not in arm_a[0].names]
    if missing:
        raise ConfigError(f"{arm_a[0].name}: label '{missing[0]}' is not in it but is in {arm_b[0].name} (compare "
                          f"runs of the same labels)")
    ref = arm_a[0]
    arm_a = [p.columns(names) for p in arm_a]
    for p in arm_a[1:] + arm_b:
        same_ids(ref, p)
    arm_a, arm_b = ([p.rows(ref.ids) for p in arm] for arm in (arm_a, arm_b))
    for p in arm_a[1:] + arm_b:
        differ = np.flatnonzero(((p.labels != arm_a[0].labels) & p.mask).any(1) | (p.mask != arm_a[0].mask).any(1))
        if len(differ):
            raise ConfigError(f"{p.name}: the true labels of id '{ref.ids[differ[0]]}' differ from "
                              f"{arm_a[0].name}'s (compare runs of the same data)")
    n = len(ref.ids)

    def scores(scorers, counts):  # (seeds, R, metrics, L + 1): the macro average last
        out = []
        for score in scorers:
            got = score(counts)
            per = np.stack([got[m] for m in METRICS], 1)
            out.append(np.concatenate([per, np.nanmean(per, 2, keepdims=True)], 2))
        return np.stack(out)

    with warnings.catch_warnings():  # a label with one class in a resample: nan, left out of the mean
        warnings.simplefilter("ignore", RuntimeWarning)
        once = np.ones((1, n), np.float32)
        point_a, point_b = (scores([metrics.Resampled(p.labels, p.probs, p.mask, p.thresholds, 1) for p in arm],
                                   once)[:, 0] for arm in (arm_a, arm_b))  # (seeds, metrics, L + 1)
        score_a, score_b = ([metrics.Resampled(p.labels, p.probs, p.mask, p.thresholds, resamples) for p in arm]
                            for arm in (arm_a, arm_b))
        boot = np.concatenate([np.nanmean(scores(score_a, counts), 0) - np.nanmean(scores(score_b, counts), 0)
                               for counts in metrics.bootstrap_counts(n, resamples, seed)])  # (R, metrics, L + 1)
        low, high = np.nanpercentile(boot, [2.5, 97.5], axis=0)
    mean_a, mean_b = point_a.mean(0), point_b.mean(0)
    sd_a, sd_b = (p.std(0, ddof=1) if len(p) > 1 else np.zeros_like(p[0]) for p in (point_a, point_b))
    spread = np.sqrt(sd_a ** 2 / len(point_a) + sd_b ** 2 / len(point_b))  # the standard error across seeds
    diff = mean_a - mean_b
    called = (low > 0) | (high < 0)
    called &= np.abs(diff) > 2 * spread
    table = []
    for j, label in enumerate(["macro", *names]):
        col = (j - 1) % (len(names) + 1)  # macro is stored last
        for k, m in enumerate(METRICS):
            table.append({"label": label, "metric": m, "a": mean_a[k, col], "a_sd": sd_a[k, col],
                          "b": mean_b[k, col], "b_sd": sd_b[k, col], "diff": diff[k, col], "low": low[k, col],
                          "high": high[k, col], "called": bool(called[k, col])})
    return table, n


def print_table(table, arm_a, arm_b, n, resamples, note=""):
    def arm_line(arm):
        seeds = f"{len(arm)} seeds: " if len(arm) > 1 else ""
        return seeds + "; ".join(p.name for p in arm)
    print(f"A = {arm_line(arm_a)}")
    print(f"B = {arm_line(arm_b)}")
    print(f"{resamples} paired bootstrap resamples of the {n} test sequences{note}")
    sd = len(arm_a) > 1 or len(arm_b) > 1
    width = 16 if sd else 7
    print(f"{'label':<20} {'metric':<6} {'A':>{width}} {'B':>{width}} {'A - B':>8}  {'95% interval':<19}")
    for r in table:
        a, b = ((f"{r[k]:.4f} ± {r[k + '_sd']:.4f}" if sd else f"{r[k]:.4f}") for k in ("a", "b"))
        interval = f"[{r['low']:+.4f}, {r['high']:+.4f}]"
        print(f"{r['label']:<20} {r['metric']:<6} {a:>{width}} {b:>{width}} {r['diff']:>+8.4f}  {interval:<19}"
              f"{' *' if r['called'] else ''}")
    print("* the interval excludes 0" + (" and the difference is more than twice its standard error across seeds"
                                         if sd else ""))


def baseline(run):
    """(the 6-mer baseline's test Predictions, its L2 penalty), fitted on the run's training split."""
    (ids, names, probs, truth, mask), penalty = kmer_baseline.fit(run)
    return Predictions("6-mer baseline", ids, names, probs, truth, mask, np.full(len(names), 0.5)), penalty


def report(args):
    if args.baseline:
        arm_a = arm(args.baseline)
        fitted, penalty = baseline(args.baseline[0])
        arm_b = [fitted]
        note = f"; the 6-mer baseline's L2 penalty: {penalty:g}"
    else:
        if args.vs:
            arm_a, arm_b = arm(args.runs), arm(args.vs)
        elif len(args.runs) >= 2:
            arm_a, arm_b = arm(args.runs[:1]), arm(args.runs[1:])
        else:
            raise ConfigError("command line: two runs to compare (A B), a run and single-task runs (A B1 B2 ...), "
                              "arms of seeds (A1 A2 --vs B1 B2), or --baseline RUN")
        note = ""
    table, n = paired(arm_a, arm_b, args.resamples)
    if args.baseline:  # the baseline's probabilities are not calibrated for a threshold: its F1 says nothing
        table = [r for r in table if r["metric"] != "f1"]
    print_table(table, arm_a, arm_b, n, args.resamples, note)
    if args.json:
        print(json.dumps([{k: (None if np.isnan(v) else round(float(v), 6)) if isinstance(v, float) else v
                           for k, v in r.items()} for r in table]))  # undefined (nan) is null, as JSON reads it


def options(p):
    p.add_argument("runs", nargs="*", help="run A, then run B (or B's single-task runs); with --vs, arm A's runs")
    p.add_argument("--vs", nargs="+", metavar="RUN", help="arm B's runs (seeds, or single-task runs)")
    p.add_argument("--baseline", nargs="+", metavar="RUN", help="compare RUN (or its seeds) with a 6-mer logistic "
                   "regression instead")
    p.add_argument("--resamples", type=int, default=RESAMPLES, help="bootstrap resamples (default 1000)")
    p.add_argument("--json", action="store_true", help="end with the table as one line of JSON")


def main(argv):
    return cli.run(report, __doc__, argv, options=options)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
