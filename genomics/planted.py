"""
The planted-motif examples, TSVs whose answers are known: each label is a motif planted in random background, and
where each was planted is written beside the file, so that what train.py learns and interpret.py finds can be
checked against it. python prepare.py --example default | conflict | long writes them:

    default    data/example/example.tsv, the default experiment's (shipped; a fixed seed writes it again)
    conflict   data/conflict/conflict.tsv, a case of negative transfer built on purpose (docs/tuning.md)
    long       data/long/long.tsv, 2 kb sequences, longer than a model's window (docs/long.md)
"""
import os

import numpy as np


EXAMPLE_LABELS = ["leaf", "root", "flower", "seed", "heat_stress", "cold_stress"]


def make_example(path="data/example/example.tsv", n=10000, seed=0, motif_len=12, conservation=0.95, noise=0.01):
    """Synthetic multi-label data. Each label has a motif (a position weight matrix); a sequence carries the
    label when an instance of that motif is planted in it. Labels co-occur (flower with leaf, cold with heat),
    prevalences run from about 40% down to 3%, and a little label noise is added. Where each motif was planted is
    written beside it (example.motifs.tsv: row, label, 0-based start and end in the sequence), and the motifs
    themselves as a MEME file (example.motifs.meme), so that what interpret.py finds can be checked against them."""
    rng = np.random.RandomState(seed)
    L = len(EXAMPLE_LABELS)
    # peaked PWMs: each position has a dominant base (its consensus), as in well-conserved binding sites
    consensus = rng.randint(0, 4, size=(L, motif_len))
    pwms = np.full((L, motif_len, 4), (1 - conservation) / 3)
    np.put_along_axis(pwms, consensus[..., None], conservation, axis=2)
    y = np.zeros((n, L), bool)
    y[:, 0] = rng.rand(n) < 0.40
    y[:, 1] = rng.rand(n) < 0.30
    y[:, 2] = rng.rand(n) < np.where(y[:, 0], 0.35, 0.10)  # flower mostly with leaf: ~20%
    y[:, 3] = rng.rand(n) < 0.10
    y[:, 4] = rng.rand(n) < 0.06
    y[:, 5] = rng.rand(n) < np.where(y[:, 4], 0.30, 0.013)  # cold mostly with heat: ~3%
    lengths = rng.randint(100, 301, size=n)
    seqs, sites = [], []
    for i in range(n):
        s = rng.randint(0, 4, size=lengths[i])
        labels = np.flatnonzero(y[i])
        # non-overlapping slots so planted motifs never overwrite each other
        slots = rng.permutation(lengths[i] // motif_len)[:len(labels)]
        for j, slot in zip(labels, slots):
            site = [rng.choice(4, p=p) for p in pwms[j]]
            s[slot * motif_len:(slot + 1) * motif_len] = site
            sites.append((i + 1, EXAMPLE_LABELS[j], slot * motif_len, (slot + 1) * motif_len))
        seqs.append("".join("ACGT"[b] for b in s))
    # label noise: a few positives missed, and false positives at a rate that scales with prevalence,
    # so that even the rarest label keeps a clean majority of true positives
    prevalence = y.mean(0)
    flip = np.where(y, rng.rand(n, L) < noise, rng.rand(n, L) < noise * prevalence)
    y ^= flip
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("sequence\tlabels\n")
        for s, row in zip(seqs, y):
            f.write(s + "\t" + ",".join(EXAMPLE_LABELS[j] for j in np.flatnonzero(row)) + "\n")
    with open(os.path.splitext(path)[0] + ".motifs.tsv", "w") as f:
        f.write("row\tlabel\tstart\tend\n" + "".join("\t".join(map(str, site)) + "\n" for site in sites))
    from memelite.io import write_meme  # the planted motifs as a motif database, what interpret.py motifs matches
    write_meme(os.path.splitext(path)[0] + ".motifs.meme", {n: pwm.T for n, pwm in zip(EXAMPLE_LABELS, pwms)})
    return path


CONFLICT_LABELS = ["leaf", "root", "flower", "shade"]


def make_conflict_example(path="data/conflict/conflict.tsv", n=6000, seed=0, motif_len=12):
    """A case of negative transfer, built on purpose. A shared motif S is planted in half of the sequences; leaf,
    root and flower (about 17% each) are positive where their own motif and S are both present, so S is a strong
    cue for each of them; shade (about 6%) is positive where its own motif is present and S is absent, so for
    shade S is a cue against. A narrow shared backbone trained on all four learns S for the many and serves the
    rare label that needs its absence badly; alone, shade is learned well. Written like the example: a TSV, and
    where each motif was planted (conflict.motifs.tsv, with S as 'shared')."""
    rng = np.random.RandomState(seed)
    consensus = rng.randint(0, 4, size=(5, motif_len))  # 0-2: leaf, root, flower; 3: shade; 4: the shared S
    shared = rng.rand(n) < 0.5
    own = rng.rand(n, 4) < np.array([0.35, 0.35, 0.35, 0.12])
    y = np.zeros((n, 4), bool)
    y[:, :3] = own[:, :3] & shared[:, None]
    y[:, 3] = own[:, 3] & ~shared
    seqs, sites = [], []
    for i in range(n):
        s = rng.randint(0, 4, size=rng.randint(150, 301))
        planted = [k for k in range(4) if own[i, k]] + ([4] if shared[i] else [])
        for k, slot in zip(planted, rng.permutation(len(s) // motif_len)[:len(planted)]):
            s[slot * motif_len:(slot + 1) * motif_len] = np.where(rng.rand(motif_len) < 0.95, consensus[k],
                                                                  rng.randint(0, 4, motif_len))
            sites.append((i + 1, (CONFLICT_LABELS + ["shared"])[k], slot * motif_len, (slot + 1) * motif_len))
        seqs.append("".join("ACGT"[b] for b in s))
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        f.write("sequence\tlabels\n")
        f.writelines(s + "\t" + ",".join(CONFLICT_LABELS[j] for j in np.flatnonzero(row)) + "\n"
                     for s, row in zip(seqs, y))
    with open(os.path.splitext(path)[0] + ".motifs.tsv", "w") as f:
        f.write("row\tlabel\tstart\tend\n" + "".join("\t".join(map(str, site)) + "\n" for site in sites))
    return path


LONG_LABELS = ["leaf", "root", "flower"]


def make_long_example(path="data/long/long.tsv", n=6000, length=2000, seed=0, motif_len=12):
    """Sequences longer than a model's window: length bases each, and a label (leaf about 30%, root 25%, flower
    15%) where its motif is planted, at a place drawn uniformly over the whole sequence, so that a model that reads
    only the first 500 bases sees about a quarter of them. Written like the example, with the planted sites beside it
    (long.motifs.tsv)."""
    rng = np.random.RandomState(seed)
    consensus = rng.randint(0, 4, size=(len(LONG_LABELS), motif_len))
    y = rng.rand(n, len(LONG_LABELS)) < np.array([0.30, 0.25, 0.15])
    seqs, sites = [], []
    for i in range(n):
        s = rng.randint(0, 4, size=length)
        labels = np.flatnonzero(y[i])
        for j, slot in zip(labels, rng.permutation(length // motif_len)[:len(labels)]):
            s[slot * motif_len:(slot + 1) * motif_len] = np.where(rng.rand(motif_len) < 0.95, consensus[j],
                                                                  rng.randint(0, 4, motif_len))
            sites.append((i + 1, LONG_LABELS[j], slot * motif_len, (slot + 1) * motif_len))
        seqs.append("".join("ACGT"[b] for b in s))
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        f.write("sequence\tlabels\n")
        f.writelines(s + "\t" + ",".join(LONG_LABELS[j] for j in np.flatnonzero(row)) + "\n" for s, row in zip(seqs, y))
    with open(os.path.splitext(path)[0] + ".motifs.tsv", "w") as f:
        f.write("row\tlabel\tstart\tend\n" + "".join("\t".join(map(str, site)) + "\n" for site in sites))
    return path
