"""
A genome and intervals on it: an indexed FASTA read by coordinates from a memory map (never the whole genome into
Python strings), its .fai index read and checked or built, BED and narrowPeak files read and checked, and the
coverage of windows by a set of intervals. Coordinates are 0-based and half-open, as in BED; ids are chr:start-end.
Also the generator of the genome example (python data.py writes it).
"""
import gzip
import mmap
import os
import re
import shutil
import zlib

import numpy as np

from data import DataError, check_file

# bytes -> uppercase bases; translate() with it, deleting line ends, turns a slice of the file into a sequence
UPPER = bytes.maketrans(b"acgtnryswkmbdhv", b"ACGTNRYSWKMBDHV")
# bytes -> 1 for G or C, 0 for A or T, 2 for anything else (N): what GC content and the N filter count
COMPOSITION = bytes(1 if b in b"GCgc" else 0 if b in b"ATat" else 2 for b in range(256))
COORDINATES = re.compile(r"^(.+):(\d+)-(\d+)(\([+-.]\))?$")  # chr1:100-600, and bedtools' chr1:100-600(+)


class Genome:
    """A FASTA genome, memory-mapped, with its .fai index (read and checked against the file, or built and saved
    beside it, or in cache_dir when that folder cannot be written). A .gz genome is decompressed once into
    cache_dir: gzip cannot be read by coordinates."""

    def __init__(self, path, cache_dir="cache"):
        check_file(path)
        self.path = plain_copy(path, cache_dir) if path.endswith(".gz") else path
        size = os.path.getsize(self.path)
        if size == 0:
            raise DataError(f"{path}:1: no sequences in the genome FASTA (expected '>name' lines and bases)")
        with open(self.path, "rb") as f:
            self.map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        # beside the genome, else in the cache, named by the genome's path so that no other genome's is read
        beside, tag = self.path + ".fai", zlib.crc32(os.path.abspath(self.path).encode())
        cached = os.path.join(cache_dir, f"{os.path.basename(self.path)}.{tag}.fai")
        self.fai = next((f for f in (beside, cached) if os.path.exists(f)), None)
        if self.fai:
            entries = read_fai(self.fai, self.map)
        else:
            entries = build_fai(self.path, self.map)
            self.fai = write_fai(entries, beside, cached)
        self.names = [e[0] for e in entries]
        self.index = {name: i for i, name in enumerate(self.names)}
        self.lengths, self.offsets, self.line_bases, self.line_bytes = \
            (np.array([e[k] for e in entries], np.int64) for k in range(1, 5))

    def byte_range(self, chroms, starts, ends):
        """Where the bases of [start, end) lie in the file: from the first byte to one past the last."""
        o, lb, lw = self.offsets[chroms], self.line_bases[chroms], self.line_bytes[chroms]
        return o + starts // lb * lw + starts % lb, o + (ends - 1) // lb * lw + (ends - 1) % lb + 1

    def fetch(self, chrom, start, end):
        """The bases of [start, end) on chromosome index chrom, uppercased, as bytes."""
        first, last = self.byte_range(chrom, start, end)
        return self.map[first:last].translate(UPPER, b"\r\n")

    def sequences(self, chroms, starts, length, table=UPPER):
        """The bases of equal-length windows, as a list of bytes, each translated by table."""
        first, last = self.byte_range(chroms, starts, starts + length)
        return [self.map[a:b].translate(table, b"\r\n") for a, b in zip(first.tolist(), last.tolist())]

    def windows(self, chroms, starts, length, table=UPPER):
        """The bases of equal-length windows as a (n, length) uint8 array."""
        seqs = b"".join(self.sequences(chroms, starts, length, table))
        return np.frombuffer(seqs, np.uint8).reshape(len(starts), length)


