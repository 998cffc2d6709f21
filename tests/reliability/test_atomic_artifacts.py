"""Small artefacts (summary.json, config.toml, calibration.json, preferences, plots) are replaced in one
step: a write that fails midway (a full disk, a kill) leaves the previous file byte for byte and no
temporary file beside it; a write that succeeds replaces it."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import matplotlib.pyplot as plt
import pytest

import picochat.checkpoint as checkpoint
from picochat.checkpoint import atomic_write_text, write_json
from picochat.config import PretrainConfig, save_config
from picochat.data.preferences import PreferenceRecord, read_preferences, write_preferences
from picochat.eval.reward import write_calibration
from picochat.report import save_figure

OLD = b'{\n  "rm/bias": -0.97\n}\n'


def disk_full(*args: object, **kwargs: object) -> None:
    raise OSError(28, "disk full")


class HalfWriter:
    """A file whose write stores half the bytes, then fails like a full disk."""

    def __init__(self, f) -> None:
        self.f = f

    def __enter__(self) -> HalfWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.f.close()

    def write(self, data: bytes) -> int:
        self.f.write(data[: len(data) // 2])
        raise OSError(28, "disk full")


def fail_at(where: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the next atomic write fail in its temporary-file write, its fsync or its rename."""
    if where == "write":

        def half_open(path: Path, mode: str) -> HalfWriter:
            return HalfWriter(open(path, mode))  # noqa: SIM115 (closed by HalfWriter.__exit__)

        monkeypatch.setattr(checkpoint, "open", half_open, raising=False)
    elif where == "fsync":
        monkeypatch.setattr(os, "fsync", disk_full)
    else:
        monkeypatch.setattr(os, "replace", disk_full)


@pytest.mark.parametrize("where", ["write", "fsync", "replace"])
def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    path = tmp_path / "summary.json"
    path.write_bytes(OLD)
    with monkeypatch.context() as m:
        fail_at(where, m)
        with pytest.raises(OSError, match="disk full"):
            write_json(path, {"rm/bias": 0.0, "padding": "x" * 10_000})
    assert path.read_bytes() == OLD
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_a_normal_write_replaces_the_file(tmp_path: Path) -> None:
    path = tmp_path / "summary.json"
    path.write_bytes(OLD)
    write_json(path, {"b": 2, "a": [1.5, "é"]})
    assert json.loads(path.read_text(encoding="utf-8")) == {"a": [1.5, "é"], "b": 2}
    assert path.read_text(encoding="utf-8").endswith("}\n")
    atomic_write_text(path, "plain text\n")
    assert path.read_text() == "plain text\n"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_permissions_are_those_of_a_plain_write(tmp_path: Path) -> None:
    """The temporary file is created with open() (umask), not mkstemp's private 0600."""
    (tmp_path / "plain.txt").write_text("x")
    atomic_write_text(tmp_path / "atomic.txt", "x")
    assert (tmp_path / "atomic.txt").stat().st_mode == (tmp_path / "plain.txt").stat().st_mode


def figure_writer(path: Path) -> None:
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    try:
        save_figure(fig, path)
    finally:
        plt.close(fig)


WRITERS: dict[str, tuple[str, Callable[[Path], object]]] = {
    "config.toml": ("config.toml", lambda p: save_config(PretrainConfig(), p)),
    "calibration.json": ("calibration.json", lambda p: write_calibration(p, {"ece": 0.1, "bins": []})),
    "preferences": (
        "train.jsonl",
        lambda p: write_preferences(p, [PreferenceRecord("q", ["a", "b"], [1, 0])]),
    ),
    "plot": ("plot.png", figure_writer),
}


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_stage_artefact_writers_are_atomic(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    file_name, write = WRITERS[name]
    path = tmp_path / file_name
    path.write_bytes(OLD)
    with monkeypatch.context() as m:
        m.setattr(os, "replace", disk_full)
        with pytest.raises(OSError, match="disk full"):
            write(path)
    assert path.read_bytes() == OLD
    assert [p.name for p in tmp_path.iterdir()] == [file_name]
    write(path)  # and without the fault it is replaced
    assert path.read_bytes() != OLD
    if name == "preferences":
        assert read_preferences(path)[0].completions == ["a", "b"]
    assert [p.name for p in tmp_path.iterdir()] == [file_name]
