"""The branches written for GPUs, reached on a CPU: the batch-width cap, the fused optimizer's on-device skip, the
loss scaler, no waiting for the device between logging steps, HF's GPU keys, and the checkpoints' contents."""
import os
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import data
import train
from model import entry_loss
from training import config, optim, outputs
from training.backbones import enable_gradient_checkpointing, load_backbone, position_limit
from helpers import NO_DROPOUT, ROOT, TINY, assert_same_weights, char_tokenizer, write_config

FAST = ["task.label_map=null", "task.num_labels=null", *TINY]


def long_tsv(path, lo, hi, n=64, seed=0):
    rng = np.random.RandomState(seed)
    with open(path, "w") as f:
        f.write("sequence\tlabels\n")
        for _ in range(n):
            f.write("".join(rng.choice(list("ACGT"), rng.randint(lo, hi + 1))) + "\t" +
                    ",".join(x for x in "ab" if rng.rand() < 0.4) + "\n")
    return path


def test_collate_rounds_up_to_the_multiple_but_never_past_the_cap():
    collate = data.Collate(0, "right", multiple=8, max_width=300)
    batch = [(i, np.ones(n, np.int32), np.zeros(2, np.float32), np.ones(2, bool)) for i, n in enumerate((297, 12))]
    assert collate(batch)["input_ids"].shape == (2, 300)  # 304 without the cap
    assert collate(batch[1:])["input_ids"].shape == (1, 16)
    left = data.Collate(0, "left", multiple=8, max_width=300)(batch)
    assert left["attention_mask"][1].tolist() == [0] * 288 + [1] * 12


def test_position_limit_of_each_kind_of_position_table():
    from transformers import BertConfig, EsmConfig, GPT2Config
    assert position_limit(BertConfig(max_position_embeddings=300)) == 300
    assert position_limit(GPT2Config(n_positions=1000)) == 1000
    # RoBERTa-style tables number positions from pad_token_id + 1
    assert position_limit(EsmConfig(vocab_size=9, max_position_embeddings=302, pad_token_id=1)) == 300
    assert position_limit(EsmConfig(vocab_size=9, position_embedding_type="rotary", pad_token_id=1)) is None


def test_scratch_model_at_max_length_300_with_multiples_of_8(tmp_path):
    # 1-mers: 290-300 bp are 292-302 tokens, cut to 300; every batch would round up to 304 positions of 300
    tsv = long_tsv(str(tmp_path / "d.tsv"), 290, 300)
    assert train.main(["config.yaml", f"data.path={tsv}", *FAST, "model.kmer=1", "data.max_length=300",
                       "data.pad_to_multiple_of=8", "training.max_steps=3",
                       f"training.output_dir={tmp_path / 'out'}"]) == 0


def test_pretrained_folder_whose_position_limit_is_not_a_multiple_of_8(tmp_path, capsys):
    from transformers import BertConfig, BertModel
    folder = str(tmp_path / "bert300")
    BertModel(BertConfig(vocab_size=9, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=300)).save_pretrained(folder)
    char_tokenizer().save_pretrained(folder)
    tsv = long_tsv(str(tmp_path / "d.tsv"), 290, 310)  # up to 312 tokens with [CLS] and [SEP]
    out = tmp_path / "out"
    assert train.main(["config.yaml", f"data.path={tsv}", *FAST, "model.source=local", f"model.name_or_path={folder}",
                       "data.max_length=512", "data.pad_to_multiple_of=8", "training.max_steps=3",
                       f"training.output_dir={out}"]) == 0
    log = capsys.readouterr().out
    assert "data.max_length 512 is more than the backbone's 300 positions" in log
    assert config.load(str(out / "config.yaml"))["data"]["max_length"] == 300  # predict.py cuts the same way


class Tiny(torch.nn.Sequential):
    def forward(self, input_ids, attention_mask, windows=None):  # called as train.train_step calls the model
        return super().forward(input_ids * attention_mask)


