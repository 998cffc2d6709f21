"""Human rankings from the labeling page, stored in SQLite and exported as preference JSONL.

InstructGPT (arXiv 2203.02155, §3.4 and appendix B) has labelers rank K answers to a prompt, best to
worst, with ties allowed, and flag answers that are all unacceptable; the reward model then trains on
all C(K, 2) pairs. One submission is one row: prompt, the K completions (JSON), each answer's rank
number (1 = best; equal numbers are ties), the best-first ranking derived from them, whether there are
ties, the all-bad flag, the time and the labeler's name.

The database runs in WAL mode with `synchronous=FULL`, one short connection per call and
`BEGIN IMMEDIATE` writes, so concurrent submissions from many threads never lose a row and a committed
row survives a killed server. `export_jsonl` writes `{"prompt", "completions", "ranking" (best first),
"source": "human"}` per row, the format of the reward-model data, plus `"ties"` (groups of tied answer
indices) when there are ties (the format `picochat.data.preferences` reads); rows flagged all-bad are
left out unless asked for.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS labels (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    prompt TEXT NOT NULL,
    completions TEXT NOT NULL,
    ranks TEXT NOT NULL,
    ranking TEXT NOT NULL,
    ties INTEGER NOT NULL,
    all_bad INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    labeler TEXT NOT NULL
)
"""
MAX_LABELER_CHARS = 64


@dataclass(frozen=True, slots=True)
class LabelRow:
    id: int
    prompt: str
    completions: list[str]
    ranks: list[int]  # rank number of each completion, 1 = best
    ranking: list[int]  # completion indices, best first (ties in index order)
    ties: bool
    all_bad: bool
    created_at: str
    labeler: str


def ranking_from_ranks(ranks: Sequence[int]) -> tuple[list[int], list[list[int]]]:
    """Best-first completion indices and the groups of tied indices, from per-answer rank numbers.

    >>> ranking_from_ranks([2, 1, 2, 3])
    ([1, 0, 2, 3], [[0, 2]])
    """
    ranking = sorted(range(len(ranks)), key=lambda i: (ranks[i], i))
    groups: dict[int, list[int]] = {}
    for i in ranking:
        groups.setdefault(ranks[i], []).append(i)
    return ranking, [g for g in groups.values() if len(g) > 1]


def check_submission(prompt: str, completions: Sequence[str], ranks: Sequence[int], labeler: str) -> None:
    """Raise ValueError unless one rank in 1..K per completion and the texts are strings."""
    K = len(completions)
    if not isinstance(prompt, str) or not all(isinstance(c, str) for c in completions):
        raise ValueError("prompt and completions must be strings")
    if K < 2:
        raise ValueError(f"a ranking needs at least 2 completions, got {K}")
    if len(ranks) != K:
        raise ValueError(f"got {len(ranks)} ranks for {K} completions; give one rank per completion")
    bad = [r for r in ranks if isinstance(r, bool) or not isinstance(r, int) or not 1 <= r <= K]
    if bad:
        raise ValueError(f"ranks must be integers from 1 (best) to {K}; got {list(ranks)}")
    if not isinstance(labeler, str) or len(labeler) > MAX_LABELER_CHARS:
        raise ValueError(f"labeler must be a string of at most {MAX_LABELER_CHARS} characters")


class LabelStore:
    """The SQLite label database at `path` (created with its table if missing)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise FileNotFoundError(
                f"label database {self.path}: directory {self.path.parent} does not exist; create it or pass --db"
            )
        with self._connect() as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(SCHEMA)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        try:
            conn.execute("PRAGMA synchronous=FULL")
            yield conn
        finally:
            conn.close()

    def add(
        self,
        prompt: str,
        completions: Sequence[str],
        ranks: Sequence[int],
        *,
        all_bad: bool = False,
        labeler: str = "",
    ) -> int:
        """Store one submission; returns its row id. Raises ValueError for an invalid ranking."""
        check_submission(prompt, completions, ranks, labeler)
        ranking, ties = ranking_from_ranks(ranks)
        created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")
        row = (prompt, json.dumps(list(completions)), json.dumps(list(ranks)), json.dumps(ranking))
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            cur = conn.execute(
                "INSERT INTO labels (prompt, completions, ranks, ranking, ties, all_bad, created_at, labeler)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (*row, int(bool(ties)), int(all_bad), created, labeler),
            )
            conn.execute("COMMIT")
            return int(cur.lastrowid)

    def rows(self) -> list[LabelRow]:
        with self._connect() as conn:
            found = conn.execute(
                "SELECT id, prompt, completions, ranks, ranking, ties, all_bad, created_at, labeler"
                " FROM labels ORDER BY id"
            ).fetchall()
        return [
            LabelRow(i, p, json.loads(c), json.loads(r), json.loads(rk), bool(t), bool(b), at, who)
            for i, p, c, r, rk, t, b, at, who in found
        ]

    def count(self) -> int:
        with self._connect() as conn:
            return int(conn.execute("SELECT COUNT(*) FROM labels").fetchone()[0])


def export_jsonl(db: str | Path, out: str | Path, *, include_all_bad: bool = False) -> int:
    """Write the preference JSONL for the reward model; returns the number of records written."""
    if not Path(db).is_file():
        raise FileNotFoundError(f"label database {db} does not exist; pass the --db the server wrote to")
    records = []
    for row in LabelStore(db).rows():
        if row.all_bad and not include_all_bad:
            continue
        record: dict = {
            "prompt": row.prompt,
            "completions": row.completions,
            "ranking": row.ranking,
            "source": "human",
        }
        _, ties = ranking_from_ranks(row.ranks)
        if ties:
            record["ties"] = ties
        records.append(record)
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    tmp.replace(out)
    return len(records)


def read_prompts(path: str | Path) -> list[str]:
    """Labeling prompts from a file: `.jsonl` with a "prompt" per line, else one prompt per line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {path} does not exist")
    prompts = []
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        if path.suffix == ".jsonl":
            try:
                item = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f'{path}:{n}: not valid JSON ({e.msg}); expected {{"prompt": "..."}}') from e
            if not isinstance(item, dict) or not isinstance(item.get("prompt"), str):
                raise ValueError(f'{path}:{n}: expected an object with a string "prompt"')
            prompts.append(item["prompt"])
        else:
            prompts.append(line.strip())
    if not prompts:
        raise ValueError(f"prompt file {path} holds no prompts; put one prompt per line")
    return prompts
