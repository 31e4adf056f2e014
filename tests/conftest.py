"""Fixtures: token caches in each test's folder, and tiny pretrained-style model folders. Plain helpers are in
helpers.py."""
import pytest

from training import config
from helpers import random_tsv, save_tiny


@pytest.fixture(autouse=True)
def token_cache_in_tmp(tmp_path, monkeypatch):
    """In-process runs put their token caches in the test's folder, not in the checkout."""
    monkeypatch.setitem(config.DEFAULTS["data"], "cache_dir", str(tmp_path / "cache"))


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


@pytest.fixture(scope="module")
def tsv(tmp_path_factory):
    """150 random sequences of 20-60 bp with labels a, b and c."""
    return random_tsv(str(tmp_path_factory.mktemp("data") / "d.tsv"), ["a", "b", "c"], n=150)
