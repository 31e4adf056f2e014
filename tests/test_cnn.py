"""The one-hot CNN (model.architecture: cnn): each base and IUPAC code as its mixture of bases, states per base
that padding does not move, the stretch of bases it reads, a run that trains, is rebuilt from its folder and
predicts, and every command downstream of a run on a CNN run: ISM, motifs, variant effects, tracks, windows and
reverse-complement averaging. LoRA on it is refused."""
import os

import numpy as np
import pyBigWig
import pytest
import torch

import interpret
import predict
import train
import data
from analysis.trained import load_scorer
from genomics import planted
from genomics.tracks import tile
from training import config
from training.backbones import IUPAC, BaseTokenizer, CnnConfig, CnnModel, KmerTokenizer, load_tokenizer
from helpers import (ROOT, fasta, ism_top_in_planted_motif, one_line_error, planted_run, random_tsv, read_tsv,
                     run_command, save_tiny, train_args)

CNN = ["model.architecture=cnn", "model.cnn_width=16", "model.cnn_depth=2", "model.cnn_kernel=5"]


def test_each_base_and_iupac_code_reads_as_its_mixture_of_bases():
    tok = BaseTokenizer()
    ids = tok(["".join(IUPAC) + "acgtn", "AXC"])["input_ids"]
    onehot = CnnModel(CnnConfig(hidden_size=8, num_hidden_layers=1)).onehot
    for code, row in zip(IUPAC, onehot[torch.tensor(ids[0][:len(IUPAC)])].numpy()):
        assert np.allclose(row, [1 / len(IUPAC[code]) if b in IUPAC[code] else 0 for b in "ACGT"]), code
    assert ids[0][len(IUPAC):] == ids[0][:4] + [ids[0][4]]  # lower case reads as upper case
    assert ids[1][1] == tok.unk_token_id and onehot[ids[1][1]].sum() == 0  # X: no base at all
    assert tok(["ACGTACGT"], truncation=True, max_length=5)["input_ids"] == [ids[0][:4] + [ids[0][0]]]


def test_a_sequences_states_do_not_depend_on_its_padding():
    torch.manual_seed(0)
    net = CnnModel(CnnConfig(hidden_size=8, num_hidden_layers=3, kernel_size=5)).eval()
    ids = torch.tensor([BaseTokenizer()(["ACGTTGCAAC"])["input_ids"][0]])
    alone = net(ids, torch.ones_like(ids)).last_hidden_state
    pad = torch.zeros(1, 6, dtype=torch.long)
    right = net(torch.cat([ids, pad], 1), torch.cat([torch.ones_like(ids), pad], 1)).last_hidden_state
    left = net(torch.cat([pad, ids], 1), torch.cat([pad, torch.ones_like(ids)], 1)).last_hidden_state
    assert alone.shape == (1, 10, 8)
    assert torch.allclose(right[:, :10], alone, atol=1e-6) and torch.allclose(left[:, 6:], alone, atol=1e-6)


def test_a_cnn_run_trains_is_rebuilt_from_its_folder_and_predicts(tmp_path):
    tsv = random_tsv(str(tmp_path / "d.tsv"), ["a", "b"], n=150)
    out = tmp_path / "out"
    assert train.main(train_args(tsv, out, *CNN, "training.max_steps=6", "data.rc_augment=true")) == 0
    assert (out / "backbone" / "config.json").read_text().count('"dna_cnn"') == 1
    scores = tmp_path / "p.tsv"
    assert predict.main([str(out), tsv, "-o", str(scores)]) == 0
    rows = read_tsv(scores)
    assert len(rows) == 150 and all(0 <= float(r["a"]) <= 1 for r in rows)
    test = {r["id"]: float(r["a"]) for r in read_tsv(out / "test_predictions.tsv")}
    assert all(abs(float(r["a"]) - test[r["id"]]) < 1e-5 for r in rows if r["id"] in test)  # as training scored


def test_lora_on_the_cnn_is_a_one_line_error(tmp_path):
    tsv = random_tsv(str(tmp_path / "d.tsv"), ["a", "b"], n=60)
    p = run_command(*train_args(tsv, tmp_path / "out", *CNN, "model.finetune=lora"))
    one_line_error(p, "error: command line 'model.finetune=lora': model.finetune lora: the CnnModel backbone has no")


