"""
Data: read TSV/CSV/FASTA (optionally .gz), validate sequences and labels, split, tokenise, batch.
Also the generator of the shipped example data:

    python data.py            # rewrites data/example/example.tsv with a fixed seed

Every problem with the input is a DataError, one line: `path:line: what is wrong (what was expected)`.
"""
import collections
import csv
import gzip
import hashlib
import io
import itertools
import json
import mmap
import multiprocessing
import os
import re
import shutil
import sys
import tempfile
import time

import numpy as np
import torch

IUPAC = "ACGTNRYSWKMBDHV"
BAD_BASE = re.compile(f"[^{IUPAC}]")
MISSING = {"", "NA", "NAN", "-1"}  # a multi-hot or wide label value that was not measured
BINARY = {"0", "1"}
COMPLEMENT = str.maketrans("ACGTNRYSWKMBDHV", "TGCANYRSWMKVHDB")


class DataError(ValueError):
    pass


# -----------------------------------------------------------------------------
# reading files

def open_text(path):
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file (expected a .tsv, .csv or FASTA file, optionally .gz)")
    raw = gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")
    # utf-8-sig drops a byte-order mark; newline="" lets csv handle CRLF endings
    return io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")


def is_fasta(path):
    name = path[:-3] if path.endswith(".gz") else path
    return name.lower().endswith((".fa", ".fasta", ".fna", ".fas"))


def read_table(path, columns, optional=()):
    """Rows of a delimited file with a header. Yields (line, {column: value}) for the named columns only;
    an optional column that the file lacks reads as None."""
    name = path[:-3] if path.endswith(".gz") else path
    delimiter = "," if name.lower().endswith(".csv") else "\t"
    with open_text(path) as f:
        reader = csv.reader(f, delimiter=delimiter, quoting=csv.QUOTE_MINIMAL if delimiter == "," else csv.QUOTE_NONE)
        header = next(reader, None)
        while header is not None and not any(h.strip() for h in header):
            header = next(reader, None)  # leading blank lines
        if header is None:
            raise DataError(f"{path}:1: empty file (expected a header line naming the columns)")
        header = [h.strip() for h in header]
        seen = set()
        for h in header:
            if h in seen:
                raise DataError(f"{path}:{reader.line_num}: duplicate column name '{h}' (expected unique names)")
            seen.add(h)
        for c in columns:
            if c not in seen and c not in optional:
                raise DataError(f"{path}:{reader.line_num}: no column '{c}' (columns present: {', '.join(header)})")
        where = [header.index(c) if c in seen else None for c in columns]
        rows = 0
        for fields in reader:
            if not any(x.strip() for x in fields):
                continue  # blank lines carry no data
            if len(fields) != len(header):
                raise DataError(f"{path}:{reader.line_num}: {len(fields)} fields (expected {len(header)}, "
                                f"as in the header)")
            rows += 1
            yield reader.line_num, {c: None if i is None else fields[i].strip() for c, i in zip(columns, where)}
        if rows == 0:
            raise DataError(f"{path}:{reader.line_num + 1}: no data rows after the header (expected sequences)")


def read_fasta(path):
    """Yields (line of the header, id, description, sequence); wrapped sequence lines are joined."""
    with open_text(path) as f:
        head, seq, n = None, [], 0
        for line_no, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            if line.startswith(">"):
                if head is not None:
                    yield (*head, "".join(seq))
                parts = line[1:].split(None, 1)
                if not parts:
                    raise DataError(f"{path}:{line_no}: FASTA header without an id (expected '>id description')")
                head, seq, n = (line_no, parts[0], parts[1] if len(parts) > 1 else ""), [], n + 1
            elif head is None:
                raise DataError(f"{path}:{line_no}: sequence before any '>' header (expected FASTA)")
            else:
                seq.append(line)
        if head is None:
            raise DataError(f"{path}:1: no FASTA records (expected '>id' lines followed by sequence)")
        yield (*head, "".join(seq))


def clean_sequence(seq, path, line):
    seq = seq.upper()
    if not seq:
        raise DataError(f"{path}:{line}: empty sequence (expected at least one base)")
    bad = BAD_BASE.search(seq)
    if bad:
        raise DataError(f"{path}:{line}: invalid character {bad.group()!r} at position {bad.start() + 1} of the "
                        f"sequence (expected A, C, G, T, N or another IUPAC code)")
    return seq


