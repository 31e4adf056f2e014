"""
Data: read TSV/CSV/FASTA (optionally .gz), validate sequences and labels, tokenise, batch. The shipped example
data are written by genomics/planted.py (python prepare.py --example default).

Every problem with the input is a DataError, one line: `path:line: what is wrong (what was expected)`.
"""
import csv
import gzip
import os
import re
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
