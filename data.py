"""
Data: read TSV/CSV/FASTA (optionally .gz), validate sequences and labels, split, tokenise, batch.
Also the generator of the shipped example data:

    python data.py            # rewrites data/example/example.tsv with a fixed seed

Every problem with the input is a DataError, one line: `path:line: what is wrong (what was expected)`.
"""
import csv
import gzip
import os
import re
import sys
import zlib

import numpy as np
import torch

IUPAC = "ACGTNRYSWKMBDHV"
BAD_BASE = re.compile(f"[^{IUPAC}]")
MISSING = {"", "NA", "NAN", "-1"}  # a multi-hot or wide label value that was not measured
BINARY = {"0", "1"}
SEPARATORS = re.compile(r"[,;|]|\s")  # what a label name never holds: it would be a separator of names
JOINER = re.compile(r"[^\w.\-]+")  # between two label names, a separator other than the configured one
COMPLEMENT = str.maketrans("ACGTNRYSWKMBDHV", "TGCANYRSWMKVHDB")


class DataError(ValueError):
    pass


# -----------------------------------------------------------------------------
# reading files

def check_file(path):
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file (expected a .tsv, .csv or FASTA file, optionally .gz)")


def read_lines(path):
    """The text lines of path, endings kept (csv handles CRLF), a byte-order mark dropped. Decoded line by line,
    so that bytes that are not UTF-8, or a truncated or corrupt .gz, are a DataError naming the line."""
    check_file(path)
    with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
        n = 0
        try:
            for n, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8-sig" if n == 1 else "utf-8")
                except UnicodeDecodeError as e:
                    raise DataError(f"{path}:{n}: cannot read this line: bytes that are not UTF-8 text (byte "
                                    f"{e.start + 1}; expected UTF-8 text)") from None
                yield line
        except (EOFError, gzip.BadGzipFile, zlib.error) as e:
            why = "the compressed file ends early" if isinstance(e, EOFError) else f"corrupt compressed data ({e})"
            raise DataError(f"{path}:{n + 1}: cannot read this line: {why} (expected a complete gzip file; check "
                            f"the download or compress it again)") from None


def is_fasta(path):
    name = path[:-3] if path.endswith(".gz") else path
    return name.lower().endswith((".fa", ".fasta", ".fna", ".fas"))


def read_table(path, columns, optional=(), settings=None):
    """Rows of a delimited file with a header. Yields (line, {column: value}) for the named columns only;
    an optional column that the file lacks reads as None. settings names the config key of each column, for the
    error of a missing one."""
    name = path[:-3] if path.endswith(".gz") else path
    delimiter = "," if name.lower().endswith(".csv") else "\t"
    quoting = csv.QUOTE_MINIMAL if delimiter == "," else csv.QUOTE_NONE
    reader = csv.reader(read_lines(path), delimiter=delimiter, quoting=quoting)
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
            key = (settings or {}).get(c)
            raise DataError(f"{path}:{reader.line_num}: no column '{c}' (columns present: {', '.join(header)}"
                            f"{f'; {key} names it' if key else ''}){other_delimiter(header, delimiter)}")
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


def other_delimiter(header, delimiter):
    """A hint where a header of one column splits on the other delimiter: a CSV named .tsv, or the other way."""
    other, name = (",", "comma") if delimiter == "\t" else ("\t", "tab")
    if len(header) == 1 and other in header[0]:
        wanted = ".csv" if other == "," else ".tsv"
        return f"; the header looks {name}-separated: name the file {wanted} (or .{wanted[1:]}.gz)"
    return ""


def read_fasta(path):
    """Yields (line of the header, id, description, sequence, starts); wrapped sequence lines are joined, and
    starts holds (position in the sequence, line) for each of its lines, so that an error names the line."""
    head, seq, starts, size = None, [], [], 0
    for line_no, line in enumerate(read_lines(path), 1):
        line = line.strip()
        if not line:
            continue
        if line.startswith(">"):
            if head is not None:
                yield (*head, "".join(seq), starts)
            parts = line[1:].split(None, 1)
            if not parts:
                raise DataError(f"{path}:{line_no}: FASTA header without an id (expected '>id description')")
            head, seq, starts, size = (line_no, parts[0], parts[1] if len(parts) > 1 else ""), [], [], 0
        elif head is None:
            raise DataError(f"{path}:{line_no}: sequence before any '>' header (expected FASTA)")
        else:
            seq.append(line)
            starts.append((size, line_no))
            size += len(line)
    if head is None:
        raise DataError(f"{path}:1: no FASTA records (expected '>id' lines followed by sequence)")
    yield (*head, "".join(seq), starts)