def iter_records(path, cfg_data, labels_optional=False):
    """Streams (line, id, sequence, label cell) from a table or FASTA. A cell is a string, a list in the wide
    form, or None when labels_optional and the file has none. The id is the FASTA id or the row number from 1."""
    if is_fasta(path):
        for line, rid, desc, seq in read_fasta(path):
            yield line, rid, clean_sequence(seq, path, line), (None if labels_optional else desc)
        return
    wide = cfg_data["label_cols"]
    label_cols = list(wide) if wide else [cfg_data["label_col"]]
    rows = read_table(path, [cfg_data["seq_col"]] + label_cols, optional=label_cols if labels_optional else ())
    for n, (line, row) in enumerate(rows, 1):
        cells = [row[c] for c in label_cols]
        cell = None if None in cells else cells if wide else cells[0]
        yield line, str(n), clean_sequence(row[cfg_data["seq_col"]], path, line), cell


def reverse_complement(seq):
    return seq.translate(COMPLEMENT)[::-1]


# -----------------------------------------------------------------------------
# labels: (a) names joined by sep, (b) multi-hot "0;1;NA", (c) wide, one column per label

def looks_multi_hot(fields, names):
    if len(fields) < 2 or not all(f.upper() in BINARY | MISSING for f in fields):
        return False
    return not (names and set(fields) & set(names))


def infer_label_names(cells, sep, wide_cols):
    """Label names when the config gives none: the wide columns, label_<i> for multi-hot, else sorted names."""
    if wide_cols:
        return [str(c) for c in wide_cols]
    found = set()
    for cell in cells:
        fields = [x.strip() for x in cell.split(sep)] if cell else []
        if looks_multi_hot(fields, None):
            return [f"label_{i}" for i in range(len(fields))]
        found.update(x for x in fields if x)
    if not found:
        raise DataError("no labels found in the training data (expected label names in the label column)")
    return sorted(found)


def parse_value(v, path, line, what):
    u = v.upper()
    if u in BINARY:
        return float(u), True
    if u in MISSING:
        return 0.0, False
    raise DataError(f"{path}:{line}: label value '{v}' in {what} (expected 0, 1, or NA/empty/-1 for not measured)")


def parse_labels(path, lines, cells, names, sep, form=None):
    """Label cells -> (labels float32 (n, L), mask bool (n, L)); mask is False where a label was not measured.
    form, a dict, carries across the chunks of one file whether its cells are multi-hot: the first non-empty
    cell decides, and the whole file is then held to it."""
    n, L = len(cells), len(names)
    y, m = np.zeros((n, L), np.float32), np.ones((n, L), bool)
    index = {name: i for i, name in enumerate(names)}
    form = {} if form is None else form
    for r, (line, cell) in enumerate(zip(lines, cells)):
        values, fields = None, []
        if isinstance(cell, list):  # wide: one value per label column
            values, what = cell, "a label column"
        else:
            fields = [x.strip() for x in cell.split(sep)] if cell else []
            if "multi_hot" not in form and fields:
                form["multi_hot"] = looks_multi_hot(fields, names)
            if form.get("multi_hot") and fields:
                values, what = fields, "a multi-hot cell"
        if values is not None:
            if len(values) != L:
                raise DataError(f"{path}:{line}: {what} has {len(values)} fields (expected {L}, one per label, "
                                f"separated by '{sep}')")
            for j, v in enumerate(values):
                y[r, j], m[r, j] = parse_value(v, path, line, what)
            continue
        for x in fields:
            if not x:
                continue
            if x not in index:
                shown = ", ".join(names[:20]) + (", ..." if L > 20 else "")
                raise DataError(f"{path}:{line}: unknown label '{x}' (known labels: {shown})")
            y[r, index[x]] = 1.0
    return y, m


# -----------------------------------------------------------------------------
# the token cache: a data file is streamed once, tokenised and written to disk; later runs memory-map it

CACHE_VERSION = 2
CHUNK = 4096  # records read and tokenised at a time
POOL_BYTES = 1 << 23  # files larger than this are tokenised by worker processes (unless the tokenizer is fast)


