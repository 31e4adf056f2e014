"""
The 6-mer baseline that compare.py --baseline puts beside a run: a logistic regression per label on the
frequencies of the 2,080 canonical 6-mers of each sequence, fitted on the run's own training split.
"""
import os

import numpy as np

import data
import metrics
from training import cache, config
from training.backbones import load_tokenizer
from training.config import ConfigError
from training.probe import fit_logistic


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
    """The sequences of a split's rows, read again from its file, whole (not as windows); at most limit of them,
    drawn at random."""
    every = split.labels.rows  # each sequence's record in the file (the tokens' rows count windows, if any)
    rows = every if limit is None or len(split) <= limit else \
        np.sort(np.random.RandomState(seed).choice(every, limit, replace=False))
    keep, seqs = set(rows.tolist()), {}
    for i, (_, _, seq, _) in enumerate(data.iter_records(split.path, data_cfg, labels_optional=True)):
        if i in keep:
            seqs[i] = seq
    which = np.searchsorted(every, rows)
    return [seqs[r] for r in rows.tolist()], np.asarray(split.labels[which]), np.asarray(split.mask[which])


def fit(run, max_train=50_000):
    """The 6-mer baseline of a run folder, fitted on the run's training split (max_train sequences at most), its L2
    penalty chosen on the validation split: (its test ids, label names, probabilities, truth, mask; the penalty)."""
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
    probs = fit_logistic(x, y, m, penalty)(tx).astype(np.float64)
    return (found["test"].ids.astype(str), names, probs, ty > 0.5, tm.astype(bool)), penalty
