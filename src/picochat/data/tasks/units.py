"""Unit conversions: "How many centimeters are in 3 meters?" -> "300 centimeters."

Prompts: six phrasings ("express" and "make_up" held out) of a conversion from a larger unit to a smaller
one by an exact integer factor. Train uses meters/kilograms/hours/kilometers/dozen/minutes/days/weeks with
counts 2..9; held-out uses feet/years/liters/centimeters with counts 11..19, so both the unit pairs and the
numbers are unseen in training. The reference is "<number> <unit>.".

Scoring: as arithmetic (`base.score_number`): the first number in the answer against the product,
1 if exact, graded by closeness otherwise, a length factor past 6 words.
"""

from __future__ import annotations

import random

from picochat.data.tasks.base import Task, by_split, capitalize_first, choose_template, score_number

FAMILY = "units"
BUDGET_WORDS = 6

TEMPLATES = {
    "how_many": "How many {small} are in {n} {big}?",
    "convert": "Convert {n} {big} to {small}.",
    "equals": "{n} {big} equals how many {small}?",
    "in_units": "What is {n} {big} in {small}?",
    "express": "Express {n} {big} in {small}.",
    "make_up": "How many {small} make up {n} {big}?",
}
HELDOUT = frozenset({"express", "make_up"})

# (larger unit, smaller unit, factor); counts start at 2, so plurals are always right.
CONVERSIONS = {
    "train": (
        ("meters", "centimeters", 100),
        ("kilograms", "grams", 1000),
        ("hours", "minutes", 60),
        ("kilometers", "meters", 1000),
        ("dozen", "eggs", 12),
        ("minutes", "seconds", 60),
        ("days", "hours", 24),
        ("weeks", "days", 7),
    ),
    "heldout": (
        ("feet", "inches", 12),
        ("years", "months", 12),
        ("liters", "milliliters", 1000),
        ("centimeters", "millimeters", 10),
    ),
}
COUNTS = {"train": (2, 9), "heldout": (11, 19)}


def generate(rng: random.Random, split: str) -> Task:
    """One unit conversion question of the given split."""
    template_id = choose_template(rng, TEMPLATES, HELDOUT, split)
    big, small, factor = rng.choice(by_split(CONVERSIONS["train"], CONVERSIONS["heldout"], split))
    n = rng.randint(*by_split(COUNTS["train"], COUNTS["heldout"], split))
    ans = n * factor
    prompt = TEMPLATES[template_id].format(n=n, big=big, small=small)
    facts = {"n": n, "from_unit": big, "to_unit": small, "factor": factor, "answer": ans}
    return Task(FAMILY, template_id, capitalize_first(prompt), f"{ans} {small}.", facts, split)


def score(task: Task, answer: str) -> float:
    """Graded score in [0, 1]; see the module docstring."""
    return score_number(answer, task.facts["answer"], BUDGET_WORDS)
