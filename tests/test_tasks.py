"""Checkable task suite: gold scorers rank hand-made answers as intended, splits stay apart, generation
is deterministic, the simulated labeler reaches its documented agreement."""

from __future__ import annotations

import json
import random
from pathlib import Path
from types import ModuleType

import pytest

from picochat.data import tasks as T
from picochat.data.tasks import (
    FAMILIES,
    NOISE_75,
    SPLITS,
    Task,
    age,
    arithmetic,
    constraints,
    demonstration,
    labeler_agreement,
    make_tasks,
    rank,
    read_tasks,
    score,
    sentiment,
    strings,
    summarize,
    synthetic_answers,
    task_from_dict,
    task_to_dict,
    units,
    write_tasks,
)

SEED_PROMPT = "When I was 8 my brother was half my age. How old is he when I am 50?"
# order every ranking case is written in: best first
ORDER = ["correct", "partial", "rambling", "wrong", "empty"]


def _task(
    module: ModuleType, template_id: str, prompt: str, reference: str, facts: dict, split: str = "train"
) -> Task:
    return Task(module.FAMILY, template_id, prompt, reference, facts, split)


def _summary_case() -> tuple[Task, dict[str, str]]:
    task = summarize.generate(random.Random(3), "train")
    f, d = task.facts, task.facts["distractors"]
    filler = (
        "It was a long and ordinary day, and a few other things happened around the town while "
        "people went about their usual business until late."
    )
    return task, {
        "correct": task.reference,
        "partial": f"{f['actor']} {f['action']} the {f['object']}.",
        "rambling": task.reference + " " + filler,
        "wrong": f"{f['actor']} {f['action']} the {d['object2']}.",
        "empty": "",
    }


def _cases() -> list[tuple[Task, dict[str, str]]]:
    """(task, answers by kind) for every family; kinds are ranked in ORDER."""
    ramble = "and I worked it out step by step in my head before writing it down here for you today"
    return [
        (
            _task(
                arithmetic, "add_what", "What is 17 + 25?", "42", {"op": "+", "a": 17, "b": 25, "answer": 42}
            ),
            {"correct": "42", "partial": "43", "rambling": f"42, {ramble}.", "wrong": "17", "empty": ""},
        ),
        (
            _task(age, "half", SEED_PROMPT, "He is 46.", {"answer": 46}),
            {
                "correct": "He is 46.",
                "partial": "He is 45.",
                "rambling": f"He is 46, {ramble}.",
                "wrong": "He is 25.",
                "empty": "",
            },
        ),
        (
            _task(
                units,
                "how_many",
                "How many centimeters are in 3 meters?",
                "300 centimeters.",
                {"answer": 300},
            ),
            {
                "correct": "300 centimeters.",
                "partial": "290 centimeters.",
                "rambling": f"300 centimeters, {ramble}.",
                "wrong": "3 centimeters.",
                "empty": "",
            },
        ),
        (
            _task(
                strings,
                "reverse_word",
                'Reverse the word "rocket".',
                "tekcor",
                {"op": "reverse", "answer": "tekcor"},
            ),
            {
                "correct": "tekcor",
                "partial": "tekco",
                "rambling": "The word rocket written backwards is tekcor, which sounds funny when you say it.",
                "wrong": "rocket",
                "empty": "",
            },
        ),
        (
            _task(
                strings,
                "count_times",
                'How many times does the letter "a" appear in "banana"?',
                "3",
                {"op": "count", "answer": "3"},
            ),
            {
                "correct": "3",
                "partial": "2",
                "rambling": f"3, {ramble}.",
                "wrong": "9",
                "empty": "",
            },
        ),  # fmt: skip
        (
            _task(
                constraints,
                "json_age",
                'Reply in JSON with keys "name" and "age": Anna is 30 years old.',
                '{"name": "Anna", "age": 30}',
                {"json": {"name": "Anna", "age": 30}},
            ),
            {
                "correct": '{"name": "Anna", "age": 30}',
                "partial": '{"name": "Anna", "age": 31}',
                "rambling": "Sure, here is the JSON you asked for, with both keys filled in from your sentence: "
                '{"name": "Anna", "age": 30} and I hope that this is exactly what you needed.',
                "wrong": '{"person": "Tom"}',
                "empty": "",
            },
        ),  # fmt: skip
        (
            _task(
                constraints,
                "words_answer",
                "Answer in exactly 6 words: what is the sea like?",
                "The sea is deep and blue.",
                {"topic": "the sea", "keyword": "sea", "n_words": 6},
            ),
            {
                "correct": "The sea is deep and blue.",
                "partial": "The sea is deep.",
                "rambling": f"The sea is deep and blue and cold, {ramble}.",
                "wrong": "Bread is nice.",
                "empty": "",
            },
        ),  # fmt: skip
        (
            _task(
                sentiment,
                "positively",
                "Continue this text positively: We walked to the market.",
                "We laughed together and had a really great time.",
                {"opening": "We walked to the market."},
            ),
            {
                "correct": "It turned out to be a wonderful day, full of laughter and joy.",
                "partial": "It was fine and the day went on.",
                "rambling": "It was a nice day. "
                + " ".join(f"Then we saw house number {i}." for i in range(9)),
                "wrong": "It was awful and everyone was sad.",
                "empty": "",
            },
        ),  # fmt: skip
        _summary_case(),
    ]