class Tokens:
    """Ragged token ids: row i is flat[offsets[rows[i]]:offsets[rows[i] + 1]]. flat is memory-mapped from the
    cache file at path (or in memory when path is None), so a split costs no memory beyond its row index."""

    def __init__(self, flat, offsets, rows=None, path=None):
        self.flat, self.offsets, self.path = flat, offsets, path
        self.rows = np.arange(len(offsets) - 1) if rows is None else rows

    @classmethod
    def from_list(cls, arrays):
        return cls(np.concatenate(arrays), np.r_[0, np.cumsum([len(a) for a in arrays])])

    @classmethod
    def map(cls, path, dtype, offsets):
        """Batches read rows in random order, so read-ahead is turned off: from a cold disk it would read far
        more of the file than a batch touches. Mapped pages count in RSS, but they are clean and the kernel
        drops them under memory pressure."""
        with open(path, "rb") as f:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        if hasattr(mm, "madvise"):
            mm.madvise(mmap.MADV_RANDOM)
        return cls(np.frombuffer(mm, dtype), offsets, path=path)

    def __getstate__(self):  # a DataLoader worker started by spawn maps the file again instead of copying it
        state = dict(vars(self))
        if self.path:
            state["flat"] = self.flat.dtype.str
        return state

    def __setstate__(self, state):
        vars(self).update(state)
        if self.path:
            self.flat = Tokens.map(self.path, state["flat"], self.offsets).flat

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        r = self.rows[i]
        return self.flat[self.offsets[r]:self.offsets[r + 1]]

    def lengths(self):
        return self.offsets[self.rows + 1] - self.offsets[self.rows]

    def subset(self, idx):
        return Tokens(self.flat, self.offsets, self.rows[idx], self.path)


class Bits:
    """A boolean (n, L) matrix kept as packed bits (memory-mapped from the cache): indexing rows unpacks only
    those rows, so even a genome-scale split never holds its dense labels. cols selects and orders the labels.
    np.asarray(bits) gives the dense matrix, for the validation and test splits' metrics."""

    def __init__(self, packed, width, rows=None, cols=None):
        self.packed, self.width = packed, width
        self.rows = np.arange(len(packed)) if rows is None else rows
        self.cols = np.arange(width) if cols is None else np.asarray(cols)
        self.shape = (len(self.rows), len(self.cols))

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):  # an int, a slice or an index array of rows
        return np.unpackbits(self.packed[self.rows[i]], axis=-1, count=self.width).astype(bool)[..., self.cols]

    def __array__(self, dtype=None, copy=None):
        return self[:] if dtype is None else self[:].astype(dtype)

    def subset(self, idx):
        return Bits(self.packed, self.width, self.rows[idx], self.cols)

    def select(self, cols):
        return Bits(self.packed, self.width, self.rows, self.cols[cols])


class Split(torch.utils.data.Dataset):
    """Token ids, labels (n, L) and mask (n, L) of one split, as Bits or arrays; ids are the FASTA ids or the row
    numbers from 1. rc_tokens, when set, are the reverse complements' tokens. Items are (index, tokens, labels, mask); a
    training sampler asks for (index, reverse complement?) pairs."""

    def __init__(self, tokens, labels, mask, ids=None, path=None, rc_tokens=None, truncated=None):
        self.tokens, self.labels, self.mask, self.path, self.rc_tokens = tokens, labels, mask, path, rc_tokens
        self.ids = np.arange(1, len(tokens) + 1) if ids is None else ids
        self.truncated = np.zeros(len(tokens), bool) if truncated is None else truncated

    def __len__(self):
        return len(self.tokens)

    def __getitem__(self, key):
        i, flip = (key, False) if np.ndim(key) == 0 else key
        return i, (self.rc_tokens if flip else self.tokens)[i], self.labels[i].astype(np.float32), self.mask[i]

    def subset(self, idx):
        return Split(self.tokens.subset(idx), self.labels.subset(idx), self.mask.subset(idx), self.ids[idx], self.path,
                     None if self.rc_tokens is None else self.rc_tokens.subset(idx), self.truncated[idx])


def digest(*parts, files=()):
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        h.update(json.dumps(part, sort_keys=True).encode())
    for path in files:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()


def tokenizer_digest(tokenizer):
    """A fingerprint of all the tokenizer saves: a changed vocabulary or setting means new tokens."""
    with tempfile.TemporaryDirectory() as d:
        tokenizer.save_pretrained(d)
        names = sorted(f for f in os.listdir(d) if os.path.isfile(os.path.join(d, f)))
        return digest(type(tokenizer).__name__, names, files=[os.path.join(d, f) for f in names])


def encode_chunk(tokenizer, seqs, max_length, dtype):
    """One chunk's tokens as (flat ids, lengths, truncated?): compact to send back from a worker process."""
    ids, truncated = tokenize(tokenizer, seqs, max_length)
    return np.concatenate(ids).astype(dtype), np.array([len(x) for x in ids]), truncated


