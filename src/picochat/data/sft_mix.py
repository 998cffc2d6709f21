"""The supervised fine-tuning (SFT) mixture: real dialogue plus demonstrations of the checkable tasks.

InstructGPT (arXiv 2203.02155, §3.5) fine-tunes on labeler demonstrations. picochat has no labelers, so
the demonstrations come from three places:

- checkable tasks (`picochat.data.tasks`): the task prompt as the user, its reference as the assistant.
  They teach the answer formats the reward model and PPO score later, so they are the largest share;
- `chatterbot-corpus`: short, assistant-like question/answer pairs;
- `chitchat-dataset`: casual human chats (first speaker = user), cut to `max_turns` turns so one chat
  does not fill the context window.

Default proportions (by conversation; `SFTConfig` defaults): 6,000 task demos (round-robin over the 7
families), 1,500 chitchat chats, all ~1,670 training chatterbot pairs: about 65% tasks by count and about
half of all tokens with the tiny 8,192-token BPE (task demos average ~37 tokens, chitchat ~87, chatterbot
~45). 10% of conversations (a fixed, seeded choice) start with one of `SYSTEM_PROMPTS`, so a model used
with `picochat chat --system` has seen the system role.

Held-out side: the tasks' held-out split (held-out templates and value pools, see data/tasks/base.py),
whole chitchat seed prompts (`split_by_group`), and a random 10% of chatterbot pairs (split by pair, not by
category: one category, tech_support, holds more than half the pairs). A user JSONL (`--data FILE`)
replaces or extends the mix; 5% of its conversations (at least one, when it has two or more) are held
out for the validation loss.

Every item is a (source, messages) pair; the source ("task:<family>", "chitchat", "chatterbot", "user")
lets the SFT stage report held-out loss per kind of data.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from picochat.data.chat import (
    Conversation,
    chatterbot_conversations,
    chitchat_conversations,
    load_chat_jsonl,
    split_by_group,
)
from picochat.data.tasks import Task, demonstration, make_tasks

SYSTEM_PROMPTS = (
    "You are picochat, a small and helpful assistant.",
    "You are a friendly assistant. Answer briefly.",
    "Answer the user's question as well as you can.",
)
SYSTEM_FRACTION = 0.1
CHAT_HELDOUT_FRACTION = 0.1
USER_HELDOUT_FRACTION = 0.05
DATA_MODES = ("extend", "replace")

Labeled = tuple[str, Conversation]


@dataclass(frozen=True, slots=True)
class MixSpec:
    """How many conversations of each kind go into the training side of the mix."""

    n_task_demos: int = 6000
    n_chitchat: int = 1500
    n_chatterbot: int = 2000  # capped by what the corpus holds (~1,670 after the held-out split)
    max_turns: int = 4
    n_heldout_tasks: int = 280

    def __post_init__(self) -> None:
        for name in ("n_task_demos", "n_chitchat", "n_chatterbot", "n_heldout_tasks"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)}; expected >= 0")
        if self.max_turns < 2:
            raise ValueError(f"max_turns={self.max_turns}; expected >= 2 (one user and one assistant turn)")


def task_items(tasks: Sequence[Task]) -> list[Labeled]:
    """(\"task:<family>\", demonstration) for each task."""
    return [(f"task:{t.family}", demonstration(t)) for t in tasks]


def dialogue_split(spec: MixSpec, seed: int) -> tuple[list[Labeled], list[Labeled]]:
    """Train and held-out dialogue (chitchat by seed prompt, chatterbot by pair), capped to the spec.

    The held-out side takes at most 400 conversations of each source that is in the mix."""
    rng = random.Random(f"picochat-sft-mix:{seed}")
    train: list[Labeled] = []
    held: list[Labeled] = []
    if spec.n_chitchat:
        chit_train, chit_held = split_by_group(
            chitchat_conversations(spec.max_turns), CHAT_HELDOUT_FRACTION, seed
        )
        train += [("chitchat", c) for _, c in rng.sample(chit_train, min(spec.n_chitchat, len(chit_train)))]
        held += [("chitchat", c) for _, c in chit_held[:400]]
    if spec.n_chatterbot:
        bot = [(i, conv) for i, (_, conv) in enumerate(chatterbot_conversations())]
        bot_train, bot_held = split_by_group(bot, CHAT_HELDOUT_FRACTION, seed)
        train += [("chatterbot", c) for _, c in rng.sample(bot_train, min(spec.n_chatterbot, len(bot_train)))]
        held += [("chatterbot", c) for _, c in bot_held[:400]]
    return train, held


def user_split(path: str, seed: int) -> tuple[list[Labeled], list[Labeled]]:
    """A user's JSONL conversations, 5% (at least one of two or more) held out."""
    convs = load_chat_jsonl(path)
    n_held = max(1, round(USER_HELDOUT_FRACTION * len(convs))) if len(convs) >= 2 else 0
    held_idx = set(random.Random(f"picochat-sft-user:{seed}").sample(range(len(convs)), n_held))
    train = [("user", c) for i, c in enumerate(convs) if i not in held_idx]
    held = [("user", c) for i, c in enumerate(convs) if i in held_idx]
    return train, held


def add_system_prompts(items: list[Labeled], seed: int) -> list[Labeled]:
    """A fixed SYSTEM_FRACTION of conversations (those without a system message) get a system prompt."""
    rng = random.Random(f"picochat-sft-system:{seed}")
    out = []
    for source, conv in items:
        if conv and conv[0]["role"] != "system" and rng.random() < SYSTEM_FRACTION:
            conv = [{"role": "system", "content": rng.choice(SYSTEM_PROMPTS)}, *conv]
        out.append((source, conv))
    return out


def build_sft_mix(
    seed: int,
    n_task_demos: int = 6000,
    n_chitchat: int = 1500,
    n_chatterbot: int = 2000,
    max_turns: int = 4,
    n_heldout_tasks: int = 280,
    data: str = "",
    data_mode: str = "extend",
) -> tuple[list[Labeled], list[Labeled]]:
    """(train, held-out) lists of (source, messages), each shuffled with `seed`.

    `data` is an optional JSONL path of `{"messages": [...]}` lines; `data_mode` "extend" adds it to the
    embedded mix, "replace" trains on it alone (held-out task demos still measure the task formats).
    """
    spec = MixSpec(
        n_task_demos=n_task_demos, n_chitchat=n_chitchat, n_chatterbot=n_chatterbot, max_turns=max_turns,
        n_heldout_tasks=n_heldout_tasks,
    )  # fmt: skip
    if data_mode not in DATA_MODES:
        raise ValueError(f"data_mode={data_mode!r}; expected one of {list(DATA_MODES)}")
    if data_mode == "replace" and not data:
        raise ValueError(
            'data_mode="replace" needs a JSONL file: pass --data FILE.jsonl or use data_mode=extend'
        )
    train: list[Labeled] = []
    held: list[Labeled] = task_items(make_tasks(spec.n_heldout_tasks, "heldout", seed))
    if data_mode == "extend":
        train += task_items(make_tasks(spec.n_task_demos, "train", seed))
        chat_train, chat_held = dialogue_split(spec, seed)
        train += chat_train
        held += chat_held
    if data:
        user_train, user_held = user_split(data, seed)
        train += user_train
        held += user_held
    if not train:
        raise ValueError(
            "the SFT mix is empty: set n_task_demos, n_chitchat or n_chatterbot > 0, or pass --data"
        )
    rng = random.Random(f"picochat-sft-order:{seed}")
    train, held = add_system_prompts(train, seed), add_system_prompts(held, seed + 1)
    rng.shuffle(train)
    rng.shuffle(held)
    return train, held


def mix_counts(items: Sequence[Labeled]) -> dict[str, int]:
    """Conversations per source, task families summed under "task" and also listed one by one."""
    counts: dict[str, int] = {}
    for source, _ in items:
        counts[source] = counts.get(source, 0) + 1
        if source.startswith("task:"):
            counts["task"] = counts.get("task", 0) + 1
    return dict(sorted(counts.items()))
