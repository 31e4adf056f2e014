"""
How one data file is cut into train, validation and test: by fractions with a seed, by iterative stratification
(every label, even a rare one, in every split in proportion), or by whole chromosomes held out (data.split_by:
chrom, for ids chr:start-end). Genome windows need the last: neighbouring windows overlap, and a random split
puts the neighbours of a test window in training. Whatever the split, validation and test windows that overlap a
training window are reported.
"""
import numpy as np

from data import DataError
from training.config import ConfigError
from training.console import log
from genomics.intervals import Intervals, parse_coordinates

SPLITS = ("train", "validation", "test")


def split_indices(split, data_cfg):
    """The rows of one file's train, validation and test splits, each sorted."""
    if data_cfg["split_by"] == "chrom":
        which = by_chromosome(split.ids, data_cfg, split.path)
    elif data_cfg["stratify"]:
        fractions = [data_cfg[f"{k}_size"] for k in SPLITS]
        which = stratified_split(np.asarray(split.labels) & np.asarray(split.mask), fractions, data_cfg["seed"])
    else:
        order = np.random.RandomState(data_cfg["seed"]).permutation(len(split))
        n_train, n_val = (int(round(len(split) * data_cfg[f"{k}_size"])) for k in SPLITS[:2])
        return [np.sort(p) for p in np.split(order, [n_train, n_train + n_val])]
    return [np.flatnonzero(which == s) for s in range(3)]


def by_chromosome(ids, data_cfg, path):
    """0 (train), 1 (validation) or 2 (test) per window, by its chromosome."""
    coords, bad = parse_coordinates(ids)
    if coords is None:
        raise DataError(f"{path}: row {bad + 1} has the id '{ids[bad]}', without coordinates (expected chr:start-end "
                        f"ids, as prepare.py writes them, for data.split_by: chrom)")
    chroms = coords[0]
    held = {k: [str(c) for c in data_cfg[f"{k}_chroms"] or []] for k in SPLITS[1:]}
    both = set(held["validation"]) & set(held["test"])
    if both:
        raise ConfigError(f"config: data.validation_chroms and data.test_chroms both name {sorted(both)}")
    present = set(chroms.tolist())
    for k, names in held.items():
        for c in names:
            if c not in present:
                shown = ", ".join(sorted(present)[:10])
                raise DataError(f"{path}: data.{k}_chroms names {c}, which holds no window (chromosomes in the data: "
                                f"{shown}{', ...' if len(present) > 10 else ''})")
    which = np.zeros(len(ids), np.int64)
    which[np.isin(chroms, held["validation"])] = 1
    which[np.isin(chroms, held["test"])] = 2
    return which


def report_overlaps(splits):
    """Logs how many validation and test windows overlap a training window: each one is a sequence the model has
    in part seen. Splits whose ids carry no coordinates are not checked."""
    coords = {k: parse_coordinates(s.ids)[0] for k, s in splits.items() if s is not None}
    if coords.get("train") is None:
        return
    names = sorted(set(np.concatenate([c[0] for c in coords.values() if c is not None]).tolist()))
    index = {n: i for i, n in enumerate(names)}
    chrom, start, end = coords["train"]
    seen = Intervals(np.array([index[c] for c in chrom]), start, end, len(names))
    for k in SPLITS[1:]:
        if coords.get(k) is None:
            continue
        chrom, start, end = coords[k]
        c = np.array([index[x] for x in chrom])
        hit = sum(int((seen.covered(i, start[c == i], end[c == i]) > 0).sum()) for i in np.unique(c))
        if hit:
            log(f"warning: data: {hit} of {len(c)} {k} windows overlap a training window: the model saw part of "
                f"them in training (data.split_by: chrom holds whole chromosomes out)")


def stratified_split(labels, fractions, seed):
    """Iterative stratification for multi-label data (Sechidis et al., 2011): the examples of the rarest label
    are placed first, each in the split that most lacks that label, so that even a rare label lands in every
    split in proportion. Deterministic for a seed. Returns the split index of each example."""
    rng = np.random.RandomState(seed)
    y = labels > 0.5
    n = len(y)
    want = np.asarray(fractions, np.float64)[:, None] * y.sum(0)  # (splits, labels) still wanted
    want_total = np.asarray(fractions, np.float64) * n
    which = np.full(n, -1)

    def place(i, candidates):
        best = candidates[want_total[candidates] == want_total[candidates].max()]
        s = best[rng.randint(len(best))]
        which[i] = s
        want[s] -= y[i]
        want_total[s] -= 1

    while True:
        left = which < 0
        counts = y[left].sum(0)
        if not counts.any():
            break
        label = np.flatnonzero(counts == counts[counts > 0].min())[0]
        for i in rng.permutation(np.flatnonzero(left & y[:, label])):
            col = want[:, label]
            place(i, np.flatnonzero(col == col.max()))
    for i in rng.permutation(np.flatnonzero(which < 0)):  # examples without any label
        place(i, np.arange(len(fractions)))
    return which
