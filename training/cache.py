"""
The token cache: a data file is streamed once (read, validated and tokenised by data.py's functions) into
memory-mapped token ids and offsets, bit-packed labels and mask, and which rows were truncated. Later runs, and
DataLoader workers, map these files again instead of reading the data. Also the splits made from them, and
load_for_training, which builds the cache once per node under torchrun and keeps the labels trained on.

    Tokens   ragged token ids, memory-mapped
    Bits     a boolean (rows, labels) matrix kept as packed bits, unpacked a few rows at a time
    Split    one split's Tokens, labels and mask: the Dataset that train.py batches
"""
import collections
import hashlib
import itertools
import json
import mmap
import multiprocessing
import os
import shutil
import tempfile
import time

import numpy as np
import torch
import torch.distributed as dist

import data
from data import DataError
from training import config, splits
from training.console import log, progress_bar

CACHE_VERSION = 3
CHUNK = 4096  # records read and tokenised at a time
POOL_BYTES = 1 << 23  # files larger than this are tokenised by worker processes (unless the tokenizer is fast)


class Tokens:
    """Ragged token ids: row i is flat[offsets[rows[i]]:offsets[rows[i] + 1]]. flat is memory-mapped from the
    cache file at path (or in memory when path is None), so a split costs no memory beyond its row index. With
    counts (data.long_sequences: windows), row i is a sequence of counts[i] windows, the rows from rows[i] on."""

    def __init__(self, flat, offsets, rows=None, path=None, counts=None):
        self.flat, self.offsets, self.path, self.counts = flat, offsets, path, counts
        if rows is None:
            rows = np.arange(len(offsets) - 1) if counts is None else np.r_[0, np.cumsum(counts)[:-1]]
        self.rows = rows

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

    def __getitem__(self, i):  # a sequence's tokens, or the list of its windows' tokens
        if self.counts is not None:
            return [self.window(i, w) for w in range(self.counts[i])]
        r = self.rows[i]
        return self.flat[self.offsets[r]:self.offsets[r + 1]]

    def window(self, i, w):
        r = self.rows[i] + w
        return self.flat[self.offsets[r]:self.offsets[r + 1]]

    def lengths(self):  # tokens per sequence, all its windows together
        return self.offsets[self.rows + (1 if self.counts is None else self.counts)] - self.offsets[self.rows]

    def subset(self, idx):
        return Tokens(self.flat, self.offsets, self.rows[idx], self.path,
                      None if self.counts is None else self.counts[idx])


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
    """Token ids, labels (n, L) and mask (n, L) of one split, as Bits or arrays; ids are the FASTA ids, the id
    column's values or the row numbers from 1. rc_tokens, when set, are the reverse complements' tokens. Items are
    (index, tokens, labels, mask); a training sampler asks for data.ROW keys (the strand, the window)."""

    def __init__(self, tokens, labels, mask, ids=None, path=None, *, rc_tokens=None, truncated=None, key=None):
        self.tokens, self.labels, self.mask, self.path, self.rc_tokens = tokens, labels, mask, path, rc_tokens
        self.key = key  # the name of the token cache it came from, which changes with the file's content
        self.ids = np.arange(1, len(tokens) + 1) if ids is None else ids
        self.truncated = np.zeros(len(tokens), bool) if truncated is None else truncated

    def __len__(self):
        return len(self.tokens)

    def __getitem__(self, key):  # an index, or a data.ROW (the strand, and the window or all of them)
        i, flip, window = (key["index"], key["flip"], key["window"]) if isinstance(key, np.void) else \
            (key, False, data.ALL)
        tokens = self.rc_tokens if flip else self.tokens
        ids = tokens[i] if window == data.ALL else tokens.window(i, window)
        return i, ids, self.labels[i].astype(np.float32), self.mask[i]

    def subset(self, idx):
        return Split(self.tokens.subset(idx), self.labels.subset(idx), self.mask.subset(idx), self.ids[idx], self.path,
                     rc_tokens=None if self.rc_tokens is None else self.rc_tokens.subset(idx),
                     truncated=self.truncated[idx], key=self.key)


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


