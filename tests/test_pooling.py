"""Pooling: auto reads the training data, mean and max leave out the tokens a tokenizer adds."""
from contextlib import nullcontext

import numpy as np
import pytest
import torch
import transformers

import zoo
from model import POOLINGS, added_tokens, auto_pooling, build_model, own_tokens, pool
from training import cache, config
from training.backbones import load_backbone, load_tokenizer
from training.probe import choose_pooling


def test_mean_pools_a_sep_appending_decoder_over_its_own_tokens(tmp_path):
    folder = str(tmp_path / "hyena")
    zoo.build("hyenadna", folder)  # a decoder whose tokenizer appends [SEP], with left padding
    model_cfg = dict(config.DEFAULTS["model"], source="local", name_or_path=folder, trust_remote_code=True)
    backbone, tok, _ = load_backbone(model_cfg, 64)
    assert auto_pooling("local", backbone.config, tok)[0] == "mean"  # the rule where the data cannot decide
    net = build_model(backbone, ["a"], dict(model_cfg, pooling="mean", dropout=0.0), tok).eval()
    ids = torch.tensor([tok(["ACGTAC"])["input_ids"][0]])
    assert ids[0, -1].item() == tok.sep_token_id
    with torch.no_grad():
        states = net.token_states(ids, torch.ones_like(ids))
        assert torch.allclose(net(ids, torch.ones_like(ids)), net.head(states[:, :-1].mean(1)), atol=1e-6)
        net.pool = POOLINGS["last"](1)  # the last token, the SEP included: from scratch, it summarises best
        assert torch.allclose(net(ids, torch.ones_like(ids)), net.head(states[:, -1]), atol=1e-6)
        old = {k: v for k, v in model_cfg.items() if k != "pool_added_tokens"}  # a run saved before the key
        net = build_model(backbone, ["a"], dict(old, pooling="mean", dropout=0.0), tok).eval()
        assert torch.allclose(net(ids, torch.ones_like(ids)), net.head(states.mean(1)), atol=1e-6)


def test_auto_reads_the_training_data_and_keeps_the_pooling_it_reads_best(tmp_path):
    rng = np.random.RandomState(0)
    tok = load_tokenizer_of_chars()
    seqs = ["".join(rng.choice(list("ACGT"), 40, p=[0.3, 0.3, g, 0.4 - g])) for g in rng.uniform(0.05, 0.35, 400)]
    ids = [np.array(x, np.int32) for x in tok(seqs)["input_ids"]]
    labels = np.array([[s.count("G") > 8] for s in seqs], np.float32)
    split = cache.Split(cache.Tokens.from_list(ids), labels, np.ones_like(labels, bool))
    seeded = torch.get_rng_state()
    kept = str(tmp_path / "pooling.json")
    how, why = choose_pooling(dict(config.DEFAULTS["model"], source="local"), OneHot(), tok, split, ["g"],
                              device=torch.device("cpu"), autocast=nullcontext(), seed=0, cache_file=kept)
    assert torch.equal(torch.get_rng_state(), seeded)  # auto starts the model as the pooling it chose would
    scores = dict(x.split() for x in why.split("not fitted on: ")[1].split(")")[0].split(", "))
    assert how in ("mean", "max") and float(scores[how]) > 0.9 and float(scores["last"]) < 0.7, why
    assert "states of 128 training sequences" in why  # so clear a lead needs no more of the 400
    # a second run on the same backbone and data takes the choice without reading anything
    again = choose_pooling(dict(config.DEFAULTS["model"], source="local"), OneHot(), tok, split, ["g"],
                           device=torch.device("cpu"), autocast=nullcontext(), seed=0, cache_file=kept)
    assert again[0] == how and again[1].endswith(f"kept from an earlier run on this backbone and data ({kept})")
    # the scratch model: its random weights say nothing yet
    assert choose_pooling(dict(config.DEFAULTS["model"]), OneHot(), tok, split, ["g"], device=torch.device("cpu"),
                          autocast=nullcontext(), seed=0)[0] == "max"


