"""model.py and lora.py: loading from every source, pooling, heads and head groups, LoRA, what trains."""
import os
import shutil

import huggingface_hub
import modelscope
import pytest
import torch

from model import MultiLabelModel, build_model, head_groups, pool
from training import backbones, config
from training.backbones import load_backbone
from training.config import ConfigError
from training.lora import LoRA, add_lora, merge_lora
from helpers import save_tiny


def model_cfg(**kw):
    d = dict(config.DEFAULTS["model"])
    d.update(kw)
    return d


def test_pooling_is_right_for_either_padding_side():
    h = torch.arange(2 * 4 * 1, dtype=torch.float32).reshape(2, 4, 1)  # values 0..7
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    left = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1]])
    assert pool(h, right, "cls").flatten().tolist() == [0, 4]
    assert pool(h, right, "last").flatten().tolist() == [2, 5]
    assert pool(h, right, "mean").flatten().tolist() == [1, 4.5]
    assert pool(h, right, "max").flatten().tolist() == [2, 5]
    assert pool(h, left, "cls").flatten().tolist() == [1, 6]
    assert pool(h, left, "last").flatten().tolist() == [3, 7]
    assert pool(h, left, "mean").flatten().tolist() == [2, 6.5]
    # max ignores padding even when padding holds the largest values
    assert pool(-h, left, "max").flatten().tolist() == [-1, -6]


def test_scratch_model_forward_shape():
    backbone, tok, path = load_backbone(model_cfg(n_embd=16, n_head=2, n_layer=1, kmer=3), 64)
    assert path is None
    net = MultiLabelModel(backbone, 5, "max")
    ids = torch.tensor(tok(["ACGTACGT"])["input_ids"])
    assert net(ids, torch.ones_like(ids)).shape == (1, 5)


def test_local_folder_loads_with_backbone_dropout_override(tiny_bert):
    backbone, tok, path = load_backbone(model_cfg(source="local", name_or_path=tiny_bert, backbone_dropout=0.0), 64)
    assert path == tiny_bert
    assert backbone.config.hidden_dropout_prob == 0.0 and backbone.config.attention_probs_dropout_prob == 0.0
    assert tok("ACGT", add_special_tokens=False)["input_ids"] == [4, 5, 6, 7]
    kept, _, _ = load_backbone(model_cfg(source="local", name_or_path=tiny_bert), 64)
    assert kept.config.hidden_dropout_prob == 0.1  # null keeps the pretrained value


@pytest.mark.parametrize("source, module", [("modelscope", modelscope), ("huggingface", huggingface_hub)])
def test_hub_sources_download_then_load(monkeypatch, tiny_bert, source, module):
    asked = []

    def fake_snapshot_download(repo_id, *args, **kwargs):
        asked.append(repo_id)
        return tiny_bert  # stands in for the hub's cache folder

    monkeypatch.setattr(module, "snapshot_download", fake_snapshot_download)
    backbone, tok, path = load_backbone(model_cfg(source=source, name_or_path="zhangtaolab/plant-dnagpt-BPE"), 64)
    assert asked == ["zhangtaolab/plant-dnagpt-BPE"]
    assert path == tiny_bert and type(backbone).__name__ == "BertModel"


def test_gpt_style_tokenizer_without_pad_gets_one(tmp_path):
    from helpers import save_tiny
    path = save_tiny(tmp_path / "gpt", "gpt2")
    tok = backbones.load_tokenizer(path)
    assert tok.pad_token_id is not None


def test_remote_code_needs_trust_remote_code(tiny_remote):
    with pytest.raises(ValueError, match="trust_remote_code"):
        load_backbone(model_cfg(source="local", name_or_path=tiny_remote), 64)
    backbone, tok, _ = load_backbone(model_cfg(source="local", name_or_path=tiny_remote, trust_remote_code=True), 64)
    assert type(backbone).__name__ == "HyenaDNAModel" and tok.padding_side == "left"


def test_missing_local_folder_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="is not a folder"):
        load_backbone(model_cfg(source="local", name_or_path=str(tmp_path / "nope")), 64)


def hub_run(tmp_path, source, name, **env):
    import subprocess
    import sys
    from helpers import ROOT, TINY, random_tsv
    tsv = random_tsv(str(tmp_path / "d.tsv"), ["a", "b"])
    env = dict(os.environ, HF_ENDPOINT="http://127.0.0.1:9", MODELSCOPE_ENDPOINT="http://127.0.0.1:9", **env)  # no hub
    return subprocess.run([sys.executable, "train.py", "config.yaml", f"data.path={tsv}", "task.label_map=null",
                           "task.num_labels=null", f"model.source={source}", f"model.name_or_path={name}", *TINY,
                           "training.max_steps=1", f"training.output_dir={tmp_path / 'out'}",
                           f"data.cache_dir={tmp_path / 'cache'}"], cwd=ROOT, capture_output=True, text=True, env=env)