def encode_chunk(tokenizer, seqs, max_length, dtype, windows=None):
    """One chunk's tokens as (flat ids, lengths, truncated?, windows per sequence or None): compact to send back
    from a worker process. With windows (size, stride), a sequence counts as truncated when one of its windows is
    (a window_size too large for max_length)."""
    counts = None
    if windows:
        seqs, counts = data.cut_windows(seqs, *windows)
    ids, truncated = data.tokenize(tokenizer, seqs, max_length)
    if windows:
        truncated = np.maximum.reduceat(truncated, np.r_[0, np.cumsum(counts)[:-1]])
    return np.concatenate(ids).astype(dtype), np.array([len(x) for x in ids]), truncated, counts


def build_cache(path, data_cfg, names, tokenizer, *, max_length, reverse, folder, windows=None):
    """Streams the file in chunks: this process reads, validates and parses labels while worker processes
    tokenise (a fast Hugging Face tokenizer has threads of its own), and the tokens go straight to disk; with
    reverse, the reverse complements' tokens too, in the same pass; with windows (size, stride), each sequence's
    windows, and how many it has. The folder appears complete or not at all."""
    tmp = f"{folder}.tmp{os.getpid()}"
    try:
        os.makedirs(tmp, exist_ok=True)
    except OSError as e:
        raise DataError(f"{data_cfg['cache_dir']}: cannot write the token cache there ({e.strerror}; expected "
                        f"a writable folder in data.cache_dir)") from None
    sep, wide = data_cfg["multi_label_sep"], data_cfg["label_cols"]
    dtype = np.uint8 if len(tokenizer) <= 1 << 8 else np.uint16 if len(tokenizer) <= 1 << 16 else np.uint32
    big = os.path.getsize(path) > POOL_BYTES and not getattr(tokenizer, "is_fast", False)
    workers = min(os.cpu_count() or 1, 8) if big else 0
    pool = multiprocessing.Pool(workers) if workers else None
    streams = ["tokens", "rc_tokens"] if reverse else ["tokens"]
    lengths, labels, mask, ids, id_lines, truncated, form = [[] for _ in streams], [], [], [], [], [], {}
    counts = []
    outs = []
    try:
        if names is None:
            names = data.infer_label_names(path, ((line, cell) for line, *_, cell in
                                                      data.iter_records(path, data_cfg)), sep, wide)
        if wide and len(wide) != len(names):
            raise DataError(f"{path}: data.label_cols names {len(wide)} columns for {len(names)} labels "
                            f"(expected one column per label of task.label_map)")
        outs = [open(os.path.join(tmp, f"{name}.bin"), "wb") for name in streams]

        def write(chunk):
            lines, rids, y, m, results = chunk
            results = [r.get() for r in results] if pool else results
            for out, n_tokens, (flat, n, *_) in zip(outs, lengths, results):
                out.write(flat.tobytes())
                n_tokens.append(n)
            truncated.append(results[0][2])  # as read, not as reverse complemented
            counts.append(results[0][3])  # a sequence and its reverse complement have as many windows
            if isinstance(rids[0], str):  # else the ids are the row numbers
                ids.append(np.array(rids)), id_lines.append(np.array(lines))
            labels.append(np.packbits(y > 0.5, axis=1)), mask.append(np.packbits(m, axis=1))

        records, inflight = data.iter_records(path, data_cfg), collections.deque()
        bar = progress_bar(desc=f"tokenising {os.path.basename(path)}")
        while part := list(itertools.islice(records, CHUNK)):
            bar.update(len(part))
            lines, rids, seqs, cells = zip(*part)
            y, m = data.parse_labels(path, lines, cells, names, sep, form)
            per_stream = [list(seqs)] + ([[data.reverse_complement(x) for x in seqs]] if reverse else [])
            args = [(tokenizer, x, max_length, dtype, windows) for x in per_stream]
            jobs = [pool.apply_async(encode_chunk, a) if pool else encode_chunk(*a) for a in args]
            inflight.append((lines, rids, y, m, jobs))
            if len(inflight) > 2 * workers:
                write(inflight.popleft())
        while inflight:
            write(inflight.popleft())
        bar.close()
        if ids:
            ids = np.concatenate(ids)
            check_unique_ids(path, ids, np.concatenate(id_lines))
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
    if windows:
        np.save(os.path.join(tmp, "windows.npy"), np.concatenate(counts))
    if len(ids):
        np.save(os.path.join(tmp, "ids.npy"), ids)
    with open(os.path.join(tmp, "meta.json"), "w") as f:
        json.dump({"path": path, "names": names, "dtype": np.dtype(dtype).name, "rows": sum(map(len, truncated))}, f)
    try:
        os.rename(tmp, folder)
    except OSError:  # another process built the same cache meanwhile: keep theirs
        shutil.rmtree(tmp)


