"""
What a label learned across many sequences: in-silico mutagenesis turned into per-base contributions, TF-MoDISco
(modisco-lite, the field's maintained implementation) on them, and each motif it finds matched to a motif database
in MEME format with Tomtom (memelite's). interpret.py motifs runs them; this module holds the pieces.

    hypothetical(delta)          ISM's logit changes -> hypothetical contributions, mean-centred per position
    stack(seqs, hyps)            sequences and their contributions as TF-MoDISco's arrays of one length
    find_motifs(...)             TF-MoDISco's patterns of one label, positive and negative, trimmed
    read_motif_db(path)          a MEME file, checked line by line
    match(motifs, db)            each motif's best matches, with Tomtom's q-values
"""
import re
import warnings
from dataclasses import dataclass

import numpy as np

from data import DataError
from training.console import log
from analysis.pictures import BASES

TRIM = 0.3  # a motif keeps the span of positions whose contribution reaches this share of its strongest
FLANK = 2  # and this many positions on either side of it
# Leiden clusterings per round, the best kept: modisco-lite's function runs 50 and its command line 2. On the
# example, 10 found the same top motifs as 50 in a fifth of the time (about 12 s a label for 500 sequences).
LEIDEN_RUNS = 10
# the contribution past a sequence's end: modisco-lite's similarity of two windows of zeros is 0/0, a nan that stops
# its clustering
PAD = 1e-9


@dataclass(eq=False)  # compared by identity: its arrays have no one truth value
class Motif:
    label: str
    sign: str  # "+": bases that raise the label's logit; "-": bases that lower it
    index: int  # its rank within the label and sign, by the contribution it carries (total)
    seqlets: int
    ppm: np.ndarray  # (width, 4): the base frequencies of its seqlets
    cwm: np.ndarray  # (width, 4): their mean contributions

    @property
    def total(self):
        """The contribution its seqlets carry in all: seqlets x the sum of its mean contribution."""
        return self.seqlets * abs(float(self.cwm.sum()))

    @property
    def name(self):
        return f"{self.label}_{'pos' if self.sign == '+' else 'neg'}_{self.index}"

    @property
    def consensus(self):
        return "".join(BASES[i] for i in self.ppm.argmax(1))


def hypothetical(delta):
    """delta (positions, 4, labels): the change in logit when a base becomes A, C, G or T (0 at the reference).
    Returns the hypothetical contribution of each base: its change minus the mean of the four, so that the four
    sum to 0 at every position; at the reference base, it is the actual base's importance."""
    return delta - delta.mean(1, keepdims=True)


def stack(seqs, hyps):
    """Sequences of different lengths as TF-MoDISco's arrays of one length, the longest: (n, length, 4) one-hot,
    where N and the positions past a sequence's end count a quarter for each base, and (n, length, 4) hypothetical
    contributions, PAD past a sequence's end."""
    length = max(len(s) for s in seqs)
    one_hot = np.full((len(seqs), length, 4), 0.25, np.float32)
    hyp = np.full((len(seqs), length, 4), PAD, np.float32)
    code = np.full(256, -1)
    code[list(b"ACGT")] = [0, 1, 2, 3]
    for i, (seq, h) in enumerate(zip(seqs, hyps)):
        x = code[np.frombuffer(seq.encode(), np.uint8)]
        called = np.flatnonzero(x >= 0)
        one_hot[i, called] = 0
        one_hot[i, called, x[called]] = 1
        hyp[i, :len(seq)] = h
    return one_hot, hyp


