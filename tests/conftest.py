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


def char_tokenizer(padding_side="right"):
    """One token per base, [CLS] ... [SEP]."""
    import zoo
    return zoo.char_tokenizer(side=padding_side, **zoo.BERT_TOKENS)


def save_tiny(path, kind="bert", padding_side="right"):
    """Saves a tiny randomly initialised model and a base-level tokenizer, as from_pretrained expects them."""
    from transformers import BertConfig, BertModel, GPT2Config, GPT2Model
    path = str(path)
    if kind == "bert":
        BertModel(BertConfig(vocab_size=9, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=32, max_position_embeddings=512)).save_pretrained(path)
    else:
        GPT2Model(GPT2Config(vocab_size=9, n_embd=16, n_layer=1, n_head=2, n_positions=512)).save_pretrained(path)
    char_tokenizer(padding_side).save_pretrained(path)
    return path


@pytest.fixture
def tiny_bert(tmp_path):
    return save_tiny(tmp_path / "bert")


@pytest.fixture
def tiny_remote(tmp_path):
    """A remote-code model (HyenaDNA-style: no attention mask, left padding): it needs trust_remote_code."""
    import zoo
    path = str(tmp_path / "remote")
    zoo.build("hyenadna", path)
    return path