def build_cache(path, cfg_data, names, tokenizer, max_length, reverse, folder):
    """Streams the file in chunks: this process reads, validates and parses labels while worker processes
    tokenise (a fast Hugging Face tokenizer has threads of its own), and the tokens go straight to disk; with
    reverse, the reverse complements' tokens too, in the same pass. The folder appears complete or not at all."""
    tmp = f"{folder}.tmp{os.getpid()}"
    try:
        os.makedirs(tmp, exist_ok=True)
    except OSError as e:
        raise DataError(f"{cfg_data['cache_dir']}: cannot write the token cache there ({e.strerror}; expected "
                        f"a writable folder in data.cache_dir)") from None
    sep, wide = cfg_data["multi_label_sep"], cfg_data["label_cols"]
    dtype = np.uint8 if len(tokenizer) <= 1 << 8 else np.uint16 if len(tokenizer) <= 1 << 16 else np.uint32
    big = os.path.getsize(path) > POOL_BYTES and not getattr(tokenizer, "is_fast", False)
    workers = min(os.cpu_count() or 1, 8) if big else 0
    pool = multiprocessing.Pool(workers) if workers else None
    streams = ["tokens", "rc_tokens"] if reverse else ["tokens"]
    lengths, labels, mask, ids, truncated, form, fasta = [[] for _ in streams], [], [], [], [], {}, is_fasta(path)
    outs = []
    try:
        if names is None:
            try:
                names = infer_label_names((cell for *_, cell in iter_records(path, cfg_data)), sep, wide)
            except DataError as e:
                raise DataError(f"{path}: {e}") from None
        if wide and len(wide) != len(names):
            raise DataError(f"{path}: data.label_cols names {len(wide)} columns for {len(names)} labels "
                            f"(expected one column per label of task.label_map)")
        outs = [open(os.path.join(tmp, f"{name}.bin"), "wb") for name in streams]

        def write(chunk):
            rids, y, m, results = chunk
            results = [r.get() for r in results] if pool else results
            for out, n_tokens, (flat, n, _) in zip(outs, lengths, results):
                out.write(flat.tobytes())
                n_tokens.append(n)
            truncated.append(results[0][2])  # as read, not as reverse complemented
            if fasta:  # a table's ids are its row numbers
                ids.append(np.array(rids))
            labels.append(np.packbits(y > 0.5, axis=1)), mask.append(np.packbits(m, axis=1))

        records, inflight = iter_records(path, cfg_data), collections.deque()
        while part := list(itertools.islice(records, CHUNK)):
            lines, rids, seqs, cells = zip(*part)
            y, m = parse_labels(path, lines, cells, names, sep, form)
            per_stream = [list(seqs)] + ([[reverse_complement(x) for x in seqs]] if reverse else [])
            args = [(tokenizer, x, max_length, dtype) for x in per_stream]
            jobs = [pool.apply_async(encode_chunk, a) if pool else encode_chunk(*a) for a in args]
            inflight.append((rids, y, m, jobs))
            if len(inflight) > 2 * workers:
                write(inflight.popleft())
        while inflight:
            write(inflight.popleft())
    except BaseException:  # a data error or a kill: no half-built cache is left behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        for out in outs:
            out.close()
        if pool:
            pool.terminate()
    for name, n_tokens in zip(streams, lengths):
        offsets = np.r_[0, np.cumsum(np.concatenate(n_tokens))].astype(np.int64)
        np.save(os.path.join(tmp, f"{name}_offsets.npy"), offsets)
    np.save(os.path.join(tmp, "labels.npy"), np.concatenate(labels))
    np.save(os.path.join(tmp, "mask.npy"), np.concatenate(mask))
    np.save(os.path.join(tmp, "truncated.npy"), np.concatenate(truncated))
    if fasta:
        np.save(os.path.join(tmp, "ids.npy"), np.concatenate(ids))
    with open(os.path.join(tmp, "meta.json"), "w") as f:
        json.dump({"path": path, "names": names, "dtype": np.dtype(dtype).name, "rows": sum(map(len, truncated))}, f)
    try:
        os.rename(tmp, folder)
    except OSError:  # another process built the same cache meanwhile: keep theirs
        shutil.rmtree(tmp)


