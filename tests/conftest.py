"""Shared fixtures: a tiny BPE trained in-process and micro models, so every test is hermetic."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch

from picochat.model import GPT, GPTConfig
from picochat.tokenizer import Tokenizer

TEXT = (
    "ROMEO: But soft, what light through yonder window breaks?\n"
    "JULIET: O Romeo, Romeo, wherefore art thou Romeo?\n"
    "The quick brown fox jumps over the lazy dog. 0123456789 + - * / = ?\n"
) * 40


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Micro models gain nothing from intra-op threads, and on a busy machine every extra thread makes each
    small op wait for a free core. Modules that want it say `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
