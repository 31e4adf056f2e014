"""
Multi-label metrics in NumPy. They agree with scikit-learn (zero_division=0):
f1/precision/recall with average='macro'|'micro', accuracy_score (subset accuracy) on indicator arrays,
hamming_loss, and per-label roc_auc_score / average_precision_score averaged over labels that have both classes.
A mask (True = measured) leaves unmeasured entries out of every count.
"""
import json
import math
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

SUMMARY = ("accuracy", "f1_macro", "f1_micro", "precision_macro", "precision_micro", "recall_macro", "recall_micro",
           "hamming_loss", "auroc_macro", "auprc_macro")  # compute_metrics' keys over all labels
PER_LABEL = ("f1", "precision", "recall", "auroc", "auprc")  # and per label, as f1/<label>, with support/<label>
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
        per_label = [np.add.reduce(x.view(np.uint8), 0, dtype=np.int64) for x in (p & t, p, t)]
        has_any = m.any(1)
        return per_label, int(has_any.sum()), int((((p == t) | ~m).all(1) & has_any).sum()), int(m.sum())

    with ThreadPoolExecutor(min(os.cpu_count() or 1, 8)) as pool:  # numpy lets go of the GIL in these loops
        parts = list(pool.map(count, range(0, n, CHUNK)))
    tp, predicted, true = (sum(p[0][k] for p in parts) if parts else np.zeros(L, np.int64) for k in range(3))
    fp, fn = predicted - tp, true - tp
    rows, rows_right, measured = (sum(p[k] for p in parts) for k in (1, 2, 3))

    precision, recall = safe_div(tp, tp + fp), safe_div(tp, tp + fn)
    f1 = safe_div(2 * tp, 2 * tp + fp + fn)
    out = {
        "accuracy": float(safe_div(rows_right, rows)),
        "f1_macro": float(f1.mean()),
        "f1_micro": float(safe_div(2 * tp.sum(), 2 * tp.sum() + fp.sum() + fn.sum())),
        "precision_macro": float(precision.mean()),
        "precision_micro": float(safe_div(tp.sum(), tp.sum() + fp.sum())),
        "recall_macro": float(recall.mean()),
        "recall_micro": float(safe_div(tp.sum(), tp.sum() + fn.sum())),
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
    for j, name in enumerate(names):
        out[f"f1/{name}"] = float(f1[j])
        out[f"precision/{name}"] = float(precision[j])
        out[f"recall/{name}"] = float(recall[j])
        out[f"auroc/{name}"] = float(auroc[j])
        out[f"auprc/{name}"] = float(auprc[j])
        out[f"support/{name}"] = int(tp[j] + fn[j])
    return out


def per_label_text(names, result, split="this"):
    """The per-label table printed at the end of a run. A label without positives in the split is marked, with a
    warning line: its F1 of 0 counts in f1_macro, as in scikit-learn, while its AUROC and AUPRC are undefined."""
    lines = [f"{'label':<20} {'support':>8} {'precision':>9} {'recall':>7} {'f1':>7} {'auroc':>7} {'auprc':>7}"]
    for n in names:
        mark = " *" if result[f"support/{n}"] == 0 else ""
        lines.append(f"{n:<20} {result[f'support/{n}']:>8} {result[f'precision/{n}']:>9.4f} "
                     f"{result[f'recall/{n}']:>7.4f} {result[f'f1/{n}']:>7.4f} {result[f'auroc/{n}']:>7.4f} "
                     f"{result[f'auprc/{n}']:>7.4f}{mark}")
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
        f.write("label\tsupport\tprevalence\tprecision\trecall\tf1\tauroc\tauprc\tthreshold\n")
        for j, n in enumerate(names):
            row = [n, str(result[f"support/{n}"]), f"{prevalence[j]:.4f}"]
            row += [f"{result[f'{k}/{n}']:.4f}" for k in ("precision", "recall", "f1", "auroc", "auprc")]
            f.write("\t".join(row + [f"{thresholds[j]:g}"]) + "\n")


def resampled(labels, probs, mask, thresholds, rows):
    """F1 (at thresholds), AUROC and AUPRC per label on each resample of the rows: rows is (R, n), the row indices
    of R bootstrap resamples, the same for every run compared so that the comparison is paired. Returns
    {metric: (R, L)}, nan where a resample has a single class of a label."""
    labels, probs = np.asarray(labels) > 0.5, np.asarray(probs)
    mask = np.ones_like(labels) if mask is None else np.asarray(mask, bool)
    R, n = rows.shape
    L = labels.shape[1]
    # F1 by counts: how often each row is drawn, times its true positives, calls and positives
    drawn = np.zeros((R, n), np.float64)
    np.add.at(drawn, (np.repeat(np.arange(R), n), rows.ravel()), 1)
    called, true = (probs >= np.asarray(thresholds)) & mask, labels & mask
    tp, calls, pos = (drawn @ x.astype(np.float64) for x in (called & true, called, true))
    out = {"f1": safe_div(2 * tp, calls + pos), "auroc": np.full((R, L), np.nan), "auprc": np.full((R, L), np.nan)}
    for j in range(L):
        y, s, m = labels[:, j], probs[:, j], mask[:, j]
        for r, idx in enumerate(rows):
            idx = idx[m[idx]]
            out["auroc"][r, j], out["auprc"][r, j] = ranking_scores(y[idx], s[idx])
    return out
