"""Shared pieces of the checkable task suite: the `Task` record, train/held-out splitting and graded scorers.

The tasks stand in for the human labelers of InstructGPT (arXiv 2203.02155, §3.4): a gold scorer that can
be checked gives every answer a number in [0, 1], and rankings of K answers come from those numbers
(shared/DATA.md section 4). Splits follow DATA.md: each family holds out about 30% of its template ids
and uses disjoint value pools (names, words, number ranges) for split="heldout".

Scorers here are pure functions of (answer, target). Every family gives an empty answer 0.
"""

from __future__ import annotations

import difflib
import math
import random
import re
from dataclasses import dataclass, field
from typing import Any

SPLITS = ("train", "heldout")

NUMBER_RE = re.compile(r"[-\u2212]?\d+(?:,\d{3})*(?:\.\d+)?")
WRAP_CHARS = " \t\n\"'`.,!?;:()[]"


@dataclass(frozen=True)
class Task:
    """One checkable instruction. `facts` holds what the family's scorer needs (JSON-serialisable).

    Not hashable (facts is a dict); compare with ==.
    """

    family: str
    template_id: str
    prompt: str  # the user message
    reference: str  # one gold answer, used as the SFT demonstration
    facts: dict[str, Any] = field(default_factory=dict)
    split: str = "train"


def check_split(split: str) -> None:
    """Raise ValueError unless split is one of SPLITS."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not known; expected one of {SPLITS}")


def template_ids(templates: dict[str, str], heldout: frozenset[str], split: str) -> list[str]:
    """The sorted template ids a split may use: the held-out ids for "heldout", the rest for "train"."""
    check_split(split)
    return sorted(t for t in templates if (t in heldout) == (split == "heldout"))


def choose_template(
    rng: random.Random, templates: dict[str, str], heldout: frozenset[str], split: str
) -> str:
    """Draw a template id of the given split."""
    return rng.choice(template_ids(templates, heldout, split))


def by_split(train: Any, heldout: Any, split: str) -> Any:
    """Pick the train or held-out value pool."""
    check_split(split)
    return heldout if split == "heldout" else train


def capitalize_first(text: str) -> str:
    """Upper-case the first character only ("my cousin" -> "My cousin")."""
    return text[:1].upper() + text[1:]


def word_count(text: str) -> int:
    """Whitespace-separated words."""
    return len(text.split())


def plain_words(text: str) -> list[str]:
    """Lower-cased words with surrounding punctuation removed (empty pieces dropped)."""
    out = [w.strip(WRAP_CHARS).lower() for w in text.split()]
    return [w for w in out if w]


def length_factor(n_words: int, budget: int, per_word: float = 0.05, floor: float = 0.3) -> float:
    """1 up to `budget` words, then minus `per_word` for each extra word, never below `floor`."""
    return max(floor, 1.0 - per_word * max(0, n_words - budget))


def extract_number(answer: str) -> float | None:
    """The number the answer commits to: the first number after the first "=", else the first number."""
    text = answer.split("=", 1)[1] if "=" in answer and NUMBER_RE.search(answer.split("=", 1)[1]) else answer
    match = NUMBER_RE.search(text)
    if match is None:
        return None
    return float(match.group(0).replace(",", "").replace("\u2212", "-"))


def score_number(answer: str, target: float, budget_words: int = 6) -> float:
    """Graded numeric score: 1 for the exact number, else 0.05 + 0.75·exp(-|err|/scale) with
    scale = max(2, 0.1·|target|); times a length factor past `budget_words`. No number at all gives 0."""
    if not answer.strip():
        return 0.0
    value = extract_number(answer)
    if value is None:
        return 0.0
    err = abs(value - target)
    scale = max(2.0, 0.1 * abs(target))
    closeness = 1.0 if err == 0 else 0.05 + 0.75 * math.exp(-err / scale)
    return closeness * length_factor(word_count(answer), budget_words)


def score_string(answer: str, target: str, budget_words: int = 4) -> float:
    """Graded string-transform score (case-sensitive).

    1 when the whole answer (minus quotes and end punctuation) equals the target; 0.8 times a length factor
    when the target is one of the answer's words; else 0.7·sim² times the length factor, where sim is the
    best difflib ratio between the target and the answer or one of its words. Empty answer gives 0.
    """
    text = answer.strip()
    if not text:
        return 0.0
    whole = text.strip(WRAP_CHARS)
    if whole == target:
        return 1.0
    pieces = [w.strip(WRAP_CHARS) for w in text.split()]
    factor = length_factor(len(pieces), budget_words)
    if target in pieces:
        return 0.8 * factor
    sim = max(difflib.SequenceMatcher(None, p, target).ratio() for p in [*pieces, whole])
    return 0.7 * sim * sim * factor


def mentions(text: str, word: str) -> bool:
    """Whether `word` (or its plural with -s/-es) occurs as a whole word in text, ignoring case."""
    pattern = r"\b" + re.escape(word.lower()) + r"(?:s|es)?\b"
    return re.search(pattern, text.lower()) is not None