def test_max_length_counts_the_tokens_of_the_model_the_config_names(tmp_path, capsys):
    """data.max_length is in the tokens of model.name_or_path (a folder here), or of the scratch k-mers: the CNN
    reads the stretch of bases those hold, and its run folder keeps that as its max_length."""
    tsv = random_tsv(str(tmp_path / "d.tsv"), ["a", "b"], n=60)
    gpt2 = save_tiny(tmp_path / "gpt2", kind="gpt2")  # one token per base between [CLS] and [SEP]
    for named, more, bases in ((gpt2, [f"model.name_or_path={gpt2}"], 98),
                               ("3-mers 3 apart", ["model.kmer_stride=3"], 3 * 98)):  # train_args: kmer 3
        out = tmp_path / f"out{len(more[0])}"
        assert train.main(train_args(tsv, out, *CNN, "data.max_length=100", *more, "training.max_steps=1")) == 0
        assert f"data.max_length 100 tokens of {named} hold {bases} bases" in capsys.readouterr().out
        assert f"max_length: {bases}\n" in (out / "config.yaml").read_text()
    assert data.window_bases(load_tokenizer(gpt2), 100) == 98 and data.window_bases(KmerTokenizer(6, 3), 100) == 297
    for more, error in (("model.name_or_path=nobody/no-such-model", "model.architecture cnn reads data.max_length "
                         "as tokens of model.name_or_path 'nobody/no-such-model', whose tokenizer is not here"),
                        ("model.source=local", "model.architecture cnn is built from scratch (expected model.source "
                         "scratch")):
        assert train.main(train_args(tsv, tmp_path / "x", *CNN, f"model.name_or_path={gpt2}", more)) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: command line 'model.architecture=cnn': " + error) and err.count("\n") == 1

    notes = []
    config.load(os.path.join(ROOT, "config.yaml"), [*CNN, "training.learning_rate=2e-5"], warn=notes.append)
    config.load(os.path.join(ROOT, "config.yaml"), CNN, warn=notes.append)  # config.yaml's 3e-3: no note
    assert notes == ["note: model.architecture cnn trains from scratch at training.learning_rate 2e-05, a rate for a "
                     "pretrained backbone; add training.learning_rate=0.003, the rate for a model from scratch, which "
                     "its measurements used (docs/models.md)"]



@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory):
    """A CNN trained on 2,000 sequences of the planted example (3 epochs), with its motif sites."""
    return planted_run(tmp_path_factory.mktemp("cnn"), "model.architecture=cnn", "model.cnn_width=32",
                       "model.cnn_depth=3")


