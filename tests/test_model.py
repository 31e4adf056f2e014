import os
import shutil

import huggingface_hub
import modelscope
import pytest
import torch

import config
import model
from config import ConfigError
from model import MultiLabelModel, load_backbone, pool


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
    from conftest import save_tiny
    path = save_tiny(tmp_path / "gpt", "gpt2")
    tok = model.load_tokenizer(path)
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
    from conftest import ROOT
    from test_train import TINY, random_tsv
    tsv = random_tsv(str(tmp_path / "d.tsv"), ["a", "b"])
    env = dict(os.environ, HF_ENDPOINT="http://127.0.0.1:9", MODELSCOPE_ENDPOINT="http://127.0.0.1:9", **env)  # no hub
    return subprocess.run([sys.executable, "train.py", "config.yaml", f"data.path={tsv}", "task.label_map=null",
                           "task.num_labels=null", f"model.source={source}", f"model.name_or_path={name}", *TINY,
                           "training.max_steps=1", f"training.output_dir={tmp_path / 'out'}",
                           f"data.cache_dir={tmp_path / 'cache'}"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=env)


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
