"""
From peaks to windows: candidate windows on peak summits or genome bins, a label where enough of a window lies in
that label's peaks, negatives drawn from the genome with matched GC content, and the windows written as a TSV or
FASTA by many processes at once. The genome is opened once in each worker process (GENOME), which reads its bases
from the shared memory map.
"""
import gzip
import os
import shutil

import numpy as np

from data import is_fasta
from training.console import log, progress_bar
from genomics.genome import COMPOSITION, Genome
from genomics.intervals import read_intervals

CHUNK = 8192  # windows fetched at a time
GC_BINS = np.linspace(0, 1, 51)  # GC matching keeps the labelled windows' share in each bin of 0.02
GENOME = {}  # the genome, opened once in each process that reads it


def open_genome(path, cache_dir):
    GENOME["genome"] = Genome(path, cache_dir)
    return GENOME["genome"]


def candidates(p, genome, regions):
    """Windows (chromosome index, start), sorted and unique, and how many fell off a chromosome end."""
    width = p["window"]
    if p["windows"] == "bins":
        chrom = np.concatenate([np.full(max((n - width) // p["stride"] + 1, 0), c)
                                for c, n in enumerate(genome.lengths)])
        start = np.concatenate([np.arange(0, n - width + 1, p["stride"]) for n in genome.lengths])
        return chrom.astype(np.int64), start.astype(np.int64), 0
    chrom = np.concatenate([r[0] for r in regions])
    start = np.concatenate([r[3] for r in regions]) - width // 2  # centred on each summit
    inside = (start >= 0) & (start + width <= genome.lengths[chrom])
    key = np.sort(chrom[inside] * (int(genome.lengths.max()) + 1) + start[inside])
    key = key[np.r_[True, key[1:] != key[:-1]]]  # a window once, however many summits it is centred on
    return key // (int(genome.lengths.max()) + 1), key % (int(genome.lengths.max()) + 1), int((~inside).sum())


def by_chrom(chrom, fn):
    """fn(chromosome, rows) over the windows of each chromosome (chrom is sorted), joined back in order."""
    bounds = np.searchsorted(chrom, np.arange(chrom.max() + 2 if len(chrom) else 1))
    parts = [fn(c, np.arange(bounds[c], bounds[c + 1])) for c in range(len(bounds) - 1) if bounds[c + 1] > bounds[c]]
    return np.concatenate(parts) if parts else np.zeros(0, bool)


def marks(intervals, chrom, start, width, need):
    """Whether each window carries the label of these peaks: need bp of it lie in them, or one lies in it whole."""
    def one(c, rows):
        s, e = start[rows], start[rows] + width
        return (intervals.covered(c, s, e) >= need) | intervals.contains_whole(c, s, e)
    return by_chrom(chrom, one)


def touches(intervals, chrom, start, width):
    return by_chrom(chrom, lambda c, rows: intervals.covered(c, start[rows], start[rows] + width) > 0)


def read_peaks(path):
    return read_intervals(path, GENOME["genome"])


def base_content(workers, chrom, start, width, rows, max_n):
    """GC share of the called bases and whether N exceeds max_n, for the windows in rows (others get 0)."""
    gc, too_many_n = np.zeros(len(chrom)), np.zeros(len(chrom), bool)
    parts = np.array_split(np.flatnonzero(rows), max(1, int(rows.sum()) // CHUNK))
    for part, (strong, other) in zip(parts, workers.starmap(composition, [(chrom[i], start[i], width)
                                                                          for i in parts])):
        gc[part] = strong / np.maximum(width - other, 1)
        too_many_n[part] = other > max_n * width
    return gc, too_many_n


def composition(chrom, start, width):
    """G or C, and other than A, C, G or T, in each window: counts."""
    x = GENOME["genome"].windows(chrom, start, width, COMPOSITION)
    other = np.count_nonzero(x == 2, axis=1)
    return x.sum(1, dtype=np.int64) - 2 * other, other


def negatives(genome, workers, blocked, p, *, n, target_gc, rng):
    """n windows with no base in blocked (any peak or excluded region), and at most max_n N, drawn at random; with
    gc_match, as many in each GC bin as the labelled windows have (scaled to n), and where the genome cannot fill
    a bin, the left-over windows nearest in GC. Returns (chromosome, start, GC)."""
    width = p["window"]
    room = np.r_[0, np.cumsum(np.maximum(genome.lengths - width + 1, 0))]  # window starts, genome-wide
    want = np.full(len(GC_BINS) - 1, n)  # without gc_match, any bin will do
    if p["gc_match"]:  # whole numbers per bin that sum to n, in the labelled windows' proportions
        share = np.histogram(target_gc, GC_BINS)[0] * (n / len(target_gc))
        want = np.floor(share).astype(np.int64)
        want[np.argsort(-(share % 1))[:n - want.sum()]] += 1
    got, chosen, taken, kept, spare = np.zeros_like(want), [], np.zeros(0, np.int64), 1.0, None
    for _ in range(50):
        left = n - len(taken)
        if left <= 0 or len(chosen) > 2 and len(chosen[-1][0]) < 0.01 * left:  # the rest cannot be matched
            break
        m = int(min(max(1.2 * left / max(kept, 0.02), 4096), 8 * n + 4096))  # as many as the last round needed
        at = np.sort(rng.integers(0, room[-1], m))  # sorted, so in genome order
        at = at[np.r_[True, at[1:] != at[:-1]]]  # drawn twice counts once
        chrom = np.searchsorted(room, at, "right") - 1
        start = at - room[chrom]
        free = ~touches(blocked, chrom, start, width)
        if len(taken):  # not chosen in an earlier round
            free &= taken[np.minimum(np.searchsorted(taken, at), len(taken) - 1)] != at
        gc, too_many_n = base_content(workers, chrom, start, width, free, p["max_n"])
        rows = rng.permutation(np.flatnonzero(free & ~too_many_n))
        b = np.clip(np.digitize(gc[rows], GC_BINS) - 1, 0, len(want) - 1)
        by_bin = np.argsort(b, kind="stable")  # the order of each window within its bin
        rank = np.empty(len(rows), np.int64)
        rank[by_bin] = np.arange(len(rows)) - np.searchsorted(b[by_bin], b[by_bin])
        ok = rank < (want - got)[b] if p["gc_match"] else np.arange(len(rows)) < left
        got += np.bincount(b[ok], minlength=len(want))
        kept = ok.sum() / m
        chosen.append((at[rows[ok]], gc[rows[ok]]))
        spare = (at[rows[~ok]], gc[rows[~ok]])
        taken = np.sort(np.r_[taken, at[rows[ok]]])
    picked, gc = (np.concatenate([c[k] for c in chosen]) if chosen else np.zeros(0) for k in range(2))
    if len(picked) < n and spare is not None:  # bins the genome could not fill: left-over windows nearest in GC
        near = np.argsort(np.abs(spare[1] - target_gc.mean()), kind="stable")[:n - len(picked)]
        picked, gc = np.r_[picked, spare[0][near]], np.r_[gc, spare[1][near]]
    if len(picked) < n:
        log(f"warning: prepare: only {len(picked):,} of {n:,} negatives found (the genome has little room outside "
            f"the peaks, excluded regions and N)")
    chrom = np.searchsorted(room, picked.astype(np.int64), "right") - 1
    return chrom, picked.astype(np.int64) - room[chrom], gc


def write(path, workers, chrom, start, *, width, labels, names, sep):
    """The windows in genome order, as a TSV (id, sequence, labels) or FASTA (>labels::id), written aside and
    renamed when complete. The workers write consecutive parts: into their places in the file, whose line lengths
    are known in advance, or for .gz as gzip members (a gzip file may hold many), joined in order."""
    packed = np.ascontiguousarray(np.packbits(labels, axis=1))
    combos, which = np.unique(packed.view(np.dtype((np.void, packed.shape[1]))).ravel(), return_inverse=True)
    cells = [sep.join(n for n, y in zip(names, row) if y).encode() for row in np.unpackbits(  # each combination
        np.frombuffer(combos.tobytes(), np.uint8).reshape(len(combos), -1), axis=1, count=len(names)).astype(bool)]
    fasta, gz, tmp = is_fasta(path), path.endswith(".gz"), path + ".tmp"
    header = b"" if fasta else b"id\tsequence\tlabels\n"
    # bytes of each line: chrom:start-end, the bases, the labels, and the tabs, newlines and '>' or '::'
    digits = [np.searchsorted(10 ** np.arange(1, 19), x, "right") + 1 for x in (start, start + width)]
    parts = np.array_split(np.arange(len(chrom)), max(1, min(len(chrom) // CHUNK, 16)))
    chrom_len = np.array([len(n.encode()) for n in GENOME["genome"].names])[chrom]
    cell_len = np.array([len(c) for c in cells])[which]
    line = chrom_len + digits[0] + digits[1] + width + cell_len + (7 if fasta else 5)
    ends = len(header) + np.cumsum(line)
    parts = [r for r in parts if len(r)]
    at = [len(header) if r[0] == 0 else int(ends[r[0] - 1]) for r in parts]  # where each part starts
    jobs = [(f"{tmp}.{i}" if gz else tmp, at[i], chrom[r], start[r], which[r], width, cells, fasta, gz)
            for i, r in enumerate(parts)]
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    try:
        with open(tmp, "wb") as out, progress_bar(total=len(chrom), desc="writing windows", unit="window") as bar:
            out.write(gzip.compress(header) if gz and header else header)
            if not gz:
                out.truncate(int(ends[-1]) if len(ends) else len(header))
            out.flush()
            for (part, first, *_), rows, written in zip(jobs, parts, workers.imap(write_part, jobs)):
                if written != ends[rows[-1]] - first:
                    raise RuntimeError(f"{part}: {written} bytes where {ends[rows[-1]] - first} were expected")
                if gz:
                    with open(part, "rb") as f:
                        shutil.copyfileobj(f, out, 1 << 24)
                    os.remove(part)
                bar.update(len(rows))
        os.replace(tmp, path)
    except BaseException:
        for f in {tmp} | {job[0] for job in jobs}:
            if os.path.exists(f):
                os.remove(f)
        raise
    return len(chrom)


def write_part(job):
    """One part of the output, formatted and written by a worker: at its place in the file, or as a gzip member
    of its own. Returns the bytes written."""
    path, at, chrom, start, which, width, cells, fasta, gz = job
    genome = GENOME["genome"]
    names, written = [n.encode() for n in genome.names], 0
    with (gzip.open(path, "wb", compresslevel=4) if gz else open(path, "r+b")) as f:
        for i in range(0, len(chrom), CHUNK):
            c, s, k = chrom[i:i + CHUNK], start[i:i + CHUNK], which[i:i + CHUNK]
            rows = zip(c.tolist(), s.tolist(), genome.sequences(c, s, width), k.tolist())
            if fasta:
                text = b"".join(b">%b::%b:%d-%d\n%b\n" % (cells[k], names[c], s, s + width, q) for c, s, q, k in rows)
            else:
                text = b"".join(b"%b:%d-%d\t%b\t%b\n" % (names[c], s, s + width, q, cells[k]) for c, s, q, k in rows)
            if gz:
                f.write(text)
            else:
                os.pwrite(f.fileno(), text, at + written)
            written += len(text)
    return written
