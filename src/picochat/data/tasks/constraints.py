"""Instruction following with verifiable constraints (in the spirit of IFEval, arXiv 2311.07911).

Prompts: four kinds, nine phrasings:
- exact words: "Answer in exactly 6 words: what is the sea like?"
- include a word: 'Write a sentence about the sea that includes the word "deep".'
- avoid a word: 'Write a sentence about the sea without using the word "water".'
- JSON: 'Reply in JSON with keys "name" and "age": Anna is 30 years old.'
Topics (each with describing words and words to avoid), names, cities, pets and colours come from
disjoint train and held-out pools; "words_describe", "avoid_describe" and the "json_pet" construction
are held out. References are short sentences built from the topic's describing words, e.g.
"The sea is deep and blue.", or the compact JSON object.

Scoring: the mean over the task's checks, each in [0, 1]:
- exact words: word count (1 - |count - N| / N, floored at 0) and topic mentioned.
- include / avoid: the word is used / not used, topic mentioned, length (1 for 3..20 words, scaled down
  below 3, minus 1/20 per word above 20).
- JSON: parses as an object (the text from the first "{" to the last "}", any whitespace, single quotes
  tolerated), key a present, key b present, value a right, value b right (compared as lower-cased
  strings); when it does not parse, keys still count if they appear as `"key":`. Text around the object
  costs through a length factor past 12 words.
An empty answer scores 0.
"""

from __future__ import annotations

import json
import random
import re
from typing import Any

from picochat.data.tasks.base import (
    Task,
    by_split,
    capitalize_first,
    choose_template,
    length_factor,
    mentions,
)

FAMILY = "constraints"
MAX_SENTENCE_WORDS = 20
JSON_BUDGET_WORDS = 12

TEMPLATES = {
    "words_answer": "Answer in exactly {n} words: what is {topic} like?",
    "words_describe": "Describe {topic} in exactly {n} words.",
    "include_sentence": 'Write a sentence about {topic} that includes the word "{w}".',
    "include_use": 'Use the word "{w}" in a sentence about {topic}.',
    "avoid_sentence": 'Write a sentence about {topic} without using the word "{w}".',
    "avoid_describe": 'Describe {topic} in one sentence. Do not use the word "{w}".',
    "json_age": 'Reply in JSON with keys "name" and "age": {name} is {age} years old.',
    "json_city": 'Reply in JSON with keys "name" and "city": {name} lives in {city}.',
    "json_pet": 'Reply in JSON with keys "pet" and "color": I have a {color} {pet}.',
}
HELDOUT = frozenset({"words_describe", "avoid_describe", "json_pet"})

# topic phrase -> (keyword the answer must mention, describing words, words to avoid)
TOPICS = {
    "train": {
        "the sea": ("sea", ("deep", "blue", "cold", "wide", "calm"), ("water", "waves")),
        "the sun": ("sun", ("bright", "hot", "yellow", "warm", "round"), ("sky", "light")),
        "winter": ("winter", ("cold", "dark", "long", "quiet", "white"), ("snow", "ice")),
        "a forest": ("forest", ("green", "quiet", "old", "dark", "thick"), ("trees", "wood")),
        "the city": ("city", ("busy", "loud", "big", "bright", "crowded"), ("cars", "streets")),
        "a cat": ("cat", ("soft", "small", "quick", "quiet", "clever"), ("fur", "mouse")),
        "the moon": ("moon", ("pale", "round", "bright", "cold", "distant"), ("night", "stars")),
        "a river": ("river", ("long", "fast", "cold", "wide", "clear"), ("water", "fish")),
        "bread": ("bread", ("warm", "soft", "fresh", "brown", "simple"), ("flour", "oven")),
        "a garden": ("garden", ("green", "small", "quiet", "sunny", "pretty"), ("flowers", "grass")),
    },
    "heldout": {
        "the desert": ("desert", ("dry", "hot", "empty", "vast", "quiet"), ("sand", "camel")),
        "a mountain": ("mountain", ("high", "steep", "cold", "rocky", "grand"), ("peak", "climb")),
        "the rain": ("rain", ("wet", "cold", "grey", "steady", "soft"), ("clouds", "umbrella")),
        "a horse": ("horse", ("strong", "fast", "brown", "tall", "gentle"), ("ride", "farm")),
    },
}
NAMES = {
    "train": ("Anna", "Tom", "Lucy", "Ben", "Mia", "Sam", "Ella", "Jack"),
    "heldout": ("Omar", "Nadia", "Igor", "Greta"),
}
CITIES = {"train": ("Paris", "London", "Rome", "Madrid", "Berlin"), "heldout": ("Cairo", "Lima", "Oslo")}
PETS = {"train": ("dog", "cat", "fish"), "heldout": ("parrot", "rabbit", "turtle")}
COLORS = {"train": ("black", "white", "brown"), "heldout": ("green", "grey", "orange")}


def describe(topic: str, adjectives: list[str]) -> str:
    """'The sea is deep.' / 'The sea is deep and blue.' / 'The sea is deep, blue and cold.'"""
    listed = adjectives[0] if len(adjectives) == 1 else ", ".join(adjectives[:-1]) + " and " + adjectives[-1]
    return f"{capitalize_first(topic)} is {listed}."