def check_unique_ids(path, ids, lines):
    """Ids name the rows of test_predictions.tsv, and a duplicate mostly means that a file was concatenated twice,
    which would put the same sequence in two splits: an error, naming the first few."""
    ids = np.asarray(ids)
    _, first, inverse, counts = np.unique(ids, return_index=True, return_inverse=True, return_counts=True)
    again = np.flatnonzero(np.arange(len(ids)) != first[inverse])  # rows whose id came before
    if len(again):
        shown = ", ".join(f"'{ids[i]}' (lines {lines[first[inverse[i]]]} and {lines[i]})" for i in again[:3])
        raise DataError(f"{path}:{lines[again[0]]}: {int((counts > 1).sum())} ids appear more than once, in "
                        f"{len(again)} extra rows: {shown} (expected one row per id)")


def load_file(path, data_cfg, names, tokenizer, reverse=False):
    """A whole file as a Split, from the cache; built first when this file's content, the tokenizer, max_length,
    the label names or the label columns have none. With reverse, the split also has its reverse complements'
    tokens. Returns (split, names), names inferred when None."""
    data.check_file(path)  # a missing file is a data error, not a traceback from the digest
    settings = [data_cfg[k] for k in ("seq_col", "label_col", "label_cols", "multi_label_sep", "id_col")]
    windows = config.windows(data_cfg)
    key = digest(CACHE_VERSION, names, reverse, data_cfg["max_length"], tokenizer_digest(tokenizer), settings,
                 *([windows] if windows else []), files=[path])
    folder = os.path.join(data_cfg["cache_dir"], f"{os.path.basename(path)}.{key[:16]}")
    if not os.path.isdir(folder):
        t0 = time.time()
        build_cache(path, data_cfg, names, tokenizer, max_length=data_cfg["max_length"], reverse=reverse, folder=folder,
                    windows=windows)
        print(f"data: tokenised {path}{' and its reverse complements' if reverse else ''}"
              f"{' as windows of %d bp, %d apart,' % windows if windows else ''} into {folder} in "
              f"{time.time() - t0:.1f} s; later runs map it", flush=True)
    with open(os.path.join(folder, "meta.json")) as f:
        meta = json.load(f)
    L, where = len(meta["names"]), lambda name: os.path.join(folder, name)
    tokens, rc_tokens = (Tokens.map(where(f"{name}.bin"), meta["dtype"], np.load(where(f"{name}_offsets.npy")))
                         if os.path.exists(where(f"{name}.bin")) else None for name in ("tokens", "rc_tokens"))
    if windows:  # each sequence's windows: the rows from the sum of the counts before it on
        for t in (tokens, rc_tokens):
            if t is not None:
                t.counts = np.load(where("windows.npy"))
                t.rows = np.r_[0, np.cumsum(t.counts)[:-1]]
    # plain views of the mapped files: indexing an np.memmap costs several times more per row
    labels = Bits(np.load(where("labels.npy"), mmap_mode="r").view(np.ndarray), L)
    mask = Bits(np.load(where("mask.npy"), mmap_mode="r").view(np.ndarray), L)
    ids = np.load(where("ids.npy")) if os.path.exists(where("ids.npy")) else None
    return Split(tokens, labels, mask, ids, path, rc_tokens=rc_tokens, truncated=np.load(where("truncated.npy")),
                 key=os.path.basename(folder)), meta["names"]



