"""The one-hot CNN (model.architecture: cnn): each base and IUPAC code as its mixture of bases, states per base
that padding does not move, and a run that trains, is rebuilt from its folder and predicts; LoRA on it is refused."""
import numpy as np
import torch

import predict
import train
from training.backbones import IUPAC, BaseTokenizer, CnnConfig, CnnModel
from helpers import one_line_error, random_tsv, read_tsv, run_command, train_args

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
    assert train.main(train_args(tsv, out, *CNN, "training.max_steps=6")) == 0
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
