"""interpret.py: in-silico mutagenesis, motifs per label and variant effects, against predict.py's scores and the
planted motifs."""

import numpy as np
import pytest
from PIL import Image
from memelite.io import read_meme

import predict
import interpret
from data import DataError
from analysis import pictures
from analysis.motifs import Motif, read_motif_db
from genomics import planted
from genomics.genome import Genome
from genomics.variants import allele_windows, read_vcf
from helpers import ROOT, fasta, ism_top_in_planted_motif, planted_run, read_tsv


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The default experiment, shorter: 2000 example sequences, 3 epochs."""
    return planted_run(tmp_path_factory.mktemp("interpret"))


def test_ism_deltas_agree_with_scoring_each_mutant_alone(run, tmp_path):
    _, example, out = run
    seq = open(example).read().splitlines()[1].split("\t")[0]
    assert interpret.main(["ism", str(out), fasta(tmp_path / "one.fa", [("s1", seq)]), "-o", str(tmp_path / "ism"),
                           "--pictures", "0"]) == 0
    ism = np.load(tmp_path / "ism" / "ism.npz")
    delta, prob_delta, ref = ism["logit_delta_0"], ism["prob_delta_0"], ism["ref_logit_0"]
    assert delta.shape == (len(seq), 4, 6) and list(ism["labels"]) == planted.EXAMPLE_LABELS
    assert all(delta[i, "ACGT".index(b)].tolist() == [0.0] * 6 for i, b in enumerate(seq))  # the reference itself
    picks = [(i, b) for i in (0, 7, len(seq) // 2, len(seq) - 1) for b in "ACGT" if b != seq[i]]
    mutants = [(f"m{i}{b}", seq[:i] + b + seq[i + 1:]) for i, b in picks]
    assert predict.main([str(out), fasta(tmp_path / "m.fa", [("ref", seq)] + mutants), "-o",
                         str(tmp_path / "p.tsv")]) == 0
    scored = {r["id"]: np.array([float(r[n]) for n in planted.EXAMPLE_LABELS]) for r in read_tsv(tmp_path / "p.tsv")}
    assert np.allclose(scored["ref"], 1 / (1 + np.exp(-ref)), atol=1e-5)
    for i, b in picks:
        assert np.allclose(scored[f"m{i}{b}"], scored["ref"] + prob_delta[i, "ACGT".index(b)], atol=1e-5)


def test_the_top_positions_of_a_label_fall_in_its_planted_motif(run, tmp_path):
    inside, _ = ism_top_in_planted_motif(*run, tmp_path)
    print(f"top position in the planted leaf motif: {inside:.0%} of 20")
    assert inside >= 0.7, inside


def test_pictures_have_their_size_and_a_panel_per_label(run, tmp_path, capsys):
    _, example, out = run
    seq = open(example).read().splitlines()[2].split("\t")[0]
    for labels, folder in (("leaf,root", "two"), ("leaf,root,flower", "three")):
        assert interpret.main(["ism", str(out), fasta(tmp_path / "s.fa", [("chr1:5-900", seq)]), "-o",
                               str(tmp_path / folder), "--labels", labels, "--window", "11:60"]) == 0
    two, three = (Image.open(tmp_path / f / "chr1_5-900.png") for f in ("two", "three"))
    assert two.size == pictures.ism_size(50, 2) and three.size == pictures.ism_size(50, 3)
    assert three.size[1] - two.size[1] == pictures.ism_size(50, 3)[1] - pictures.ism_size(50, 2)[1] > 100
    ism = np.load(tmp_path / "three" / "ism.npz")
    assert ism["logit_delta_0"].shape == (50, 4, 3) and ism["first"].tolist() == [11]
    positions = {int(r["position"]) for r in read_tsv(tmp_path / "three" / "ism_top.tsv")}
    assert positions <= set(range(11, 61))
    assert "positions/s" in capsys.readouterr().out
    assert interpret.main(["ism", str(out), str(tmp_path / "s.fa"), "--window", "50:9000"]) == 2
    assert interpret.main(["ism", str(out), str(tmp_path / "s.fa"), "--labels", "stem"]) == 2


@pytest.fixture
def chromosomes(tmp_path):
    rng = np.random.RandomState(1)
    seqs = {"c1": "".join(rng.choice(list("ACGT"), 3000)), "c2": "".join(rng.choice(list("ACGT"), 1500))}
    with open(tmp_path / "g.fa", "w") as f:
        for name, s in seqs.items():
            f.write(f">{name}\n" + "\n".join(s[i:i + 70] for i in range(0, len(s), 70)) + "\n")
    return seqs, str(tmp_path / "g.fa")


def test_variant_effects_round_trip_on_a_synthetic_genome(run, tmp_path, chromosomes, capsys):
    _, _, out = run
    seqs, genome = chromosomes
    c1, c2 = seqs["c1"], seqs["c2"]
    alts = [b for b in "ACGT" if b != c1[1000]][:2]  # a multi-allelic site: one row per allele
    lines = ["##fileformat=VCFv4.2", "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO",
             f"c1\t1001\tsnv1\t{c1[1000]}\t{alts[0]},{alts[1]}\t.\t.\t.",
             f"c1\t2001\tins1\t{c1[2000]}\t{c1[2000]}TTG\t.\t.\t.",
             f"c2\t701\tdel1\t{c2[700:704]}\t{c2[700]}\t.\t.\t.",
             f"c2\t801\tsv1\t{c2[800]}\t<DEL>\t.\t.\t.",
             f"c1\t20\tedge\t{c1[19]}\tA\t.\t.\t.",
             "chrX\t100\tgone\tA\tC\t.\t.\t.",
             f"c2\t901\twrong\t{'A' if c2[900] != 'A' else 'C'}\tG\t.\t.\t."]
    vcf = tmp_path / "v.vcf"
    vcf.write_text("\n".join(lines) + "\n")
    effects = tmp_path / "effects.tsv"
    assert interpret.main(["variants", str(out), str(vcf), "--genome", genome, "--window-size", "200", "-o",
                           str(effects)]) == 0
    log = capsys.readouterr().out
    assert f"warning: {vcf}:9: REF" in log and "at c2:901; left out" in log
    assert "symbolic or missing ALT left out" in log and "too near a chromosome end left out" in log
    assert "on a chromosome the genome lacks left out" in log
    rows = read_tsv(effects)
    assert [(r["id"], r["alt"]) for r in rows] == [("snv1", alts[0]), ("snv1", alts[1]), ("ins1", c1[2000] + "TTG"),
                                                   ("del1", c2[700])]
    # the windows by hand: 100 bases before the variant, the allele, then the genome to 200 bases
    windows = []
    for r in rows:
        s, p, ref, alt = seqs[r["chrom"]], int(r["pos"]) - 1, r["ref"], r["alt"]
        windows += [(f"{r['id']}{r['alt']}_ref", s[p - 100:p + 100]),
                    (f"{r['id']}{r['alt']}_alt", (s[p - 100:p] + alt + s[p + len(ref):])[:200])]
    assert predict.main([str(out), fasta(tmp_path / "w.fa", windows), "-o", str(tmp_path / "p.tsv")]) == 0
    scored = {r["id"]: r for r in read_tsv(tmp_path / "p.tsv")}
    for r in rows:
        for label in planted.EXAMPLE_LABELS:
            ref_p, alt_p = (float(scored[f"{r['id']}{r['alt']}_{k}"][label]) for k in ("ref", "alt"))
            assert abs(float(r[f"{label}_ref_prob"]) - ref_p) <= 1e-5 and abs(float(r[f"{label}_alt_prob"]) -
                                                                                alt_p) <= 1e-5
            assert abs(float(r[f"{label}_delta"]) - (alt_p - ref_p)) <= 2e-5


def test_a_vcf_of_another_genome_build_is_an_error(run, tmp_path, chromosomes):
    _, _, out = run
    seqs, genome = chromosomes
    wrong = [f"c1\t{p + 1}\tv{p}\t{'A' if seqs['c1'][p] != 'A' else 'C'}\tG" for p in range(500, 600, 10)]
    vcf = tmp_path / "w.vcf.gz"
    import gzip
    with gzip.open(vcf, "wt") as f:
        f.write("#CHROM\tPOS\tID\tREF\tALT\n" + "\n".join(wrong) + "\n")
    import subprocess
    import sys
    p = subprocess.run([sys.executable, "interpret.py", "variants", str(out), str(vcf), "--genome", genome,
                        "--window-size", "200", "-o", str(tmp_path / "e.tsv")], cwd=ROOT, capture_output=True,
                       text=True)
    assert p.returncode == 2
    assert p.stderr.strip() == f"error: {vcf}: 10 of 10 REF alleles differ from the genome (expected the genome " \
                               f"build the VCF was called on)"
    assert not (tmp_path / "e.tsv").exists()


def test_a_variant_is_scored_whenever_its_windows_fit_on_the_chromosome(tmp_path, chromosomes):
    """c2 has 1,500 bases; a window of 200 starts 100 bases before the variant. The first and last variants whose
    windows fit are scored, the next ones out are not; a deletion's alternative window reaches further right."""
    seqs, genome_path = chromosomes
    c2 = seqs["c2"]
    snv = {p: f"c2\t{p + 1}\tsnv{p}\t{c2[p]}\t{'A' if c2[p] != 'A' else 'C'}" for p in (99, 100, 1400, 1401)}
    dels = {p: f"c2\t{p + 1}\tdel{p}\t{c2[p:p + 4]}\t{c2[p]}" for p in (1397, 1398)}
    vcf = tmp_path / "edges.vcf"
    vcf.write_text("#CHROM\tPOS\tID\tREF\tALT\n" + "\n".join([*snv.values(), *dels.values()]) + "\n")
    genome = Genome(genome_path, str(tmp_path / "cache"))
    found, skipped = read_vcf(str(vcf), genome, 200)
    assert [v[3] for v in found] == ["snv100", "snv1400", "del1397"]
    assert skipped == {"too near a chromosome end": 3}
    for v in found:
        ref, alt = allele_windows(genome, v, 200)
        p = v[7]
        assert ref == c2[p - 100:p + 100] and len(alt) == 200
        assert alt == (c2[p - 100:p] + v[5] + c2[p + len(v[4]):])[:200]