@pytest.mark.parametrize("case", range(len(_cases())))
def test_rank_orders_hand_made_answers(case: int) -> None:
    task, by_kind = _cases()[case]
    answers = [by_kind[k] for k in ORDER]
    shuffled = answers[::-1]
    scores = {k: score(task, by_kind[k]) for k in ORDER}
    assert [shuffled[i] for i in rank(task, shuffled)] == answers, scores
    assert all(scores[a] > scores[b] for a, b in zip(ORDER, ORDER[1:], strict=False)), scores
    assert scores["correct"] == 1.0 and scores["empty"] == 0.0


def test_references_score_high_and_all_scores_in_unit_interval() -> None:
    rng = random.Random(0)
    for split in SPLITS:
        tasks = make_tasks(350, split, seed=1)
        for task in tasks:
            assert score(task, task.reference) >= 0.95, task
            for answer in synthetic_answers(task, 7, rng, tasks[:20]) + ["x" * 300, "1 2 3 " * 40, "{}"]:
                assert 0.0 <= score(task, answer) <= 1.0, (task, answer)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_train_and_heldout_templates_are_disjoint(family: str) -> None:
    module = FAMILIES[family]
    heldout = set(module.HELDOUT)
    assert heldout < set(module.TEMPLATES)
    assert 0.2 <= len(heldout) / len(module.TEMPLATES) <= 0.4
    for split in SPLITS:
        used = {module.generate(random.Random(i), split).template_id for i in range(300)}
        assert used == (heldout if split == "heldout" else set(module.TEMPLATES) - heldout)


def _interval_disjoint(pools: dict) -> bool:
    (a_lo, a_hi), (b_lo, b_hi) = pools["train"], pools["heldout"]
    return a_hi < b_lo or b_hi < a_lo


def test_value_pools_are_disjoint() -> None:
    sets = [
        age.NAMES, age.RELATIVES, strings.WORDS, constraints.TOPICS, constraints.NAMES, constraints.CITIES,
        constraints.PETS, constraints.COLORS, sentiment.OPENINGS, sentiment.CONTINUATIONS, summarize.ACTIONS,
        summarize.PLACES, units.CONVERSIONS,
    ]  # fmt: skip
    for pools in sets:
        assert not set(pools["train"]) & set(pools["heldout"])
    names = {s: {n for group in summarize.NAMES[s].values() for n in group} for s in SPLITS}
    assert not names["train"] & names["heldout"]
    big_units = {s: {c[0] for c in units.CONVERSIONS[s]} for s in SPLITS}
    assert not big_units["train"] & big_units["heldout"]  # converting from a held-out unit is new
    intervals = [
        arithmetic.ADD_RANGE,
        arithmetic.MUL_RANGE,
        age.FIRST_AGE,
        age.LATER_AGE,
        age.GAP,
        units.COUNTS,
    ]
    assert all(_interval_disjoint(p) for p in intervals)
    heldout = make_tasks(70, "heldout", seed=2)
    assert all(t.facts["word"] in strings.WORDS["heldout"] for t in heldout if t.family == "strings")
    assert all(t.facts["actor"] in names["heldout"] for t in heldout if t.family == "summarize")


def test_generation_is_deterministic_and_round_robin() -> None:
    a = make_tasks(40, "train", seed=7)
    assert a == make_tasks(40, "train", seed=7)
    assert a[:10] == make_tasks(10, "train", seed=7)
    assert a != make_tasks(40, "train", seed=8)
    assert [t.family for t in a[:7]] == list(FAMILIES)
    assert {t.family for t in make_tasks(9, "heldout", 0, families=["units", "age"])} == {"units", "age"}


def test_seed_age_problem_is_generated_and_scored() -> None:
    seed = next(s for s in range(200_000) if age.generate(random.Random(s), "train").prompt == SEED_PROMPT)
    task = age.generate(random.Random(seed), "train")
    assert task.template_id == "half" and task.facts["answer"] == 46
    assert task.reference == "He is 46."
    assert score(task, "46") == 1.0 and score(task, "He will be 46 years old.") == 1.0
    assert score(task, "He is 4.") < 0.1  # half of 8, the classic wrong answer
    assert score(task, "He is 25.") < score(task, "He is 44.") < 1.0


