"""Checkable synthetic tasks with gold labelers: SFT demonstrations, K-way rankings for the reward model
and the judge of the PPO win rate (shared/DATA.md section 4).

InstructGPT (arXiv 2203.02155, §3.4) has people rank K answers per prompt; here a gold scorer per family
(`FAMILIES`) gives each answer a graded score in [0, 1] and `rank` sorts by it. Deviation: imperfect
labelers are simulated with Bradley–Terry noise (Bradley & Terry 1952): each score gets independent
Gumbel(0, noise) noise before sorting, so answer i beats j with probability σ((s_i - s_j) / noise).
`NOISE_75` is the noise whose pairwise agreement with the noiseless ranking is about 75% (close to the
73-77% agreement between InstructGPT's labelers) on the answers of `synthetic_answers`; measure it again on real policy samples with `noise_for_agreement(samples=...)`.

Families: arithmetic, age, units, strings, constraints, sentiment, summarize (one module each; every
module has FAMILY, TEMPLATES, HELDOUT, generate(rng, split) and score(task, answer)).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import random
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from picochat.data.tasks import age, arithmetic, constraints, sentiment, strings, summarize, units
from picochat.data.tasks.base import SPLITS, Task, check_split

__all__ = [
    "FAMILIES",
    "GENERATOR_VERSION",
    "NOISE_75",
    "SPLITS",
    "Task",
    "demonstration",
    "labeler_agreement",
    "make_tasks",
    "noise_for_agreement",
    "rank",
    "read_tasks",
    "score",
    "synthetic_answers",
    "task_from_dict",
    "task_to_dict",
    "write_tasks",
]

GENERATOR_VERSION = 1  # bump when any generator's output changes; part of every data hash
NOISE_75 = 0.40  # Gumbel scale giving ~75% pairwise agreement on synthetic_answers (measured; see tests)

FAMILIES: dict[str, ModuleType] = {
    "arithmetic": arithmetic,
    "age": age,
    "units": units,
    "strings": strings,
    "constraints": constraints,
    "sentiment": sentiment,
    "summarize": summarize,
}

RAMBLE = (
    "I hope this helps, and let me know if you want me to explain anything else in more detail.",
    "That is what I think, although there are many other ways to look at it and talk about it.",
    "Thanks for asking such a question, it reminds me of something I read a long time ago.",
)


def _family(name: str) -> ModuleType:
    if name not in FAMILIES:
        raise ValueError(f"task family {name!r} is not known; expected one of {sorted(FAMILIES)}")
    return FAMILIES[name]


def make_tasks(n: int, split: str, seed: int, families: Sequence[str] | None = None) -> list[Task]:
    """n tasks of one split, round-robin over `families` (default: all, in FAMILIES order).

    Task i uses its own RNG seeded from (seed, split, i), so the list is deterministic and a prefix of a
    longer list with the same arguments.
    """
    if n < 0:
        raise ValueError(f"n={n} tasks requested; expected n >= 0")
    check_split(split)
    names = list(FAMILIES) if families is None else list(families)
    if not names:
        raise ValueError(
            "families=[] is empty; pass None for all families or some of " + str(sorted(FAMILIES))
        )
    modules = [_family(name) for name in names]
    return [
        modules[i % len(modules)].generate(random.Random(f"picochat-tasks:{seed}:{split}:{i}"), split)
        for i in range(n)
    ]


def score(task: Task, answer: str) -> float:
    """The gold score in [0, 1] of an answer (1 = perfect), by the task's family."""
    return _family(task.family).score(task, answer)


def _ranking(scores: Sequence[float], answers: Sequence[str], noise: float, rng: random.Random) -> list[int]:
    """Indices best first by score + Gumbel(0, noise); ties: shorter answer first, then lexicographic."""
    noisy = list(scores)
    if noise > 0:
        # Gumbel(0, β) = -β·log(E), E ~ Exp(1); the difference of two is logistic, i.e. Bradley–Terry.
        noisy = [s - noise * math.log(max(rng.expovariate(1.0), 1e-300)) for s in scores]
    return sorted(range(len(answers)), key=lambda i: (-noisy[i], len(answers[i]), answers[i]))


