"""Shared fixtures: tiny pretrained-style model folders, built and saved locally (nothing is downloaded)."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import config  # noqa: E402


@pytest.fixture(autouse=True)
def token_cache_in_tmp(tmp_path, monkeypatch):
    """In-process runs put their token caches in the test's folder, not in the checkout."""
    monkeypatch.setitem(config.DEFAULTS["data"], "cache_dir", str(tmp_path / "cache"))

REMOTE_CODE = '''
import torch
import torch.nn as nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput


class TinyDnaConfig(PretrainedConfig):
    model_type = "tinydna"

    def __init__(self, vocab_size=16, hidden_size=16, dropout=0.1, **kw):
        self.vocab_size, self.hidden_size, self.dropout = vocab_size, hidden_size, dropout
        super().__init__(**kw)


class TinyDnaModel(PreTrainedModel):
    config_class = TinyDnaConfig
    base_model_prefix = "tinydna"

    def __init__(self, config):
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.conv = nn.Conv1d(config.hidden_size, config.hidden_size, 3, padding=1)
        self.drop = nn.Dropout(config.dropout)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, **kw):
        h = self.embed(input_ids) * attention_mask.unsqueeze(-1)
        h = torch.relu(self.conv(h.transpose(1, 2))).transpose(1, 2)
        return BaseModelOutput(last_hidden_state=self.drop(h))
'''


def char_tokenizer(padding_side="right"):
    """One token per base, [CLS] ... [SEP]."""
    import zoo
    return zoo.char_tokenizer(side=padding_side, **zoo.BERT_TOKENS)


def save_tiny(path, kind="bert", padding_side="right"):
    """Saves a tiny randomly initialised model and a base-level tokenizer, as from_pretrained expects them."""
    import zoo
    from transformers import BertConfig, BertModel, GPT2Config, GPT2Model
    path = str(path)
    if kind == "bert":
        BertModel(BertConfig(vocab_size=9, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=32, max_position_embeddings=512)).save_pretrained(path)
    elif kind == "gpt2":
        GPT2Model(GPT2Config(vocab_size=9, n_embd=16, n_layer=1, n_head=2, n_positions=512)).save_pretrained(path)
    else:  # a custom architecture: save_pretrained copies its code into the folder, so it needs trust_remote_code
        zoo.remote(path, "modeling_tinydna", REMOTE_CODE, "TinyDnaConfig", "TinyDnaModel", {"vocab_size": 9})
    char_tokenizer(padding_side).save_pretrained(path)
    return path


@pytest.fixture
def tiny_bert(tmp_path):
    return save_tiny(tmp_path / "bert")


@pytest.fixture
def tiny_remote(tmp_path):
    os.makedirs(tmp_path / "remote")
    return save_tiny(tmp_path / "remote", "remote", padding_side="left")