def find_motifs(label, one_hot_seqs, hyp, min_seqlets):
    """TF-MoDISco on one label's sequences (one_hot_seqs, hyp: (n, length, 4), as stack makes them). Returns its
    Motifs, positive then negative, each by the contribution it carries; a sign with fewer than min_seqlets seqlets
    finds none."""
    from modiscolite.tfmodisco import TFMoDISco
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # modisco-lite's numpy and numba warnings say nothing a user can act on
        found = TFMoDISco(one_hot_seqs.astype(np.float32), hyp.astype(np.float32), min_metacluster_size=min_seqlets,
                          final_min_cluster_size=max(min_seqlets // 5, 5), n_leiden_runs=LEIDEN_RUNS, verbose=False)
    motifs = []
    for sign, patterns in zip("+-", found):
        for pattern in patterns or []:
            ppm, cwm = trim(np.asarray(pattern.sequence), np.asarray(pattern.contrib_scores))
            motifs.append(Motif(label, sign, 0, len(pattern.seqlets), ppm, cwm))
    # the motif that carries most of the label's contribution first: a motif of another label that is common in
    # these sequences can have more seqlets, each of which moves this label's logit little
    motifs.sort(key=lambda m: (m.sign, -m.total))
    for sign in "+-":
        for k, m in enumerate(m for m in motifs if m.sign == sign):
            m.index = k
    return motifs


def trim(ppm, cwm):
    """The span where the contributions are, with FLANK positions on either side."""
    strength = np.abs(cwm).sum(1)
    keep = np.flatnonzero(strength >= TRIM * strength.max())
    start, end = max(keep.min() - FLANK, 0), min(keep.max() + 1 + FLANK, len(strength))
    return ppm[start:end], cwm[start:end]


def read_motif_db(path):
    """A MEME motif file (e.g. a JASPAR export) as {name: (width, 4) probabilities}. Anything else is a one-line
    DataError naming the line."""
    try:
        lines = open(path).read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read the motif database ({e})") from None
    first = next((n for n, line in enumerate(lines, 1) if line.strip()), 1)
    if not lines or not lines[first - 1].startswith("MEME version"):
        raise DataError(f"{path}:{first}: not a MEME motif file (expected 'MEME version 4' first, as JASPAR's and "
                        f"MEME's exports begin)")
    motifs, name, rows, width, start = {}, None, [], 0, 0
    for n, line in enumerate(lines, 1):
        fields = line.split()
        if line.startswith("MOTIF"):
            if len(fields) < 2:
                raise DataError(f"{path}:{n}: a MOTIF line without a name (expected 'MOTIF id [name]')")
            name, rows = " ".join(fields[1:]), []
        elif line.startswith("letter-probability matrix"):
            found = re.search(r"\bw=\s*(\d+)", line)
            if name is None or not found:
                raise DataError(f"{path}:{n}: a letter-probability matrix without its MOTIF line or its w= width")
            width, start = int(found.group(1)), n
        elif width and len(rows) < width and fields:
            try:
                row = [float(x) for x in fields]
            except ValueError:
                row = []
            if len(row) != 4 or abs(sum(row) - 1) > 0.02:
                raise DataError(f"{path}:{n}: '{line.strip()}' (expected 4 probabilities of A, C, G and T that sum "
                                f"to 1, row {len(rows) + 1} of the {width} of motif '{name}' from line {start})")
            rows.append(row)
            if len(rows) == width:
                motifs[name], width = np.array(rows), 0
    if width:
        raise DataError(f"{path}:{len(lines)}: motif '{name}' ends after {len(rows)} of its {width} rows")
    if not motifs:
        raise DataError(f"{path}: no motifs (expected MOTIF lines, each followed by a letter-probability matrix)")
    return motifs


def match(motifs, db, top=3):
    """Per motif, its top database motifs as (name, q-value), best first. Tomtom's p-values, for each motif
    against every motif of the database; q-values by Benjamini-Hochberg over those, per motif."""
    if not motifs:
        return []
    from memelite.tomtom import tomtom
    if len(db) < 25:
        log(f"note: the motif database has {len(db)} motifs: Tomtom's p-values rest on the columns of the database, "
            f"and with fewer than 25 motifs they are rough")
    names, targets = list(db), [m.T for m in db.values()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = tomtom([m.ppm.T for m in motifs], targets)[0]
    out = []
    for row in np.atleast_2d(p):
        order = np.argsort(row, kind="stable")
        ranked = row[order] * len(row) / np.arange(1, len(row) + 1)
        q = np.minimum.accumulate(ranked[::-1])[::-1].clip(max=1)  # Benjamini-Hochberg, monotone
        out.append([(names[i], float(q[k])) for k, i in enumerate(order[:top])])
    return out
