"""One-sentence summaries with a gold scorer (shared/DATA.md section 4, "Summarization with a gold scorer").

A record {actor, action, object, place, time, reason} is told in 3-6 shuffled template sentences: two or
three about the record (the first to appear names the actor, later ones use "He"/"She") and one to three
distractor sentences holding 2-4 details about someone of the other gender, another object, another
place or an animal. Prompt: "Summarize in one sentence: <passage>" (six instruction phrasings in all,
over three sentence styles; "brief" and "what_happened" are held out). Names, actions, objects and places
come from disjoint train and held-out pools. The reference holds the four key slots and the time:
"Maria repaired the bicycle in the garage on Sunday."

Scoring (DATA.md's formula, normalised by the 4 key slots):
    score = clip((hits - wrong) / 4 - λ·max(0, words - 20), 0, 1),   λ = 0.04
hits: how many of actor, action, object, place the answer names (whole words, plural -s allowed);
wrong: how many distinct names, actions, objects, places or animals from the pools (either split) it
names that are not the record's own (distractor details and invented values alike).
"""

from __future__ import annotations

import functools
import random
from typing import Any

from picochat.data.tasks.base import Task, by_split, capitalize_first, choose_template, plain_words

FAMILY = "summarize"
KEY_SLOTS = ("actor", "action", "object", "place")
MAX_WORDS = 20
LENGTH_PENALTY = 0.04  # λ, per word past MAX_WORDS

INSTRUCTIONS = {
    "plain": "Summarize in one sentence: {p}",
    "short": "Summarize this in one short sentence: {p}",
    "one_line": "Write a one-sentence summary: {p}",
    "tldr": "Sum up in one sentence what happened: {p}",
    "brief": "Give a brief one-sentence summary of this: {p}",
    "what_happened": "In one sentence, who did what and where? {p}",
}
# template id (one per instruction) -> sentence style of its passage
TEMPLATES = {
    "plain": "went",
    "short": "there",
    "one_line": "arrived",
    "tldr": "went",
    "brief": "arrived",
    "what_happened": "there",
}
HELDOUT = frozenset({"brief", "what_happened"})

# style -> core sentences; {S} is the subject (name or pronoun)
STYLES = {
    "went": ("{S} went to the {place} {time}.", "{S} {action} the {object}.", "{S} did it {reason}."),
    "there": ("{S} spent some time at the {place} {time}.", "{S} {action} the {object} there.", "{S} wanted to help {reason}."),
    "arrived": ("{S} arrived at the {place} {time}.", "While there, {s} {action} the {object}.", "The reason was simple: {s} did it {reason}."),
}  # fmt: skip
DISTRACTORS = (
    "{other} was reading a book in the {place2}.",
    "A {animal} slept next to the {object2}.",
    "{other} had {action2} the {object2} the week before.",
    "The {place2} nearby was closed {time2}.",
)

NAMES = {
    "train": {
        "she": ("Maria", "Anna", "Lucy", "Emma", "Sofia", "Clara"),
        "he": ("Tom", "David", "Peter", "James", "Leo", "Adam"),
    },
    "heldout": {"she": ("Nadia", "Greta", "Ingrid"), "he": ("Omar", "Igor", "Pablo")},
}
ACTIONS = {
    "train": (
        ("repaired", "bicycle"), ("painted", "fence"), ("cleaned", "window"), ("cooked", "soup"),
        ("washed", "car"), ("built", "shelf"), ("planted", "tree"), ("moved", "table"),
    ),
    "heldout": (("polished", "lamp"), ("sewed", "curtain"), ("baked", "pie"), ("tuned", "piano")),
}  # fmt: skip
PLACES = {
    "train": ("garage", "garden", "kitchen", "park", "school", "market", "barn", "workshop"),
    "heldout": ("harbor", "attic", "cellar", "museum"),
}
ANIMALS = ("cat", "dog", "goat", "hen")
TIMES = ("on Monday", "on Sunday", "last night", "this morning", "in the evening", "on Friday")
REASONS = ("because a friend asked", "for the village fair", "because the weather was nice", "for a neighbor")