def _default_rng(task: Task, answers: Sequence[str]) -> random.Random:
    """A fixed RNG per (task, answers), so an unseeded noisy rank is still reproducible."""
    digest = hashlib.sha256(json.dumps([task.prompt, list(answers)]).encode()).hexdigest()
    return random.Random(digest)


def rank(
    task: Task, answers: Sequence[str], noise: float = 0.0, rng: random.Random | None = None
) -> list[int]:
    """Indices of `answers`, best first by gold score (noise = 0: a perfect labeler).

    Ties are broken by shorter answer first, then lexicographic order. With noise > 0, each score gets
    Gumbel(0, noise) noise first (Bradley–Terry labeler); without `rng` the noise is seeded from the task
    and answers.
    """
    if noise < 0 or not math.isfinite(noise):
        raise ValueError(
            f"noise={noise} is not a Gumbel scale; expected a finite value >= 0 (0 = perfect labeler)"
        )
    scores = [score(task, a) for a in answers]
    return _ranking(scores, answers, noise, rng if rng is not None else _default_rng(task, answers))


def demonstration(task: Task) -> list[dict[str, str]]:
    """The SFT chat messages of a task: the prompt as user, the reference as assistant."""
    return [{"role": "user", "content": task.prompt}, {"role": "assistant", "content": task.reference}]


def _mutate(text: str, rng: random.Random) -> str:
    """A near miss: shift one number a little, or replace one character."""
    digits = [i for i, ch in enumerate(text) if ch.isdigit()]
    if digits:
        i = rng.choice(digits)
        return text[:i] + str((int(text[i]) + rng.randint(1, 9)) % 10) + text[i + 1 :]
    if not text:
        return text
    i = rng.randrange(len(text))
    return text[:i] + rng.choice("aeioustrn") + text[i + 1 :]


