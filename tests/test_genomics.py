"""The genomics wing and prepare.py: from a genome and peaks to labelled windows, chromosome hold-out splits, and
the bad inputs of both."""
import gzip
import os
import subprocess
import sys

import numpy as np
import pytest

import prepare
from data import DataError
from training import cache, config
from training.backbones import KmerTokenizer
from genomics.example import make_example
from genomics.genome import Genome
from helpers import ROOT, data_cfg, read_tsv

TOK = KmerTokenizer(1)


def write_fasta(path, seqs, width=50):
    with open(path, "w") as f:
        for name, s in seqs.items():
            f.write(f">{name} a description\n" + "\n".join(s[i:i + width] for i in range(0, len(s), width)) + "\n")
    return str(path)


def write_bed(path, rows, header=""):
    with open(path, "w") as f:
        f.write(header + "".join("\t".join(map(str, r)) + "\n" for r in rows))
    return str(path)


def cfg_for(tmp_path, genome_path, peaks, out="w.tsv", **prep):
    cfg = config.load(None, [f"data.path={tmp_path / out}", f"data.cache_dir={tmp_path / 'cache'}"])
    cfg["prepare"].update(genome=str(genome_path), peaks=peaks, **prep)
    return cfg


@pytest.fixture
def planted(tmp_path):
    """Two chromosomes of random bases, lower case in places, and two labels' peaks: some shared, one that
    overlaps another, one near each end, one short and one longer than the window."""
    rng = np.random.RandomState(0)
    seqs = {"c1": "".join(rng.choice(list("ACGTacgt"), 3000)), "c2": "".join(rng.choice(list("ACGT"), 2000))}
    a = [("c1", 100, 180, "x", 0, "+", 1, -1, -1, 40), ("c1", 1000, 1300, "x", 0, "+", 1, -1, -1, 250),
         ("c1", 2950, 2990, "x", 0, "+", 1, -1, -1, 20), ("c2", 500, 560, "x", 0, "+", 1, -1, -1, -1)]
    b = [("c1", 1150, 1400), ("c1", 1420, 1440), ("c2", 520, 900), ("c2", 10, 40)]
    paths = {"a": write_bed(tmp_path / "a.narrowPeak", a), "b": write_bed(tmp_path / "b.bed", b, "track name=b\n")}
    return tmp_path, seqs, write_fasta(tmp_path / "g.fa", seqs), paths, {"a": a, "b": b}


def expected_windows(seqs, peaks, width, need):
    """The windows and labels computed directly: a window centred on each summit (narrowPeak) or centre, inside
    its chromosome; a label where need bases of the window lie in that label's peaks, or a peak lies in it whole."""
    starts = set()
    for rows in peaks.values():
        for r in rows:
            summit = r[1] + r[9] if len(r) == 10 and r[9] >= 0 else (r[1] + r[2]) // 2
            s = summit - width // 2
            if 0 <= s and s + width <= len(seqs[r[0]]):
                starts.add((r[0], s))
    out = {}
    for chrom, s in sorted(starts):
        labels = []
        for name, rows in peaks.items():
            bases = {x for r in rows if r[0] == chrom for x in range(r[1], r[2])}
            whole = any(r[0] == chrom and s <= r[1] and r[2] <= s + width for r in rows)
            if len(bases & set(range(s, s + width))) >= need or whole:
                labels.append(name)
        if labels:
            out[f"{chrom}:{s}-{s + width}"] = (seqs[chrom][s:s + width].upper(), ",".join(labels))
    return out


def test_windows_and_labels_match_a_direct_computation(planted, capsys):
    tmp_path, seqs, fa, paths, peaks = planted
    cfg = cfg_for(tmp_path, fa, paths, window=200, min_overlap=0.5, negative_ratio=2.0, gc_match=False, max_n=0.1)
    prepare.prepare(cfg)
    rows = read_tsv(tmp_path / "w.tsv")
    expected = expected_windows(seqs, peaks, 200, 100)
    labelled = {r["id"]: (r["sequence"], r["labels"]) for r in rows if r["labels"]}
    assert labelled == expected
    negatives = [r for r in rows if not r["labels"]]
    assert len(negatives) == 2 * len(expected)
    for r in negatives:  # no base in any peak, and the bases of its coordinates
        chrom, span = r["id"].split(":")
        s, e = map(int, span.split("-"))
        assert seqs[chrom][s:e].upper() == r["sequence"]
        assert not any(p[0] == chrom and p[1] < e and s < p[2] for rows_ in peaks.values() for p in rows_)
    assert [r["id"] for r in rows] == sorted((r["id"] for r in rows), key=lambda x: (x.split(":")[0],
                                                                                     int(x.split(":")[1].split("-")[0])))
    log = capsys.readouterr().out
    marked = sum("a" in labels.split(",") for _, labels in expected.values())
    assert f"windows: a: {marked} windows marked" in log and "2 off a chromosome end left out" in log
    assert os.path.exists(fa + ".fai")  # built beside the genome on first use


