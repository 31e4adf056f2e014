"""The fine-tuning recipe for a pretrained backbone: the head warmed up on the frozen backbone, a learning rate
of the head's own (10x by default) and layer decay in the backbone, and the hint when no validation call reaches
a label's threshold."""
import pytest
import torch
from transformers import AutoModel, BertConfig

import train
import zoo
from model import build_model
from training import config, optim
from training.backbones import KmerTokenizer, load_backbone
from helpers import NO_DROPOUT, assert_same_weights, train_args
from test_zoo import FAMILIES

SNAPSHOTS = ["training.save_strategy=steps", "training.save_steps=1", "training.save_total_limit=10",
             "training.evaluation_strategy=no", "training.max_steps=6", "training.learning_rate=1e-2"]


def local(folder):
    return ["model.source=local", f"model.name_or_path={folder}", "model.pooling=mean"]


def weights(path, part):
    model = torch.load(path, weights_only=True)["model"]
    return {k: v for k, v in model.items() if k.startswith("backbone.") == (part == "backbone")}


def moved(a, b):
    return any(not torch.equal(a[k], b[k]) for k in a)


def test_backbone_is_still_during_the_warm_up_and_trains_after(tmp_path, tsv, tiny_bert, capsys):
    out = tmp_path / "out"
    assert train.main(train_args(tsv, out, *local(tiny_bert), *SNAPSHOTS, "training.head_warmup_steps=3")) == 0
    log = capsys.readouterr().out
    assert "backbone is frozen for the first 3 steps" in log and "step 3: the head warm-up is over" in log
    pretrained = {f"backbone.{k}": v for k, v in AutoModel.from_pretrained(tiny_bert).state_dict().items()}
    for step in (1, 2, 3):
        backbone = weights(out / f"step-{step}.pt", "backbone")
        assert all(torch.equal(v, pretrained[k]) for k, v in backbone.items())
    assert moved(weights(out / "step-1.pt", "head"), weights(out / "step-3.pt", "head"))
    assert moved(weights(out / "step-3.pt", "backbone"), weights(out / "step-4.pt", "backbone"))


def test_resume_across_the_end_of_the_warm_up_is_exact(tmp_path, tsv, tiny_bert):
    args = [*local(tiny_bert), *SNAPSHOTS, "training.head_warmup_steps=3", "model.dropout=0.3",
            "training.head_learning_rate=3e-2", "training.layer_decay=0.5"]
    assert train.main(train_args(tsv, tmp_path / "full", *args)) == 0
    assert train.main(train_args(tsv, tmp_path / "resumed", *args,
                                 f"training.resume_from_checkpoint={tmp_path / 'full' / 'step-2.pt'}")) == 0
    assert_same_weights(tmp_path / "full" / "last.pt", tmp_path / "resumed" / "last.pt", atol=0)


def tiny_net(n_layer=3):
    backbone = AutoModel.from_config(BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=n_layer,
                                                num_attention_heads=2, intermediate_size=16))
    model_cfg = dict(config.DEFAULTS["model"], pooling="mean")
    return build_model(backbone, ["a", "b"], model_cfg, KmerTokenizer(1))


def rate_of(optimizer, net):
    """{parameter name: (its group's initial learning rate, its group's part)}."""
    where = {id(p): (g["initial_lr"] if "initial_lr" in g else g["lr"], g["part"])
             for g in optimizer.param_groups for p in g["params"]}
    return {n: where[id(p)] for n, p in net.named_parameters()}


def test_learning_rates_per_parameter_group():
    net = tiny_net()
    train_cfg = dict(config.DEFAULTS["training"], learning_rate=1e-4, layer_decay=0.5, head_warmup_steps=10,
                     weight_decay=0.1, warmup_steps=5)
    optimizer = optim.make_optimizer(net, train_cfg, torch.device("cpu"), head_lr=1e-3)
    rates = rate_of(optimizer, net)
    assert rates["head.weight"] == (1e-3, "head")
    for i, scale in ((2, 1), (1, 0.5), (0, 0.25)):  # the top layer takes learning_rate
        assert rates[f"backbone.encoder.layer.{i}.attention.self.query.weight"] == (pytest.approx(1e-4 * scale),
                                                                                    "backbone")
    assert rates["backbone.embeddings.word_embeddings.weight"] == (pytest.approx(1e-4 * 0.125), "backbone")
    decay = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    assert decay[id(net.head.weight)] == 0.1 and decay[id(net.head.bias)] == 0.0
    # the schedule: the backbone's groups are at 0 during the warm-up, then warm up over warmup_steps
    scheduler = optim.make_scheduler(optimizer, train_cfg, total_steps=40)
    lrs = []
    for _ in range(16):
        lrs.append({g["part"]: g["lr"] for g in optimizer.param_groups if g["lr"] > 0 or g["part"] == "backbone"})
        optimizer.step()
        scheduler.step()
    assert all(lr["backbone"] == 0 and lr["head"] > 0 for lr in lrs[:10])
    assert 0 < lrs[10]["backbone"] < lrs[12]["backbone"] < lrs[15]["backbone"]
    # nothing of the sort asked for: the two groups of old, so old checkpoints resume
    plain = optim.make_optimizer(net, config.DEFAULTS["training"], torch.device("cpu"))
    assert [g["part"] for g in plain.param_groups] == ["all", "all"]


