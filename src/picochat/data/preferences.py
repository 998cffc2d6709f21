"""Preference data: K answers to one prompt, ranked best first (InstructGPT, arXiv 2203.02155, §3.5).

One JSONL line is one ranked prompt:

    {"prompt": "What is 2 + 3?" | [{"role": "user", "content": "..."}, ...],
     "completions": ["5", "6", "five", ...],          # K >= 2 strings
     "ranking": [0, 2, 1, ...],                       # indices into completions, best first
     "source": "gold" | "human",
     "ties": [[2, 1]],                                # optional: groups judged equally good
     "task": {...},                                   # optional: the task dict (gold scores can be recomputed)
     "scores": [1.0, 0.3, 0.8, ...]}                  # optional: the labeler's score per completion

A tie group must sit at consecutive positions of the ranking; tied answers give no training pair
(DATA.md §4: "drop ties"). `import_pairwise` reads the common {"prompt", "chosen", "rejected"} form as
K = 2 records. Every reader checks every line and raises ValueError("FILE:LINE: what is wrong").
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SOURCES = ("gold", "human")
ROLES = ("system", "user", "assistant")
REQUIRED_KEYS = ("prompt", "completions", "ranking", "source")
OPTIONAL_KEYS = ("ties", "task", "scores")

Prompt = str | list[dict[str, str]]


@dataclass(frozen=True)
class PreferenceRecord:
    """One prompt with K ranked completions. `ranking` lists completion indices, best first."""

    prompt: Prompt
    completions: list[str]
    ranking: list[int]
    source: str = "gold"
    ties: list[list[int]] = field(default_factory=list)
    task: dict[str, Any] | None = None
    scores: list[float] | None = None

    @property
    def k(self) -> int:
        return len(self.completions)

    def levels(self) -> list[int]:
        """Per completion, its rank level (0 = best); tied completions share a level."""
        group_of = {i: g for g, members in enumerate(self.ties) for i in members}
        levels = [0] * self.k
        level, prev_group = -1, None
        for i in self.ranking:
            group = group_of.get(i)
            if group is None or group != prev_group:
                level += 1
            levels[i] = level
            prev_group = group
        return levels

    def pairs(self) -> list[tuple[int, int]]:
        """All untied (winner, loser) index pairs: C(K, 2) minus the tied ones."""
        levels = self.levels()
        return [
            (i, j) if levels[i] < levels[j] else (j, i)
            for i, j in itertools.combinations(range(self.k), 2)
            if levels[i] != levels[j]
        ]

    @property
    def family(self) -> str:
        """The task family for per-family metrics ("human" or "unknown" when there is no task)."""
        if self.task and isinstance(self.task.get("family"), str):
            return self.task["family"]
        return "human" if self.source == "human" else "unknown"


def prompt_messages(prompt: Prompt) -> list[dict[str, str]]:
    """The chat messages of a prompt: a plain string is one user message."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def _check_prompt(prompt: Any) -> None:
    if isinstance(prompt, str):
        return
    if not isinstance(prompt, list) or not prompt:
        raise ValueError(
            f"'prompt' is a {type(prompt).__name__}; expected a string or a non-empty list of messages"
        )
    for i, m in enumerate(prompt):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise ValueError(
                f"'prompt' message {i} is {m!r}; expected {{'role': one of {list(ROLES)}, 'content': str}}"
            )


def _check_ties(ties: Any, ranking: list[int], k: int) -> list[list[int]]:
    if not isinstance(ties, list) or not all(isinstance(g, list) for g in ties):
        raise ValueError(f"'ties' is {ties!r}; expected a list of index groups like [[1, 3]]")
    position = {i: p for p, i in enumerate(ranking)}
    seen: set[int] = set()
    for g in ties:
        if len(g) < 2 or not all(type(i) is int and 0 <= i < k for i in g) or len(set(g)) != len(g):
            raise ValueError(f"tie group {g!r} must hold >= 2 distinct completion indices in 0..{k - 1}")
        if seen & set(g):
            raise ValueError(f"tie group {g!r} shares an index with another group; merge them")
        seen |= set(g)
        spots = sorted(position[i] for i in g)
        if spots != list(range(spots[0], spots[0] + len(g))):
            raise ValueError(f"tie group {g!r} is not at consecutive positions of the ranking {ranking}")
    return [list(g) for g in ties]


