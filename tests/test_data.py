import gzip

import numpy as np
import pytest
import torch

import data
from data import DataError
from training import cache
from training.backbones import KmerTokenizer
from genomics import planted
from helpers import TOK, data_cfg, load, seqs, write_file


def ids(split):
    return split.ids.astype(str).tolist()


def test_names_form_with_empty_cell_and_inferred_sorted_names(tmp_path):
    p = write_file(tmp_path, "a.tsv", "sequence\tlabels\nacgt\tb,a\nAAAA\t\nCCCC\tc\n")
    split, names = load(p)
    assert names == ["a", "b", "c"]
    assert seqs(split) == ["ACGT", "AAAA", "CCCC"]  # uppercased
    assert np.asarray(split.labels).tolist() == [[1, 1, 0], [0, 0, 0], [0, 0, 1]]
    assert np.asarray(split.mask).all()
    assert ids(split) == ["1", "2", "3"]


def test_multi_hot_form_with_missing_values(tmp_path):
    p = write_file(tmp_path, "b.csv", "sequence,label\nACGT,0;1;NA\nGGGG,1;-1;0\nTTTT,;0;1\n")
    split, names = load(p, ["x", "y", "z"], label_col="label", multi_label_sep=";")
    assert np.asarray(split.labels).tolist() == [[0, 1, 0], [1, 0, 0], [0, 0, 1]]
    assert np.asarray(split.mask).tolist() == [[True, True, False], [True, False, True], [False, True, True]]


def test_multi_hot_with_comma_separator_and_inferred_names(tmp_path):
    p = write_file(tmp_path, "c.tsv", "sequence\tlabels\nACGT\t0,1,1\nGGGG\t1,0,0\n")
    split, names = load(p)
    assert names == ["label_0", "label_1", "label_2"]
    assert np.asarray(split.labels).tolist() == [[0, 1, 1], [1, 0, 0]]


def test_wide_form(tmp_path):
    p = write_file(tmp_path, "d.tsv", "id\tsequence\tleaf\troot\nr1\tACGT\t1\t0\nr2\tGGGG\tNA\t1\n")
    split, names = load(p, label_cols=["leaf", "root"])
    assert names == ["leaf", "root"]
    assert np.asarray(split.labels).tolist() == [[1, 0], [0, 1]]
    assert np.asarray(split.mask).tolist() == [[True, True], [False, True]]


def test_crlf_bom_trailing_blank_lines_and_gzip(tmp_path):
    text = "\ufeffsequence\tlabels\r\nACGT\ta\r\nGGGG\tb\r\n\r\n\r\n"
    for name in ("e.tsv", "e.tsv.gz"):
        split, names = load(write_file(tmp_path, name, text))
        assert names == ["a", "b"] and seqs(split) == ["ACGT", "GGGG"]


def test_fasta_with_labels_and_wrapped_lines(tmp_path):
    p = write_file(tmp_path, "f.fa", ">s1 a,b\nACGT\nacgt\n>s2\nGG\n")
    split, names = load(p)
    assert ids(split) == ["s1", "s2"] and seqs(split) == ["ACGTACGT", "GG"]
    assert names == ["a", "b"] and np.asarray(split.labels).tolist() == [[1, 1], [0, 0]]


