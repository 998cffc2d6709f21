"""Conversations for supervised fine-tuning (SFT): the embedded dialogue sets and user JSONL files.

A conversation is a list of messages `{"role": "system"|"user"|"assistant", "content": str}`, the layout
`Tokenizer.render_conversation` turns into ids and a loss mask (InstructGPT, arXiv 2203.02155, §3.5:
SFT on demonstrations; the loss covers assistant tokens only).

Sources (shared/DATA.md section 2, read as package files, never imported):
- `chitchat-dataset` 0.9.0: 7,168 chats between two students. The first speaker becomes the user, the
  other the assistant; each turn (consecutive messages of one sender) becomes one message, its
  messages joined with a newline. Chats are cut to their first `max_turns` turns and trimmed to start
  with the user and end with the assistant. The group key is the seed prompt (34 of them, plus "" for
  chats without one), so held-out chats can be new prompts.
- `chatterbot-corpus` 1.3.3, English: question/answer lists, alternating user/assistant, trimmed to end
  with the assistant. The group key is the file's category (its stem). Deviation: `ai.yml`,
  `botprofile.yml` and `emotion.yml` are dropped by default because their answers speak as "a chatbot"
  or "software" (a persona that is not picochat's); so are non-list entries (one in `trivia.yml`).
  Note: in `computers.yml` and `emotion.yml` a long list is a question followed by alternative answers,
  which the alternation turns into user messages.

User data is JSONL, one `{"messages": [...]}` object per line; every error names FILE:LINE.
"""

from __future__ import annotations

import functools
import json
import random
from collections.abc import Hashable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from picochat.data.corpus import package_dir

ROLES = ("system", "user", "assistant")
DROPPED_CHATTERBOT_CATEGORIES = ("ai", "botprofile", "emotion")

Conversation = list[dict[str, str]]
K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


# --- chitchat-dataset -------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _chitchat_turns() -> tuple[tuple[str, tuple[str, ...]], ...]:
    """(prompt, alternating turn texts) per chat, in file order. Reads the 40 MB file once (~1 s)."""
    path = package_dir("chitchat_dataset") / "dataset.json"
    with path.open(encoding="utf-8") as f:
        chats = json.load(f)
    out = []
    for chat in chats.values():
        messages = [(m["sender"], _collapse(m["text"])) for turn in chat["messages"] for m in turn]
        out.append((chat.get("prompt") or "", tuple(_group_turns(messages))))
    return tuple(out)


def _collapse(text: str) -> str:
    """Strip and collapse every run of whitespace to one space."""
    return " ".join(text.split())


def _group_turns(messages: Sequence[tuple[str, str]]) -> list[str]:
    """Join consecutive non-empty messages of one sender into one turn ('\\n' between messages)."""
    turns: list[list[str]] = []
    last_sender = None
    for sender, text in messages:
        if not text:
            continue
        if sender == last_sender:
            turns[-1].append(text)
        else:
            turns.append([text])
            last_sender = sender
    return ["\n".join(t) for t in turns]