@pytest.mark.parametrize("source", ["huggingface", "modelscope"])
def test_a_model_in_the_hub_cache_loads_without_fetching(tmp_path, tiny_bert, source):
    """Each hub's own cache layout; the hubs' addresses point nowhere, so any fetch would fail the run."""
    cache = tmp_path / "hub"
    if source == "huggingface":
        revision = "0" * 40
        snapshot = cache / "models--org--tiny" / "snapshots" / revision
        (cache / "models--org--tiny" / "refs").mkdir(parents=True)
        (cache / "models--org--tiny" / "refs" / "main").write_text(revision)
    else:
        snapshot = cache / "models" / "org--tiny" / "snapshots" / "master"
    shutil.copytree(tiny_bert, snapshot)
    p = hub_run(tmp_path, source, "org/tiny", HF_HUB_CACHE=str(cache), MODELSCOPE_CACHE=str(cache))
    assert p.returncode == 0, p.stderr[-2000:]
    assert "Test Metrics" in p.stdout


@pytest.mark.parametrize("source", ["huggingface", "modelscope"])
def test_a_missing_model_offline_is_one_line_naming_source_and_id(tmp_path, source):
    p = hub_run(tmp_path, source, "org/missing", HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "empty"),
                MODELSCOPE_CACHE=str(tmp_path / "empty"))
    assert p.returncode == 2
    # the message names the override that set the model
    assert p.stderr.startswith(f"error: command line 'model.name_or_path=org/missing': model 'org/missing' could not "
                               f"be had from {source} ("), p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr


def test_head_groups_put_each_logit_back_in_label_order(tiny_bert):
    from transformers import AutoModel
    names = ["a", "b", "c", "d"]
    groups = head_groups({"g1": ["c", "a"]}, names)
    assert groups == [[2, 0], [1, 3]]  # b and d, not named, share the default group
    net = MultiLabelModel(AutoModel.from_pretrained(tiny_bert), 4, "mean", dropout=0.0, groups=groups)
    for head, g in zip(net.heads, groups):  # each head outputs the index of its labels as constants
        last = head[-1]
        torch.nn.init.zeros_(last.weight)
        last.bias.data = torch.tensor([float(i) for i in g])
    ids = torch.tensor([[2, 4, 5, 3]])
    assert net(ids, torch.ones_like(ids)).tolist() == [[0.0, 1.0, 2.0, 3.0]]
    with pytest.raises(ConfigError, match="unknown labels"):
        head_groups({"g": ["z"]}, names)
    with pytest.raises(ConfigError, match="in two groups"):
        head_groups({"g": ["a"], "h": ["a", "b"]}, names)


@pytest.mark.parametrize("kind", ["bert", "gpt2"])  # nn.Linear and GPT-2's Conv1D
def test_lora_starts_at_the_base_model_and_merges_exactly(tmp_path, kind):
    from transformers import AutoModel
    torch.manual_seed(0)
    backbone = AutoModel.from_pretrained(save_tiny(tmp_path / kind, kind)).eval()
    ids = torch.tensor([[2, 4, 5, 6, 7, 3]])
    before = backbone(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
    n = add_lora(backbone, r=4, alpha=8, dropout=0.0)
    assert n > 0 and any(isinstance(m, LoRA) and m.conv1d == (kind == "gpt2") for m in backbone.modules())
    same = backbone(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
    assert torch.allclose(before, same)  # B starts at zero
    for m in backbone.modules():
        if isinstance(m, LoRA):
            torch.nn.init.normal_(m.B)
    lora_out = backbone(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
    assert not torch.allclose(before, lora_out)
    merge_lora(backbone)
    assert not any(isinstance(m, LoRA) for m in backbone.modules())
    merged_out = backbone(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
    assert torch.allclose(lora_out, merged_out, atol=1e-5)


def test_finetune_modes_choose_what_trains(tiny_bert):
    from transformers import AutoModel

    def trained(mode, **kw):
        cfg = model_cfg(finetune=mode, pooling="cls", **kw)
        net = build_model(AutoModel.from_pretrained(tiny_bert), ["a", "b"], cfg, None)
        return {n for n, p in net.named_parameters() if p.requires_grad}

    assert any(n.startswith("backbone.") for n in trained("full"))
    assert trained("head") == {"head.weight", "head.bias"}
    lora = trained("lora", lora={"r": 2, "targets": ["query", "value"]})
    assert lora - {"head.weight", "head.bias"} and all(n.endswith((".A", ".B")) for n in lora if "backbone" in n)
    assert all("query" in n or "value" in n for n in lora if "backbone" in n)
    with pytest.raises(ConfigError, match="has no linear layer whose name contains one of .'nothing'. to wrap"):
        trained("lora", lora={"targets": ["nothing"]})
    with pytest.raises(ConfigError, match="expected one of full, head, lora"):
        trained("adapters")