def test_head_learning_rate_auto_is_ten_times_for_a_pretrained_backbone_that_trains(tmp_path, tsv, tiny_bert,
                                                                                   capsys):
    def rate(*more):
        cfg = config.load(None, ["data.path=x.tsv", "training.learning_rate=2e-5", *more])
        return config.head_learning_rate(cfg)
    assert rate() == 2e-5  # the scratch model: one rate, as before
    assert rate("model.source=local", "model.name_or_path=m") == pytest.approx(2e-4)
    assert rate("model.source=local", "model.name_or_path=m", "model.finetune=head") == 2e-5  # only the head trains
    assert rate("model.source=local", "model.name_or_path=m", "training.head_learning_rate=1e-3") == 1e-3
    out = tmp_path / "out"
    assert train.main(train_args(tsv, out, *local(tiny_bert), *SNAPSHOTS)) == 0
    assert "learning rates: head 1.00e-01 (head_learning_rate auto: 10x learning_rate), backbone 1.00e-02" in \
        capsys.readouterr().out


@pytest.mark.parametrize("family", FAMILIES)
def test_layer_decay_finds_the_stack_of_layers(tmp_path, family, capsys):
    folder = str(tmp_path / family)
    trust = zoo.build(family, folder)
    backbone = load_backbone(dict(config.DEFAULTS["model"], source="local", name_or_path=folder,
                                  trust_remote_code=trust), 128)[0]
    scales = optim.layer_scales(backbone, 0.5)
    stack, n = optim.layer_stack(backbone)
    if trust:  # the remote-code mimics here are flat: one rate, and a note that says so
        assert stack is None and set(scales.values()) == {1.0} and "no stack of layers" in capsys.readouterr().out
        return
    assert n == 1  # the zoo's models have one layer
    names = list(scales)  # the token embeddings come first in every family, the stack's layer 0 after them
    assert scales[names[0]] == 0.5 and not names[0].startswith(stack + ".")
    inside = [k for k in names if k.startswith(stack + ".0.")]
    assert inside and all(scales[k] == 1.0 for k in inside)


def test_ddp_with_a_frozen_backbone_matches_one_process(tmp_path, tsv):
    from test_distributed import check, common, torchrun
    extra = ["training.head_warmup_steps=2", "training.head_learning_rate=3e-2", "training.layer_decay=0.5",
             "model.n_layer=2"]
    check(torchrun(*common(tsv, tmp_path / "one", "training.per_device_train_batch_size=8", *extra)))
    check(torchrun(*common(tsv, tmp_path / "two", "training.per_device_train_batch_size=4", *extra), nproc=2))
    assert_same_weights(tmp_path / "one" / "last.pt", tmp_path / "two" / "last.pt")


def test_a_label_without_a_positive_call_is_said_once(tmp_path, tsv, capsys):
    args = ["task.threshold=0.999", "training.max_steps=4", "training.evaluation_strategy=steps",
            "training.eval_steps=2", "training.save_strategy=no", *NO_DROPOUT]
    assert train.main(train_args(tsv, tmp_path / "out", *args)) == 0
    log = capsys.readouterr().out
    assert log.count("note: at the last evaluation, no validation sequence reaches the threshold of 3 of 3 labels "
                     "(a, b, c)") == 1
    assert log.index("eval step 4") < log.index("note: at the last evaluation") < log.index("Test Metrics")
    assert "task.threshold=tuned" in log


def test_bad_recipe_settings_are_errors():
    for key, value in (("head_learning_rate", 0), ("layer_decay", 1.5), ("head_warmup_steps", -1)):
        with pytest.raises(config.ConfigError, match=f"training.{key}"):
            config.load(None, ["data.path=x.tsv", f"training.{key}={value}"])
    with pytest.raises(config.ConfigError, match="nothing to warm the head up for"):
        config.load(None, ["data.path=x.tsv", "training.head_warmup_steps=5", "model.finetune=head"])



def test_a_run_from_before_the_head_rate_resumes_only_with_one_rate(tmp_path, tsv, tiny_bert, capsys):
    old = tmp_path / "old"
    args = [*local(tiny_bert), *SNAPSHOTS, "training.max_steps=2"]
    assert train.main(train_args(tsv, old, *args, "training.head_learning_rate=1e-2")) == 0
    ckpt = torch.load(old / "last.pt", weights_only=True)
    del ckpt["config"]["training"]["head_learning_rate"]  # as a checkpoint written before the setting
    torch.save(ckpt, old / "last.pt")
    resume = [*args, "training.max_steps=4", f"training.resume_from_checkpoint={old / 'last.pt'}"]
    assert train.main(train_args(tsv, tmp_path / "new", *resume)) == 2
    assert "its optimizer has 2 parameter groups and this run's 4" in capsys.readouterr().err
    assert train.main(train_args(tsv, tmp_path / "new", *resume, "training.head_learning_rate=1e-2",
                                 "training.overwrite_output_dir=true")) == 0