@pytest.mark.parametrize("name, text, kw, message", [
    ("m.tsv", None, {}, "m.tsv: no such file"),
    ("col.tsv", "seq\tlabels\nACGT\ta\n", {}, "col.tsv:1: no column 'sequence' (columns present: seq, labels; "
                                             "data.seq_col names it)"),
    ("empty_seq.tsv", "sequence\tlabels\nACGT\ta\n\tb\n", {}, "empty_seq.tsv:3: empty sequence"),
    ("char.tsv", "sequence\tlabels\nACGT\ta\nACXT\tb\n", {}, "char.tsv:3: invalid character 'X' at position 3"),
    ("unk.tsv", "sequence\tlabels\nACGT\ta\nACGT\tz\n", {"names": ["a", "b"]},
     "unk.tsv:3: unknown label 'z' (known labels: a, b)"),
    ("count.csv", "sequence,labels\nACGT,0;1\nACGT,0;1;1\n", {"names": ["a", "b"], "multi_label_sep": ";"},
     "count.csv:3: a multi-hot cell has 3 fields (expected 2, one per label"),
    ("value.csv", "sequence,labels\nACGT,0;1\nACGT,0;2\n", {"names": ["a", "b"], "multi_label_sep": ";"},
     "value.csv:3: label value '2' in a multi-hot cell (expected 0, 1, or NA/empty/-1"),
    ("void.tsv", "", {}, "void.tsv:1: empty file"),
    ("header.tsv", "sequence\tlabels\n", {}, "header.tsv:2: no data rows after the header"),
    ("dup.tsv", "sequence\tlabels\tsequence\nA\ta\tC\n", {}, "dup.tsv:1: duplicate column name 'sequence'"),
    ("fields.tsv", "sequence\tlabels\nACGT\ta\textra\n", {}, "fields.tsv:2: 3 fields (expected 2"),
    ("wide.tsv", "sequence\tleaf\nACGT\tyes\n", {"label_cols": ["leaf"]}, "wide.tsv:2: label value 'yes'"),
    ("bad.fa", ">s1\nACGU\n", {}, "bad.fa:2: invalid character 'U' at position 4 of the sequence"),
])
def test_bad_input_is_one_line_with_path_and_line(tmp_path, name, text, kw, message):
    path = str(tmp_path / name) if text is None else write_file(tmp_path, name, text)
    names = kw.pop("names", None)
    with pytest.raises(DataError) as e:
        load(path, names, **kw)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_split_by_fractions_is_deterministic_and_complete(tmp_path):
    rows = "".join(f"{'ACGT' * (i % 5 + 1)}\t{'a' if i % 3 else 'b'}\n" for i in range(100))
    p = write_file(tmp_path, "s.tsv", "sequence\tlabels\n" + rows)
    d = data_cfg(path=p, train_size=0.7, validation_size=0.2, test_size=0.1)
    s1, names = cache.load_splits(d, TOK)
    s2, _ = cache.load_splits(d, TOK)
    assert [len(s1[k]) for k in ("train", "validation", "test")] == [70, 20, 10]
    assert all(ids(s1[k]) == ids(s2[k]) for k in s1)
    all_ids = sorted(int(i) for k in s1 for i in s1[k].ids)
    assert all_ids == list(range(1, 101))  # every row lands in exactly one split
    other, _ = cache.load_splits(dict(d, seed=1), TOK)
    assert ids(other["test"]) != ids(s1["test"])


def test_separate_files_use_training_labels(tmp_path):
    tr = write_file(tmp_path, "tr.tsv", "sequence\tlabels\nACGT\ta\nGGGG\tb\n")
    va = write_file(tmp_path, "va.tsv", "sequence\tlabels\nACGT\tc\n")
    with pytest.raises(DataError, match="va.tsv:2: unknown label 'c'"):
        cache.load_splits(data_cfg(train=tr, validation=va), TOK)
    splits, names = cache.load_splits(data_cfg(train=tr, validation=tr), TOK)
    assert names == ["a", "b"] and splits["test"] is None


@pytest.mark.parametrize("hf", [False, True])
def test_tokenize_counts_truncation_and_keeps_special_tokens(hf):
    from helpers import char_tokenizer
    tok = char_tokenizer() if hf else KmerTokenizer(3)
    ids, truncated = data.tokenize(tok, ["ACGTACGTAC", "ACG"], max_length=5)
    assert truncated.tolist() == [True, False]
    assert [len(x) for x in ids] == [5, 5 if hf else 3]
    assert ids[0][0] == tok.cls_token_id and ids[0][-1] == tok.sep_token_id


def test_kmer_tokenizer_overlapping_and_unknown():
    tok = KmerTokenizer(2)
    ids = tok(["ACGN"], add_special_tokens=False)["input_ids"][0]
    base = len(tok.specials)
    assert ids == [base + 0 * 4 + 1, base + 1 * 4 + 2, tok.unk_token_id]  # AC, CG, GN
    assert KmerTokenizer(2, stride=2)(["ACGT"], add_special_tokens=False)["input_ids"][0] == [base + 1, base + 11]


