"""
Intervals on a genome: BED and narrowPeak files read and checked, a set of intervals that answers for many windows
at once how many of their bases it covers, and chr:start-end ids parsed back into coordinates.
"""
import gzip
import re

import numpy as np

from data import DataError, check_file

COORDINATES = re.compile(r"^(.+):(\d+)-(\d+)(\([+-.]\))?$")  # chr1:100-600, and bedtools' chr1:100-600(+)


def read_intervals(path, genome, strict=False):
    """A BED (3 or more columns) or narrowPeak file as arrays (chrom index, start, end, summit): the summit is the
    narrowPeak's 10th column (an offset from start; -1 = none), else the centre. '#', 'track' and 'browser' lines
    are skipped. A chromosome the genome lacks is counted, not an error, unless no line is on the genome, or
    strict. Returns (arrays, {missing chromosome: lines})."""
    check_file(path)
    chroms, starts, ends, summits, missing = [], [], [], [], {}
    index, lengths = genome.index, genome.lengths.tolist()
    with (gzip.open if path.endswith(".gz") else open)(path, "rt") as f:
        for n, line in enumerate(f, 1):
            fields = line.split("\t")
            if len(fields) < 3 or line[0] in "#tb \r\n":  # the rare lines: comments, headers, blank, spaces
                if not line.strip() or line.startswith(("#", "track", "browser")):
                    continue
                fields = line.split()
                if len(fields) < 3:
                    raise DataError(f"{path}:{n}: {len(fields)} fields (expected at least chrom, start and end)")
            try:
                start, end = int(fields[1]), int(fields[2])
                summit = int(fields[9]) if len(fields) == 10 else -1  # narrowPeak has 10 columns, BED12 12
            except ValueError:
                raise DataError(f"{path}:{n}: start, end or summit is not an integer (expected 0-based BED "
                                f"coordinates)") from None
            chrom = index.get(fields[0])
            if chrom is None and strict:
                raise DataError(f"{path}:{n}: chromosome '{fields[0]}' is not in the genome, which names "
                                f"{', '.join(genome.names[:5])}{', ...' if len(genome.names) > 5 else ''} (expected "
                                f"the same genome build and chromosome names)")
            if chrom is None:
                missing[fields[0]] = missing.get(fields[0], 0) + 1
                continue
            if not 0 <= start < end <= lengths[chrom]:
                raise DataError(f"{path}:{n}: start {start} and end {end} (expected 0 <= start < end)"
                                if not 0 <= start < end else f"{path}:{n}: end {end} is past the end of {fields[0]} "
                                f"({lengths[chrom]} bp; expected coordinates on this genome build)")
            chroms.append(chrom)
            starts.append(start)
            ends.append(end)
            summits.append(start + summit if 0 <= summit < end - start else (start + end) // 2)
    if not chroms and missing:
        raise DataError(f"{path}: none of its chromosomes ({', '.join(list(missing)[:5])}) is in the genome, which "
                        f"names {', '.join(genome.names[:5])}{', ...' if len(genome.names) > 5 else ''} (expected "
                        f"the same genome build and chromosome names)")
    return tuple(np.array(x, np.int64) for x in (chroms, starts, ends, summits)), missing


class Intervals:
    """A set of intervals, per chromosome, that answers for many windows at once, with binary search: how many of
    a window's bases lie in the set (its intervals merged), and whether one of its intervals lies in it whole."""

    def __init__(self, chroms, starts, ends, n_chroms):
        order = np.lexsort((starts, chroms))
        chroms, starts, ends = chroms[order], starts[order], ends[order]
        self.parts = []
        for c in range(n_chroms):
            s, e = starts[chroms == c], ends[chroms == c]
            reach = np.maximum.accumulate(e) if len(s) else e
            first = np.flatnonzero(np.r_[True, s[1:] > reach[:-1]]) if len(s) else np.zeros(0, np.int64)
            merged_s, merged_e = s[first], reach[np.r_[first[1:] - 1, len(s) - 1]] if len(s) else e
            # the smallest end of the intervals that start at or after each one: for "one lies in it whole"
            shortest = np.minimum.accumulate(e[::-1])[::-1]
            self.parts.append((merged_s, merged_e, np.r_[0, np.cumsum(merged_e - merged_s)], s, shortest))

    def covered(self, chrom, starts, ends):
        """Bases of each window [starts, ends) on chrom that lie in the set."""
        s, e, total = self.parts[chrom][:3]
        if not len(s):
            return np.zeros(len(starts), np.int64)

        def upto(x):  # covered bases before position x: the whole intervals before, and part of the one at x
            j = np.maximum(np.searchsorted(s, x, "right") - 1, 0)
            return np.where(x > s[0], total[j] + np.minimum(x, e[j]) - s[j], 0)
        return upto(ends) - upto(starts)

    def contains_whole(self, chrom, starts, ends):
        s, shortest = self.parts[chrom][3:]
        j = np.searchsorted(s, starts, "left")  # the intervals that start in the window or after it
        return (j < len(s)) & (shortest[np.minimum(j, len(s) - 1)] <= ends) if len(s) else np.zeros(len(starts), bool)


def parse_coordinates(ids):
    """chrom, start, end of each 'chr:start-end' id, or None for the first id that has no coordinates."""
    chroms, starts, ends = [], [], []
    for i, rid in enumerate(ids):
        m = COORDINATES.match(str(rid))
        if not m:
            return None, i
        chroms.append(m.group(1)), starts.append(int(m.group(2))), ends.append(int(m.group(3)))
    return (np.array(chroms), np.array(starts, np.int64), np.array(ends, np.int64)), None
