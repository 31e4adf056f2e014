import itertools
import math

import numpy as np
import pytest

import metrics
from metrics import compute_metrics


def brute_auroc(y, s):
    """Probability that a random positive outscores a random negative, ties counting one half."""
    pos, neg = s[y == 1], s[y == 0]
    wins = sum((p > n) + 0.5 * (p == n) for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def brute_ap(y, s):
    """Average precision by its definition: sum over distinct thresholds of (R_k - R_{k-1}) * P_k."""
    ap, prev_recall = 0.0, 0.0
    for t in sorted(set(s), reverse=True):
        pred = s >= t
        tp = np.sum(pred & (y == 1))
        recall, precision = tp / np.sum(y == 1), tp / np.sum(pred)
        ap += (recall - prev_recall) * precision
        prev_recall = recall
    return ap


def brute_counts(y, p):
    tp = np.sum((p == 1) & (y == 1))
    fp = np.sum((p == 1) & (y == 0))
    fn = np.sum((p == 0) & (y == 1))
    return tp, fp, fn


def test_hand_worked_example():
    labels = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
    probs = np.array([[0.9, 0.2, 0.4], [0.1, 0.8, 0.1], [0.7, 0.3, 0.6], [0.2, 0.1, 0.3]])
    m = compute_metrics(labels, probs, ["a", "b", "c"])
    # predictions at 0.5: [1,0,0] [0,1,0] [1,0,1] [0,0,0]
    # a: tp2 fp0 fn0 -> f1 1; b: tp1 fp0 fn1 -> f1 2/3; c: tp0 fp1 fn1 -> f1 0
    assert m["f1/a"] == pytest.approx(1.0)
    assert m["f1/b"] == pytest.approx(2 / 3)
    assert m["f1/c"] == 0.0
    assert m["f1_macro"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    # micro: tp 3, fp 1, fn 2 -> 6 / 9
    assert m["f1_micro"] == pytest.approx(6 / 9)
    assert m["precision_micro"] == pytest.approx(3 / 4)
    assert m["recall_micro"] == pytest.approx(3 / 5)
    assert m["accuracy"] == pytest.approx(2 / 4)  # rows 2 and 4 fully right
    assert m["hamming_loss"] == pytest.approx(3 / 12)
    assert m["support/a"] == 2 and m["support/b"] == 2 and m["support/c"] == 1
    assert m["auroc/a"] == pytest.approx(1.0)
    # c: positive 0.4 vs negatives 0.1, 0.6, 0.3 -> wins 2 of 3
    assert m["auroc/c"] == pytest.approx(2 / 3)


def test_matches_brute_force_with_ties_and_thresholds():
    rng = np.random.RandomState(0)
    n, L = 200, 5
    labels = (rng.rand(n, L) < [0.5, 0.3, 0.1, 0.05, 0.6]).astype(int)
    probs = np.round(rng.rand(n, L), 1)  # coarse values: many ties
    thr = np.array([0.5, 0.3, 0.7, 0.2, 0.5])
    m = compute_metrics(labels, probs, None, thr)
    preds = (probs >= thr).astype(int)
    tps, fps, fns = zip(*(brute_counts(labels[:, j], preds[:, j]) for j in range(L)))
    f1s = [2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else 0.0 for tp, fp, fn in zip(tps, fps, fns)]
    assert m["f1_macro"] == pytest.approx(np.mean(f1s))
    assert m["f1_micro"] == pytest.approx(2 * sum(tps) / (2 * sum(tps) + sum(fps) + sum(fns)))
    assert m["accuracy"] == pytest.approx(np.mean((preds == labels).all(1)))
    assert m["hamming_loss"] == pytest.approx(np.mean(preds != labels))
    for j in range(L):
        assert m[f"auroc/{j}"] == pytest.approx(brute_auroc(labels[:, j], probs[:, j]))
        assert m[f"auprc/{j}"] == pytest.approx(brute_ap(labels[:, j], probs[:, j]))
    assert m["auroc_macro"] == pytest.approx(np.mean([brute_auroc(labels[:, j], probs[:, j]) for j in range(L)]))


def test_label_without_positives_is_zero_f1_and_left_out_of_auc_average():
    labels = np.array([[1, 0], [0, 0], [1, 0], [0, 0]])
    probs = np.array([[0.9, 0.1], [0.2, 0.2], [0.6, 0.7], [0.4, 0.1]])
    m = compute_metrics(labels, probs, ["x", "y"])
    assert m["f1/y"] == 0.0 and m["precision/y"] == 0.0 and m["recall/y"] == 0.0
    assert math.isnan(m["auroc/y"]) and math.isnan(m["auprc/y"])
    assert m["auroc_macro"] == pytest.approx(1.0)  # only x counts
    assert m["f1_macro"] == pytest.approx((1.0 + 0.0) / 2)


def test_no_predictions_and_no_positives_give_zero_not_nan():
    m = compute_metrics(np.zeros((3, 2)), np.zeros((3, 2)))
    assert m["f1_macro"] == 0.0 and m["f1_micro"] == 0.0 and m["precision_micro"] == 0.0
    assert m["accuracy"] == 1.0
    assert math.isnan(m["auroc_macro"])


def test_mask_leaves_unmeasured_entries_out():
    labels = np.array([[1, 1], [0, 0], [1, 0]])
    probs = np.array([[0.9, 0.1], [0.1, 0.9], [0.8, 0.2]])
    mask = np.array([[True, False], [True, False], [True, True]])
    m = compute_metrics(labels, probs, ["a", "b"], mask=mask)
    # only the measured entries: a perfect everywhere, b only row 3 (neg, predicted neg)
    assert m["accuracy"] == 1.0
    assert m["hamming_loss"] == 0.0
    assert m["support/b"] == 0
    # equal to dropping the unmeasured rows of b by hand
    ref = compute_metrics(labels[:, :1], probs[:, :1])
    assert m["f1/a"] == ref["f1/0"]


def test_threshold_is_inclusive_and_per_label():
    labels = np.array([[1, 1]])
    probs = np.array([[0.5, 0.5]])
    assert compute_metrics(labels, probs, threshold=0.5)["accuracy"] == 1.0
    assert compute_metrics(labels, probs, threshold=[0.5, 0.6])["f1/1"] == 0.0


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError):
        compute_metrics(np.zeros((3, 2)), np.zeros((3, 3)))


def test_tuned_thresholds_maximise_f1_on_the_data():
    rng = np.random.RandomState(1)
    labels = (rng.rand(300, 4) < [0.5, 0.2, 0.05, 0.0]).astype(int)
    probs = np.clip(labels * 0.3 + rng.rand(300, 4) * 0.7, 0, 1).round(2)  # informative, with ties
    from metrics import tune_thresholds
    thr = tune_thresholds(labels, probs)
    assert thr[3] == 0.5  # no positives: the default
    for j in range(3):
        best = max(compute_metrics(labels[:, [j]], probs[:, [j]], threshold=t)["f1/0"] for t in np.unique(probs[:, j]))
        assert compute_metrics(labels[:, [j]], probs[:, [j]], threshold=thr[j])["f1/0"] == pytest.approx(best)
        assert thr[j] not in set(probs[:, j])  # between two observed scores


def test_float32_probabilities_at_a_threshold_decide_as_in_float64(monkeypatch):
    # float32(0.1) lies above 0.1 and float32(0.7) below 0.7: both must still compare as the float64 values do
    probs = np.array([[0.1, 0.7], [np.nextafter(np.float32(0.1), 0), np.nextafter(np.float32(0.7), 1)]], np.float32)
    labels = np.array([[1, 1], [1, 1]])
    monkeypatch.setattr(metrics, "CHUNK", 1)  # row chunks counted on threads, then added up
    got = metrics.compute_metrics(labels, probs, threshold=[0.1, 0.7])
    want = metrics.compute_metrics(labels, probs.astype(np.float64), threshold=[0.1, 0.7])
    assert {k: v for k, v in got.items() if "au" not in k} == {k: v for k, v in want.items() if "au" not in k}
    assert got["recall/0"] == 0.5 and got["recall/1"] == 0.5


def test_mcc_per_label_and_macro_agree_with_scikit_learn_with_a_mask_and_undefined_labels():
    from sklearn.metrics import matthews_corrcoef
    rng = np.random.default_rng(3)
    labels = rng.random((300, 5)) < [0.3, 0.05, 0.5, 0.2, 0.0]  # the last label has no positive: MCC 0
    probs = np.clip(labels * 0.4 + rng.random((300, 5)) * 0.7, 0, 1)
    probs[:, 3] = 0.1  # nothing called: MCC 0, as scikit-learn gives
    mask = rng.random((300, 5)) > 0.1
    m = compute_metrics(labels, probs, list("abcde"), [0.5, 0.5, 0.6, 0.5, 0.5], mask)
    want = [matthews_corrcoef(labels[mask[:, j], j], probs[mask[:, j], j] >= t)
            for j, t in enumerate([0.5, 0.5, 0.6, 0.5, 0.5])]
    assert [m[f"mcc/{c}"] for c in "abcde"] == pytest.approx(want, abs=1e-12)
    assert want[0] > 0.3 and want[3] == want[4] == 0  # a real correlation, and the two undefined ones
    assert m["mcc_macro"] == pytest.approx(np.mean(want), abs=1e-12)


def test_every_per_label_metric_is_in_the_results_the_table_and_per_label_tsv(tmp_path):
    labels = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    probs = np.array([[0.9, 0.2], [0.1, 0.8], [0.7, 0.3], [0.2, 0.6]])
    m = compute_metrics(labels, probs, ["a", "b"])
    assert {k.split("/")[0] for k in m if "/" in k} == {*metrics.PER_LABEL, "support"}
    header = metrics.per_label_text(["a", "b"], m).splitlines()[0].split()
    assert header == ["label", "support", *metrics.PER_LABEL]
    metrics.save_per_label(str(tmp_path / "p.tsv"), ["a", "b"], m, np.array([0.5, 0.5]), np.array([0.5, 0.5]))
    assert (tmp_path / "p.tsv").read_text().splitlines()[0].split("\t") == \
        ["label", "support", "prevalence", *metrics.PER_LABEL, "threshold"]