def clean_sequence(seq, path, line, starts=None):
    """The sequence uppercased and checked. starts, from read_fasta, gives the line each stretch of it is on."""
    seq = seq.upper()
    if not seq:
        raise DataError(f"{path}:{line}: empty sequence (expected at least one base)")
    bad = BAD_BASE.search(seq)
    if bad:
        where = f"position {bad.start() + 1} of the sequence"
        if starts:  # FASTA: the line the character is on, and where in it when the sequence is wrapped
            first, line = max(s for s in starts if s[0] <= bad.start())
            where = f"column {bad.start() - first + 1} ({where})" if len(starts) > 1 else where
        raise DataError(f"{path}:{line}: invalid character {bad.group()!r} at {where} (expected A, C, G, T, N or "
                        f"another IUPAC code)")
    return seq


def iter_records(path, data_cfg, labels_optional=False):
    """Streams (line, id, sequence, label cell) from a table or FASTA. A cell is a string, a list in the wide
    form, or None when labels_optional and the file has none. The id is a string, the FASTA id or the value of
    the id column (data.id_col, else a column named id or name), or else an int, the row number from 1."""
    if is_fasta(path):
        for line, rid, desc, seq, starts in read_fasta(path):
            if "::" in rid:  # DanQPlant's >label_1,label_2::Chr1:100-1100, and >::Chr1:100-1100 for none
                desc, rid = rid.split("::", 1)
            elif labels_optional:
                desc = None  # a description is a label cell only where labels are expected
            yield line, rid, clean_sequence(seq, path, line, starts), desc
        return
    wide = data_cfg["label_cols"]
    label_cols = list(wide) if wide else [data_cfg["label_col"]]
    id_cols = [data_cfg["id_col"]] if data_cfg["id_col"] else ["id", "name"]
    optional = (label_cols if labels_optional else []) + ([] if data_cfg["id_col"] else id_cols)
    settings = {data_cfg["seq_col"]: "data.seq_col", data_cfg["id_col"]: "data.id_col",
                **{c: "data.label_cols" if wide else "data.label_col" for c in label_cols}}
    rows = read_table(path, [data_cfg["seq_col"], *label_cols, *id_cols], optional, settings)
    for n, (line, row) in enumerate(rows, 1):
        cells = [row[c] for c in label_cols]
        cell = None if None in cells else cells if wide else cells[0]
        rid = next((row[c] for c in id_cols if row[c] is not None), n)
        if rid == "":
            raise DataError(f"{path}:{line}: empty id (expected a value in the id column, or data.id_col=null and "
                            f"no column named id or name)")
        yield line, rid, clean_sequence(row[data_cfg["seq_col"]], path, line), cell


def reverse_complement(seq):
    return seq.translate(COMPLEMENT)[::-1]


# -----------------------------------------------------------------------------
# labels: (a) names joined by sep, (b) multi-hot "0;1;NA", (c) wide, one column per label

def looks_multi_hot(fields, names):
    if len(fields) < 2 or not all(f.upper() in BINARY | MISSING for f in fields):
        return False
    return not (names and set(fields) & set(names))


