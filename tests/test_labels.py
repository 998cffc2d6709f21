"""SQLite label store: rankings with ties, concurrent writers, crash safety, JSONL export for the RM."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from picochat.cli import main
from picochat.data.preferences import read_preferences
from picochat.serve.labels import LabelStore, export_jsonl, ranking_from_ranks, read_prompts

ANSWERS = ["four", "5", "<script>alert(1)</script>", "five"]


def test_ranking_from_ranks_orders_best_first_and_groups_ties() -> None:
    assert ranking_from_ranks([2, 1, 3, 4]) == ([1, 0, 2, 3], [])
    assert ranking_from_ranks([2, 1, 2, 3]) == ([1, 0, 2, 3], [[0, 2]])
    assert ranking_from_ranks([1, 1, 1]) == ([0, 1, 2], [[0, 1, 2]])


def test_store_round_trips_a_submission(tmp_path: Path) -> None:
    store = LabelStore(tmp_path / "l.db")
    row_id = store.add("2+2?", ANSWERS, [3, 2, 4, 1], labeler="ann")
    (row,) = store.rows()
    assert row.id == row_id
    assert (row.prompt, row.completions, row.ranks, row.ranking) == (
        "2+2?",
        ANSWERS,
        [3, 2, 4, 1],
        [3, 1, 0, 2],
    )
    assert (row.ties, row.all_bad, row.labeler) == (False, False, "ann")
    mode = sqlite3.connect(tmp_path / "l.db").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


@pytest.mark.parametrize(
    ("ranks", "match"),
    [
        ([1, 2, 3], "3 ranks for 4"),
        ([0, 1, 2, 3], "from 1"),
        ([1, 2, 3, 5], "from 1"),
        ([1, True, 2, 3], "integers"),
    ],
)
def test_bad_rankings_are_rejected(tmp_path: Path, ranks: list, match: str) -> None:
    store = LabelStore(tmp_path / "l.db")
    with pytest.raises(ValueError, match=match):
        store.add("p", ANSWERS, ranks)
    assert store.count() == 0


def test_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        LabelStore(tmp_path / "nope" / "l.db")


def test_concurrent_writers_lose_no_rows(tmp_path: Path) -> None:
    store = LabelStore(tmp_path / "l.db")
    errors: list[BaseException] = []

    def writer(w: int) -> None:
        try:
            for j in range(4):
                store.add(f"prompt {w}-{j}", ANSWERS, [1, 2, 3, 4], labeler=f"w{w}")
        except BaseException as e:  # collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    rows = store.rows()
    assert len(rows) == 200
    assert {r.prompt for r in rows} == {f"prompt {w}-{j}" for w in range(50) for j in range(4)}
    assert len({r.id for r in rows}) == 200


def test_committed_rows_survive_a_killed_writer(tmp_path: Path) -> None:
    db = tmp_path / "l.db"
    code = (
        "import sys, time\n"
        "from picochat.serve.labels import LabelStore\n"
        f"s = LabelStore({str(db)!r})\n"
        "for i in range(3): s.add(f'p{i}', ['a', 'b'], [1, 2])\n"
        "print('committed', flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "committed"
    finally:
        proc.kill()  # SIGKILL: no cleanup, no checkpoint of the WAL
        proc.wait()
    assert [r.prompt for r in LabelStore(db).rows()] == ["p0", "p1", "p2"]


def test_export_is_the_reward_model_format(tmp_path: Path) -> None:
    store = LabelStore(tmp_path / "l.db")
    store.add("q1", ANSWERS, [2, 1, 2, 3], labeler="a")
    store.add("q2", ["x", "y"], [2, 1], all_bad=True)
    store.add("q3", ["x", "y", "z"], [3, 1, 2])
    out = tmp_path / "prefs.jsonl"
    assert export_jsonl(tmp_path / "l.db", out) == 2
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines[0] == {
        "prompt": "q1",
        "completions": ANSWERS,
        "ranking": [1, 0, 2, 3],
        "source": "human",
        "ties": [[0, 2]],
    }
    assert lines[1] == {
        "prompt": "q3",
        "completions": ["x", "y", "z"],
        "ranking": [1, 2, 0],
        "source": "human",
    }
    records = read_preferences(out)  # the reward model's own reader accepts it
    assert [r.source for r in records] == ["human", "human"]
    assert records[0].ties == [[0, 2]]
    assert export_jsonl(tmp_path / "l.db", out, include_all_bad=True) == 3


def test_labels_export_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    LabelStore(tmp_path / "l.db").add("q", ["a", "b"], [1, 2])
    out = tmp_path / "o.jsonl"
    assert main(["labels", "export", "--db", str(tmp_path / "l.db"), "--out", str(out)]) == 0
    assert "wrote 1 rankings" in capsys.readouterr().out
    assert json.loads(out.read_text())["ranking"] == [0, 1]
    assert main(["labels", "export", "--db", str(tmp_path / "missing.db"), "--out", str(out)]) == 2
    assert "missing.db does not exist" in capsys.readouterr().err


def test_read_prompts_from_text_and_jsonl(tmp_path: Path) -> None:
    (tmp_path / "p.txt").write_text("first\n\n second \n")
    assert read_prompts(tmp_path / "p.txt") == ["first", "second"]
    (tmp_path / "p.jsonl").write_text('{"prompt": "a"}\n{"prompt": 3}\n')
    with pytest.raises(ValueError, match=r"p\.jsonl:2: expected an object"):
        read_prompts(tmp_path / "p.jsonl")
    (tmp_path / "e.txt").write_text("\n")
    with pytest.raises(ValueError, match="holds no prompts"):
        read_prompts(tmp_path / "e.txt")