def tiny_step_setup(fused, scale=False):
    torch.manual_seed(0)
    net = Tiny(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    optimizer = optim.make_optimizer(net, dict(config.DEFAULTS["training"], weight_decay=0.01, learning_rate=1e-2,
                                               optim="adamw_torch_fused" if fused else "adamw_torch"),
                                     torch.device("cpu"))
    return net, net, optimizer, torch.amp.GradScaler("cpu", enabled=scale)


def one_step(model, optimizer, scaler, x, bad=False):
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    batch = {"input_ids": x * (float("nan") if bad else 1.0), "attention_mask": torch.ones(2, 4), "labels": labels,
             "mask": torch.ones(2, 2, dtype=torch.bool)}
    run = SimpleNamespace(model=model, optimizer=optimizer, scaler=scaler, device=torch.device("cpu"), world=1,
                          amp=torch.autocast("cpu", enabled=False), loss_fn=entry_loss, weighting=None,
                          cfg={"training": {"max_grad_norm": 1.0}})
    return train.train_step(run, [batch], measured=4)


@pytest.mark.parametrize("fused, scale", [(False, False), (True, False), (True, True)])
def test_a_non_finite_step_is_skipped_on_every_optimizer_path(fused, scale):
    x = torch.randn(2, 4)
    net, model, optimizer, scaler = tiny_step_setup(fused, scale)
    assert optimizer.defaults["fused"] == (fused or None)
    one_step(model, optimizer, scaler, x)
    before = [p.detach().clone() for p in net.parameters()]
    steps = [s["step"].item() for s in optimizer.state.values()]
    loss, grad_norm, bad = one_step(model, optimizer, scaler, x, bad=True)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))  # the update was skipped
    assert [s["step"].item() for s in optimizer.state.values()] == steps
    assert isinstance(bad, torch.Tensor) and bad.item() == (0.0 if scale else 1.0)  # the scaler's own business
    if scale:
        assert scaler.get_scale() == 2.0 ** 15  # halved from its start
    one_step(model, optimizer, scaler, x)
    assert not torch.equal(before[0], net[0].weight)  # and the next finite step is taken


def test_fused_and_scaled_steps_match_the_plain_step():
    x = torch.randn(2, 4)
    results = []
    for fused, scale in [(False, False), (True, False), (True, True)]:
        net, model, optimizer, scaler = tiny_step_setup(fused, scale)
        for _ in range(3):
            one_step(model, optimizer, scaler, x)
        results.append([p.detach() for p in net.parameters()])
    for other in results[1:]:
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(results[0], other))


def test_nothing_waits_for_the_device_between_logging_steps(tmp_path, monkeypatch):
    """Every read of a tensor's value (.item(), bool(), int(), float(), .tolist()) makes a GPU wait. With the
    fused optimizer, the number of such reads in this project's code must not grow with the number of steps
    between two logging steps. (transformers' own mask code reads padding_mask.all() in each eager forward;
    torch.compile traces that away.)"""
    tsv = long_tsv(str(tmp_path / "d.tsv"), 20, 60, n=200)
    calls = []

    def counted(real, name):
        def read(self, *a):
            caller = sys._getframe(1).f_code.co_filename
            if caller.startswith(ROOT) and "site-packages" not in caller:
                calls.append((name, os.path.basename(caller), sys._getframe(1).f_lineno))
            return real(self, *a)
        return read

    for name in ("item", "__bool__", "__int__", "__float__", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, counted(getattr(torch.Tensor, name), name))
    counts = []
    for steps in (2, 9):
        calls.clear()
        assert train.main(["config.yaml", f"data.path={tsv}", *FAST, "training.optim=adamw_torch_fused",
                           "training.logging_steps=1000", "training.evaluation_strategy=no",
                           "training.save_strategy=no", f"training.max_steps={steps}",
                           f"training.output_dir={tmp_path / str(steps)}"]) == 0
        counts.append(len(calls))
    assert counts[0] > 0  # the logging step and the test phase do read values
    assert counts[0] == counts[1], calls