def load_file(path, cfg_data, names, tokenizer, reverse=False):
    """A whole file as a Split, from the cache; built first when this file's content, the tokenizer, max_length,
    the label names or the label columns have none. With reverse, the split also has its reverse complements'
    tokens. Returns (split, names), names inferred when None."""
    open_text(path).close()  # a missing file is a data error, not a traceback from the digest
    key = digest(CACHE_VERSION, names, reverse, cfg_data["max_length"], tokenizer_digest(tokenizer),
                 [cfg_data[k] for k in ("seq_col", "label_col", "label_cols", "multi_label_sep")], files=[path])
    folder = os.path.join(cfg_data["cache_dir"], f"{os.path.basename(path)}.{key[:16]}")
    if not os.path.isdir(folder):
        t0 = time.time()
        build_cache(path, cfg_data, names, tokenizer, cfg_data["max_length"], reverse, folder)
        print(f"data: tokenised {path}{' and its reverse complements' if reverse else ''} into {folder} in "
              f"{time.time() - t0:.1f} s; later runs map it", flush=True)
    with open(os.path.join(folder, "meta.json")) as f:
        meta = json.load(f)
    L, where = len(meta["names"]), lambda name: os.path.join(folder, name)
    tokens, rc_tokens = (Tokens.map(where(f"{name}.bin"), meta["dtype"], np.load(where(f"{name}_offsets.npy")))
                         if os.path.exists(where(f"{name}.bin")) else None for name in ("tokens", "rc_tokens"))
    # plain views of the mapped files: indexing an np.memmap costs several times more per row
    labels = Bits(np.load(where("labels.npy"), mmap_mode="r").view(np.ndarray), L)
    mask = Bits(np.load(where("mask.npy"), mmap_mode="r").view(np.ndarray), L)
    ids = np.load(where("ids.npy")) if os.path.exists(where("ids.npy")) else None
    return Split(tokens, labels, mask, ids, path, rc_tokens, np.load(where("truncated.npy"))), meta["names"]


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


def load_splits(cfg_data, tokenizer, names=None, reverse=False):
    """{'train', 'validation', 'test'} -> Split (validation/test may be None), and the label names.
    names=None infers them from the training data (the whole file when one file is split). With reverse, each
    split also gets the tokens of its reverse complements."""
    def load(path, names):
        return load_file(path, cfg_data, names, tokenizer, reverse)

    if cfg_data["path"]:
        full, names = load(cfg_data["path"], names)
        fractions = [cfg_data["train_size"], cfg_data["validation_size"], cfg_data["test_size"]]
        if cfg_data["stratify"]:
            which = stratified_split(np.asarray(full.labels) & np.asarray(full.mask), fractions, cfg_data["seed"])
            parts = [np.flatnonzero(which == s) for s in range(3)]
        else:
            order = np.random.RandomState(cfg_data["seed"]).permutation(len(full))
            n_train, n_val = (int(round(len(full) * f)) for f in fractions[:2])
            parts = np.split(order, [n_train, n_train + n_val])
        splits = {k: full.subset(np.sort(p)) if len(p) else None
                  for k, p in zip(("train", "validation", "test"), parts)}
    else:
        train, names = load(cfg_data["train"], names)
        splits = {"train": train}
        for k in ("validation", "test"):
            splits[k] = load(cfg_data[k], names)[0] if cfg_data[k] else None
    if splits["train"] is None:
        raise DataError(f"{cfg_data['path']}: the training split is empty (expected a larger data.train_size)")
    return splits, names


def label_chunks(labels, mask, chunk=1 << 16):
    """(first row, measured positives, measured) as bool arrays, a chunk of rows at a time: labels and mask may
    be Bits of a genome-scale split, too large to unpack at once."""
    for i in range(0, len(labels), chunk):
        m = np.asarray(mask[i:i + chunk], bool)
        yield i, (np.asarray(labels[i:i + chunk]) > 0.5) & m, m


def label_counts(labels, mask):
    """Positives and measured entries per label."""
    counts = [(y.sum(0), m.sum(0)) for _, y, m in label_chunks(labels, mask)]
    return sum(c[0] for c in counts), sum(c[1] for c in counts)


def prevalence(labels, mask):
    """Share of positives per label among the measured entries."""
    positives, measured = label_counts(labels, mask)
    return positives / np.maximum(measured, 1)


