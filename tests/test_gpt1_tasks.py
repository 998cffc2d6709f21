"""GPT-1 task sets: built-in tasks build balanced, schema-valid, properly split sets at both difficulty
levels; the NLI checker; shortcut baselines near chance; the Bible verse reader; user JSONL errors name
FILE:LINE."""

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from picochat.config import FinetuneConfig, load_config
from picochat.data import gpt1_tasks
from picochat.data.gpt1_tasks import (
    CONTRADICT,
    ENTAIL,
    LEVELS,
    NEUTRAL,
    TASKS,
    Claim,
    Fact,
    TaskSet,
    infer_format,
    load_task,
    load_task_jsonl,
    nli_label,
    parse_play,
    parse_pythonbible,
    shortcut_baselines,
)
from picochat.train.finetune import build_task

TEXT_KEYS = {
    "classification": ("text",),
    "entailment": ("premise", "hypothesis"),
    "similarity": ("a", "b"),
    "multiple_choice": ("context", "choices"),
}


EASY = ["nli", "paraphrase_synth"]  # the tasks whose "easy" level builds a different set


@pytest.fixture(scope="module", params=[*TASKS, *gpt1_tasks.EXTRA_TASKS, *(f"{t}:easy" for t in EASY)])
def task(request: pytest.FixtureRequest) -> TaskSet:
    name, _, level = request.param.partition(":")
    return load_task(name, seed=0, level=level or "full")


def _texts(row: dict, fmt: str) -> str:
    return " ".join(" ".join(row[k]) if isinstance(row[k], list) else row[k] for k in TEXT_KEYS[fmt])


def _words(text: str) -> set[str]:
    return set(re.findall(r"[A-Za-z']+", text))


def test_builds_balanced_schema_valid_splits(task: TaskSet, tmp_path: Path) -> None:
    assert len(task.train) >= 2000 and 400 <= len(task.test) <= 1000
    n = len(task.label_names)
    for rows in (task.train, task.test):
        counts = Counter(r["label"] for r in rows)
        assert set(counts) == set(range(n))
        assert max(counts.values()) - min(counts.values()) <= 0.1 * len(rows) / n
        # the rows pass the same validation as a user's --data file
        path = tmp_path / "rows.jsonl"
        path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
        assert load_task_jsonl(path, task.format, label_names=task.label_names) == rows
        assert infer_format(rows) == task.format
    train_texts = {_texts(r, task.format) for r in task.train}
    assert not any(_texts(r, task.format) in train_texts for r in task.test)


