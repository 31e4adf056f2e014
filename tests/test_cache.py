"""The token cache: built once, mapped after, rebuilt when what it depends on changes; ids checked."""
import mmap
import os
import pickle

import numpy as np
import pytest

from data import DataError
from training import cache
from training.backbones import KmerTokenizer
from helpers import TOK, data_cfg, load, seqs, write_file


def test_token_cache_is_reused_and_rebuilt_when_file_tokenizer_or_max_length_change(tmp_path, monkeypatch):
    p = write_file(tmp_path, "c.tsv", "sequence\tlabels\nACGTACGT\ta\nGGGG\tb\n")
    first, _ = load(p)
    assert first.tokens.flat.dtype == np.uint8 and isinstance(first.tokens.flat.base.obj, mmap.mmap)
    # never unpacked whole
    assert isinstance(first.labels, cache.Bits) and isinstance(first.labels.packed.base, np.memmap)
    copy = pickle.loads(pickle.dumps(first.tokens))  # as a DataLoader worker gets it: mapped again, not copied
    assert len(pickle.dumps(first.tokens)) < 1000 and [t.tolist() for t in copy] == [t.tolist() for t in first.tokens]
    built, build = [], cache.build_cache
    monkeypatch.setattr(cache, "build_cache", lambda *a, **k: (built.append(a), build(*a, **k)))
    again, _ = load(p)
    assert built == [] and seqs(again) == seqs(first) == ["ACGTACGT", "GGGG"]
    assert seqs(load(p, max_length=4)[0]) == ["AC", "GG"] and len(built) == 1
    six, _ = cache.load_file(p, data_cfg(), None, KmerTokenizer(6))
    assert len(built) == 2 and six.tokens.flat.dtype == np.uint16  # 4101 tokens
    write_file(tmp_path, "c.tsv", "sequence\tlabels\nACGTACGT\ta\nGGGA\tb\n")
    assert seqs(load(p)[0]) == ["ACGTACGT", "GGGA"] and len(built) == 3


def test_a_data_error_while_building_leaves_no_cache_behind(tmp_path):
    p = write_file(tmp_path, "bad.tsv", "sequence\tlabels\nACGT\ta\nACXT\tb\n")
    with pytest.raises(DataError, match="bad.tsv:3: invalid character 'X'"):
        load(p, ["a", "b"], cache_dir=str(tmp_path / "cache"))
    assert os.listdir(tmp_path / "cache") == []


def test_reverse_complements_are_cached_in_the_same_pass(tmp_path, monkeypatch):
    p = write_file(tmp_path, "r.tsv", "sequence\tlabels\nAACGTT\ta\nGATTACA\tb\n")
    monkeypatch.setattr(cache, "CHUNK", 1)
    split, _ = cache.load_file(p, data_cfg(), None, TOK, reverse=True)
    assert seqs(split) == ["AACGTT", "GATTACA"]
    rc = cache.Split(split.rc_tokens, split.labels, split.mask)
    assert seqs(rc) == ["AACGTT", "TGTAATC"]
    assert len(os.listdir(tmp_path / "cache")) == 1  # one folder, one read of the file, for both strands


def test_an_unwritable_cache_folder_is_a_one_line_data_error(tmp_path):
    p = write_file(tmp_path, "ok.tsv", "sequence\tlabels\nACGT\ta\n")
    blocker = write_file(tmp_path, "file", "")  # a file where the folder should be
    with pytest.raises(DataError, match=f"{blocker}/cache: cannot write the token cache there"):
        load(p, cache_dir=blocker + "/cache")


def test_streamed_chunks_and_worker_processes_build_the_same_cache(tmp_path, monkeypatch):
    rng = np.random.RandomState(0)
    rows = "".join(f"{''.join(rng.choice(list('ACGTN'), rng.randint(3, 40)))}\t"
                   f"{';'.join(rng.choice(['0', '1', 'NA'], 3))}\n" for _ in range(50))
    p = write_file(tmp_path, "m.tsv", "sequence\tlabels\n" + rows)
    whole, names = load(p, multi_label_sep=";", max_length=20)
    monkeypatch.setattr(cache, "CHUNK", 7)
    monkeypatch.setattr(cache, "POOL_BYTES", 0)
    chunked, _ = load(p, multi_label_sep=";", max_length=20, cache_dir=str(tmp_path / "other"))
    assert names == ["label_0", "label_1", "label_2"]
    assert [t.tolist() for t in chunked.tokens] == [t.tolist() for t in whole.tokens]
    assert (np.asarray(chunked.labels) == np.asarray(whole.labels)).all()
    assert (np.asarray(chunked.mask) == np.asarray(whole.mask)).all()
    assert (chunked.truncated == whole.truncated).all() and whole.truncated.sum() > 0
    assert not np.asarray(whole.mask).all()


def test_bits_unpack_only_the_rows_asked_for_in_the_label_order_asked_for():
    dense = np.random.RandomState(0).rand(20, 11) < 0.3
    bits = cache.Bits(np.packbits(dense, axis=1), 11)
    assert (np.asarray(bits) == dense).all() and bits.shape == (20, 11)
    assert (bits[3] == dense[3]).all() and (bits[[5, 1]] == dense[[5, 1]]).all()
    part = bits.subset(np.array([2, 7, 9])).select([10, 0])
    assert part.shape == (3, 2) and (np.asarray(part) == dense[[2, 7, 9]][:, [10, 0]]).all()
    assert (part[1:] == dense[[7, 9]][:, [10, 0]]).all()


def test_duplicated_ids_are_an_error_naming_them(tmp_path):
    fa = write_file(tmp_path, "d.fa", ">s1 a\nACGT\n>s2 b\nACGG\n>s1 b\nAAAA\n>s3\nCCCC\n")
    with pytest.raises(DataError, match=r"d.fa:5: 1 ids appear more than once, in 1 extra rows: 's1' \(lines 1 "
                                             r"and 5\) \(expected one row per id\)"):
        cache.load_file(fa, data_cfg(), ["a", "b"], KmerTokenizer(1))
    tab = write_file(tmp_path, "d.tsv", "name\tsequence\tlabels\nx\tACGT\ta\ny\tACGT\tb\nx\tACGT\ta\n")
    with pytest.raises(DataError, match=r"d.tsv:4: 1 ids appear more than once"):
        cache.load_file(tab, data_cfg(), ["a", "b"], KmerTokenizer(1))
    split, _ = cache.load_file(write_file(tmp_path, "e.tsv", "name\tsequence\tlabels\nx\tACGT\ta\ny\tACGT\tb\n"),
                               data_cfg(), ["a", "b"], KmerTokenizer(1))
    assert split.ids.tolist() == ["x", "y"]  # a name (or id) column gives the ids