def test_best_checkpoint_holds_what_prediction_needs_and_shares_last_at_the_same_step(tmp_path, capsys):
    tsv = long_tsv(str(tmp_path / "d.tsv"), 20, 60, n=120)
    out = tmp_path / "out"
    # 96 training sequences in batches of 16: an epoch is 6 steps; evaluation every 2 steps, saving every epoch
    assert train.main(["config.yaml", f"data.path={tsv}", *FAST, "training.num_train_epochs=1",
                       "training.evaluation_strategy=steps", "training.eval_steps=2",
                       "training.metric_for_best_model=loss", "training.learning_rate=1e-2",
                       f"training.output_dir={out}"]) == 0
    log = capsys.readouterr().out
    best, last = torch.load(out / "best.pt", weights_only=True), torch.load(out / "last.pt", weights_only=True)
    assert set(last) >= set(outputs.LAST_KEYS) and last["step"] == 6
    if best["step"] == 6:  # the best of this run is the last step: one file, written once
        assert os.path.samefile(out / "best.pt", out / "last.pt")
        assert "saved last.pt and best.pt in" in log
    else:
        assert set(best) == set(outputs.BEST_KEYS)  # no optimizer: prediction never reads it
    assert "saved best.pt in" in log and "saved last.pt" in log
    assert log.count("saved last.pt") == 1  # not written again after the loop


def test_hf_gpu_keys_are_read_not_ignored(tmp_path):
    warnings = []
    cfg = config.load(write_config(tmp_path, """
        training:
          dataloader_num_workers: 2
          torch_compile: true
          gradient_checkpointing: true
          optim: adamw_torch_fused
        """), warn=warnings.append)
    t = cfg["training"]
    assert (t["num_workers"], t["torch_compile"], t["gradient_checkpointing"], t["optim"]) == \
        (2, True, True, "adamw_torch_fused")
    assert warnings == []
    with pytest.raises(config.ConfigError, match="training.optim is 'adafactor'"):
        config.load(None, ["data.path=x.tsv", "training.optim=adafactor"])


def test_workers_fused_optimizer_and_gradient_checkpointing_train_the_same_weights(tmp_path):
    tsv = long_tsv(str(tmp_path / "d.tsv"), 20, 60, n=120)
    base = ["config.yaml", f"data.path={tsv}", *FAST, *NO_DROPOUT, "training.max_steps=5",
            "training.save_strategy=steps", "training.save_steps=5", "training.evaluation_strategy=no"]
    runs = {"plain": [], "workers": ["training.dataloader_num_workers=2"],
            "fused": ["training.optim=adamw_torch_fused"], "checkpointing": ["training.gradient_checkpointing=true"]}
    for name, extra in runs.items():
        assert train.main([*base, *extra, f"training.output_dir={tmp_path / name}"]) == 0
    for name in ("workers", "fused", "checkpointing"):
        assert_same_weights(tmp_path / "plain" / "last.pt", tmp_path / name / "last.pt", atol=1e-5)


def test_gradient_checkpointing_is_on_in_the_backbone_or_a_clear_error(tiny_remote):
    cfg = config.load(None, ["data.path=x.tsv", "model.n_layer=1"])
    backbone, _, _ = load_backbone(cfg["model"], 64)
    enable_gradient_checkpointing(backbone)
    assert any(getattr(m, "gradient_checkpointing", False) for m in backbone.modules())
    remote = dict(cfg["model"], source="local", name_or_path=tiny_remote, trust_remote_code=True)
    with pytest.raises(config.ConfigError, match="training.gradient_checkpointing: HyenaDNAModel cannot"):
        enable_gradient_checkpointing(load_backbone(remote, 64)[0])


def test_compiled_training_matches_eager(tmp_path):
    tsv = long_tsv(str(tmp_path / "d.tsv"), 30, 30, n=60)  # one width: one compilation, not one per shape
    base = ["config.yaml", f"data.path={tsv}", *FAST, *NO_DROPOUT, "training.max_steps=2", "training.save_steps=2",
            "training.save_strategy=steps", "training.evaluation_strategy=no", "data.test_size=0.0",
            "data.train_size=0.9"]
    assert train.main([*base, f"training.output_dir={tmp_path / 'eager'}"]) == 0
    assert train.main([*base, "training.torch_compile=true", f"training.output_dir={tmp_path / 'compiled'}"]) == 0
    assert_same_weights(tmp_path / "eager" / "last.pt", tmp_path / "compiled" / "last.pt", atol=1e-4)