def load_splits(data_cfg, tokenizer, names=None, reverse=False, test=True):
    """{'train', 'validation', 'test'} -> Split (validation/test may be None), and the label names.
    names=None infers them from the training data (the whole file when one file is split). With reverse, each
    split also gets the tokens of its reverse complements. test=False sets the test split aside: its file is not
    opened, and the test part of a split file is dropped before anything looks at it."""
    def load(path, names):
        return load_file(path, data_cfg, names, tokenizer, reverse)

    if data_cfg["path"]:
        full, names = load(data_cfg["path"], names)
        parts = splits.split_indices(full, data_cfg)
        found = {k: full.subset(p) if len(p) and (test or k != "test") else None for k, p in zip(splits.SPLITS, parts)}
    else:
        train, names = load(data_cfg["train"], names)
        found = {"train": train}
        for k in ("validation", "test"):
            found[k] = load(data_cfg[k], names)[0] if data_cfg[k] and (test or k != "test") else None
    if found["train"] is None:
        raise DataError(f"{data_cfg['path']}: the training split is empty (expected a larger data.train_size, or "
                        f"fewer held-out chromosomes)")
    splits.report_overlaps(found)
    return found, names


def select_labels(found, names, subset):
    """Keeps only the labels in subset (task.labels), in that order, in every split. Returns the kept names."""
    subset = [str(x) for x in ([subset] if isinstance(subset, str) else subset)]
    unknown = [x for x in subset if x not in names]
    if unknown or not subset:
        raise DataError(f"task.labels: unknown labels {unknown} (labels in the data: {', '.join(names)})")
    idx = [names.index(x) for x in subset]
    for split in found.values():
        if split is not None:
            split.labels, split.mask = split.labels.select(idx), split.mask.select(idx)
    return subset


def check_positives(train, names):
    """A label with no positive among the training split's measured entries cannot be learned, and its F1 of 0
    would weigh on every macro figure: an error before any training, naming the labels and the way to leave them
    out (task.labels), rather than a warning that a finished run's report repeats too late."""
    positives, _ = data.label_counts(train.labels, train.mask)
    empty = [n for n, p in zip(names, positives) if p == 0]
    if empty:
        kept = [n for n in names if n not in empty]
        fix = f"leave them out with 'task.labels=[{','.join(kept)}]'" if kept else "check the label column"
        raise DataError(f"{train.path}: no positive in the training split's {len(train)} sequences for "
                        f"{', '.join(empty)} (expected at least one positive per label: {fix}, or check "
                        f"data.multi_label_sep and the split)")


def load_for_training(cfg, tokenizer, world):
    """The splits (None ones left out), the label names of the data and those trained on (task.labels). Rank 0 of
    each node tokenises into the cache while the others wait, then all map it."""
    task_cfg, data_cfg, model_cfg = cfg["task"], cfg["data"], cfg["model"]
    local_master = int(os.environ.get("LOCAL_RANK", 0)) == 0
    if world > 1 and not local_master:
        dist.barrier()
    found, all_names = load_splits(data_cfg, tokenizer, config.label_names_from_config(task_cfg),
                                   reverse=data_cfg["rc_augment"] or model_cfg["rc_average"],
                                   test=cfg["training"]["do_predict"])
    if world > 1 and local_master:
        dist.barrier()
    names = select_labels(found, all_names, task_cfg["labels"]) if task_cfg["labels"] else all_names
    datasets = {name: split for name, split in found.items() if split is not None}
    check_positives(datasets["train"], names)
    for name, split in datasets.items():
        if name != "train" and not model_cfg["rc_average"]:
            split.rc_tokens = None  # the reverse complements were only wanted for training
        prevalence = " ".join(f"{n}={p:.1%}" for n, p in zip(names, data.prevalence(split.labels, split.mask)))
        if split.tokens.counts is None:
            cut = f"{split.truncated.sum()} truncated to {data_cfg['max_length']} tokens"
            if split.truncated.any():
                cut += " (data.long_sequences=windows would read all of them)"
        else:
            cut = f"{split.tokens.counts.sum()} windows of {data_cfg['window_size']} bp, {split.truncated.sum()} " \
                  f"with a window truncated to {data_cfg['max_length']} tokens"
        log(f"data: {name}: {len(split)} sequences from {split.path}, {cut} | {prevalence}")
    return datasets, all_names, names