def test_bins_and_min_overlap_in_bp(planted):
    tmp_path, seqs, fa, paths, peaks = planted
    prepare.prepare(cfg_for(tmp_path, fa, paths, windows="bins", window=100, stride=50, min_overlap=30,
                            negative_ratio=0.0))
    rows = read_tsv(tmp_path / "w.tsv")
    for r in rows:
        chrom, span = r["id"].split(":")
        s, e = map(int, span.split("-"))
        assert s % 50 == 0 and e - s == 100
        for name in "ab":
            bases = {x for p in peaks[name] if p[0] == chrom for x in range(p[1], p[2])}
            whole = any(p[0] == chrom and s <= p[1] and p[2] <= e for p in peaks[name])
            assert (name in r["labels"].split(",")) == (len(bases & set(range(s, e))) >= 30 or whole), r
    assert len(rows) == len({r["id"] for r in rows}) > 10


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    folder = make_example(str(tmp_path_factory.mktemp("genome")))
    peaks = {n: os.path.join(folder, f) for n, f in (("leaf", "leaf.narrowPeak"), ("root", "root.bed"),
                                                       ("flower", "flower.bed"))}
    return folder, peaks


def test_gc_matched_negatives_and_the_counts_reported(example, tmp_path, capsys):
    folder, peaks = example
    means = {}
    for match in (True, False):
        out = f"w{match}.tsv"
        prepare.prepare(cfg_for(tmp_path, os.path.join(folder, "genome.fa"), peaks, out, window=300,
                                gc_match=match))
        rows = read_tsv(tmp_path / out)
        gc = {k: np.mean([(r["sequence"].count("G") + r["sequence"].count("C")) / len(r["sequence"])
                          for r in rows if bool(r["labels"]) == k]) for k in (True, False)}
        means[match] = gc
        assert sum(1 for r in rows if r["labels"]) == sum(1 for r in rows if not r["labels"])  # ratio 1
    assert abs(means[True][True] - means[True][False]) < 0.02, means
    assert abs(means[False][True] - means[False][False]) > 0.05, means  # what matching removes
    log = capsys.readouterr().out
    assert "peaks: root: 252 peaks in" in log and "3 lines on chromosomes the genome lacks are left out (ChrM)" in log
    assert "1 more than 10% N left out" in log and "2 off a chromosome end left out" in log


def test_chromosome_split_holds_whole_chromosomes_out(example, tmp_path, capsys):
    folder, peaks = example
    prepare.prepare(cfg_for(tmp_path, os.path.join(folder, "genome.fa"), peaks, "w.tsv.gz", window=300))
    d = data_cfg(path=str(tmp_path / "w.tsv.gz"), split_by="chrom", validation_chroms=["Chr4"],
                 test_chroms=["Chr5"])
    splits, names = cache.load_splits(d, TOK, ["leaf", "root", "flower"])
    chroms = {k: {str(i).split(":")[0] for i in s.ids} for k, s in splits.items()}
    assert chroms == {"train": {"Chr1", "Chr2", "Chr3"}, "validation": {"Chr4"}, "test": {"Chr5"}}
    assert sum(len(s) for s in splits.values()) == len(read_tsv(tmp_path / "w.tsv.gz"))
    assert "overlap a training window" not in capsys.readouterr().out
    # a random split of the same overlapping windows leaks, and says so
    cache.load_splits(data_cfg(path=str(tmp_path / "w.tsv.gz")), TOK, ["leaf", "root", "flower"])
    assert "test windows overlap a training window" in capsys.readouterr().out
    with pytest.raises(DataError, match=r"data.test_chroms names Chr9, which holds no window \(chromosomes in the "
                                        r"data: Chr1, Chr2"):
        cache.load_splits(dict(d, test_chroms=["Chr9"]), TOK, ["leaf", "root", "flower"])
    with pytest.raises(DataError, match="row 1 has the id '1', without coordinates"):
        plain = tmp_path / "plain.tsv"
        plain.write_text("sequence\tlabels\nACGT\tleaf\n")
        cache.load_splits(dict(d, path=str(plain)), TOK, ["leaf", "root", "flower"])


def test_danqplant_fasta_round_trips(example, tmp_path):
    folder, peaks = example
    for out in ("w.tsv", "w.fa"):
        prepare.prepare(cfg_for(tmp_path, os.path.join(folder, "genome.fa"), peaks, out, window=300))
    with open(tmp_path / "w.fa") as f:
        headers = [line for line in f if line.startswith(">")]
    assert any(h.startswith(">leaf,flower::Chr") for h in headers) and any(h.startswith(">::Chr") for h in headers)
    names = ["leaf", "root", "flower"]
    tsv, _ = cache.load_file(str(tmp_path / "w.tsv"), data_cfg(), names, TOK)
    fa, _ = cache.load_file(str(tmp_path / "w.fa"), data_cfg(), names, TOK)
    assert tsv.ids.tolist() == fa.ids.tolist() and tsv.ids[0].startswith("Chr1:")
    assert np.array_equal(np.asarray(tsv.labels), np.asarray(fa.labels))
    assert all(np.array_equal(tsv.tokens[i], fa.tokens[i]) for i in range(len(tsv)))