@pytest.mark.parametrize("side", ["right", "left"])
def test_pooling_leaves_out_added_tokens_on_either_padding_side(side):
    h = torch.arange(12, dtype=torch.float32).reshape(1, 6, 2).repeat(2, 1, 1)
    ids = torch.tensor([[2, 7, 8, 9, 3, 0], [2, 7, 3, 0, 0, 0]]) if side == "right" else \
        torch.tensor([[0, 2, 7, 8, 9, 3], [0, 0, 0, 2, 7, 3]])
    mask = own_tokens(ids, (ids != 0).long(), torch.tensor([2, 3]))  # 2 and 3: CLS and SEP
    own = [[1, 2, 3], [1]] if side == "right" else [[2, 3, 4], [4]]  # the positions of 7, 8 and 9
    for how, expect in (("mean", lambda i, p: h[i, p].mean(0)), ("max", lambda i, p: h[i, p].max(0).values)):
        assert torch.allclose(pool(h, mask, how), torch.stack([expect(i, p) for i, p in enumerate(own)])), how
    only_added = torch.tensor([[2, 3, 0]])
    assert own_tokens(only_added, (only_added != 0).long(), torch.tensor([2, 3])).tolist() == [[1, 1, 0]]


def test_load_tokenizer_keeps_unk_among_the_pooled(tmp_path):
    folder = str(tmp_path / "b")
    zoo.build("bert", folder)
    tok = load_tokenizer(folder)
    assert tok.unk_token_id not in added_tokens(tok) and tok.cls_token_id in added_tokens(tok)


def load_tokenizer_of_chars():
    return zoo.char_tokenizer(side="right", **zoo.BERT_TOKENS)


class OneHot(torch.nn.Module):
    """A frozen 'pretrained' backbone whose token states are its tokens, one-hot: a label that marks sequences
    with many G is read from the mean or the max of the states, not from the last one."""

    def __init__(self):
        super().__init__()
        self.config = transformers.PretrainedConfig()
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None):
        return (torch.nn.functional.one_hot(input_ids, 8).float() + self.unused,)


def test_attention_pooling_reads_only_the_tokens_it_may_and_starts_as_any_weighted_mean():
    pool_ = POOLINGS["attention"](4)
    h = torch.randn(2, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 1, 1, 1, 1]])
    with torch.no_grad():
        pool_.score.weight.zero_()  # equal scores: the plain mean of the tokens read
        assert torch.allclose(pool_(h, mask), pool(h, mask, "mean"), atol=1e-6)
        pool_.score.weight.normal_()
        moved = h.clone()
        moved[0, 3:], moved[1, 0] = 1e4, -1e4  # what is masked out changes nothing
        assert torch.allclose(pool_(h, mask), pool_(moved, mask), atol=1e-5)


def test_an_attention_pooling_run_trains_its_scores_with_the_head_and_predicts(tsv, tmp_path, capsys):
    import predict
    import train
    from helpers import train_args
    out = tmp_path / "att"
    assert train.main(train_args(tsv, out, "model.pooling=attention", "training.max_steps=6",
                                 "training.head_learning_rate=1e-2")) == 0
    assert "learning rates: head 1.00e-02" in capsys.readouterr().out
    state = torch.load(out / "last.pt", weights_only=True)
    assert "pool.score.weight" in state["model"] and state["config"]["model"]["pooling"] == "attention"
    from training import optim  # the optimizer's groups: the pooling's weights learn at the head's rate
    from model import build_model
    from training.backbones import load_backbone
    cfg = state["config"]
    backbone, tok, _ = load_backbone(cfg["model"], cfg["data"]["max_length"])
    model = build_model(backbone, ["a", "b", "c"], cfg["model"], tok)
    groups = optim.make_optimizer(model, cfg["training"], torch.device("cpu"), 1e-2).param_groups
    head = {id(p) for g in groups if g["part"] == "head" for p in g["params"]}
    assert id(model.pool.score.weight) in head and groups[0]["lr"] == 1e-2
    fa = tmp_path / "x.fa"
    fa.write_text(">s1\nACGTACGTAGCTAGCTAGCATCGA\n")
    assert predict.main([str(out), str(fa), "-o", str(tmp_path / "p.tsv")]) == 0
    assert len((tmp_path / "p.tsv").read_text().splitlines()) == 2


def test_a_pooling_that_is_not_known_is_one_line_naming_every_choice(tsv, tmp_path, capsys):
    import train
    from helpers import train_args
    assert train.main(train_args(tsv, tmp_path / "o", "model.pooling=average")) == 2
    assert capsys.readouterr().err == "error: command line 'model.pooling=average': model.pooling is 'average' " \
                                      "(expected one of auto, mean, max, cls, last, attention)\n"
