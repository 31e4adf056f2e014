"""
Multi-label metrics in NumPy. They agree with scikit-learn (zero_division=0):
f1/precision/recall with average='macro'|'micro', accuracy_score (subset accuracy) on indicator arrays,
hamming_loss, matthews_corrcoef per label (0 where it is undefined), and per-label roc_auc_score /
average_precision_score averaged over labels that have both classes.
A mask (True = measured) leaves unmeasured entries out of every count.
"""
import json
import math
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

SUMMARY = ("accuracy", "f1_macro", "f1_micro", "precision_macro", "precision_micro", "recall_macro", "recall_micro",
           "mcc_macro", "hamming_loss", "auroc_macro", "auprc_macro")  # compute_metrics' keys over all labels
# The metrics of each label, in the order of every table (the printed one, per_label.tsv), as <name>/<label> in the
# results and TensorBoard, with support/<label>. A new one is its name here and its array in compute_metrics.
PER_LABEL = ("precision", "recall", "f1", "mcc", "auroc", "auprc")
CHUNK = 1 << 16  # rows at a time, so boolean temporaries stay small on genome-scale arrays
BLOCK = 32  # labels ranked at a time by one thread


def columns(a, j0, width):
    """Columns j0:j0+width of a, each one contiguous. Copied in tiles of rows: a transpose in one go reads
    memory with a large stride and is several times slower."""
    part = a[:, j0:j0 + width]
    out = np.empty((part.shape[1], len(a)), a.dtype)
    for i in range(0, len(a), 4096):
        out[:, i:i + 4096] = part[i:i + 4096].T
    return out


def ranking_scores(y, s):
    """(AUROC, average precision) of scores s for binary truth y; nan when y has a single class.
    Sorting positives and negatives apart and counting with binary search is exact, ties included (a tie counts
    one half in AUROC and tied scores form one threshold in AP, as in scikit-learn), and much faster than an
    argsort: sorting plain floats is vectorised."""
    pos, neg = np.sort(s[y]), np.sort(s[~y])
    P, N = len(pos), len(neg)
    if P == 0 or N == 0:
        return float("nan"), float("nan")
    below = np.searchsorted(neg, pos, "left")
    ties = np.searchsorted(neg, pos, "right") - below
    auroc = (below.sum() + 0.5 * ties.sum()) / (P * N)
    # AP: one term per distinct positive score t, weighted by the positives at t, of precision at threshold t
    starts = np.r_[0, np.flatnonzero(pos[1:] != pos[:-1]) + 1]
    tp = P - starts  # positives scoring >= t
    fp = N - np.searchsorted(neg, pos[starts], "left")
    ap = np.sum(np.diff(np.r_[starts, P]) / P * tp / (tp + fp))
    return float(auroc), float(ap)


