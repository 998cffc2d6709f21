"""Shared fixtures: a tiny BPE trained in-process and micro models, so every test is hermetic."""

from __future__ import annotations

import os

import pytest
import torch

from picochat.model import GPT, GPTConfig
from picochat.tokenizer import Tokenizer

TEXT = (
    "ROMEO: But soft, what light through yonder window breaks?\n"
    "JULIET: O Romeo, Romeo, wherefore art thou Romeo?\n"
    "The quick brown fox jumps over the lazy dog. 0123456789 + - * / = ?\n"
) * 40


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--runslow") or os.environ.get("PICOCHAT_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: use --runslow or PICOCHAT_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def sample_text() -> str:
    """A few KB of text (the same the `tok` fixture's BPE was trained on)."""
    return TEXT


@pytest.fixture(scope="session")
def tok() -> Tokenizer:
    return Tokenizer.train([TEXT], vocab_size=320)


@pytest.fixture
def micro_config(tok: Tokenizer) -> GPTConfig:
    return GPTConfig.from_preset("micro", vocab_size=tok.vocab_size)


@pytest.fixture
def micro_model(micro_config: GPTConfig) -> GPT:
    torch.manual_seed(0)
    return GPT(micro_config).eval()
