"""Crashes in the middle of writing: a kill between the two renames of a checkpoint save, a metrics line
cut short, a full disk during a save. Each time the last good checkpoint survives and a resumed run
ends bitwise equal to an uninterrupted one (in-process, with the shared Trainer)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from picochat.checkpoint import MODEL_FILE, load_checkpoint
from picochat.config import OptimConfig, RunConfig
from picochat.data.shards import RandomWindows
from picochat.model import GPT, GPTConfig
from picochat.tokenizer import Tokenizer
from picochat.train.loop import StepOut, Trainer, read_metrics
from picochat.train.pretrain import lm_loss

STEPS = 8


class Crash(Exception):
    """Stands for the process dying in the middle of a step."""


def make_trainer(tok: Tokenizer, out: Path, loss_fn=lm_loss, seed: int = 0) -> Trainer:
    torch.manual_seed(seed)
    model = GPT(GPTConfig.from_preset("micro", vocab_size=tok.vocab_size, block_size=16))
    ids = np.random.default_rng(0).integers(0, tok.vocab_size, 4000)
    return Trainer(
        model=model, tok=tok, source=RandomWindows(ids, 16, 4, seed=0), loss_fn=loss_fn,
        optim_cfg=OptimConfig(max_steps=STEPS, batch_size=4, warmup_steps=2, lr=1e-2),
        run_cfg=RunConfig(progress=False, log_every=1, eval_every=1000, save_every=1, dtype="float32"),
        out_dir=out,
    )  # fmt: skip


def dies_on_call(n: int):
    calls = {"n": 0}

    def loss_fn(model, batch) -> StepOut:
        calls["n"] += 1
        if calls["n"] == n:
            raise Crash
        return lm_loss(model, batch)

    return loss_fn


def crashed_run(tok: Tokenizer, out: Path, during_step: int) -> None:
    with pytest.raises(Crash):
        make_trainer(tok, out, dies_on_call(during_step)).run()


def assert_same_as(straight: Path, resumed: Path) -> None:
    a, _ = load_checkpoint(straight / "ckpt")
    b, _ = load_checkpoint(resumed / "ckpt")
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), name
    strip = [
        {k: v for k, v in r.items() if k not in ("ms", "tok/s")}
        for r in read_metrics(straight / "metrics.jsonl")
    ]
    again = [
        {k: v for k, v in r.items() if k not in ("ms", "tok/s")}
        for r in read_metrics(resumed / "metrics.jsonl")
    ]
    assert strip == again


@pytest.fixture
def straight(tok: Tokenizer, tmp_path: Path) -> Path:
    make_trainer(tok, tmp_path / "straight").run()
    return tmp_path / "straight"


def test_kill_between_the_two_renames_resumes_from_the_moved_checkpoint(
    tok, tmp_path: Path, straight: Path
) -> None:
    """atomic_dir_write renames ckpt -> ckpt.old, then ckpt.tmp -> ckpt. A kill in between leaves no
    ckpt/; --resume must find ckpt.old (it used to start again from step 0 and then delete ckpt.old)."""
    out = tmp_path / "killed"
    crashed_run(tok, out, during_step=6)  # checkpoint of step 5 on disk
    (out / "ckpt").rename(out / "ckpt.old")
    (out / "ckpt.tmp").mkdir()
    (out / "ckpt.tmp" / MODEL_FILE).write_bytes(b"half a file")
    resumed = make_trainer(tok, out, seed=99)
    assert resumed.resume() and resumed.state.step == 5
    make_trainer(tok, out, seed=99).run(resume=True)
    assert not (out / "ckpt.old").exists()
    assert_same_as(straight, out)


def test_torn_metrics_line_is_dropped_on_resume(tok, tmp_path: Path, straight: Path) -> None:
    out = tmp_path / "torn"
    crashed_run(tok, out, during_step=4)
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "train/lo')  # what a full disk leaves of a line
    make_trainer(tok, out, seed=99).run(resume=True)
    assert_same_as(straight, out)


def test_a_bad_metrics_line_in_the_middle_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2, oops}\n{"step": 3}\n')
    with pytest.raises(ValueError, match=rf"{path}:2: not valid JSON"):
        read_metrics(path)


def test_disk_full_during_a_save_keeps_the_last_good_checkpoint(
    tok, tmp_path: Path, straight: Path, monkeypatch
) -> None:
    """The write of step 4's checkpoint fails (ENOSPC): the step-3 checkpoint stays, loads, and resumes."""
    import picochat.checkpoint as checkpoint

    real_save, calls = checkpoint.save_file, {"n": 0}

    def full_disk(tensors, filename, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 7:  # model + trainer file per save: the 7th write is step 4's model file
            Path(filename).write_bytes(b"\0" * 10)
            raise OSError(28, "No space left on device")
        return real_save(tensors, filename, *args, **kwargs)

    out = tmp_path / "full"
    monkeypatch.setattr(checkpoint, "save_file", full_disk)
    with pytest.raises(OSError, match="No space"):
        make_trainer(tok, out).run()
    monkeypatch.setattr(checkpoint, "save_file", real_save)
    assert json.loads((out / "ckpt" / "config.json").read_text())["meta"]["step"] == 3
    assert not (out / "ckpt.tmp").exists()
    load_checkpoint(out / "ckpt")
    make_trainer(tok, out, seed=99).run(resume=True)
    assert_same_as(straight, out)