def oversample_weights(labels, mask, alpha):
    """Sampling weight per sequence: (1/prevalence of its rarest positive label)^alpha; 1 without labels."""
    share = prevalence(labels, mask)
    rarest = np.concatenate([np.where(y, share, np.inf).min(1) for _, y, _ in label_chunks(labels, mask)])
    return torch.tensor(np.where(np.isfinite(rarest), 1 / np.maximum(rarest, 1e-12), 1.0) ** alpha)


def prediction_row(rid, probs, names, thresholds, sep):
    """One output row: id, a probability per label, and the labels at or above their thresholds."""
    predicted = sep.join(n for n, p, t in zip(names, probs, thresholds) if p >= t)
    return [rid, *(f"{p:.6f}" for p in probs), predicted]


def select_labels(splits, names, subset):
    """Keeps only the labels in subset (task.labels), in that order, in every split. Returns the kept names."""
    subset = [str(x) for x in ([subset] if isinstance(subset, str) else subset)]
    unknown = [x for x in subset if x not in names]
    if unknown or not subset:
        raise DataError(f"task.labels: unknown labels {unknown} (labels in the data: {', '.join(names)})")
    idx = [names.index(x) for x in subset]
    for split in splits.values():
        if split is not None:
            split.labels, split.mask = split.labels.select(idx), split.mask.select(idx)
    return subset


# -----------------------------------------------------------------------------
# tokenising and batching

def tokenize(tokenizer, seqs, max_length, chunk=2048):
    """Token ids per sequence (int32 arrays), special tokens included, and which sequences were truncated."""
    out, truncated = [], np.zeros(len(seqs), bool)
    for i in range(0, len(seqs), chunk):
        part = seqs[i:i + chunk]
        ids = tokenizer(part, add_special_tokens=True)["input_ids"]
        long = [j for j, x in enumerate(ids) if len(x) > max_length]
        if long:  # let the tokenizer truncate, so the special tokens it adds at the ends survive
            cut = tokenizer([part[j] for j in long], add_special_tokens=True, truncation=True, max_length=max_length)
            for j, x in zip(long, cut["input_ids"]):
                ids[j] = x
            truncated[i + np.array(long)] = True
        out.extend(np.asarray(x, dtype=np.int32) for x in ids)
    return out, truncated


class Collate:
    """Pads each batch only to its longest sequence (rounded up to a multiple, for tensor cores on CUDA), on the
    side the tokenizer pads."""

    def __init__(self, pad_id, padding_side="right", multiple=1):
        self.pad_id, self.left, self.multiple = pad_id, padding_side == "left", multiple

    def __call__(self, batch):
        index, ids, labels, mask = zip(*batch)
        lengths = np.array([len(x) for x in ids])
        width = -(-lengths.max() // self.multiple) * self.multiple
        input_ids = np.full((len(ids), width), self.pad_id, np.int64)  # filled in numpy: far cheaper per row
        for r, x in enumerate(ids):
            if self.left:
                input_ids[r, width - len(x):] = x
            else:
                input_ids[r, :len(x)] = x
        cols = np.arange(width)
        attention = cols >= width - lengths[:, None] if self.left else cols < lengths[:, None]
        return {"index": torch.tensor(index), "input_ids": torch.from_numpy(input_ids),
                "attention_mask": torch.from_numpy(attention.astype(np.int64)),
                "labels": torch.from_numpy(np.stack(labels)), "mask": torch.from_numpy(np.stack(mask))}


# -----------------------------------------------------------------------------
# the shipped example: planted motifs in random background

EXAMPLE_LABELS = ["leaf", "root", "flower", "seed", "heat_stress", "cold_stress"]


def make_example(path="data/example/example.tsv", n=10000, seed=0, motif_len=12, conservation=0.95, noise=0.01):
    """Synthetic multi-label data. Each label has a motif (a position weight matrix); a sequence carries the
    label when an instance of that motif is planted in it. Labels co-occur (flower with leaf, cold with heat),
    prevalences run from about 40% down to 3%, and a little label noise is added."""
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
    seqs = []
    for i in range(n):
        s = rng.randint(0, 4, size=lengths[i])
        labels = np.flatnonzero(y[i])
        # non-overlapping slots so planted motifs never overwrite each other
        slots = rng.permutation(lengths[i] // motif_len)[:len(labels)]
        for j, slot in zip(labels, slots):
            site = [rng.choice(4, p=p) for p in pwms[j]]
            s[slot * motif_len:(slot + 1) * motif_len] = site
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
    return path


if __name__ == "__main__":
    out = make_example(*sys.argv[1:2])
    print(f"wrote {out}")
