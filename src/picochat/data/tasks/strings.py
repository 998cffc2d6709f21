"""String transforms on one short word: reverse it, sort its letters, upper-case it, spell it with dashes,
or count one letter in it.

Prompts: nine phrasings over five operations. Train words and held-out words are disjoint lists of 4-7
letter words; the phrasings "reverse_back", "upper_caps" and the whole "spell" operation (a construction
never seen in training) are held out. References are the transformed word ("tenalp", "aelnpt", "PLANET",
"p-l-a-n-e-t") or the count ("2").

Scoring: transforms use `base.score_string` (case-sensitive): 1 when the answer is exactly the target
(quotes and end punctuation ignored), 0.8 when the target is one of several words, else 0.7·sim² with sim
the best difflib character-similarity ratio; both partial cases shrink with a length factor past 4
words. Counting uses the numeric scorer of the arithmetic family.
"""

from __future__ import annotations

import random

from picochat.data.tasks.base import Task, by_split, choose_template, score_number, score_string

FAMILY = "strings"
BUDGET_WORDS = 4

# template id -> (operation, prompt)
TEMPLATES = {
    "reverse_word": ("reverse", 'Reverse the word "{w}".'),
    "reverse_back": ("reverse", 'Write "{w}" backwards.'),
    "sort_letters": ("sort", 'Sort the letters of "{w}" alphabetically.'),
    "sort_order": ("sort", 'Put the letters of "{w}" in alphabetical order.'),
    "upper_word": ("upper", 'Write "{w}" in uppercase.'),
    "upper_caps": ("upper", 'Write the word "{w}" in capital letters.'),
    "count_times": ("count", 'How many times does the letter "{c}" appear in "{w}"?'),
    "count_many": ("count", 'Count the letter "{c}" in "{w}".'),
    "spell": ("spell", 'Spell "{w}" with dashes between the letters.'),
}
HELDOUT = frozenset({"reverse_back", "upper_caps", "spell"})

WORDS = {
    "train": (
        "apple", "banana", "candle", "dinner", "garden", "happy", "island", "jacket", "kitten", "lemon",
        "market", "number", "orange", "pencil", "rabbit", "silver", "tunnel", "window", "yellow", "bottle",
        "castle", "doctor", "forest", "guitar", "hammer", "letter", "mirror", "pepper", "rocket", "summer",
    ),
    "heldout": (
        "planet", "monkey", "basket", "winter", "button", "cookie", "dragon", "flower", "spider", "violin",
        "turtle", "wallet",
    ),
}  # fmt: skip


def _transform(op: str, word: str, letter: str) -> str:
    """The gold answer of an operation."""
    if op == "reverse":
        return word[::-1]
    if op == "sort":
        return "".join(sorted(word))
    if op == "upper":
        return word.upper()
    if op == "spell":
        return "-".join(word)
    return str(word.count(letter))


def generate(rng: random.Random, split: str) -> Task:
    """One string-transform instruction of the given split."""
    template_id = choose_template(rng, {k: v[1] for k, v in TEMPLATES.items()}, HELDOUT, split)
    op, text = TEMPLATES[template_id]
    word = rng.choice(by_split(WORDS["train"], WORDS["heldout"], split))
    letter = rng.choice(word)
    target = _transform(op, word, letter)
    facts = {"op": op, "word": word, "letter": letter, "answer": target}
    return Task(FAMILY, template_id, text.format(w=word, c=letter), target, facts, split)


def score(task: Task, answer: str) -> float:
    """Graded score in [0, 1]; see the module docstring."""
    if task.facts["op"] == "count":
        return score_number(answer, int(task.facts["answer"]), BUDGET_WORDS + 2)
    return score_string(answer, task.facts["answer"], BUDGET_WORDS)