def chitchat_conversations(max_turns: int = 8) -> list[tuple[str, Conversation]]:
    """(seed prompt, conversation) for every chitchat chat with at least one user/assistant exchange.

    Each conversation is the chat's first `max_turns` turns, user first, trimmed to end with the
    assistant. Returns fresh lists on every call; only the parsed file is cached.
    """
    if max_turns < 2:
        raise ValueError(f"max_turns must be >= 2 (one user and one assistant turn), got {max_turns}")
    out = []
    for prompt, turns in _chitchat_turns():
        kept = turns[:max_turns]
        kept = kept[: len(kept) // 2 * 2]  # end on the assistant's turn
        if kept:
            out.append((prompt, _alternate(kept)))
    return out


def _alternate(texts: Sequence[str]) -> Conversation:
    """Messages with roles user, assistant, user, ... over `texts`."""
    return [{"role": ROLES[1 + i % 2], "content": t} for i, t in enumerate(texts)]


# --- chatterbot-corpus ------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _chatterbot_lists() -> tuple[tuple[str, tuple[str, ...]], ...]:
    """(file stem, stripped strings) per list entry of every English file, sorted by file; cached."""
    english = package_dir("chatterbot_corpus") / "data" / "english"
    files = sorted(english.glob("*.yml"))
    if not files:
        raise FileNotFoundError(f"no *.yml files under {english}; reinstall chatterbot-corpus==1.3.3")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's safe loader is ~5x faster
    out = []
    for file in files:
        data = yaml.load(file.read_text(encoding="utf-8"), Loader=loader) or {}
        for entry in data.get("conversations", []):
            if isinstance(entry, list) and all(isinstance(x, str) for x in entry):
                out.append((file.stem, tuple(x.strip() for x in entry)))
    return tuple(out)


def chatterbot_conversations(
    exclude: Iterable[str] = DROPPED_CHATTERBOT_CATEGORIES,
) -> list[tuple[str, Conversation]]:
    """(category, conversation) for the English chatterbot files, sorted by file, minus `exclude`.

    Lists alternate user/assistant from the first item and are trimmed to end with the assistant;
    entries that are not lists of at least two strings are skipped.
    """
    dropped = set(exclude)
    out = []
    for category, texts in _chatterbot_lists():
        kept = texts[: len(texts) // 2 * 2]  # end on the assistant's answer
        if category not in dropped and kept:
            out.append((category, _alternate(kept)))
    return out


# --- splitting ------------------------------------------------------------------------------------


def split_by_group(
    items: Sequence[tuple[K, V]], heldout_fraction: float = 0.1, seed: int = 0
) -> tuple[list[tuple[K, V]], list[tuple[K, V]]]:
    """Split (group key, item) pairs so that every group lands wholly on one side.

    round(heldout_fraction * n_groups) groups (at least one when the fraction is > 0) are drawn with
    `random.Random(seed)` from the sorted group keys; the held-out side gets all their items. Items keep
    their input order on both sides.
    """
    if not 0.0 <= heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in [0, 1), got {heldout_fraction}")
    groups = sorted(set(key for key, _ in items), key=repr)
    if heldout_fraction > 0 and len(groups) < 2:
        raise ValueError(
            f"need at least 2 groups to hold one out, got {len(groups)}; set heldout_fraction=0 or add data"
        )
    n_held = max(1, round(heldout_fraction * len(groups))) if heldout_fraction > 0 else 0
    held = set(random.Random(seed).sample(groups, n_held))
    train = [item for item in items if item[0] not in held]
    heldout = [item for item in items if item[0] in held]
    return train, heldout


# --- user JSONL -----------------------------------------------------------------------------------


def validate_conversation(messages: Any) -> Conversation:
    """Check one conversation and return a clean copy (only role and content kept).

    Raises ValueError naming what is wrong: not a non-empty list, a message that is not an object, a
    role outside ROLES, content that is not a string, or no assistant message.
    """
    if not isinstance(messages, list) or not messages:
        raise ValueError(f'"messages" must be a non-empty list of messages, got {_short(messages)}')
    clean: Conversation = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise ValueError(
                f'message {i} must be an object {{"role": ..., "content": ...}}, got {_short(msg)}'
            )
        role, content = msg.get("role"), msg.get("content")
        if role not in ROLES:
            raise ValueError(f"message {i} has role {_short(role)}; expected one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise ValueError(f'message {i} ("{role}") must have string "content", got {_short(content)}')
        clean.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in clean):
        raise ValueError("conversation has no assistant message, so nothing to train on; add one")
    return clean


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False) if value is not None else "nothing (missing)"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load_chat_jsonl(path: str | Path) -> list[Conversation]:
    """Conversations from a JSONL file, one `{"messages": [...]}` object per line (blank lines skipped).

    Any bad line raises ValueError("FILE:LINE: what is wrong"); a missing file raises FileNotFoundError.
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(
            f'chat file {file} does not exist; expected JSONL with one {{"messages": [...]}} per line'
        )
    conversations = []
    with file.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if raw.strip():
                conversations.append(_parse_line(raw, f"{file}:{lineno}"))
    if not conversations:
        raise ValueError(f"{file}: no conversations (the file is empty or only blank lines)")
    return conversations


def _parse_line(raw: bytes, where: str) -> Conversation:
    try:
        line = raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        raise ValueError(f"{where}: not UTF-8 (undecodable byte at byte {e.start} of the line)") from None
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict) or "messages" not in obj:
        raise ValueError(f'{where}: expected an object with a "messages" key, got {_short(obj)}')
    try:
        return validate_conversation(obj["messages"])
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


def write_chat_jsonl(path: str | Path, conversations: Iterable[Sequence[dict[str, str]]]) -> None:
    """Write conversations as JSONL that `load_chat_jsonl` reads back (each is validated first)."""
    lines = []
    for i, conv in enumerate(conversations):
        try:
            clean = validate_conversation(list(conv))
        except ValueError as e:
            raise ValueError(f"conversation {i}: {e}") from None
        lines.append(json.dumps({"messages": clean}, ensure_ascii=False))
    file = Path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(file.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    tmp.replace(file)
