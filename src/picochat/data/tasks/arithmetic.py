"""Arithmetic questions on small integers: "What is 17 + 25?" -> "42".

Prompts: one of ten phrasings of addition, subtraction (never negative) or multiplication by a small
number. Train operands for + and - are 2..49 and for × 2..12 times 2..9; held-out operands are 50..99 and
13..19 times 2..9, with three phrasings ("sum_of", "sub_from", "mul_sign") used only for split="heldout".
The reference is the bare number.

Scoring (`base.score_number`): the number the answer commits to (first number, or first after "=") is
compared with the result: 1 if exact, else 0.05 + 0.75·exp(-|err|/scale), scale = max(2, 0.1·|result|);
multiplied by a length factor that drops 0.05 per word beyond 6 (floor 0.3), so rambling costs. An answer
with no number scores 0.
"""

from __future__ import annotations

import random

from picochat.data.tasks.base import Task, by_split, choose_template, score_number

FAMILY = "arithmetic"
BUDGET_WORDS = 6

TEMPLATES = {
    "add_what": ("+", "What is {a} + {b}?"),
    "add_plus": ("+", "Calculate {a} plus {b}."),
    "add_and": ("+", "Add {a} and {b}."),
    "sum_of": ("+", "What is the sum of {a} and {b}?"),
    "sub_what": ("-", "What is {a} - {b}?"),
    "sub_minus": ("-", "What is {a} minus {b}?"),
    "sub_from": ("-", "Subtract {b} from {a}."),
    "mul_times": ("*", "What is {a} times {b}?"),
    "mul_by": ("*", "Multiply {a} by {b}."),
    "mul_sign": ("*", "Compute {a} \u00d7 {b}."),
}
HELDOUT = frozenset({"sum_of", "sub_from", "mul_sign"})

ADD_RANGE = {"train": (2, 49), "heldout": (50, 99)}
MUL_RANGE = {"train": (2, 12), "heldout": (13, 19)}
MUL_SMALL = (2, 9)


def _operands(rng: random.Random, op: str, split: str) -> tuple[int, int]:
    """Draw (a, b) for the operator from the split's range; a >= b for subtraction."""
    if op == "*":
        lo, hi = by_split(MUL_RANGE["train"], MUL_RANGE["heldout"], split)
        return rng.randint(lo, hi), rng.randint(*MUL_SMALL)
    lo, hi = by_split(ADD_RANGE["train"], ADD_RANGE["heldout"], split)
    a, b = rng.randint(lo, hi), rng.randint(lo, hi)
    return (max(a, b), min(a, b)) if op == "-" else (a, b)


def _apply(op: str, a: int, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def generate(rng: random.Random, split: str) -> Task:
    """One arithmetic question of the given split."""
    template_id = choose_template(rng, {k: v[1] for k, v in TEMPLATES.items()}, HELDOUT, split)
    op, text = TEMPLATES[template_id]
    a, b = _operands(rng, op, split)
    result = _apply(op, a, b)
    facts = {"op": op, "a": a, "b": b, "answer": result}
    return Task(FAMILY, template_id, text.format(a=a, b=b), str(result), facts, split)


def score(task: Task, answer: str) -> float:
    """Graded score in [0, 1]; see the module docstring."""
    return score_number(answer, task.facts["answer"], BUDGET_WORDS)
