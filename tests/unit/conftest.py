"""Fixtures shared by the unit tests."""

import pytest


@pytest.fixture(scope="session")
def tokenizer_path(tmp_path_factory):
    """A small trained BPE tokenizer.json (vocabulary 300), for exports."""
    from lmcore.data.tokenizer import TokenizerConfig, train_tokenizer

    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    train_tokenizer(TokenizerConfig(vocab_size=300), ["the cat sat on the mat. the dog sat on the log."] * 20, path)
    return path