def _sentence_task(rng: random.Random, template_id: str, split: str) -> tuple[str, str, dict[str, Any]]:
    """Prompt, reference and facts of the exact-words, include and avoid kinds."""
    topics = by_split(TOPICS["train"], TOPICS["heldout"], split)
    topic = rng.choice(sorted(topics))
    keyword, adjectives, avoid = topics[topic]
    chosen = rng.sample(list(adjectives), rng.randint(1, 3) if template_id.startswith("words") else 2)
    reference = describe(topic, chosen)
    facts: dict[str, Any] = {"topic": topic, "keyword": keyword}
    if template_id.startswith("words"):
        facts["n_words"] = len(reference.split())
        return TEMPLATES[template_id].format(n=facts["n_words"], topic=topic), reference, facts
    word = chosen[0] if template_id.startswith("include") else rng.choice(avoid)
    facts["include" if template_id.startswith("include") else "avoid"] = word
    return TEMPLATES[template_id].format(topic=topic, w=word), reference, facts


def _json_task(rng: random.Random, template_id: str, split: str) -> tuple[str, str, dict[str, Any]]:
    """Prompt, reference and facts of the JSON kind."""
    name = rng.choice(by_split(NAMES["train"], NAMES["heldout"], split))
    if template_id == "json_age":
        values = {"name": name, "age": rng.randint(by_split(18, 61, split), by_split(60, 90, split))}
        prompt = TEMPLATES[template_id].format(**values)
    elif template_id == "json_city":
        values = {"name": name, "city": rng.choice(by_split(CITIES["train"], CITIES["heldout"], split))}
        prompt = TEMPLATES[template_id].format(**values)
    else:
        values = {
            "pet": rng.choice(by_split(PETS["train"], PETS["heldout"], split)),
            "color": rng.choice(by_split(COLORS["train"], COLORS["heldout"], split)),
        }
        prompt = TEMPLATES[template_id].format(**values)
    return prompt, json.dumps(values), {"json": values}


def generate(rng: random.Random, split: str) -> Task:
    """One constrained instruction of the given split."""
    template_id = choose_template(rng, TEMPLATES, HELDOUT, split)
    make = _json_task if template_id.startswith("json") else _sentence_task
    prompt, reference, facts = make(rng, template_id, split)
    return Task(FAMILY, template_id, prompt, reference, facts, split)


def sentence_length_check(n_words: int) -> float:
    """1 for 3..20 words, n/3 below 3, minus 1/20 per word above 20 (floored at 0)."""
    if n_words < 3:
        return n_words / 3
    return max(0.0, 1.0 - max(0, n_words - MAX_SENTENCE_WORDS) / MAX_SENTENCE_WORDS)


def parse_json_object(answer: str) -> dict[str, Any] | None:
    """The JSON object in the answer (first "{" to last "}"), trying single quotes as double; else None."""
    start, end = answer.find("{"), answer.rfind("}")
    if start < 0 or end < start:
        return None
    text = answer[start : end + 1]
    for candidate in (text, text.replace("'", '"')):
        try:
            value = json.loads(candidate)
        except json.JSONDecodeError:
            continue
        return value if isinstance(value, dict) else None
    return None


def json_checks(answer: str, expected: dict[str, Any]) -> list[float]:
    """[parses, key a, key b, value a, value b] for the expected two-key object."""
    obj = parse_json_object(answer)
    if obj is None:
        keys = [re.search(r"[\"']" + re.escape(k) + r"[\"']\s*:", answer) is not None for k in expected]
        return [0.0, *map(float, keys), 0.0, 0.0]
    got = {str(k).strip().lower(): v for k, v in obj.items()}
    keys = [float(k in got) for k in expected]
    values = [float(str(got.get(k, "")).strip().lower() == str(v).lower()) for k, v in expected.items()]
    return [1.0, *keys, *values]


def checks(task: Task, answer: str) -> list[float]:
    """Each constraint's degree of satisfaction in [0, 1], in a fixed order per kind."""
    facts = task.facts
    if "json" in facts:
        return json_checks(answer, facts["json"])
    n_words = len(answer.split())
    topic_ok = float(mentions(answer, facts["keyword"]))
    if "n_words" in facts:
        n = facts["n_words"]
        return [max(0.0, 1.0 - abs(n_words - n) / n), topic_ok]
    used = "include" in facts
    word_ok = mentions(answer, facts["include"]) if used else not mentions(answer, facts["avoid"])
    return [float(word_ok), topic_ok, sentence_length_check(n_words)]


def score(task: Task, answer: str) -> float:
    """Graded score in [0, 1]: the mean of `checks`; see the module docstring."""
    if not answer.strip():
        return 0.0
    parts = checks(task, answer)
    mean = sum(parts) / len(parts)
    if "json" in task.facts:
        start, end = answer.find("{"), answer.rfind("}")
        outside = answer[:start] + answer[end + 1 :] if 0 <= start <= end else answer
        mean *= length_factor(len(outside.split()), JSON_BUDGET_WORDS)
    return mean
