"""Tests for `picochat chat`: history fitting, the session's bookkeeping, and the real CLI in a
pseudo-terminal (pexpect) and in --message mode, on a micro model taught one answer inside the test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pexpect
import pytest
import torch
import torch.nn.functional as F

from picochat.chat import ChatOptions, ChatSession, fit_history, run_interactive
from picochat.checkpoint import save_checkpoint
from picochat.engine import Engine
from picochat.model import GPT, IGNORE_INDEX, GPTConfig
from picochat.tokenizer import Tokenizer

TAUGHT = [{"role": "user", "content": "Who jumps?"}, {"role": "assistant", "content": "the quick brown fox"}]
CLI = [sys.executable, "-m", "picochat.cli", "chat"]


def teach(tok: Tokenizer, config: GPTConfig, steps: int = 100) -> GPT:
    """A micro model that answers TAUGHT's question with its answer and <|end|> (after an earlier
    exchange or a system prompt too)."""
    torch.manual_seed(0)
    model = GPT(config)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    convs = [TAUGHT, TAUGHT * 2, [{"role": "system", "content": "Be brief."}, *TAUGHT]]
    rows = [tok.render_conversation(c) for c in convs]
    T = max(len(ids) for ids, _ in rows) - 1
    x = torch.full((len(rows), T), tok.eot_id)
    y = torch.full((len(rows), T), IGNORE_INDEX)
    for i, (ids, mask) in enumerate(rows):
        x[i, : len(ids) - 1] = torch.tensor(ids[:-1])
        y[i, : len(ids) - 1] = torch.tensor(
            [t if m else IGNORE_INDEX for t, m in zip(ids[1:], mask[1:], strict=True)]
        )
    for _ in range(steps):
        loss = F.cross_entropy(model(x)[0].flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def taught(tok: Tokenizer) -> GPT:
    return teach(tok, GPTConfig.from_preset("micro", vocab_size=tok.vocab_size))


@pytest.fixture(scope="module")
def ckpt(tok: Tokenizer, taught: GPT, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("chat") / "ckpt", taught, tok)


def test_fit_history_drops_oldest_exchanges_and_keeps_the_system_prompt(tok: Tokenizer) -> None:
    history = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"message number {i} with some words"}
        for i in range(9)
    ]
    kept, dropped = fit_history(tok, "Be brief.", history, block_size=10_000, max_new_tokens=16)
    assert kept == history and dropped == 0
    full = len(tok.render_prompt([{"role": "system", "content": "Be brief."}, *history]))
    last_two = len(tok.render_prompt([{"role": "system", "content": "Be brief."}, *history[-3:]]))
    kept, dropped = fit_history(tok, "Be brief.", history, block_size=last_two + 16, max_new_tokens=16)
    assert kept == history[-3:] and dropped == 6
    assert kept[0]["role"] == "user"
    assert full > last_two
    kept, dropped = fit_history(tok, "Be brief.", history, block_size=5, max_new_tokens=4)
    assert kept == history[-1:] and dropped == 8  # the new message always stays


def test_session_streams_records_and_notices_dropped_turns(tok: Tokenizer, taught: GPT) -> None:
    notices: list[str] = []
    session = ChatSession(
        Engine(taught, tok), ChatOptions(temperature=0.0, max_new_tokens=16), notify=notices.append
    )
    pieces = list(session.reply("Who jumps?"))
    assert len(pieces) > 1 and "".join(pieces) == "the quick brown fox"
    assert session.history == TAUGHT
    for _ in range(6):  # the 64-token context fills after a few exchanges
        list(session.reply("Who jumps?"))
    assert notices and "dropped the 2 oldest messages" in notices[0] and "64-token context" in notices[0]
    assert len(tok.render_prompt(session.history[:-1])) + 16 <= 64  # the last prompt fitted
    stream = session.reply("Who jumps?")
    next(stream)
    stream.close()  # a cancelled answer leaves no unanswered message behind
    assert session.history[-1]["role"] == "assistant"
    session.reset()
    assert session.history == []
    with pytest.raises(ValueError, match="64-token context"):
        ChatSession(Engine(taught, tok), ChatOptions(max_new_tokens=64))


def test_end_of_input_ends_the_loop(tok: Tokenizer, taught: GPT, monkeypatch: pytest.MonkeyPatch) -> None:
    lines = iter(["Who jumps?"])

    def fake_input(prompt: str) -> str:
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    monkeypatch.setattr("builtins.input", fake_input)
    session = ChatSession(Engine(taught, tok), ChatOptions(temperature=0.0, max_new_tokens=16))
    run_interactive(session, "banner")
    assert session.history == TAUGHT


def test_interactive_cli_in_a_pseudo_terminal(ckpt: Path) -> None:
    args = [
        *CLI[1:],
        "--ckpt",
        str(ckpt),
        "--temperature",
        "0",
        "--max-new-tokens",
        "8",
        "--system",
        "Be brief.",
    ]
    child = pexpect.spawn(CLI[0], args, encoding="utf-8", timeout=60)
    try:
        child.expect("/exit quits")
        child.expect_exact("you> ")
        child.sendline("Who jumps?")
        child.expect_exact("bot> the quick")  # streamed answer (the system prompt was barely trained)
        child.expect_exact("you> ")
        child.sendline("/reset")
        child.expect_exact("[history cleared]")
        child.expect_exact("you> ")
        child.sendline("/exit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0


def test_message_mode_prints_one_answer(ckpt: Path) -> None:
    out = subprocess.run(
        [*CLI, "--ckpt", str(ckpt), "--message", "Who jumps?", "--temperature", "0", "--max-new-tokens", "16"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout == "the quick brown fox\n"