def record_from_dict(obj: Any) -> PreferenceRecord:
    """Validate one parsed JSON object; ValueError says what is wrong and what was expected."""
    if not isinstance(obj, dict):
        raise ValueError(
            f"line is a JSON {type(obj).__name__}; expected an object with keys {list(REQUIRED_KEYS)}"
        )
    missing = [k for k in REQUIRED_KEYS if k not in obj]
    unknown = sorted(set(obj) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS))
    if missing or unknown:
        raise ValueError(
            f"missing keys {missing}, unknown keys {unknown}; expected {list(REQUIRED_KEYS)} "
            f"and optionally {list(OPTIONAL_KEYS)}"
        )
    _check_prompt(obj["prompt"])
    completions = obj["completions"]
    if not isinstance(completions, list) or not all(isinstance(c, str) for c in completions):
        raise ValueError(f"'completions' is {completions!r:.80}; expected a list of strings")
    k = len(completions)
    if k < 2:
        raise ValueError(f"'completions' has {k} item(s); a ranking needs K >= 2")
    ranking = obj["ranking"]
    if (
        not isinstance(ranking, list)
        or sorted(ranking) != list(range(k))
        or any(type(i) is not int for i in ranking)
    ):
        raise ValueError(
            f"'ranking' {ranking!r} is not a permutation of 0..{k - 1} (completion indices, best first)"
        )
    if obj["source"] not in SOURCES:
        raise ValueError(f"'source' is {obj['source']!r}; expected one of {list(SOURCES)}")
    ties = _check_ties(obj.get("ties", []), ranking, k)
    task = obj.get("task")
    if task is not None and not isinstance(task, dict):
        raise ValueError(f"'task' is a {type(task).__name__}; expected an object (task_to_dict) or null")
    scores = obj.get("scores")
    if scores is not None and (
        not isinstance(scores, list)
        or len(scores) != k
        or not all(isinstance(s, int | float) for s in scores)
    ):
        raise ValueError(f"'scores' is {scores!r:.80}; expected {k} numbers (one per completion) or null")
    return PreferenceRecord(
        obj["prompt"], list(completions), list(ranking), obj["source"], ties, task, scores
    )


def record_to_dict(record: PreferenceRecord) -> dict[str, Any]:
    """The JSON object of a record (optional keys only when set)."""
    out: dict[str, Any] = {
        "prompt": record.prompt, "completions": record.completions, "ranking": record.ranking,
        "source": record.source,
    }  # fmt: skip
    if record.ties:
        out["ties"] = record.ties
    if record.task is not None:
        out["task"] = record.task
    if record.scores is not None:
        out["scores"] = record.scores
    return out


def _read_json_lines(path: Path) -> Iterable[tuple[int, Any]]:
    if not path.is_file():
        raise FileNotFoundError(f"preference file {path} does not exist; write one with `picochat collect`")
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(
                    f"{path}:{line_no}: not UTF-8 (undecodable byte at column {e.start + 1})"
                ) from None
            if not line.strip():
                continue
            try:
                yield line_no, json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{line_no}: not valid JSON ({e.msg} at column {e.colno})") from None


def read_preferences(path: str | Path) -> list[PreferenceRecord]:
    """All records of a preference JSONL file; errors name the file and line."""
    path = Path(path)
    records = []
    for line_no, obj in _read_json_lines(path):
        try:
            records.append(record_from_dict(obj))
        except ValueError as e:
            raise ValueError(f"{path}:{line_no}: {e}") from None
    return records


def import_pairwise(path: str | Path, source: str = "human") -> list[PreferenceRecord]:
    """Read {"prompt", "chosen", "rejected"} lines as K = 2 records (chosen is completion 0)."""
    path = Path(path)
    if source not in SOURCES:
        raise ValueError(f"source={source!r}; expected one of {list(SOURCES)}")
    records = []
    for line_no, obj in _read_json_lines(path):
        keys = ("prompt", "chosen", "rejected")
        if not isinstance(obj, dict) or any(k not in obj for k in keys):
            got = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
            raise ValueError(f"{path}:{line_no}: expected an object with keys {list(keys)}, got {got}")
        if not isinstance(obj["chosen"], str) or not isinstance(obj["rejected"], str):
            raise ValueError(f"{path}:{line_no}: 'chosen' and 'rejected' must be strings")
        try:
            _check_prompt(obj["prompt"])
        except ValueError as e:
            raise ValueError(f"{path}:{line_no}: {e}") from None
        records.append(PreferenceRecord(obj["prompt"], [obj["chosen"], obj["rejected"]], [0, 1], source))
    return records


def read_any(path: str | Path) -> list[PreferenceRecord]:
    """A ranking file, or a pairwise file when its first record has "chosen"/"rejected" keys."""
    path = Path(path)
    for _, obj in _read_json_lines(path):
        if isinstance(obj, dict) and "chosen" in obj and "rejected" in obj:
            return import_pairwise(path)
        break
    return read_preferences(path)


def write_preferences(path: str | Path, records: Sequence[PreferenceRecord]) -> Path:
    """Write records as JSONL atomically (atomic_write_text: a temporary file, fsync, then rename)."""
    from picochat.checkpoint import atomic_write_text  # lazy: this data module stays torch-free

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(record_to_dict(r), ensure_ascii=False) + "\n" for r in records)
    return atomic_write_text(path, text)
