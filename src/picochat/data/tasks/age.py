"""Age word problems, after the seed question "When I was 8 my brother was half my age. How old is he when
I am 50?" (answer 46: the age gap stays 4 years).

Prompts: nine constructions (half / twice / a third of my age at some point, N years older / younger,
born when I was N, N years ago, in N years, the gap between two ages). Relatives and names come from
split-specific pools (train: brother, sister, cousin and one set of first names; held-out: neighbor,
classmate, teammate and other names); train ages are 4..16 then 20..59 with gaps 2..15, held-out ages
18..30 then 60..90 with gaps 16..25. "third", "born" and "later" are held-out constructions.
The reference starts with the person, then the number: "He is 46."

Scoring: as arithmetic (`base.score_number`): the first number in the answer (or the first after "=")
against the gold age, 1 if exact, graded by closeness otherwise, a length factor past 8 words.
"""

from __future__ import annotations

import random

from picochat.data.tasks.base import Task, by_split, capitalize_first, choose_template, score_number

FAMILY = "age"
BUDGET_WORDS = 8

# template id -> (prompt, reference); {who} is "he", "she" or "my cousin"; {Who} its capitalised form.
TEMPLATES = {
    "half": (
        "When I was {x} my {rel} was half my age. How old is {who} when I am {y}?",
        "{Who} is {ans}.",
    ),
    "twice": (
        "When I was {x} my {rel} was twice my age. How old is {who} when I am {y}?",
        "{Who} is {ans}.",
    ),
    "older": ("My {rel} is {d} years older than me. How old is {who} when I am {y}?", "{Who} is {ans}."),
    "younger": ("My {rel} is {d} years younger than me. How old is {who} when I am {y}?", "{Who} is {ans}."),
    "ago": ("{name} is {y} now. How old was {who} {d} years ago?", "{Who} was {ans}."),
    "gap": ("I am {y} and my {rel} is {z}. How many years older am I?", "{ans} years."),
    "third": (
        "When I was {x} my {rel} was a third of my age. How old is {who} when I am {y}?",
        "{Who} is {ans}.",
    ),
    "born": ("My {rel} was born when I was {d}. How old is {who} when I am {y}?", "{Who} is {ans}."),
    "later": ("{name} is {y} today. How old will {who} be in {d} years?", "{Who} will be {ans}."),
}
HELDOUT = frozenset({"third", "born", "later"})

# relative -> how the question refers to them
RELATIVES = {
    "train": {"brother": "he", "sister": "she", "cousin": "my cousin"},
    "heldout": {"neighbor": "my neighbor", "classmate": "my classmate", "teammate": "my teammate"},
}
NAMES = {
    "train": {"Tom": "he", "Sam": "he", "Ben": "he", "Anna": "she", "Lucy": "she", "Mia": "she"},
    "heldout": {"Omar": "he", "Igor": "he", "Nadia": "she", "Greta": "she"},
}
FIRST_AGE = {"train": (4, 16), "heldout": (18, 30)}
LATER_AGE = {"train": (20, 59), "heldout": (60, 90)}
GAP = {"train": (2, 15), "heldout": (16, 25)}


def _draw(rng: random.Random, split: str, multiple: int = 1) -> dict[str, int]:
    """Draw x (earlier age, a multiple of `multiple`), y (later age), d (gap) and z (a younger age)."""
    x_lo, x_hi = by_split(FIRST_AGE["train"], FIRST_AGE["heldout"], split)
    x = rng.choice([v for v in range(x_lo, x_hi + 1) if v % multiple == 0])
    y = rng.randint(*by_split(LATER_AGE["train"], LATER_AGE["heldout"], split))
    d = rng.randint(*by_split(GAP["train"], GAP["heldout"], split))
    return {"x": x, "y": y, "d": d, "z": y - d}


def _answer(template_id: str, v: dict[str, int]) -> int:
    """The gold age (or gap) for a construction."""
    x, y, d = v["x"], v["y"], v["d"]
    answers = {
        "half": y - x // 2,
        "twice": y + x,
        "older": y + d,
        "younger": y - d,
        "ago": y - d,
        "gap": d,
        "third": y - 2 * x // 3,
        "born": y - d,
        "later": y + d,
    }
    return answers[template_id]


def generate(rng: random.Random, split: str) -> Task:
    """One age word problem of the given split."""
    template_id = choose_template(rng, {k: v[0] for k, v in TEMPLATES.items()}, HELDOUT, split)
    prompt, reference = TEMPLATES[template_id]
    multiple = {"half": 2, "third": 3}.get(template_id, 1)
    values = _draw(rng, split, multiple)
    rel = rng.choice(sorted(by_split(RELATIVES["train"], RELATIVES["heldout"], split)))
    name = rng.choice(sorted(by_split(NAMES["train"], NAMES["heldout"], split)))
    if template_id in ("ago", "later"):
        who = by_split(NAMES["train"], NAMES["heldout"], split)[name]
    else:
        who = by_split(RELATIVES["train"], RELATIVES["heldout"], split)[rel]
    ans = _answer(template_id, values)
    fill = {**values, "rel": rel, "name": name, "who": who, "Who": capitalize_first(who), "ans": ans}
    facts = {**values, "relative": rel, "name": name, "answer": ans}
    return Task(FAMILY, template_id, prompt.format(**fill), reference.format(**fill), facts, split)


def score(task: Task, answer: str) -> float:
    """Graded score in [0, 1]; see the module docstring."""
    return score_number(answer, task.facts["answer"], BUDGET_WORDS)