def test_a_gzipped_genome_and_its_index(planted, tmp_path):
    _, seqs, fa, paths, _ = planted
    with open(fa, "rb") as src, gzip.open(tmp_path / "g2.fa.gz", "wb") as dst:
        dst.write(src.read())
    g = Genome(str(tmp_path / "g2.fa.gz"), str(tmp_path / "cache"))
    assert g.fai.startswith(str(tmp_path / "cache"))
    assert g.fetch(0, 45, 155).decode() == seqs["c1"][45:155].upper()
    assert g.windows(np.array([1, 0]), np.array([0, 7]), 60).tobytes().decode() == \
        seqs["c2"][:60] + seqs["c1"][7:67].upper()


def run_prepare(tmp_path, genome_path, peaks):
    yaml = tmp_path / "p.yaml"
    yaml.write_text(f"prepare:\n  genome: {genome_path}\n  peaks: {peaks}\n  window: 100\ndata:\n"
                    f"  path: {tmp_path / 'out.tsv'}\n  cache_dir: {tmp_path / 'cache'}\n")
    return subprocess.run([sys.executable, "prepare.py", str(yaml)], cwd=ROOT, capture_output=True, text=True)


@pytest.mark.parametrize("bed, message", [
    ("c1\t10\n", "b.bed:1: 2 fields (expected at least chrom, start and end)"),
    ("c1\t10\t20\nc1\t50\t50\n", "b.bed:2: start 50 and end 50 (expected 0 <= start < end)"),
    ("# peaks\nc1\t1e3\t2000\n", "b.bed:2: start, end or summit is not an integer"),
    ("c1\t10\t20\nc1\t2990\t3001\n", "b.bed:2: end 3001 is past the end of c1 (3000 bp; expected coordinates on "
                                     "this genome build)"),
    ("chr1\t10\t20\n", "b.bed: none of its chromosomes (chr1) is in the genome, which names c1, c2"),
])
def test_bad_peaks_are_one_line_with_path_and_line(planted, bed, message):
    tmp_path, _, fa, _, _ = planted
    (tmp_path / "b.bed").write_text(bed)
    p = run_prepare(tmp_path, fa, {"b": str(tmp_path / "b.bed")})
    assert p.returncode == 2 and p.stderr.startswith(f"error: {tmp_path / message}"), p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and not (tmp_path / "out.tsv").exists()


@pytest.mark.parametrize("fasta, fai, message", [
    ("", None, "g.fa:1: no sequences in the genome FASTA"),
    (">c1\n>c2\nACGT\n", None, "g.fa:1: record 'c1' has no bases"),
    (">c1\nACGTACGT\nACG\nACGTACGT\n", None, "g.fa:3: a line of 3 bases in record 'c1' whose lines have 8"),
    ("ACGT\n>c1\nACGT\n", None, "g.fa:1: no '>' header before the bases"),
    (">c1\nACGTACGT\n>c2\nACGT\n", "c1\t8\t4\t8\t9\nc2\t4\t99\t4\t5\n", "g.fa.fai:2: this index does not match g.fa"),
    (">c1\nACGTACGT\n>c2\nACGT\n", "c2\t8\t4\t8\t9\n", "g.fa.fai:1: this index does not match g.fa"),
])
def test_bad_genomes_and_indexes_are_one_line(tmp_path, fasta, fai, message):
    (tmp_path / "g.fa").write_text(fasta)
    if fai:
        (tmp_path / "g.fa.fai").write_text(fai)
    (tmp_path / "b.bed").write_text("c1\t1\t3\n")
    p = run_prepare(tmp_path, tmp_path / "g.fa", {"b": str(tmp_path / "b.bed")})
    assert p.returncode == 2 and p.stderr.startswith(f"error: {tmp_path / message}"), p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_an_excluded_region_takes_its_windows_and_no_negative_touches_it(planted, capsys):
    tmp_path, seqs, fa, paths, peaks = planted
    blacklist = write_bed(tmp_path / "black.bed", [("c1", 150, 160), ("c2", 1000, 2000)], "# blacklist\n")
    prepare.prepare(cfg_for(tmp_path, fa, paths, window=200, exclude=blacklist, negative_ratio=3.0, gc_match=False))
    rows = read_tsv(tmp_path / "w.tsv")
    spans = [(r["id"].split(":")[0], *map(int, r["id"].split(":")[1].split("-"))) for r in rows]
    assert ("c1", 40, 240) not in spans  # the window of the peak at c1:100-180 touches c1:150-160
    assert not any(c == "c1" and s < 160 and 150 < e or c == "c2" and s < 2000 and 1000 < e for c, s, e in spans)
    assert "1 in an excluded region left out" in capsys.readouterr().out