def test_vader_gaming_scores_below_a_real_positive_sentence() -> None:
    task = sentiment.generate(random.Random(0), "train")
    real = score(task, "We laughed together and had a really great time.")
    for gamed in [
        "good good good good",
        "great great great great great great great great",
        "happy joy love",
        "happy joy love great wonderful amazing",
    ]:
        assert score(task, gamed) < 0.3 < 0.95 < real


def test_json_constraint_parsing_tolerates_whitespace_and_quotes() -> None:
    task = _task(constraints, "json_age", "p", "r", {"json": {"name": "Anna", "age": 30}})
    for answer in [
        '{"name":"Anna","age":30}',
        '\n{ "name" :  "Anna" ,\n\t"age": 30 }\n',
        "{'name': 'Anna', 'age': 30}",
    ]:
        assert score(task, answer) == 1.0, answer
    assert score(task, '{"name": "Anna", "age": "30"}') == 1.0  # numbers as strings are accepted
    assert score(task, '{"name": "Anna", "age": 30') == pytest.approx(2 / 5)  # broken: keys only
    assert score(task, "Anna is 30.") == 0.0


def test_word_constraints_checks() -> None:
    include = _task(constraints, "include_sentence", "p", "r", {"keyword": "sea", "include": "deep"})
    assert score(include, "The sea is deep and blue.") == 1.0
    assert score(include, "The sea is blue.") == pytest.approx(2 / 3)
    avoid = _task(constraints, "avoid_sentence", "p", "r", {"keyword": "sea", "avoid": "water"})
    assert score(avoid, "The sea is deep and blue.") == 1.0
    assert score(avoid, "The sea is full of Water.") == pytest.approx(2 / 3)
    assert score(avoid, "") == 0.0


def test_summary_passage_shape() -> None:
    for i in range(50):
        task = summarize.generate(random.Random(i), "train")
        passage = task.prompt.split(": ", 1)[1] if task.template_id != "what_happened" else task.prompt
        assert 3 <= passage.count(".") <= 6
        assert passage.count(task.facts["actor"]) == 1  # named once, then a pronoun
        assert task.facts["distractors"]["object2"] != task.facts["object"]


def test_noiseless_rank_is_sort_by_score() -> None:
    rng = random.Random(0)
    tasks = make_tasks(70, "train", seed=3)
    for task in tasks:
        answers = synthetic_answers(task, 6, rng, tasks)
        expected = sorted(range(6), key=lambda i: (-score(task, answers[i]), len(answers[i]), answers[i]))
        assert rank(task, answers) == expected


def test_noisy_rank_is_reproducible_and_noisy() -> None:
    tasks = make_tasks(30, "train", seed=4)
    answers = {t.prompt: synthetic_answers(t, 4, random.Random(1), tasks) for t in tasks}
    noisy = [rank(t, answers[t.prompt], noise=1.0) for t in tasks]
    assert noisy == [rank(t, answers[t.prompt], noise=1.0) for t in tasks]
    assert noisy != [rank(t, answers[t.prompt]) for t in tasks]
    with pytest.raises(ValueError, match="noise=-0.1"):
        rank(tasks[0], ["a"], noise=-0.1)


def test_labeler_agreement_at_documented_noise() -> None:
    assert labeler_agreement(0.0) == 1.0
    assert labeler_agreement(NOISE_75) == pytest.approx(0.75, abs=0.05)
    assert labeler_agreement(5.0) < 0.65


def test_task_dict_round_trip_and_jsonl(tmp_path: Path) -> None:
    tasks = make_tasks(14, "heldout", seed=5)
    assert [task_from_dict(json.loads(json.dumps(task_to_dict(t)))) for t in tasks] == tasks
    path = tmp_path / "tasks.jsonl"
    write_tasks(path, tasks)
    assert read_tasks(path) == tasks
    with open(path, "a", encoding="utf-8") as f:
        f.write('{"family": "poetry"}\n')
    with pytest.raises(ValueError, match=r"tasks.jsonl:15"):
        read_tasks(path)
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        read_tasks(tmp_path / "missing.jsonl")
    bad = {**task_to_dict(tasks[0]), "split": "test"}
    with pytest.raises(ValueError, match="split='test'"):
        task_from_dict(bad)


def test_demonstration_and_bad_arguments() -> None:
    task = make_tasks(1, "train", seed=0)[0]
    assert demonstration(task) == [
        {"role": "user", "content": task.prompt},
        {"role": "assistant", "content": task.reference},
    ]
    with pytest.raises(ValueError, match="split='dev'"):
        make_tasks(3, "dev", seed=0)
    with pytest.raises(ValueError, match="'poetry' is not known"):
        make_tasks(3, "train", seed=0, families=["poetry"])
    assert T.GENERATOR_VERSION >= 1