def test_collate_pads_to_longest_on_either_side():
    batch = [(0, np.array([5, 6, 7], np.int32), np.zeros(2, np.float32), np.ones(2, bool)),
             (1, np.array([8], np.int32), np.ones(2, np.float32), np.ones(2, bool))]
    right = data.Collate(0, "right")(batch)
    assert right["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert right["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    left = data.Collate(0, "left")(batch)
    assert left["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert left["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    eight = data.Collate(0, "left", multiple=8)(batch)  # as on CUDA
    assert eight["input_ids"].tolist() == [[0] * 5 + [5, 6, 7], [0] * 7 + [8]]
    assert eight["attention_mask"].sum(1).tolist() == [3, 1] and eight["input_ids"].dtype == torch.long


def test_example_generator_is_deterministic_with_the_promised_prevalences(tmp_path):
    a = planted.make_example(str(tmp_path / "a.tsv"), n=3000)
    b = planted.make_example(str(tmp_path / "b.tsv"), n=3000)
    assert open(a).read() == open(b).read()
    split, names = load(a)
    assert names == sorted(planted.EXAMPLE_LABELS)
    prevalence = np.asarray(split.labels).mean(0)
    assert prevalence.max() > 0.3 and 0.01 < prevalence.min() < 0.06
    lengths = split.tokens.lengths() - 2
    assert min(lengths) >= 100 and max(lengths) <= 300
    # co-occurrence: flower is much more common among leaf sequences
    leaf, flower = names.index("leaf"), names.index("flower")
    y = np.asarray(split.labels)
    assert y[y[:, leaf] == 1, flower].mean() > 2 * y[y[:, leaf] == 0, flower].mean()


def test_wide_columns_must_match_the_label_count(tmp_path):
    p = write_file(tmp_path, "w.tsv", "sequence\tleaf\troot\nACGT\t1\t0\n")
    with pytest.raises(DataError, match="data.label_cols names 2 columns for 3 labels"):
        load(p, ["leaf", "root", "stem"], label_cols=["leaf", "root"])


def test_stratified_split_puts_a_rare_label_in_every_split_in_proportion(tmp_path):
    rng = np.random.RandomState(0)
    rows = []
    for _ in range(1000):
        labels = [n for n, p in (("common", 0.4), ("mid", 0.1), ("rare", 0.02)) if rng.rand() < p]
        rows.append(f"ACGT\t{','.join(labels)}\n")
    p = write_file(tmp_path, "r.tsv", "sequence\tlabels\n" + "".join(rows))
    d = data_cfg(path=p, stratify=True)
    splits, names = cache.load_splits(d, TOK)
    again, _ = cache.load_splits(d, TOK)
    assert all(ids(splits[k]) == ids(again[k]) for k in splits)  # deterministic
    assert sorted(int(i) for k in splits for i in splits[k].ids) == list(range(1, 1001))
    total = sum(np.asarray(splits[k].labels).sum(0) for k in splits)
    for k, frac in (("train", 0.8), ("validation", 0.1), ("test", 0.1)):
        assert abs(len(splits[k]) - frac * 1000) <= 2
        got = np.asarray(splits[k].labels).sum(0)
        assert np.all(got >= 1)  # the rare label (about 20 sequences) is in every split
        assert np.all(np.abs(got - frac * total) <= 1.0)


def test_select_labels_keeps_a_subset_in_order(tmp_path):
    p = write_file(tmp_path, "s.tsv", "sequence\tlabels\nACGT\ta,c\nGGGG\tb\n")
    splits, names = cache.load_splits(data_cfg(path=p, train_size=1.0, validation_size=0.0, test_size=0.0), TOK)
    assert cache.select_labels(splits, names, ["c", "a"]) == ["c", "a"]
    assert np.asarray(splits["train"].labels).tolist() == [[1, 1], [0, 0]]
    with pytest.raises(DataError, match=r"unknown labels \['z'\]"):
        cache.select_labels(splits, ["c", "a"], ["z"])


def padding_fraction(batches, lengths):
    """Share of padded positions when each batch is padded to its longest sequence."""
    padded = sum(len(b) * lengths[b["index"]].max() for b in batches)
    return 1 - sum(lengths[b["index"]].sum() for b in batches) / padded


def test_group_by_length_pads_little_and_keeps_every_sequence_once():
    lengths = np.random.RandomState(0).randint(200, 2001, size=5000)
    plain = data.global_batches(5000, 32, seed=0, epoch=0)
    grouped = data.global_batches(5000, 32, seed=0, epoch=0, lengths=lengths)
    assert sorted(np.concatenate(grouped)["index"].tolist()) == list(range(5000))
    assert padding_fraction(grouped, lengths) <= 0.10 < padding_fraction(plain, lengths)
    again = data.global_batches(5000, 32, seed=0, epoch=0, lengths=lengths)
    assert all(np.array_equal(a, b) for a, b in zip(grouped, again))
    # the batch order is still shuffled: lengths do not run down monotonically across batches
    maxima = [lengths[b["index"]].max() for b in grouped]
    assert maxima != sorted(maxima, reverse=True)


def test_truncated_or_corrupt_gzip_and_non_utf8_bytes_are_one_line_errors(tmp_path):
    rows = "".join(f"{'ACGT' * 50}\ta\n" for _ in range(2000))
    whole = gzip.compress(("sequence\tlabels\n" + rows).encode())
    cut = tmp_path / "cut.tsv.gz"
    cut.write_bytes(whole[:len(whole) // 2])  # a download that stopped half way
    with pytest.raises(DataError) as e:
        load(str(cut))
    line = int(str(e.value).split(":")[1])
    assert str(e.value).startswith(f"{cut}:{line}: cannot read this line: the compressed file ends early")
    assert 2 < line < 2002 and "\n" not in str(e.value)
    fake = tmp_path / "plain.tsv.gz"
    fake.write_text("sequence\tlabels\nACGT\ta\n")  # named .gz, but not compressed
    with pytest.raises(DataError, match=r"plain.tsv.gz:1: cannot read this line: corrupt compressed data"):
        load(str(fake))
    latin = tmp_path / "latin.tsv"
    latin.write_bytes(b"sequence\tlabels\nACGT\ta\nACGT\t\xe9t\xe9\n")
    with pytest.raises(DataError, match=r"latin.tsv:3: cannot read this line: bytes that are not UTF-8 text"):
        load(str(latin))


def test_oversample_weights_favour_the_rarest_label():
    labels = np.array([[1, 0], [1, 1], [0, 0], [1, 0]], np.float32)  # prevalence 0.75 and 0.25
    w, share = data.oversample_weights(labels, np.ones_like(labels, bool), 1.0)
    w = w.tolist()
    assert w == pytest.approx([4 / 3, 4.0, 1.0, 4 / 3])
    assert share == pytest.approx([(4 / 3 + 4 + 4 / 3) / sum(w), 4 / sum(w)])  # the shares the draws will give
    # a global batch does not depend on anything but the seed and the epoch
    a = data.global_batches(4, 2, seed=1, epoch=3, weights=torch.tensor(w), flip=True)
    b = data.global_batches(4, 2, seed=1, epoch=3, weights=torch.tensor(w), flip=True)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_the_conflict_example_plants_a_motif_that_means_opposite_things(tmp_path):
    path = planted.make_conflict_example(str(tmp_path / "c.tsv"), n=1500, seed=1)
    rows = [line.rstrip("\n").split("\t") for line in open(path)][1:]
    sites = [line.split("\t") for line in open(tmp_path / "c.motifs.tsv")][1:]
    shared = {int(r) for r, label, *_ in sites if label == "shared"}
    labels = [set(filter(None, r[1].split(","))) for r in rows]
    share = {n: sum(n in x for x in labels) / len(rows) for n in planted.CONFLICT_LABELS}
    assert 0.13 < share["leaf"] < 0.22 and 0.03 < share["shade"] < 0.09, share
    for i, x in enumerate(labels, 1):  # S with every leaf, root and flower; never with shade
        assert (i in shared) if x & {"leaf", "root", "flower"} else True
        assert i not in shared if "shade" in x else True
