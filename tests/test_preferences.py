"""Preference JSONL: round trip, tie levels and pairs, line-numbered errors, pairwise import, gold ranking."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from picochat.data.preferences import (
    PreferenceRecord,
    import_pairwise,
    read_any,
    read_preferences,
    write_preferences,
)
from picochat.data.tasks import make_tasks, score
from picochat.model import GPT
from picochat.tokenizer import Tokenizer
from picochat.train.collect import check_k, collect_records, rank_completions, tie_groups

GOOD = {"prompt": "What is 2 + 3?", "completions": ["5", "6", "no"], "ranking": [0, 1, 2], "source": "gold"}


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_round_trip_keeps_every_field(tmp_path: Path) -> None:
    records = [
        PreferenceRecord(
            "Hi?",
            ["a", "b", "c", "d"],
            [3, 1, 0, 2],
            "gold",
            [[1, 0]],
            {"family": "age"},
            [0.1, 0.5, 0.2, 0.9],
        ),
        PreferenceRecord(
            [{"role": "system", "content": "be brief"}, {"role": "user", "content": "x"}],
            ["p", "q"],
            [1, 0],
            "human",
        ),
    ]
    path = write_preferences(tmp_path / "prefs.jsonl", records)
    assert read_preferences(path) == records
    assert not (tmp_path / "prefs.jsonl.tmp").exists()


def test_levels_and_pairs_drop_ties() -> None:
    r = PreferenceRecord("p", ["a", "b", "c", "d"], [2, 0, 1, 3], ties=[[0, 1]])
    assert r.levels() == [1, 1, 0, 2]
    assert sorted(r.pairs()) == [(0, 3), (1, 3), (2, 0), (2, 1), (2, 3)]  # C(4,2) = 6 minus the tie
    assert len(PreferenceRecord("p", list("abcde"), [4, 3, 2, 1, 0]).pairs()) == 10


@pytest.mark.parametrize(
    ("line", "expect"),
    [
        ('{"prompt": "x", "completions": ["a", "b"]', "not valid JSON"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "ranking"}), "missing keys ['ranking']"),
        (json.dumps({**GOOD, "extra": 1}), "unknown keys ['extra']"),
        (json.dumps({**GOOD, "ranking": [0, 1, 1]}), "not a permutation of 0..2"),
        (json.dumps({**GOOD, "ranking": [0, 1]}), "not a permutation of 0..2"),
        (json.dumps({**GOOD, "completions": ["5"], "ranking": [0]}), "K >= 2"),
        (json.dumps({**GOOD, "completions": ["5", 6, "no"]}), "expected a list of strings"),
        (json.dumps({**GOOD, "source": "robot"}), "'source' is 'robot'"),
        (json.dumps({**GOOD, "ties": [[0, 2]]}), "not at consecutive positions"),
        (json.dumps({**GOOD, "scores": [1.0]}), "expected 3 numbers"),
        (json.dumps({**GOOD, "prompt": [{"role": "bot", "content": "x"}]}), "'prompt' message 0"),
        ("[1, 2]", "JSON list"),
    ],
)
def test_each_file_error_names_the_line(tmp_path: Path, line: str, expect: str) -> None:
    path = write_lines(tmp_path / "bad.jsonl", [json.dumps(GOOD), "", line])
    with pytest.raises(ValueError, match=r"bad\.jsonl:3: .*") as err:
        read_preferences(path)
    assert expect in str(err.value)


def test_missing_file_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="picochat collect"):
        read_preferences(tmp_path / "nope.jsonl")


def test_import_pairwise(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "pairs.jsonl",
        [json.dumps({"prompt": "Hi", "chosen": "Hello!", "rejected": "go away"}),
         json.dumps({"prompt": [{"role": "user", "content": "2+2?"}], "chosen": "4", "rejected": "5"})],
    )  # fmt: skip
    records = import_pairwise(path)
    assert [r.completions for r in records] == [["Hello!", "go away"], ["4", "5"]]
    assert all(r.pairs() == [(0, 1)] and r.source == "human" for r in records)
    assert read_any(path) == records
    bad = write_lines(tmp_path / "bad.jsonl", [json.dumps({"prompt": "Hi", "chosen": "a"})])
    with pytest.raises(ValueError, match=r"bad\.jsonl:1: expected an object with keys"):
        import_pairwise(bad)


def test_tie_groups_are_runs_of_equal_scores() -> None:
    assert tie_groups([3, 0, 2, 1], [0.2, 0.0, 0.2, 0.9]) == [[0, 2]]
    assert tie_groups([0, 1, 2], [0.5, 0.5, 0.5]) == [[0, 1, 2]]
    assert tie_groups([0, 1], [1.0, 0.0]) == []


def test_tie_tolerance_groups_answers_a_labeler_cannot_tell_apart() -> None:
    scores = [0.9, 0.10, 0.06, 0.0]
    assert tie_groups([0, 1, 2, 3], scores) == []
    assert tie_groups([0, 1, 2, 3], scores, tolerance=0.05) == [[1, 2]]
    assert tie_groups([0, 1, 2, 3], scores, tolerance=0.06) == [[1, 2, 3]]  # neighbours chain
    task = next(t for t in make_tasks(7, "train", seed=3) if t.family == "strings")
    garbage = ["bumber", "nu"]  # wrong answers with slightly different partial credit (0.078, 0.044)
    assert score(task, garbage[0]) != score(task, garbage[1])
    assert (
        rank_completions(task, [task.reference, *garbage], 0.0, random.Random(0), tie_tolerance=0.0).ties
        == []
    )
    record = rank_completions(task, [task.reference, *garbage], 0.0, random.Random(0), tie_tolerance=0.05)
    assert record is not None and record.ranking[0] == 0 and record.ties == [record.ranking[1:]]


def test_gold_ranking_of_hand_made_answers() -> None:
    task = next(t for t in make_tasks(7, "train", seed=3) if t.family == "arithmetic")
    right = task.reference
    near = str(int(right) + 1)
    answers = ["no idea", near, right, "I think it is " + right + " but I am not sure at all really"]
    record = rank_completions(task, answers, noise=0.0, rng=random.Random(0))
    assert record is not None
    assert record.ranking[0] == 2 and record.ranking[-1] == 0
    assert record.scores == [score(task, a) for a in answers]
    assert rank_completions(task, ["", "nothing", "no", "?"], noise=0.0, rng=random.Random(0)) is None


def test_k_outside_4_to_9_is_rejected() -> None:
    check_k(4)
    check_k(9)
    for k in (3, 10):
        with pytest.raises(ValueError, match="expected 4..9"):
            check_k(k)


def test_collect_records_from_a_policy(tmp_path: Path, tok: Tokenizer, micro_model: GPT) -> None:
    torch.manual_seed(0)
    tasks = make_tasks(8, "train", seed=0, families=["sentiment", "constraints"])
    records, stats = collect_records(micro_model, tok, tasks, 4, max_new_tokens=8, batch_prompts=3, seed=1)
    assert stats["n_records"] + stats["n_all_tied"] == 8 == stats["n_prompts"]
    assert 0.0 <= stats["tied_pair_fraction"] <= 1.0
    for r in records:
        ordered = [r.scores[i] for i in r.ranking]
        assert ordered == sorted(ordered, reverse=True)  # noise 0: the ranking follows the gold score
        assert r.pairs()  # all-tied prompts were dropped
    path = write_preferences(tmp_path / "c.jsonl", records)
    assert read_preferences(path) == records