def plain_copy(path, cache_dir):
    """A gzipped genome decompressed into cache_dir, once: named by the file's size and time, kept for later runs."""
    stat = os.stat(path)
    out = os.path.join(cache_dir, f"{os.path.basename(path)[:-3]}.{stat.st_size}.{int(stat.st_mtime)}")
    if not os.path.exists(out):
        os.makedirs(cache_dir, exist_ok=True)
        try:
            with gzip.open(path, "rb") as src, open(out + ".tmp", "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 24)
        except (EOFError, OSError, zlib.error) as e:
            raise DataError(f"{path}: cannot decompress the genome ({e}; expected a complete gzip file)") from None
        os.replace(out + ".tmp", out)
    return out


def read_fai(path, fasta):
    """A .fai's entries (name, length, offset, bases per line, bytes per line), checked against the FASTA: each
    record must start after its '>name' line and end inside the file, else the index is of another file."""
    entries = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            fields = line.rstrip("\n").split("\t")
            try:
                name, length, offset, bases, width = fields[0], *map(int, fields[1:5])
            except ValueError:
                raise DataError(f"{path}:{n}: not a .fai line (expected name, length, offset, bases per line and "
                                f"bytes per line, tab-separated)") from None
            header_end = fasta.rfind(b"\n", 0, max(offset, 1))
            header = fasta[fasta.rfind(b"\n", 0, max(header_end, 0)) + 1:header_end].split()
            end = offset + (length - 1) // max(bases, 1) * width + (length - 1) % max(bases, 1)
            if header[:1] != [b">" + name.encode()] or end >= len(fasta) or bases < 1 or width <= bases:
                raise DataError(f"{path}:{n}: this index does not match {fasta_name(path)} (record '{name}' is not "
                                f"where it says; delete the .fai to have it rebuilt)")
            entries.append((name, length, offset, bases, width))
    if not entries:
        raise DataError(f"{path}:1: an empty .fai (delete it to have it rebuilt)")
    return entries


def fasta_name(fai):
    return os.path.basename(fai)[:-4]


def build_fai(path, fasta):
    """The .fai entries of a FASTA, as samtools faidx builds them: every line of a record but the last has the
    same length. Line ends are found with numpy, a chunk at a time, so a large genome indexes in seconds."""
    data = np.frombuffer(fasta, np.uint8)
    entries, pos = [], fasta.find(b">")
    if pos == -1 or fasta[:pos].strip():
        raise DataError(f"{path}:1: no '>' header before the bases (expected a FASTA genome)")
    while pos != -1:
        header_end = fasta.find(b"\n", pos)
        header_end = len(fasta) if header_end == -1 else header_end
        name = fasta[pos + 1:header_end].split(None, 1)
        line = int(np.count_nonzero(data[:pos] == 10)) + 1 if not name else None  # for messages only
        if not name:
            raise DataError(f"{path}:{line}: a FASTA header without a name (expected '>name')")
        start, nxt = header_end + 1, fasta.find(b"\n>", header_end)
        end = len(fasta) if nxt == -1 else nxt + 1
        ends = np.concatenate([np.flatnonzero(data[i:min(i + (1 << 26), end)] == 10) + i
                               for i in range(start, end, 1 << 26)] or [np.zeros(0, np.int64)])
        if end > start and (len(ends) == 0 or ends[-1] != end - 1):  # the file's last line has no line end
            ends = np.r_[ends, end]
        sizes = np.diff(np.r_[start - 1, ends])  # bytes of each line, its line end included
        cr = int(len(ends) > 0 and fasta[ends[0] - 1:ends[0]] == b"\r")
        bases = sizes - 1 - cr
        filled = np.flatnonzero(bases > 0)
        line = int(np.count_nonzero(data[:pos] == 10)) + 1 if len(filled) == 0 or \
            (bases[:filled[-1]] != bases[0]).any() or bases[filled[-1]] > bases[0] else None
        if len(filled) == 0:
            raise DataError(f"{path}:{line}: record '{name[0].decode()}' has no bases (expected sequence lines)")
        last = filled[-1]
        if line is not None:  # a line of another length, and not the record's last
            bad = int(np.flatnonzero(bases[:last + 1] != bases[0])[0])
            raise DataError(f"{path}:{line + 1 + bad}: a line of {bases[bad]} bases in record '{name[0].decode()}' "
                            f"whose lines have {bases[0]} (expected lines of one length, as samtools faidx does)")
        entries.append((name[0].decode(), int(bases[:last + 1].sum()), start, int(bases[0]), int(sizes[0])))
        pos = -1 if nxt == -1 else nxt + 1
    return entries


def write_fai(entries, *paths):
    """Writes the index at the first of paths that can be written; returns that path."""
    text = "".join("\t".join(map(str, e)) + "\n" for e in entries)
    for where in paths:
        try:
            os.makedirs(os.path.dirname(where) or ".", exist_ok=True)
            with open(where + ".tmp", "w") as f:
                f.write(text)
            os.replace(where + ".tmp", where)
            return where
        except OSError:
            continue  # a read-only genome folder: keep the index in the cache
    return None


# -----------------------------------------------------------------------------
# intervals

def read_intervals(path, genome):
    """A BED (3 or more columns) or narrowPeak file as arrays (chrom index, start, end, summit): the summit is the
    narrowPeak's 10th column (an offset from start; -1 = none), else the centre. '#', 'track' and 'browser' lines
    are skipped. A chromosome the genome lacks is counted, not an error, unless no line is on the genome.
    Returns (arrays, {missing chromosome: lines})."""
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


# -----------------------------------------------------------------------------
# the genome example

EXAMPLE_LABELS = ["leaf", "root", "flower"]
EXAMPLE_CHROMS = {"Chr1": 400_000, "Chr2": 350_000, "Chr3": 300_000, "Chr4": 250_000, "Chr5": 250_000}


def make_example(folder="data/genome", seed=0, motif_len=12, conservation=0.95):
    """A synthetic genome of five chromosomes and the peaks of three tissues on it. Each tissue's peaks carry its
    motif (a position weight matrix with a dominant base per position) near the summit and are richer in GC than
    the background, whose GC drifts between 0.30 and 0.42 in blocks of 20 kb, so that GC alone would tell peaks
    from negatives unless the negatives are GC-matched. Most flower peaks share a site with a leaf peak. Written as
    genome.fa (60 bases a line, 5 kb of N in Chr2), leaf.narrowPeak (with summits), root.bed (BED3 after a track
    line, with a few peaks on ChrM, which the genome lacks), flower.bed (BED6) and variants.vcf."""
    rng = np.random.RandomState(seed)
    consensus = rng.randint(0, 4, size=(len(EXAMPLE_LABELS), motif_len))
    genome, peaks = {}, {label: [] for label in EXAMPLE_LABELS}
    for name, n in EXAMPLE_CHROMS.items():
        gc = np.repeat(rng.uniform(0.30, 0.42, n // 20_000 + 1), 20_000)[:n]
        genome[name] = draw_bases(rng, gc)
    sites = []  # (chrom, start, end, summit, labels)
    for label, count in zip(EXAMPLE_LABELS, (300, 250, 80)):
        for _ in range(count):
            sites.append([label])
    for _ in range(140):  # flower with leaf
        sites.append(["leaf", "flower"])
    names, used = list(EXAMPLE_CHROMS), {name: [] for name in EXAMPLE_CHROMS}
    placed = []
    for labels in sites:
        while True:  # a free place, away from the chromosome ends and from other sites
            chrom = names[rng.randint(len(names))]
            width = rng.randint(150, 351)
            start = rng.randint(1_000, EXAMPLE_CHROMS[chrom] - 1_000 - width)
            if not (chrom == "Chr2" and 99_000 < start < 106_000) and \
                    all(abs(start - s) > 800 for s in used[chrom]):
                break
        used[chrom].append(start)
        placed.append((chrom, start, start + width, start + width // 2 + rng.randint(-20, 21), labels))
    # three peaks that test the builder: two at a chromosome end (their windows fall off it), one by the N run
    placed += [("Chr1", 20, 200, 110, ["leaf"]), ("Chr3", 299_800, 299_990, 299_900, ["root"]),
               ("Chr2", 99_900, 100_100, 100_000, ["root"])]
    leaf_motifs = []  # (chrom, first base) of each planted leaf motif
    for chrom, start, end, summit, labels in placed:
        seq = genome[chrom]
        seq[start:end] = draw_bases(rng, np.full(end - start, 0.5))
        for k, label in enumerate(labels):  # motifs side by side at the summit
            j = EXAMPLE_LABELS.index(label)
            at = summit - motif_len + k * (motif_len + 4)
            site = np.where(rng.rand(motif_len) < conservation, consensus[j], rng.randint(0, 4, motif_len))
            seq[at:at + motif_len] = np.frombuffer(b"ACGT", np.uint8)[site]
            if label == "leaf":
                leaf_motifs.append((chrom, at))
        for label in labels:
            peaks[label].append((chrom, start, end, summit))
    genome["Chr2"][100_000:105_000] = ord("N")
    os.makedirs(folder, exist_ok=True)
    write_example_variants(os.path.join(folder, "variants.vcf"), rng, genome, leaf_motifs, used)
    with open(os.path.join(folder, "genome.fa"), "w") as f:
        for name, seq in genome.items():
            text = seq.tobytes().decode()
            f.write(f">{name}\n" + "\n".join(text[i:i + 60] for i in range(0, len(text), 60)) + "\n")
    order = {label: sorted(p, key=lambda x: (x[0], x[1])) for label, p in peaks.items()}
    with open(os.path.join(folder, "leaf.narrowPeak"), "w") as f:
        for i, (c, s, e, summit) in enumerate(order["leaf"]):
            f.write(f"{c}\t{s}\t{e}\tleaf_{i}\t1000\t.\t{rng.uniform(5, 50):.2f}\t-1\t-1\t{summit - s}\n")
    with open(os.path.join(folder, "root.bed"), "w") as f:
        f.write("track name=root description=\"root ATAC-seq peaks\"\n# chrom start end\n")
        f.writelines(f"{c}\t{s}\t{e}\n" for c, s, e, _ in order["root"])
        f.writelines(f"ChrM\t{s}\t{s + 200}\n" for s in (100, 5_000, 9_000))  # not in the genome
    with open(os.path.join(folder, "flower.bed"), "w") as f:
        f.writelines(f"{c}\t{s}\t{e}\tflower_{i}\t0\t+\n" for i, (c, s, e, _) in enumerate(order["flower"]))
    return folder


def write_example_variants(path, rng, genome, leaf_motifs, used):
    """variants.vcf: 10 SNVs that change a base of a planted leaf motif, and 10 away from every peak."""
    rows = []
    for i in rng.choice(len(leaf_motifs), 10, replace=False):
        chrom, at = leaf_motifs[i]
        pos = at + rng.randint(2, 10)
        rows.append((chrom, pos, f"leaf_motif_{len(rows) + 1}"))
    while len(rows) < 20:
        chrom = list(EXAMPLE_CHROMS)[rng.randint(len(EXAMPLE_CHROMS))]
        pos = rng.randint(2_000, EXAMPLE_CHROMS[chrom] - 2_000)
        if all(abs(pos - s) > 1_500 for s in used[chrom]) and not (chrom == "Chr2" and 98_000 < pos < 107_000):
            rows.append((chrom, pos, f"background_{len(rows) - 9}"))
    with open(path, "w") as f:
        f.write("##fileformat=VCFv4.2\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n")
        for chrom, pos, vid in sorted(rows, key=lambda r: (r[0], r[1])):
            ref = chr(genome[chrom][pos])
            alt = "ACGT"[("ACGT".index(ref) + 1 + rng.randint(3)) % 4]
            f.write(f"{chrom}\t{pos + 1}\t{vid}\t{ref}\t{alt}\t.\tPASS\t.\n")


def draw_bases(rng, gc):
    """Random bases as a uint8 array, with the GC share gc at each position."""
    strong, pick = rng.rand(len(gc)) < gc, rng.rand(len(gc)) < 0.5
    return np.frombuffer(b"ACGT", np.uint8)[np.where(strong, np.where(pick, 1, 2), np.where(pick, 0, 3))].copy()
