"""
A genome read by coordinates: an indexed FASTA, memory-mapped (never the whole genome into Python strings), with
its .fai index read and checked against the file, or built as samtools faidx builds it. Coordinates are 0-based
and half-open, as in BED. A gzipped genome is decompressed once into the cache: gzip cannot be read by coordinates.
"""
import gzip
import mmap
import os
import shutil
import zlib

import numpy as np

from data import DataError, check_file

# bytes -> uppercase bases; translate() with it, deleting line ends, turns a slice of the file into a sequence
UPPER = bytes.maketrans(b"acgtnryswkmbdhv", b"ACGTNRYSWKMBDHV")
# bytes -> 1 for G or C, 0 for A or T, 2 for anything else (N): what GC content and the N filter count
COMPOSITION = bytes(1 if b in b"GCgc" else 0 if b in b"ATat" else 2 for b in range(256))


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