@functools.lru_cache(maxsize=1)
def vocabulary() -> frozenset[str]:
    """Every name, action, object, place and animal either split can use (for the wrong-value check)."""
    words = set(ANIMALS)
    for split in ("train", "heldout"):
        for names in NAMES[split].values():
            words.update(n.lower() for n in names)
        for action, obj in ACTIONS[split]:
            words.update((action, obj))
        words.update(PLACES[split])
    return frozenset(words)


def _record(rng: random.Random, split: str) -> dict[str, Any]:
    """The record and its distractor values (other person of the other gender, object, place, action)."""
    names, actions, places = (
        by_split(pool["train"], pool["heldout"], split) for pool in (NAMES, ACTIONS, PLACES)
    )
    pronoun = rng.choice(("he", "she"))
    (action, obj), (action2, obj2) = rng.sample(actions, 2)
    place, place2 = rng.sample(places, 2)
    time, time2 = rng.sample(TIMES, 2)
    return {
        "actor": rng.choice(names[pronoun]),
        "pronoun": pronoun,
        "action": action,
        "object": obj,
        "place": place,
        "time": time,
        "reason": rng.choice(REASONS),
        "distractors": {
            "other": rng.choice(names["he" if pronoun == "she" else "she"]),
            "action2": action2,
            "object2": obj2,
            "place2": place2,
            "animal": rng.choice(ANIMALS),
            "time2": time2,
        },
    }


def passage(rng: random.Random, record: dict[str, Any], style: str) -> str:
    """3-6 shuffled sentences; the first core sentence to appear names the actor, later ones use the pronoun."""
    core = list(STYLES[style][: rng.choice((2, 3))])
    extra = rng.sample(DISTRACTORS, rng.randint(1, 3))
    order = [("core", s) for s in core] + [("extra", s) for s in extra]
    rng.shuffle(order)
    sentences, named = [], False
    for kind, template in order:
        if kind == "extra":
            sentences.append(template.format(**record["distractors"]))
            continue
        subject = record["pronoun"] if named else record["actor"]
        named = True
        fill = {k: record[k] for k in ("action", "object", "place", "time", "reason")}
        sentences.append(capitalize_first(template.format(S=capitalize_first(subject), s=subject, **fill)))
    return " ".join(sentences)


def generate(rng: random.Random, split: str) -> Task:
    """One summarisation task of the given split."""
    template_id = choose_template(rng, INSTRUCTIONS, HELDOUT, split)
    record = _record(rng, split)
    prompt = INSTRUCTIONS[template_id].format(p=passage(rng, record, TEMPLATES[template_id]))
    r = record
    reference = f"{r['actor']} {r['action']} the {r['object']} in the {r['place']} {r['time']}."
    return Task(FAMILY, template_id, prompt, reference, record, split)


def _names(words: set[str], value: str) -> bool:
    """Whether the answer's word set holds the value or its plural."""
    value = value.lower()
    return value in words or value + "s" in words or value + "es" in words


def slot_counts(task: Task, answer: str) -> tuple[int, int]:
    """(hits among the key slots, distinct wrong or invented pool values)."""
    words = set(plain_words(answer))
    hits = sum(_names(words, task.facts[slot]) for slot in KEY_SLOTS)
    own = {task.facts[slot].lower() for slot in KEY_SLOTS}
    wrong = sum(_names(words, v) for v in vocabulary() - own)
    return hits, wrong


def score(task: Task, answer: str) -> float:
    """Graded score in [0, 1]; see the module docstring."""
    n_words = len(answer.split())
    if n_words == 0:
        return 0.0
    hits, wrong = slot_counts(task, answer)
    raw = (hits - wrong) / len(KEY_SLOTS) - LENGTH_PENALTY * max(0, n_words - MAX_WORDS)
    return min(1.0, max(0.0, raw))
