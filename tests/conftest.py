"""Shared fixtures: a small real-text corpus and a throwaway tokenizer trained in-process."""

from __future__ import annotations

from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(scope="session")
def small_texts() -> list[str]:
    """A few KB of varied English and code-like text, split into documents."""
    text = (FIXTURES / "small_corpus.txt").read_text(encoding="utf-8")
    return [d.strip() for d in text.split("\n\n\n") if d.strip()]


@pytest.fixture(scope="session")
def small_tokenizer(tmp_path_factory, small_texts):
    from lmcore.data.tokenizer import TokenizerConfig, train_tokenizer

    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    return train_tokenizer(TokenizerConfig(vocab_size=300, min_frequency=2), small_texts, path), path


@pytest.fixture(scope="session")
def tok(small_tokenizer):
    """The small tokenizer itself (``small_tokenizer`` is it and its file)."""
    return small_tokenizer[0]


def pytest_configure(config):
    # This process computes like the pipeline's own processes (the CLI, a run's steps, torchrun workers), so a run
    # in-process and one in a subprocess train the same weights (lmcore.cpu).
    from lmcore.cpu import pin_cpu_dispatch

    pin_cpu_dispatch()
    # Tests use tiny tensors; on 2 busy cores, intra-op threads cost more than they give.
    import torch

    torch.set_num_threads(1)
    # rouge-score imports absl.logging, which puts a handler on the root logger bound to the
    # sys.stderr of that moment; pytest later closes that stream and the next log record
    # ("I/O operation on closed file", "lost sys.stderr") takes the whole session down.
    import logging

    try:
        import absl.logging
    except ImportError:
        return
    logging.root.removeHandler(absl.logging.get_absl_handler())