def infer_label_names(path, records, sep, wide_cols):
    """Label names when the config gives none: the wide columns, label_<i> for multi-hot, else the sorted names of
    the (line, cell) records. A name that holds another separator, or that joins two other names, is an error: it
    mostly means a data.multi_label_sep that is not the file's."""
    if wide_cols:
        return [str(c) for c in wide_cols]
    found = {}  # name: the first line it is on
    for line, cell in records:
        fields = [x.strip() for x in cell.split(sep)] if cell else []
        if looks_multi_hot(fields, None):
            return [f"label_{i}" for i in range(len(fields))]
        for x in fields:
            if x:
                found.setdefault(x, line)
    if not found:
        raise DataError(f"{path}: no labels found in the training data (expected label names in the label column)")
    for x, line in found.items():
        inside = SEPARATORS.search(x)
        joined = joined_names(x, found)
        if inside or joined:
            why = f"holds {inside.group()!r}" if inside else f"joins the labels '{joined[0]}' and '{joined[1]}'"
            raise DataError(f"{path}:{line}: the label '{x}' {why}, and the cells are split on data.multi_label_sep "
                            f"{sep!r} (expected label names without ',', ';', '|' or spaces: set data.multi_label_sep "
                            f"to the file's separator, or name the labels in task.label_map)")
    return sorted(found)


def joined_names(x, names):
    """(a, b) where the name x is two other names with a separator between them, as in 'leaf/root', else None."""
    for a in names:
        m = JOINER.match(x, len(a)) if a != x and x.startswith(a) else None
        if m and x[m.end():] in names:
            return a, x[m.end():]
    return None


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
                hint = f"; check data.multi_label_sep, {sep!r}" if SEPARATORS.search(x) else ""
                raise DataError(f"{path}:{line}: unknown label '{x}' (known labels: {shown}{hint})")
            y[r, index[x]] = 1.0
    return y, m


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
    """Sampling weight per sequence, (1/prevalence of its rarest positive label)^alpha, 1 without labels; and the
    share of each label's positives among the draws that these weights give."""
    share = prevalence(labels, mask)
    rarest = np.concatenate([np.where(y, share, np.inf).min(1) for _, y, _ in label_chunks(labels, mask)])
    w = np.where(np.isfinite(rarest), 1 / np.maximum(rarest, 1e-12), 1.0) ** alpha
    drawn = sum(w[i:i + len(y)] @ y for i, y, _ in label_chunks(labels, mask)) / w.sum()
    return torch.tensor(w), drawn


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


