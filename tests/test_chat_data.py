"""Tests for picochat.data.chat: embedded dialogue sets, group split, chat JSONL reading and writing."""

import json
import re
from pathlib import Path

import pytest

from picochat.data.chat import (
    chatterbot_conversations,
    chitchat_conversations,
    load_chat_jsonl,
    split_by_group,
    validate_conversation,
    write_chat_jsonl,
)


def _assert_alternating(conv: list[dict[str, str]]) -> None:
    roles = [m["role"] for m in conv]
    assert len(roles) >= 2 and len(roles) % 2 == 0
    assert roles == ["user", "assistant"] * (len(roles) // 2)
    assert all(isinstance(m["content"], str) and m["content"] == m["content"].strip() for m in conv)


def test_chitchat_conversations_alternate_and_respect_max_turns() -> None:
    convs = chitchat_conversations()
    assert 3900 < len(convs) < 4100  # 3,150 one-sided chats are dropped from 7,168
    for _, conv in convs:
        _assert_alternating(conv)
        assert len(conv) <= 8
        assert all(m["content"] for m in conv)
        assert all("  " not in m["content"] for m in conv)
    prompts = {p for p, _ in convs}
    assert 34 <= len(prompts) <= 35  # 34 seed prompts, plus "" for chats without one
    short = chitchat_conversations(max_turns=3)
    assert len(short) == len(convs)
    assert all(len(conv) == 2 for _, conv in short)
    assert short[0][1] == convs[0][1][:2]
    with pytest.raises(ValueError, match="max_turns must be >= 2"):
        chitchat_conversations(max_turns=1)


def test_chitchat_calls_return_independent_copies() -> None:
    first = chitchat_conversations()
    first[0][1][0]["content"] = "changed"
    assert chitchat_conversations()[0][1][0]["content"] != "changed"


def test_chatterbot_conversations_alternate_and_drop_persona_files() -> None:
    convs = chatterbot_conversations()
    categories = {c for c, _ in convs}
    assert {"tech_support", "trivia", "coding"} <= categories
    assert not categories & {"ai", "botprofile", "emotion"}
    for _, conv in convs:
        _assert_alternating(conv)
    assert any(len(conv) > 2 for _, conv in convs)
    with_ai = chatterbot_conversations(exclude=())
    assert len(with_ai) > len(convs)
    assert "ai" in {c for c, _ in with_ai}


def test_split_by_group_keeps_groups_whole() -> None:
    items = [(f"g{i % 7}", i) for i in range(70)]
    train, heldout = split_by_group(items, heldout_fraction=0.3, seed=1)
    train_groups = {g for g, _ in train}
    held_groups = {g for g, _ in heldout}
    assert not train_groups & held_groups
    assert len(held_groups) == 2  # round(0.3 * 7)
    assert sorted(train + heldout) == sorted(items)
    assert [i for _, i in train] == sorted(i for _, i in train)  # input order kept
    assert (train, heldout) == split_by_group(items, heldout_fraction=0.3, seed=1)
    other = {g for g, _ in split_by_group(items, heldout_fraction=0.3, seed=2)[1]}
    assert other != held_groups or len(other) == 2
    assert split_by_group(items, heldout_fraction=0.0) == (items, [])
    with pytest.raises(ValueError, match="at least 2 groups"):
        split_by_group([("a", 1), ("a", 2)])
    with pytest.raises(ValueError, match="heldout_fraction must be in"):
        split_by_group(items, heldout_fraction=1.5)


def test_split_chitchat_by_prompt() -> None:
    train, heldout = split_by_group(chitchat_conversations(), heldout_fraction=0.1, seed=0)
    assert heldout and train
    assert not {p for p, _ in train} & {p for p, _ in heldout}


def test_jsonl_round_trip(tmp_path: Path) -> None:
    convs = [
        [{"role": "user", "content": "hi ☃"}, {"role": "assistant", "content": "hello\nthere"}],
        [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"},
        ],
    ]
    path = tmp_path / "sub" / "chats.jsonl"
    write_chat_jsonl(path, convs)
    assert load_chat_jsonl(path) == convs
    assert "☃" in path.read_text(encoding="utf-8")
    assert not path.with_name("chats.jsonl.tmp").exists()


def test_load_chat_jsonl_skips_blank_lines_and_extra_keys(tmp_path: Path) -> None:
    path = tmp_path / "chats.jsonl"
    good = {
        "messages": [{"role": "user", "content": "a", "name": "x"}, {"role": "assistant", "content": "b"}]
    }
    path.write_text("\n" + json.dumps(good) + "\n\n   \n", encoding="utf-8")
    assert load_chat_jsonl(path) == [
        [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    ]


GOOD = json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})
BAD_LINES = [
    ('{"messages": [', "not valid JSON"),
    ('{"msgs": []}', 'expected an object with a "messages" key'),
    ("[1, 2]", 'expected an object with a "messages" key'),
    ('{"messages": "hello"}', '"messages" must be a non-empty list'),
    ('{"messages": []}', '"messages" must be a non-empty list'),
    ('{"messages": ["hi"]}', "message 0 must be an object"),
    (
        '{"messages": [{"role": "bot", "content": "x"}]}',
        'message 0 has role "bot"; expected one of system, user',
    ),
    ('{"messages": [{"content": "x"}]}', "message 0 has role nothing \\(missing\\)"),
    (
        '{"messages": [{"role": "assistant", "content": 3}]}',
        'message 0 \\("assistant"\\) must have string "content", got 3',
    ),
    ('{"messages": [{"role": "user", "content": "x"}]}', "conversation has no assistant message"),
]


@pytest.mark.parametrize(("line", "why"), BAD_LINES)
def test_load_chat_jsonl_bad_line_names_file_and_line(tmp_path: Path, line: str, why: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(GOOD + "\n\n" + line + "\n" + GOOD + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(f"{path}:3: ") + why):
        load_chat_jsonl(path)


def test_load_chat_jsonl_file_errors(tmp_path: Path) -> None:
    missing = tmp_path / "missing.jsonl"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        load_chat_jsonl(missing)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n \n", encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(f"{empty}: no conversations")):
        load_chat_jsonl(empty)
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(GOOD.encode() + b"\n" + '{"messages": "caf\u00e9"}'.encode("latin-1") + b"\n")
    with pytest.raises(ValueError, match=re.escape(f"{latin}:2: not UTF-8")):
        load_chat_jsonl(latin)


def test_write_chat_jsonl_rejects_bad_conversation(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    with pytest.raises(ValueError, match="conversation 1: .*no assistant message"):
        write_chat_jsonl(path, [[{"role": "assistant", "content": "ok"}], [{"role": "user", "content": "x"}]])
    assert not path.exists()


def test_validate_conversation_returns_a_copy() -> None:
    messages = [{"role": "assistant", "content": "x", "extra": 1}]
    clean = validate_conversation(messages)
    assert clean == [{"role": "assistant", "content": "x"}]
    assert messages[0]["extra"] == 1