def safe_div(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.divide(a, b, out=np.zeros_like(a), where=b > 0)


def compute_metrics(labels, probs, label_names=None, threshold=0.5, mask=None):
    labels, probs = np.asarray(labels), np.asarray(probs)
    if labels.shape != probs.shape or labels.ndim != 2:
        raise ValueError(f"labels {labels.shape} and probs {probs.shape} must both be (n, num_labels)")
    n, L = labels.shape
    names = list(label_names) if label_names is not None else [str(i) for i in range(L)]
    thr = np.broadcast_to(np.asarray(threshold, np.float64), (L,))
    if probs.dtype == np.float32:  # the smallest float32 >= each threshold: the same decisions, half the traffic
        t32 = thr.astype(np.float32)
        thr = np.where(t32 < thr, np.nextafter(t32, np.float32(np.inf)), t32)

    def count(i):  # rows i:i+CHUNK -> per label (tp, predicted, true), rows measured, rows all right, entries
        t = labels[i:i + CHUNK]
        t = t if t.dtype == bool else t > 0.5
        p = probs[i:i + CHUNK] >= thr
        m = np.ones_like(t) if mask is None else np.asarray(mask[i:i + CHUNK], bool)
        if mask is not None:
            t, p = t & m, p & m
        per_label = [np.add.reduce(x.view(np.uint8), 0, dtype=np.int64) for x in (p & t, p, t, m)]
        has_any = m.any(1)
        return per_label, int(has_any.sum()), int((((p == t) | ~m).all(1) & has_any).sum()), int(m.sum())

    with ThreadPoolExecutor(min(os.cpu_count() or 1, 8)) as pool:  # numpy lets go of the GIL in these loops
        parts = list(pool.map(count, range(0, n, CHUNK)))
    tp, predicted, true, entries = (sum(p[0][k] for p in parts) if parts else np.zeros(L, np.int64)
                                    for k in range(4))
    fp, fn = predicted - tp, true - tp
    tn = entries - tp - fp - fn
    rows, rows_right, measured = (sum(p[k] for p in parts) for k in (1, 2, 3))

    precision, recall = safe_div(tp, tp + fp), safe_div(tp, tp + fn)
    f1 = safe_div(2 * tp, 2 * tp + fp + fn)
    # Matthews' correlation of calls and truth, in floats: the product of four counts overflows int64 at genome scale
    tp_, fp_, fn_, tn_ = (np.asarray(x, np.float64) for x in (tp, fp, fn, tn))
    mcc = safe_div(tp_ * tn_ - fp_ * fn_, np.sqrt((tp_ + fp_) * (tp_ + fn_) * (tn_ + fp_) * (tn_ + fn_)))
    out = {
        "accuracy": float(safe_div(rows_right, rows)),
        "f1_macro": float(f1.mean()),
        "f1_micro": float(safe_div(2 * tp.sum(), 2 * tp.sum() + fp.sum() + fn.sum())),
        "precision_macro": float(precision.mean()),
        "precision_micro": float(safe_div(tp.sum(), tp.sum() + fp.sum())),
        "recall_macro": float(recall.mean()),
        "recall_micro": float(safe_div(tp.sum(), tp.sum() + fn.sum())),
        "mcc_macro": float(mcc.mean()),
        "hamming_loss": float(safe_div(fp.sum() + fn.sum(), measured)),
    }
    auroc, auprc = np.full(L, np.nan), np.full(L, np.nan)

    def ranking_block(j0):  # a block of labels; numpy's copies and sorts let go of the GIL, so threads overlap
        ys, ss = columns(labels, j0, BLOCK) > 0.5, columns(probs, j0, BLOCK)
        ms = None if mask is None else columns(np.asarray(mask, bool), j0, BLOCK)
        return [ranking_scores(y, s) if ms is None else ranking_scores(y[m], s[m])
                for y, s, m in zip(ys, ss, ms if ms is not None else ys)]

    with ThreadPoolExecutor(min(os.cpu_count() or 1, 8)) as pool:
        for j0, scores in zip(range(0, L, BLOCK), pool.map(ranking_block, range(0, L, BLOCK))):
            auroc[j0:j0 + len(scores)], auprc[j0:j0 + len(scores)] = np.array(scores).T
    defined = ~np.isnan(auroc)
    out["auroc_macro"] = float(auroc[defined].mean()) if defined.any() else float("nan")
    out["auprc_macro"] = float(auprc[defined].mean()) if defined.any() else float("nan")
    per_label = {"precision": precision, "recall": recall, "f1": f1, "mcc": mcc, "auroc": auroc, "auprc": auprc}
    for j, name in enumerate(names):
        out.update({f"{k}/{name}": float(per_label[k][j]) for k in PER_LABEL})
        out[f"support/{name}"] = int(tp[j] + fn[j])
    return out


def per_label_text(names, result, split="this"):
    """The per-label table printed at the end of a run. A label without positives in the split is marked, with a
    warning line: its F1 of 0 counts in f1_macro, as in scikit-learn, while its AUROC and AUPRC are undefined."""
    widths = [max(len(k), 7) for k in PER_LABEL]
    lines = [f"{'label':<20} {'support':>8} " + " ".join(f"{k:>{w}}" for k, w in zip(PER_LABEL, widths))]
    for n in names:
        mark = " *" if result[f"support/{n}"] == 0 else ""
        lines.append(f"{n:<20} {result[f'support/{n}']:>8} " +
                     " ".join(f"{result[f'{k}/{n}']:>{w}.4f}" for k, w in zip(PER_LABEL, widths)) + mark)
    empty = [n for n in names if result[f"support/{n}"] == 0]
    if empty:
        lines.append(f"warning: * no positives in the {split} split for {', '.join(empty)}: an F1 of 0 that counts "
                     f"in f1_macro (as in scikit-learn), and an AUROC and AUPRC that are undefined and left out of "
                     f"auroc_macro and auprc_macro")
    return "\n".join(lines)


def save_json(result, path):
    """Undefined metrics (nan: a label with one class) are written as null, which JSON readers understand."""
    with open(path, "w") as f:
        json.dump({k: None if isinstance(v, float) and math.isnan(v) else v for k, v in result.items()}, f, indent=2)


def tune_thresholds(labels, probs, mask=None, default=0.5):
    """Per label, the threshold that maximises F1 on these data (a validation split). It is placed halfway
    between the lowest score kept positive and the next lower score, so it does not sit on a training point.
    A label without positives keeps the default."""
    L = labels.shape[1]
    out = np.full(L, default, np.float64)
    for j in range(L):
        y, s = labels[:, j] > 0.5, probs[:, j].astype(np.float64)
        if mask is not None:
            keep = np.asarray(mask[:, j], bool)
            y, s = y[keep], s[keep]
        P = int(y.sum())
        if P == 0:
            continue
        order = np.argsort(-s, kind="stable")
        s, y = s[order], y[order]
        last = np.r_[np.flatnonzero(s[1:] != s[:-1]), len(s) - 1]  # cut after each run of equal scores
        tp = np.cumsum(y)[last]
        fp = last + 1 - tp
        f1 = 2 * tp / (2 * tp + fp + (P - tp))
        k = int(np.argmax(f1))  # the first maximum: the highest threshold among equals
        below = s[last[k] + 1] if last[k] + 1 < len(s) else s[last[k]] - 1e-6
        out[j] = (s[last[k]] + below) / 2
    return out


def save_per_label(path, names, result, prevalence, thresholds):
    """per_label.tsv: one row per label with its support, prevalence, scores and threshold."""
    with open(path, "w") as f:
        f.write("\t".join(["label", "support", "prevalence", *PER_LABEL, "threshold"]) + "\n")
        for j, n in enumerate(names):
            row = [n, str(result[f"support/{n}"]), f"{prevalence[j]:.4f}"]
            row += [f"{result[f'{k}/{n}']:.4f}" for k in PER_LABEL]
            f.write("\t".join(row + [f"{thresholds[j]:g}"]) + "\n")


def ranking_gradients(y, s):
    """(AUROC, AP, their gradients (n,) with respect to each row's weight at weight 1) of scores s for binary
    truth y: a bootstrap resample reweights the rows, and for a large split the resampled value is the value plus
    the weights' change times the gradient, to first order. Ties as in ranking_scores. One sort."""
    n = len(s)
    order = np.argsort(s, kind="stable")
    ss, ys = s[order], y[order]
    P = int(ys.sum())
    N = n - P
    if P == 0 or N == 0:
        return float("nan"), float("nan"), np.zeros(n), np.zeros(n)
    starts = np.r_[0, np.flatnonzero(ss[1:] != ss[:-1]) + 1]  # groups of equal scores
    group = np.cumsum(np.r_[False, ss[1:] != ss[:-1]])
    ends = np.r_[starts[1:], n]
    cpos, cneg = np.r_[0, np.cumsum(ys)], np.r_[0, np.cumsum(~ys)]
    pos_lo, pos_hi = cpos[starts][group], cpos[ends][group]  # positives below each row's score, and at or below
    neg_lo, neg_hi = cneg[starts][group], cneg[ends][group]
    # AUROC = U / (P N): a positive's share of U is the negatives below it (ties count one half), and a
    # negative's the positives above it
    neg_below, pos_above = neg_lo + 0.5 * (neg_hi - neg_lo), P - pos_hi + 0.5 * (pos_hi - pos_lo)
    auroc = neg_below[ys].sum() / (P * N)
    d_auroc = np.where(ys, neg_below / (P * N) - auroc / P, pos_above / (P * N) - auroc / N)
    # AP = (1/P) sum over positives i of TP(s_i) / A(s_i), both counted at scores >= s_i: a row m moves P, its
    # own term, and the TP and A of every positive at or below its score
    tp, every = P - pos_lo, n - starts[group]
    precision = tp / every
    ap = precision[ys].sum() / P
    inv = np.r_[0, np.cumsum(np.where(ys, 1 / every, 0))]  # sums over positives at or below: cumulative
    prec_inv = np.r_[0, np.cumsum(np.where(ys, precision / every, 0))]
    d_ap = (ys * (precision - ap + inv[ends][group]) - prec_inv[ends][group]) / P
    out_auroc, out_ap = np.empty(n), np.empty(n)
    out_auroc[order], out_ap[order] = d_auroc, d_ap
    return float(auroc), float(ap), out_auroc, out_ap


EXACT_WORK = 5e7  # resamples x rows x labels up to which AUROC and AUPRC are recomputed on every resample


class Resampled:
    """A run's F1 (at its thresholds), AUROC and AUPRC per label on bootstrap resamples of its rows: called with
    counts (R, n), how often each row is drawn in each resample (the same for every run compared, so that the
    comparison is paired), it returns {metric: (R, L)}, nan where a label has a single class. F1 is exact (counts
    of true positives, calls and positives). AUROC and AUPRC are recomputed on every resample while resamples x
    rows x labels stays under EXACT_WORK; beyond, they are taken to first order (ranking_gradients), which at such
    sizes (thousands of rows) moves the interval's ends by a small fraction of its width (tests/test_compare.py)
    and is thousands of times faster."""

    def __init__(self, labels, probs, mask, thresholds, resamples):
        labels, probs = np.asarray(labels) > 0.5, np.asarray(probs)
        mask = np.ones_like(labels) if mask is None else np.asarray(mask, bool)
        called, true = (probs >= np.asarray(thresholds)) & mask, labels & mask
        self.counted = np.concatenate([called & true, called, true], 1).astype(np.float32)  # (n, 3L)
        self.labels, self.probs, self.mask = labels, probs, mask
        n, L = labels.shape
        self.exact = resamples * n * L <= EXACT_WORK
        if not self.exact:
            self.grads, self.values = np.zeros((2 * L, n), np.float32), np.full(2 * L, np.nan)
            ys, ss, ms = columns(labels, 0, L), columns(probs, 0, L), columns(mask, 0, L)
            for j, (y, s, m) in enumerate(zip(ys, ss, ms)):
                self.values[j], self.values[L + j], self.grads[j, m], self.grads[L + j, m] = \
                    ranking_gradients(y[m], s[m])
            self.grads = self.grads.T

    def __call__(self, counts):
        counts = np.asarray(counts, np.float32)
        (R, n), L = counts.shape, self.labels.shape[1]
        tp, calls, pos = np.split(counts @ self.counted, 3, axis=1)
        out = {"f1": safe_div(2 * tp, calls + pos)}
        if not self.exact:
            moved = self.values + (counts - 1) @ self.grads
            return {**out, "auroc": moved[:, :L], "auprc": moved[:, L:]}
        out["auroc"], out["auprc"] = np.full((R, L), np.nan), np.full((R, L), np.nan)
        rows = [np.repeat(np.arange(n), c.astype(np.int64)) for c in counts]
        for j in range(L):
            y, s, m = self.labels[:, j], self.probs[:, j], self.mask[:, j]
            for r, idx in enumerate(rows):
                idx = idx[m[idx]]
                out["auroc"][r, j], out["auprc"][r, j] = ranking_scores(y[idx], s[idx])
        return out


def bootstrap_counts(n, resamples, seed, chunk_bytes=1 << 26):
    """How often each of n rows is drawn in each of the resamples, (R, n) float32 blocks of about chunk_bytes:
    the draws of default_rng(seed).integers(0, n, (resamples, n)), counted."""
    rng = np.random.default_rng(seed)
    step = max(1, min(resamples, chunk_bytes // (4 * max(n, 1))))
    for start in range(0, resamples, step):
        k = min(step, resamples - start)
        drawn = rng.integers(0, n, (k, n)) + n * np.arange(k)[:, None]
        yield np.bincount(drawn.ravel(), minlength=k * n).reshape(k, n).astype(np.float32)