@pytest.fixture(scope="module")
def found(run):
    """interpret.py motifs on the short run: the 40 sequences each label scores highest."""
    tmp, example, out = run
    folder = tmp / "motifs"
    assert interpret.main(["motifs", str(out), example, "--sequences", "40", "--min-seqlets", "20", "--motif-db",
                           str(tmp / "ex.motifs.meme"), "-o", str(folder)]) == 0
    return folder


def test_motifs_recover_and_match_each_labels_planted_motif(found):
    rows = read_tsv(found / "motifs.tsv")
    for label in planted.EXAMPLE_LABELS:
        top = next(r for r in rows if r["label"] == label)  # its positive motif with the most seqlets
        assert top["motif"] == f"{label}_pos_0" and top["match_1"] == label and float(top["q_1"]) < 0.05, top
        assert (found / f"{label}.png").exists() and (found / f"{label}_pos_0.png").exists()
    saved = read_meme(str(found / "motifs.meme"))  # the MEME output reads back through memelite
    assert list(saved) == [r["motif"] for r in rows]
    assert all("".join("ACGT"[i] for i in saved[r["motif"]].argmax(0)) == r["consensus"] for r in rows)


def test_the_hypothetical_contributions_are_ism_centred_per_position(run, found, tmp_path):
    _, _, out = run
    saved = np.load(found / "contributions.npz")
    picks = [0, len(saved["ids"]) // 2, len(saved["ids"]) - 1]
    records = [(saved["ids"][k], str(saved["sequences"][k])) for k in picks]
    assert interpret.main(["ism", str(out), fasta(tmp_path / "s.fa", records), "-o", str(tmp_path / "ism"),
                           "--pictures", "0"]) == 0
    ism = np.load(tmp_path / "ism" / "ism.npz")
    assert list(saved["labels"]) == list(ism["labels"]) == planted.EXAMPLE_LABELS
    for n, k in enumerate(picks):
        delta = ism[f"logit_delta_{n}"].astype(np.float64)
        assert np.abs(saved[f"hypothetical_{k}"] - (delta - delta.mean(1, keepdims=True))).max() < 1e-6
        assert np.allclose(saved[f"hypothetical_{k}"].sum(1), 0, atol=1e-5)  # the four bases sum to 0


def test_a_label_without_enough_seqlets_is_a_warning_and_the_others_go_on(run, tmp_path, monkeypatch, capsys):
    tmp, example, out = run
    ten = tmp_path / "ten.tsv"
    ten.write_text("".join(open(example).readlines()[:11]))

    def fake(label, one_hot_seqs, hyp, min_seqlets):
        assert one_hot_seqs.shape == hyp.shape and one_hot_seqs.shape[0] == 10
        if label == "root":
            raise RuntimeError("Cannot accept NaN weights.")
        return [] if label == "leaf" else [Motif(label, "+", 0, 12, np.eye(4)[[0, 1, 2, 3]], np.eye(4))]
    monkeypatch.setattr(interpret, "find_motifs", fake)
    assert interpret.main(["motifs", str(out), str(ten), "--labels", "leaf,root,seed", "--sequences", "50",
                           "--min-seqlets", "5", "-o", str(tmp_path / "m")]) == 0
    log = capsys.readouterr().out
    assert f"note: --sequences 50 is more than the 10 sequences in {ten}: using all of them" in log
    assert "warning: leaf: too few seqlets for TF-MoDISco in its 10 sequences" in log
    assert "warning: root: TF-MoDISco failed on 10 sequences (RuntimeError: Cannot accept NaN weights.)" in log
    assert [r["motif"] for r in read_tsv(tmp_path / "m" / "motifs.tsv")] == ["seed_pos_0"]


@pytest.mark.parametrize("text, message", [
    ("MOTIF a\nletter-probability matrix: w= 1\n0.25 0.25 0.25 0.25\n", "db.meme:1: not a MEME motif file"),
    ("MEME version 4\n\nMOTIF a\nletter-probability matrix: alength= 4 w= 2\n0.25 0.25 0.25 0.25\n0.5 0.5\n",
     "db.meme:6: '0.5 0.5' (expected 4 probabilities of A, C, G and T that sum to 1, row 2 of the 2 of motif 'a'"),
    ("MEME version 4\n\nMOTIF a\nletter-probability matrix: alength= 4 w= 3\n0.25 0.25 0.25 0.25\n",
     "db.meme:5: motif 'a' ends after 1 of its 3 rows"),
    ("MEME version 4\n", "db.meme: no motifs"),
])
def test_a_motif_database_that_is_not_meme_is_one_line_naming_the_line(tmp_path, text, message):
    (tmp_path / "db.meme").write_text(text)
    with pytest.raises(DataError) as e:
        read_motif_db(str(tmp_path / "db.meme"))
    assert str(e.value).startswith(str(tmp_path / message.split(":")[0]) + message[len(message.split(":")[0]):])
    assert "\n" not in str(e.value)