def test_split_is_disjoint_by_source_or_template_name_value(task: TaskSet) -> None:
    meta = task.meta
    if task.name in ("sentiment", "cloze"):  # split by play
        assert not set(meta["train_sources"]) & set(meta["test_sources"])
        assert {r["source"] for r in task.train} <= set(meta["train_sources"])
        assert {r["source"] for r in task.test} <= set(meta["test_sources"])
        return
    if task.name == "paraphrase":  # split by Bible book
        assert not set(meta["train_books"]) & set(meta["test_books"])
        for rows, books in ((task.train, meta["train_books"]), (task.test, meta["test_books"])):
            assert {v // gpt1_tasks.BOOK for r in rows for v in r["verses"]} <= set(books)
            assert all((r["verses"][0] == r["verses"][1]) == (r["label"] == 1) for r in rows)
            adjacent = sum(abs(r["verses"][0] - r["verses"][1]) == 1 for r in rows)
            assert 0.1 * len(rows) < adjacent < 0.3 * len(rows)  # up to half the negatives: a neighbour verse
        train_texts = {r[k] for r in task.train for k in ("a", "b")}
        assert not any(r[k] in train_texts for r in task.test for k in ("a", "b"))  # no parallel passages
        return
    assert not set(meta["train_templates"]) & set(meta["test_templates"])
    assert {t for r in task.train for t in r["templates"]} <= set(meta["train_templates"])
    assert {t for r in task.test for t in r["templates"]} <= set(meta["test_templates"])
    train_only = set(meta["train_names"]) | {
        str(v) for slot, vals in meta["train_values"].items() if slot != "count" for v in vals
    }
    test_only = set(meta["test_names"]) | {
        str(v) for slot, vals in meta["test_values"].items() if slot != "count" for v in vals
    }
    assert not train_only & test_only
    test_words = set().union(*(_words(_texts(r, task.format)) for r in task.test))
    train_words = set().union(*(_words(_texts(r, task.format)) for r in task.train))
    assert not test_words & train_only
    assert not train_words & test_only


def test_shortcut_baselines_stay_near_chance(task: TaskSet) -> None:
    scores = shortcut_baselines(task)
    # two translations of one verse share names and content words: overlap is the real signal there
    real_signal = {"word_overlap"} if task.name == "paraphrase" else set()
    shortcuts = {k: v for k, v in scores.items() if k not in {"chance", "majority", *real_signal}}
    assert shortcuts  # every format reports at least one shortcut
    for name, acc in shortcuts.items():
        assert acc < scores["chance"] + 0.1, (task.name, name, acc)


def test_deterministic_and_copied() -> None:
    a = load_task("paraphrase", seed=0)
    a.train[0]["label"] = 99
    b = load_task("paraphrase", seed=0)
    assert b.train[0]["label"] != 99 and b.train[1:] == a.train[1:]
    assert load_task("paraphrase", seed=1).train != b.train
    with pytest.raises(ValueError, match="unknown GPT-1 task 'sst2'"):
        load_task("sst2")
    with pytest.raises(ValueError, match=r"unknown task level 'hard'.*\['full', 'easy'\]"):
        load_task("nli", level="hard")


@pytest.mark.parametrize("name", EASY)
def test_easy_level_is_deterministic_and_simpler(name: str) -> None:
    easy, full = load_task(name, seed=0, level="easy"), load_task(name, seed=0, level="full")
    if name == "paraphrase_synth":  # rebuilt past the per-process cache: the same seed gives the same rows
        assert gpt1_tasks._cached.__wrapped__(name, 0, "easy").test == easy.test
    assert easy.meta["level"] == "easy" and full.meta["level"] == "full"
    assert easy.train != full.train
    rows = easy.train + easy.test
    # no book counts (hence no "at least"/"at most"), no negation, no conjunctions, at most two people
    assert not any(
        t.startswith(("count.", "city.neg", "pet.neg", "job.neg", "colour.neg"))
        for r in rows
        for t in r["templates"]
    )
    first, second = ("premise", "hypothesis") if name == "nli" else ("a", "b")
    assert all(" and " not in r[second] for r in rows)
    people = set(easy.meta["train_names"]) | set(easy.meta["test_names"])
    assert max(len(_words(r[first]) & people) for r in rows) == (2 if name == "nli" else 1)


def test_sentiment_paraphrase_and_cloze_are_the_same_at_every_level() -> None:
    for name in ("sentiment", "paraphrase", "cloze"):
        sets = [load_task(name, seed=0, level=level) for level in LEVELS]
        assert all(s.train == sets[0].train and s.test == sets[0].test for s in sets)
        assert [s.meta["level"] for s in sets] == list(LEVELS)


def test_finetune_config_level_reaches_the_task() -> None:
    assert FinetuneConfig().level == "full"
    cfg = load_config(FinetuneConfig, None, ["task=paraphrase_synth", "level=easy"])
    assert build_task(cfg).train == load_task("paraphrase_synth", level="easy").train
    with pytest.raises(ValueError, match="level must be one of"):
        load_config(FinetuneConfig, None, ["level=hard"])


def test_nli_checker_on_hand_made_examples() -> None:
    facts = [
        Fact("Anna", "city", "Paris"),
        Fact("Anna", "pet", "dog", negated=True),
        Fact("Ben", "count", 4),
    ]
    assert nli_label(facts, [Claim("Anna", "city", "eq", "Paris")]) == ENTAIL
    assert nli_label(facts, [Claim("Anna", "city", "neq", "Rome")]) == ENTAIL  # negation, entailed
    assert nli_label(facts, [Claim("Anna", "city", "eq", "Rome")]) == CONTRADICT
    assert nli_label(facts, [Claim("Anna", "city", "neq", "Paris")]) == CONTRADICT  # negation, contradicted
    assert nli_label(facts, [Claim("Anna", "pet", "neq", "dog")]) == ENTAIL  # restated negation
    assert nli_label(facts, [Claim("Anna", "pet", "eq", "dog")]) == CONTRADICT
    assert (
        nli_label(facts, [Claim("Anna", "pet", "eq", "cat")]) == NEUTRAL
    )  # ruling out a dog says nothing of cats
    assert nli_label(facts, [Claim("Anna", "job", "neq", "nurse")]) == NEUTRAL  # unstated slot
    assert nli_label(facts, [Claim("Cara", "city", "eq", "Paris")]) == NEUTRAL  # unmentioned person
    assert nli_label(facts, [Claim("Ben", "count", "ge", 3)]) == ENTAIL
    assert nli_label(facts, [Claim("Ben", "count", "ge", 5)]) == CONTRADICT
    assert nli_label(facts, [Claim("Ben", "count", "le", 4)]) == ENTAIL
    assert nli_label(facts, [Claim("Ben", "count", "eq", 2)]) == CONTRADICT
    both = [Claim("Anna", "city", "eq", "Paris"), Claim("Ben", "count", "le", 9)]
    assert nli_label(facts, both) == ENTAIL
    assert nli_label(facts, [both[0], Claim("Anna", "job", "eq", "nurse")]) == NEUTRAL
    assert (
        nli_label(facts, [Claim("Anna", "job", "eq", "nurse"), Claim("Ben", "count", "eq", 5)]) == CONTRADICT
    )


def test_nli_negation_occurs_in_every_class() -> None:
    task = load_task("nli", seed=0)
    with_not = Counter(
        r["label"] for r in task.train if re.search(r"\b(not|no|never|doesn't)\b", r["hypothesis"])
    )
    assert min(with_not[c] for c in range(3)) > 0.2 * len(task.train) / 3


def test_parse_play_keeps_speech_lines_only() -> None:
    md = (
        "# A Play\n\n## ACT I\n\n### SCENE I. A heath.\n\n_Enter A, with\nB_\n\n"
        "**A**  \nFirst line,  \nsecond \\[line\\].\n\n_Exit B_\n\nThird line.\n\n**B**  \nReply.\n"
    )
    assert parse_play(md) == [["First line,", "second [line]."], ["Third line."], ["Reply."]]


def test_parse_pythonbible_reads_verses_by_offset() -> None:
    body = "1. In the beginning.  2. God`s  light.\n3. Dark."
    module = (
        'from pythonbible.bible.bible import Bible\n\nbible = Bible(\n    Version.X,\n    """'
        + body
        + '""",\n'
        "    {\n        1001001: 0,\n        1001002: 20,\n        2003004: 39,\n    },\n"
        "    {\n        1001001: 20,\n        1001002: 38,\n        2003004: 47,\n    },\n"
        '    {\n        Book.GENESIS: "Genesis",\n    },\n)\n'
    )
    assert parse_pythonbible(module) == {
        1001001: "In the beginning.",
        1001002: "God's light.",
        2003004: "Dark.",
    }
    with pytest.raises(ValueError, match="no triple-quoted verse text"):
        parse_pythonbible("bible = Bible()")
    with pytest.raises(ValueError, match="start and end offset tables"):
        parse_pythonbible('x = """1. a"""\n{\n        1001001: 0,\n}')


@pytest.mark.parametrize(
    ("lines", "fmt", "message"),
    [
        (['{"text": "ok", "label": 0}', "{not json"], "classification", r"rows\.jsonl:2: not valid JSON"),
        (['{"text": "ok"}'], "classification", r"rows\.jsonl:1: missing key 'label'"),
        (['{"a": "x", "b": 3, "label": 1}'], "similarity", r"rows\.jsonl:1: key 'b' is int"),
        (
            ['{"premise": "p", "hypothesis": "h", "label": true}'],
            "entailment",
            r"rows\.jsonl:1: key 'label' is bool",
        ),
        (
            ["", '{"premise": "p", "hypothesis": "h", "label": 3}'],
            "entailment",
            r"rows\.jsonl:2: label 3 out of range",
        ),
        (
            ['{"context": "c", "choices": ["a", "b"], "label": 2}'],
            "multiple_choice",
            r"rows\.jsonl:1: label 2",
        ),
        (
            [
                '{"context": "c", "choices": ["a", "b"], "label": 0}',
                '{"context": "c", "choices": ["a"], "label": 0}',
            ],
            "multiple_choice",
            r"rows\.jsonl:2: 'choices' must be a list of at least 2",
        ),
        (['{"text": "ok", "label": 2}'], "classification", r"rows\.jsonl:1: label 2 out of range .* 0\.\.1"),
        (["[1, 2]"], "classification", r"rows\.jsonl:1: expected a JSON object"),
    ],
)
def test_user_jsonl_errors_name_file_and_line(
    tmp_path: Path, lines: list[str], fmt: str, message: str
) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        load_task_jsonl(path, fmt, label_names=["neg", "pos"] if fmt == "classification" else None)


def test_user_jsonl_infers_format_and_reports_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "mc.jsonl"
    path.write_text('{"context": "c", "choices": ["a", "b", "c"], "label": 2, "id": 7}\n', encoding="utf-8")
    rows = load_task_jsonl(path)
    assert rows == [{"context": "c", "choices": ["a", "b", "c"], "label": 2, "id": 7}]
    assert infer_format(rows) == "multiple_choice"
    with pytest.raises(ValueError, match="match no task format"):
        infer_format([{"question": "q", "label": 0}])
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        load_task_jsonl(tmp_path / "missing.jsonl", "classification")
