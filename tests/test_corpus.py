"""Tests for picochat.data.corpus: the Shakespeare corpus, reading user text, the held-out split."""

import re
from pathlib import Path

import pytest

from picochat.data.corpus import (
    clean_play_markdown,
    corpus_hash,
    default_corpus,
    read_text_path,
    shakespeare_documents,
    split_documents,
)

HARD_BREAK = "  "  # markdown's two trailing spaces
PLAY = "\n".join(
    [
        "# Hamlet",
        "",
        "## ACT I",
        "",
        "### SCENE I. Elsinore. A platform before the castle.",
        "",
        "_FRANCISCO at his post. Enter to him BERNARDO_",
        "",
        "**BERNARDO**" + HARD_BREAK,
        "Who's there?",
        "",
        "**FRANCISCO**" + HARD_BREAK,
        "Nay, answer me: stand, and unfold yourself.",
        "**BERNARDO**" + HARD_BREAK,
        "__\\[Aside]_" + HARD_BREAK,
        "Long live the king!\\--ho!" + HARD_BREAK,
        "*Exit.*",
        "",
    ]
)


def test_clean_play_markdown_gives_a_plain_script() -> None:
    text = clean_play_markdown(PLAY)
    assert text == (
        "Hamlet\n\nACT I\n\nSCENE I. Elsinore. A platform before the castle.\n\n"
        "FRANCISCO at his post. Enter to him BERNARDO\n\n"
        "BERNARDO:\nWho's there?\n\n"
        "FRANCISCO:\nNay, answer me: stand, and unfold yourself.\n\n"
        "BERNARDO:\n[Aside]\nLong live the king!--ho!\nExit.\n"
    )


def test_shakespeare_has_38_clean_plays() -> None:
    docs = shakespeare_documents()
    assert len(docs) == 38
    assert docs == default_corpus("shakespeare")
    hamlet = next(d for d in docs if d.startswith("Hamlet\n"))
    assert "BERNARDO:\nWho's there?\n" in hamlet
    joined = "".join(docs)
    for syntax in ("**", "_", "#", "\\", "*", "  \n"):
        assert syntax not in joined
    assert 4_500_000 < len(joined) < 5_400_000


def test_default_corpus_rejects_unknown_name() -> None:
    with pytest.raises(ValueError, match="unknown corpus 'bible'.*shakespeare"):
        default_corpus("bible")


def test_read_text_path_file_and_directory(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "two.md").write_text("second\r\ndoc\n", encoding="utf-8")
    (tmp_path / "a.txt").write_bytes("\ufefffirst doc é\n".encode())
    (tmp_path / "notes").write_text("no suffix but text\n", encoding="utf-8")
    (tmp_path / "image.png").write_bytes(b"\x89PNG\x00\x01")  # binary, unknown suffix: skipped
    (tmp_path / "empty.txt").write_text("  \n", encoding="utf-8")  # empty: skipped
    (tmp_path / ".hidden.txt").write_text("secret\n", encoding="utf-8")
    docs = read_text_path(tmp_path)
    assert docs == ["first doc é\n", "second\ndoc\n", "no suffix but text\n"]
    assert read_text_path(tmp_path / "a.txt") == ["first doc é\n"]


def test_read_text_path_errors_name_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.txt"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        read_text_path(missing)
    empty = tmp_path / "empty.txt"
    empty.write_text(" \n\t\n", encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(f"{empty} is empty")):
        read_text_path(empty)
    nul = tmp_path / "nul.txt"
    nul.write_bytes(b"abc\x00def")
    with pytest.raises(ValueError, match=re.escape(f"{nul} is binary: NUL byte at byte offset 3")):
        read_text_path(nul)
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\u00e9".encode("latin-1"))
    with pytest.raises(
        ValueError, match=re.escape(f"{latin} is not UTF-8: undecodable byte 0xe9 at byte offset 3")
    ):
        read_text_path(latin)


def test_read_text_path_directory_errors(tmp_path: Path) -> None:
    empty_dir = tmp_path / "empty_dir"
    empty_dir.mkdir()
    with pytest.raises(ValueError, match=re.escape(f"directory {empty_dir} has no usable text files")):
        read_text_path(empty_dir)
    only_blank = tmp_path / "blank_dir"
    only_blank.mkdir()
    (only_blank / "a.txt").write_text("\n\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"has no usable text files \(1 files: 1 empty"):
        read_text_path(only_blank)
    bad_txt = tmp_path / "bad_dir"
    bad_txt.mkdir()
    (bad_txt / "ok.txt").write_text("fine\n", encoding="utf-8")
    (bad_txt / "z.txt").write_bytes(b"\xff\xfe")
    with pytest.raises(ValueError, match="z.txt is not UTF-8"):
        read_text_path(bad_txt)


def test_split_documents_holds_out_line_aligned_tails() -> None:
    docs = ["".join(f"doc {d} line {i}\n" for i in range(100)) for d in range(3)]
    train, val = split_documents(docs, val_fraction=0.1)
    assert (train, val) == split_documents(docs, val_fraction=0.1, seed=123)
    assert len(train) == len(val) == 3
    for doc, head, tail in zip(docs, train, val, strict=True):
        assert head + tail == doc
        assert head.endswith("\n") and tail.startswith("doc ")
        assert tail not in head
        assert abs(len(tail) / len(doc) - 0.1) < 0.02


def test_split_documents_edge_cases() -> None:
    train, val = split_documents(["just one line without a newline"], val_fraction=0.25)
    assert "".join(train + val) == "just one line without a newline"
    assert len(val) == 1 and len(val[0]) == 8
    train, val = split_documents(["a\nb\n"], val_fraction=0.0)
    assert (train, val) == (["a\nb\n"], [])
    with pytest.raises(ValueError, match="val_fraction must be in"):
        split_documents(["abc"], val_fraction=1.0)


def test_shakespeare_split_is_about_five_percent() -> None:
    docs = shakespeare_documents()
    train, val = split_documents(docs)
    assert len(train) == len(val) == 38
    frac = sum(map(len, val)) / sum(map(len, docs))
    assert 0.045 < frac < 0.055


def test_corpus_hash_depends_on_content_and_boundaries() -> None:
    h = corpus_hash(["ab", "c"])
    assert len(h) == 16 and h == corpus_hash(["ab", "c"])
    assert h != corpus_hash(["a", "bc"])
    assert h != corpus_hash(["c", "ab"])
