"""
Predictions along a genome: regions tiled with a run's window at a stride, and each label's score written as a
browser track (bigWig, through pyBigWig; bedGraph on request) and, on request, as peaks (a BED of the merged
stretches at or above the label's threshold).

The rule for a base: the windows' centres lie a stride apart, so the central stride of each window (the stride
bases around its centre) tiles the region, and each base takes the score of the one window whose central stride
covers it. The first and last window of a region also cover the region's ends, and where a region's length is not
a whole number of strides past the window, one more window ends at the region's end and takes the bases past the
previous one's central stride.
"""
import json
import os

import numpy as np

from data import DataError

CHUNK = 8192  # windows fetched, scored and written at a time: memory stays bounded on any genome


def tile(regions, window, stride, chunk=CHUNK):
    """regions: (chrom index, start, end) in genome order, not overlapping. Yields chunks of windows as arrays
    (chrom, window start, span start, span end), the span being the bases the window's score covers."""
    parts, held = [], 0  # held: the windows in parts, counted as they come (a BED may hold many small regions)
    for chrom, a, b in regions:
        starts = np.arange(a, b - window + 1, stride, dtype=np.int64)
        if starts[-1] + window < b:
            starts = np.r_[starts, b - window]  # the region's tail
        first = starts + (window - stride) // 2
        first[0] = a
        last = np.r_[first[1:], b]
        parts.append((np.full(len(starts), chrom), starts, first, last))
        held += len(starts)
        while held >= chunk:
            merged = [np.concatenate(x) for x in zip(*parts)]
            yield [x[:chunk] for x in merged]
            parts, held = [[x[chunk:] for x in merged]], held - chunk
    if held:
        yield [np.concatenate(x) for x in zip(*parts)]


def claim_folder(folder, run, overwrite):
    """The tracks folder, made or reused: one holding another run's tracks (or tracks of no known run) is refused
    unless overwrite, as train.py refuses another run's output_dir. run names the run; it is written to
    tracks.json."""
    marker = os.path.join(folder, "tracks.json")
    if os.path.isdir(folder) and not overwrite:
        if os.path.exists(marker):
            with open(marker) as f:
                theirs = json.load(f).get("run")
            if theirs != run:
                raise DataError(f"{folder}: holds the tracks of another run ({theirs}; expected an empty folder or "
                                f"this run's, or --overwrite to replace them)")
        elif any(f.endswith((".bw", ".bigWig", ".bedGraph")) for f in os.listdir(folder)):
            raise DataError(f"{folder}: holds tracks of an unknown run (expected an empty folder, or --overwrite "
                            f"to replace them)")
    try:
        os.makedirs(folder, exist_ok=True)
        with open(marker, "w") as f:
            json.dump({"run": run}, f)
    except OSError as e:
        raise DataError(f"{folder}: cannot write the tracks there ({e.strerror})") from None


class Tracks:
    """Per label a bigWig (and a bedGraph, and a BED of peaks, when asked), written a chunk at a time into
    temporary files that take their names in close(); a failed run leaves none behind. Also the mean score inside
    and outside each label's true peaks (truth: Intervals per label, or None), for the report."""

    def __init__(self, folder, names, genome, *, bedgraph=False, peaks=None, truth=None):
        import pyBigWig  # the field's bigWig library: imported here, as only tracks need it
        self.folder, self.names, self.genome, self.peaks, self.truth = folder, names, genome, peaks, truth
        self.paths = [os.path.join(folder, f"{n}.bw") for n in names]
        self.bigwigs = [pyBigWig.open(p + ".tmp", "w") for p in self.paths]
        for bw in self.bigwigs:
            bw.addHeader(list(zip(genome.names, genome.lengths.tolist())))
        self.texts = [open(os.path.join(folder, f"{n}.bedGraph.tmp"), "w") for n in names] if bedgraph else []
        for f, n in zip(self.texts, names):
            f.write(f"track type=bedGraph name={n} description=\"{n} predicted\"\n")
        self.beds = [open(os.path.join(folder, f"{n}.peaks.bed.tmp"), "w") for n in names] if peaks is not None else []
        self.open_peak = [None] * len(names)  # (chrom, start, end, best) of a stretch still growing
        self.sums = np.zeros((len(names), 4))  # inside: score x bases, bases; outside: the same

    def add(self, chrom, first, last, probs):
        """One chunk: spans [first, last) on chromosomes chrom (indices), and their probabilities (n, labels)."""
        names = [self.genome.names[c] for c in chrom.tolist()]
        starts, ends = first.tolist(), last.tolist()
        for j, bw in enumerate(self.bigwigs):
            bw.addEntries(names, starts, ends=ends, values=probs[:, j].astype(np.float64).tolist())
        for j, f in enumerate(self.texts):
            f.writelines(f"{c}\t{a}\t{b}\t{v:.4g}\n" for c, a, b, v in zip(names, starts, ends, probs[:, j].tolist()))
        for j, f in enumerate(self.beds):
            self.grow_peaks(j, f, chrom, first, last, probs[:, j])
        if self.truth is not None:
            size = (last - first).astype(np.float64)
            for j, peaks in enumerate(self.truth):
                inside = np.zeros(len(first))
                for c in np.unique(chrom):
                    on = chrom == c
                    inside[on] = peaks.covered(c, first[on], last[on])
                self.sums[j] += [probs[:, j] @ inside, inside.sum(), probs[:, j] @ (size - inside),
                                 (size - inside).sum()]

    def grow_peaks(self, j, f, chrom, first, last, p):
        """Stretches of adjacent spans at or above the threshold, merged, carried across chunks."""
        for c, a, b, v in zip(chrom.tolist(), first.tolist(), last.tolist(), p.tolist()):
            now = self.open_peak[j]
            if now and (now[0] != c or now[2] != a or v < self.peaks[j]):
                self.write_peak(j, f)
                now = None
            if v >= self.peaks[j]:
                self.open_peak[j] = (c, a, b, max(v, now[3])) if now else (c, a, b, v)

    def write_peak(self, j, f):
        c, a, b, best = self.open_peak[j]
        f.write(f"{self.genome.names[c]}\t{a}\t{b}\t{self.names[j]}\t{int(round(1000 * best))}\n")
        self.open_peak[j] = None

    def close(self, keep=True):
        """Closes the files; with keep, they take their names, else they are removed."""
        for j, f in enumerate(self.beds):
            if keep and self.open_peak[j]:
                self.write_peak(j, f)
        tmp = [p + ".tmp" for p in self.paths] + [f.name for f in self.texts + self.beds]
        for bw in self.bigwigs:
            bw.close()
        for f in self.texts + self.beds:
            f.close()
        for path in tmp:
            if keep:
                os.replace(path, path[:-4])
            elif os.path.exists(path):
                os.remove(path)

    def contrast(self):
        """Per label (mean score inside its true peaks, outside, bases inside), or None without truth."""
        if self.truth is None:
            return None
        s = self.sums
        return [(s[j, 0] / max(s[j, 1], 1), s[j, 2] / max(s[j, 3], 1), int(s[j, 1])) for j in range(len(self.names))]