def window_bases(tokenizer, max_length):
    """data.window_size: auto. The bases that fill max_length tokens, special tokens included, read off how the
    tokenizer tokenises two lengths of random DNA (the slope gives the bases per token, the rest the special tokens
    and a k-mer's overhang). Exact where each token has a fixed number of bases (characters, k-mers); for BPE and
    other tokenizers whose tokens vary, 90% of it, since real sequences tokenise a little denser or looser."""
    rng = np.random.RandomState(0)
    probe = "".join(rng.choice(list("ACGT"), 27720))  # a multiple of 1..12: whole k-mers at any k
    n_long, n_short = (len(tokenizer([probe[:size]], add_special_tokens=True)["input_ids"][0])
                       for size in (len(probe), len(probe) // 2))
    per_token = (len(probe) - len(probe) // 2) / (n_long - n_short)
    extra = n_long - len(probe) / per_token
    size = (max_length - extra) * per_token
    return int(size if abs(per_token - round(per_token)) < 1e-9 else 0.9 * size)


def cut_windows(seqs, size, stride):
    """data.long_sequences: windows. Each sequence as windows of size bases, stride apart, the last one ending at
    the sequence's end, so that every base is in a window; a sequence no longer than size is its one window.
    Returns the windows, in sequence order, and how many each sequence has."""
    out, counts = [], np.zeros(len(seqs), np.int64)
    for i, s in enumerate(seqs):
        starts = list(range(0, max(len(s) - size, 0), stride)) + [max(len(s) - size, 0)]
        out += [s[a:a + size] for a in starts]
        counts[i] = len(starts)
    return out, counts


def batch_starts(n, size, min_size=1):
    """Where each batch of an epoch of n starts. A last batch smaller than min_size, too small to give every rank
    and micro-step a sequence, is left out (train.py reports it)."""
    return range(0, n - min_size + 1, size)


# What a training batch is made of: rows that each name a sequence of the split (index), the strand to read
# (flip: its reverse complement) and, under data.window_training sample, the one window to read (ALL: every one).
ROW = np.dtype([("index", np.int64), ("flip", np.bool_), ("window", np.int64)])
ALL = -1


def row(index, flip=False, window=ALL):
    """One ROW: the key a Split is indexed by (a plain index reads the sequence as it is, all its windows)."""
    return np.array((index, flip, window), ROW)[()]


def global_batches(n, size, seed, epoch, *, weights=None, flip=False, min_size=1, lengths=None, windows=None):
    """The training order of one epoch as global batches, arrays of ROW. It depends on the seed and the epoch only,
    never on the world size, so every scale sees the same batches and resume just skips the first few. With
    weights, n draws with replacement (oversampling); with flip, a fair coin per draw; with windows (each
    sequence's count), the window drawn for the epoch.
    With lengths, each run of 50 batches is sorted by length before it is cut, so a batch holds similar lengths
    and pads little, and the batches are then shuffled, so the order stays random across batches."""
    g = torch.Generator().manual_seed(seed * 1000003 + epoch)
    if weights is None:
        order = torch.randperm(n, generator=g)
    else:
        order = torch.multinomial(weights, n, replacement=True, generator=g)
    rows = np.zeros(n, ROW)
    rows["index"], rows["window"] = order.numpy(), ALL
    rows["flip"] = (torch.rand(n, generator=g) < 0.5).numpy() if flip else False
    if windows is not None:  # data.window_training: sample: one window of each sequence, drawn per epoch
        draw = torch.rand(n, generator=g, dtype=torch.float64).numpy()
        rows["window"] = (draw * windows[rows["index"]]).astype(np.int64)
    if lengths is not None:
        mega = 50 * size
        for i in range(0, n, mega):
            chunk = rows[i:i + mega]
            rows[i:i + mega] = chunk[np.argsort(-lengths[chunk["index"]], kind="stable")]
    batches = [rows[i:i + size] for i in batch_starts(n, size, min_size)]
    if lengths is not None:
        batches = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
    return batches


class Collate:
    """Pads each batch only to its longest sequence, on the side the tokenizer pads. The width is rounded up to a
    multiple (tensor cores want 8 on CUDA) but never past max_width, the most the backbone takes."""

    def __init__(self, pad_id, padding_side="right", multiple=1, max_width=None):
        self.pad_id, self.left, self.multiple, self.max_width = pad_id, padding_side == "left", multiple, max_width

    def __call__(self, batch):
        index, ids, labels, mask = zip(*batch)
        windows = None
        if isinstance(ids[0], list):  # all the windows of each sequence: their logits are pooled per sequence
            windows = torch.tensor([len(x) for x in ids])
            ids = [w for x in ids for w in x]
        lengths = np.array([len(x) for x in ids])
        width = max(min(-(-lengths.max() // self.multiple) * self.multiple, self.max_width or np.inf), lengths.max())
        input_ids = np.full((len(ids), width), self.pad_id, np.int64)  # filled in numpy: far cheaper per row
        for r, x in enumerate(ids):
            if self.left:
                input_ids[r, width - len(x):] = x
            else:
                input_ids[r, :len(x)] = x
        cols = np.arange(width)
        attention = cols >= width - lengths[:, None] if self.left else cols < lengths[:, None]
        batch = {"index": torch.tensor(index), "input_ids": torch.from_numpy(input_ids),
                 "attention_mask": torch.from_numpy(attention.astype(np.int64)),
                 "labels": torch.from_numpy(np.stack(labels)), "mask": torch.from_numpy(np.stack(mask))}
        if windows is not None:
            batch["windows"] = windows
        return batch


# -----------------------------------------------------------------------------
# the shipped example: planted motifs in random background

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


if __name__ == "__main__":  # the shipped example (python prepare.py --example writes the genome example)
    if sys.argv[1:2] == ["--conflict"]:  # python data.py --conflict: the negative-transfer case
        print(f"wrote {make_conflict_example(*sys.argv[2:3])} and its planted motifs")
    elif sys.argv[1:2] == ["--long"]:  # python data.py --long: 2 kb sequences, for data.long_sequences
        print(f"wrote {make_long_example(*sys.argv[2:3])} and its planted motifs")
    else:
        print(f"wrote {make_example(*sys.argv[1:2])} and its planted motifs")