def synthetic_answers(task: Task, k: int, rng: random.Random, others: Sequence[Task] = ()) -> list[str]:
    """k distinct-kind stand-ins for policy samples, from the reference: itself, a near miss, the first
    half, one word dropped, rambling, another task's reference, empty. For calibrating the labeler noise."""
    words = task.reference.split()
    half = (
        " ".join(words[: max(1, len(words) // 2)])
        if len(words) > 1
        else task.reference[: len(task.reference) // 2]
    )
    drop = rng.randrange(len(words)) if words else 0
    other = rng.choice(others).reference if others else _mutate(_mutate(task.reference, rng), rng)
    kinds = [
        task.reference,
        _mutate(task.reference, rng),
        half,
        " ".join(words[:drop] + words[drop + 1 :]),
        task.reference + " " + rng.choice(RAMBLE),
        other,
        "",
    ]
    if not 1 <= k <= len(kinds):
        raise ValueError(f"k={k} answers requested; expected 1..{len(kinds)}")
    return rng.sample(kinds, k)


def _samples(n_tasks: int, k: int, seed: int, families: Sequence[str] | None) -> list[tuple[Task, list[str]]]:
    """Held-in tasks with k synthetic answers each; other references come from the same family."""
    tasks = make_tasks(n_tasks, "train", seed, families)
    rng = random.Random(f"picochat-answers:{seed}")
    by_family = {name: [t for t in tasks if t.family == name] for name in {t.family for t in tasks}}
    return [(t, synthetic_answers(t, k, rng, [o for o in by_family[t.family] if o is not t])) for t in tasks]


def _agreement(scored: list[tuple[list[float], list[str]]], noise: float, seed: int) -> float:
    """Fraction of untied pairs that the noisy ranking orders as the noiseless one (same Gumbel draws for
    every noise, so the result falls monotonically with noise)."""
    rng = random.Random(f"picochat-labeler:{seed}")
    agree = total = 0
    for scores, answers in scored:
        position = {i: p for p, i in enumerate(_ranking(scores, answers, noise, rng))}
        for i, j in itertools.combinations(range(len(scores)), 2):
            if scores[i] == scores[j]:
                continue  # ties are dropped, as in the reward-model data
            total += 1
            agree += (position[i] < position[j]) == (scores[i] > scores[j])
    if total == 0:
        raise ValueError("no untied answer pairs to measure agreement on; pass samples with differing scores")
    return agree / total


def _scored(samples: Sequence[tuple[Task, Sequence[str]]]) -> list[tuple[list[float], list[str]]]:
    return [([score(t, a) for a in answers], list(answers)) for t, answers in samples]


def labeler_agreement(
    noise: float,
    n_tasks: int = 700,
    k: int = 4,
    seed: int = 0,
    families: Sequence[str] | None = None,
    samples: Sequence[tuple[Task, Sequence[str]]] | None = None,
) -> float:
    """Pairwise agreement between the noisy and the noiseless gold ranking, over untied pairs.

    `samples` (task, answers) pairs are used when given (e.g. real SFT samples); otherwise n_tasks train
    tasks with k `synthetic_answers` each.
    """
    if noise < 0:
        raise ValueError(f"noise={noise}; expected >= 0")
    data = samples if samples is not None else _samples(n_tasks, k, seed, families)
    return _agreement(_scored(data), noise, seed)


def noise_for_agreement(
    target: float = 0.75,
    n_tasks: int = 700,
    k: int = 4,
    seed: int = 0,
    families: Sequence[str] | None = None,
    samples: Sequence[tuple[Task, Sequence[str]]] | None = None,
) -> float:
    """The Gumbel noise whose `labeler_agreement` is closest to `target` (bisection on log noise)."""
    if not 0.5 < target < 1.0:
        raise ValueError(f"target={target}; expected an agreement strictly between 0.5 and 1")
    scored = _scored(samples if samples is not None else _samples(n_tasks, k, seed, families))
    lo, hi = math.log(1e-4), math.log(100.0)
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _agreement(scored, math.exp(mid), seed) > target else (lo, mid)
    return math.exp((lo + hi) / 2)


def task_to_dict(task: Task) -> dict[str, Any]:
    """A JSON-ready dict of the task (a deep copy)."""
    return dataclasses.asdict(task)


def task_from_dict(data: dict[str, Any]) -> Task:
    """Inverse of `task_to_dict`; raises ValueError naming missing or unknown keys, or a bad split/family."""
    names = [f.name for f in dataclasses.fields(Task)]
    missing, unknown = [n for n in names if n not in data], sorted(set(data) - set(names))
    if missing or unknown:
        raise ValueError(
            f"task dict has missing keys {missing} and unknown keys {unknown}; expected keys {names}"
        )
    check_split(data["split"])
    _family(data["family"])
    if not isinstance(data["facts"], dict):
        raise ValueError(f"task facts is a {type(data['facts']).__name__}; expected a JSON object")
    return Task(**{n: data[n] for n in names})


def write_tasks(path: str | Path, tasks: Sequence[Task]) -> None:
    """Write tasks as JSONL, one `task_to_dict` per line."""
    with open(path, "w", encoding="utf-8") as f:
        for task in tasks:
            f.write(json.dumps(task_to_dict(task), ensure_ascii=False) + "\n")


def read_tasks(path: str | Path) -> list[Task]:
    """Read a JSONL file of tasks; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"task file {path} does not exist; write one with write_tasks(path, tasks)")
    tasks = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                tasks.append(task_from_dict(json.loads(line)))
            except (json.JSONDecodeError, ValueError, TypeError) as err:
                raise ValueError(
                    f"{path}:{line_no}: not a task record ({err}); expected one JSON task per line"
                ) from err
    return tasks