def test_ism_on_a_cnn_agrees_with_predict_and_points_into_the_planted_motifs(cnn_run, tmp_path):
    _, _, out = cnn_run
    inside, records = ism_top_in_planted_motif(*cnn_run, tmp_path)
    assert inside >= 0.7, inside
    seq = records[0][1]
    prob_delta = np.load(tmp_path / "ism" / "ism.npz")["prob_delta_0"]
    mutants = [(f"m{i}{b}", seq[:i] + b + seq[i + 1:]) for i in (0, len(seq) // 2, len(seq) - 1) for b in "ACGT"]
    assert predict.main([str(out), fasta(tmp_path / "m.fa", [("ref", seq)] + mutants), "-o",
                         str(tmp_path / "p.tsv")]) == 0
    scored = {r["id"]: float(r["leaf"]) for r in read_tsv(tmp_path / "p.tsv")}
    for rid, _ in mutants:
        i, b = int(rid[1:-1]), rid[-1]
        assert abs(scored[rid] - scored["ref"] - prob_delta[i, "ACGT".index(b), 0]) < 1e-5


def test_motifs_on_a_cnn_run_recover_a_planted_motif(cnn_run):
    tmp, example, out = cnn_run
    folder = tmp / "motifs"
    assert interpret.main(["motifs", str(out), example, "--sequences", "30", "--min-seqlets", "15", "--labels",
                           "leaf", "--motif-db", str(tmp / "ex.motifs.meme"), "-o", str(folder)]) == 0
    top = next(r for r in read_tsv(folder / "motifs.tsv") if r["label"] == "leaf")
    assert top["match_1"] == "leaf" and float(top["q_1"]) < 0.05, top


@pytest.fixture(scope="module")
def genome(tmp_path_factory):
    rng = np.random.RandomState(1)
    seq = "".join(rng.choice(list("ACGT"), 3000))
    path = tmp_path_factory.mktemp("g") / "g.fa"
    path.write_text(">c1\n" + "\n".join(seq[i:i + 70] for i in range(0, len(seq), 70)) + "\n")
    return seq, str(path)


def test_variant_effects_on_a_cnn_are_the_difference_of_its_two_windows(cnn_run, genome, tmp_path):
    _, _, out = cnn_run
    seq, fa = genome
    alt = next(b for b in "ACGT" if b != seq[1000])
    vcf = tmp_path / "v.vcf"
    vcf.write_text(f"##fileformat=VCFv4.2\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"
                   f"c1\t1001\tsnv\t{seq[1000]}\t{alt}\t.\t.\t.\n")
    assert interpret.main(["variants", str(out), str(vcf), "--genome", fa, "--window-size", "200", "-o",
                           str(tmp_path / "e.tsv")]) == 0
    row, = read_tsv(tmp_path / "e.tsv")
    windows = [("ref", seq[900:1100]), ("alt", seq[900:1000] + alt + seq[1001:1100])]
    assert predict.main([str(out), fasta(tmp_path / "w.fa", windows), "-o", str(tmp_path / "p.tsv")]) == 0
    ref, alt_row = read_tsv(tmp_path / "p.tsv")
    for label in planted.EXAMPLE_LABELS:
        assert abs(float(row[f"{label}_delta"]) - (float(alt_row[label]) - float(ref[label]))) <= 2e-5


def test_tracks_of_a_cnn_are_its_window_scores_along_the_genome(cnn_run, genome, tmp_path):
    _, _, out = cnn_run
    seq, fa = genome
    assert predict.main([str(out), "--genome", fa, "--window-size", "200", "--stride", "50", "--tracks",
                         str(tmp_path / "t")]) == 0
    score, _, _ = load_scorer(str(out))
    _, starts, first, last = next(tile([(0, 0, 3000)], 200, 50))
    probs = torch.sigmoid(score([seq[a:a + 200] for a in starts])[0]).numpy()
    with pyBigWig.open(str(tmp_path / "t" / "leaf.bw")) as bw:
        for i in range(len(starts)):
            assert np.allclose(bw.values("c1", int(first[i]), int(last[i])), probs[i, 0], atol=1e-5)


def test_reverse_complement_averaging_scores_a_sequence_and_its_reverse_complement_alike(cnn_run, tmp_path):
    _, example, out = cnn_run
    seq = open(example).read().splitlines()[1].split("\t")[0]
    rc = seq[::-1].translate(str.maketrans("ACGT", "TGCA"))
    assert predict.main([str(out), fasta(tmp_path / "s.fa", [("f", seq), ("r", rc)]), "--rc-average", "-o",
                         str(tmp_path / "p.tsv")]) == 0
    f, r = read_tsv(tmp_path / "p.tsv")
    assert all(abs(float(f[n]) - float(r[n])) < 1e-5 for n in planted.EXAMPLE_LABELS)


def test_a_cnn_reads_long_sequences_as_windows_of_its_bases(tmp_path, capsys):
    rng = np.random.RandomState(0)
    seqs = ["".join(rng.choice(list("ACGT"), rng.randint(300, 900))) for _ in range(80)]
    rows = ["sequence\tlabels"] + [f"{s}\t{'a' if i % 2 else 'b'}" for i, s in enumerate(seqs)]
    (tmp_path / "long.tsv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    assert train.main(train_args(tmp_path / "long.tsv", out, *CNN, "data.max_length=200", "data.long_sequences=windows",
                                 "training.max_steps=4")) == 0
    assert "as windows of 200 bp, 100 apart" in capsys.readouterr().out  # what 200 overlapping 3-mers hold
    assert predict.main([str(out), str(tmp_path / "long.tsv"), "-o", str(tmp_path / "p.tsv")]) == 0
    test = {r["id"]: float(r["a"]) for r in read_tsv(out / "test_predictions.tsv")}
    scored = {r["id"]: float(r["a"]) for r in read_tsv(tmp_path / "p.tsv")}
    assert test and all(abs(scored[i] - p) < 1e-5 for i, p in test.items())
