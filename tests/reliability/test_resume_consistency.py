"""A `--resume` that finds the work already done must not redo it differently: the reward model's final
normalisation is not applied twice, and `run.dtype=auto` is not measured again (in-process, micro)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

import picochat.train.loop as loop
from picochat.checkpoint import MODEL_FILE, checkpoint_meta, save_checkpoint
from picochat.config import CollectConfig, OptimConfig, PretrainConfig, RewardConfig, RunConfig, load_config
from picochat.data.preferences import PreferenceRecord, write_preferences
from picochat.model import GPT, GPTConfig
from picochat.tokenizer import Tokenizer
from picochat.train.pretrain import pretrain
from picochat.train.reward import train_reward

WORDS = ["fox", "dog", "light", "window", "lazy", "quick", "brown", "art", "thou", "soft"]


def romeo_records(n: int, seed: int) -> list[PreferenceRecord]:
    """K = 3 answers; the one with more "Romeo" ranks higher (gold-labelled, tie-free)."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        counts = rng.sample([0, 1, 2], 3)
        answers = [" ".join([rng.choice(WORDS) for _ in range(3)] + ["Romeo"] * c) for c in counts]
        ranking = sorted(range(3), key=lambda j: -counts[j])
        records.append(PreferenceRecord(f"Tell me {i}.", answers, ranking, "gold", task={"family": "romeo"}))
    return records


def test_rm_resume_after_the_final_resave_keeps_the_normalisation(tok: Tokenizer, tmp_path: Path) -> None:
    """Killed after the normalised re-save, before summary.json: --resume must reuse the recorded
    bias and std (it used to normalise the normalised head again and report a bias of ~0)."""
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "sft", GPT(GPTConfig.from_preset("micro", vocab_size=tok.vocab_size)), tok)
    train = write_preferences(tmp_path / "train.jsonl", romeo_records(16, seed=0))
    heldout = write_preferences(tmp_path / "heldout.jsonl", romeo_records(8, seed=1))
    cfg = RewardConfig(
        sft=str(tmp_path / "sft"), data=[str(train)], heldout=str(heldout), shift=str(heldout),
        collect=CollectConfig(), optim=OptimConfig(lr=1e-2, warmup_steps=1, max_steps=4, batch_size=4),
        run=RunConfig(progress=False, eval_every=4, save_every=4, log_every=4, dtype="float32"),
    )  # fmt: skip
    out = tmp_path / "rm"
    first = train_reward(cfg, out, log=lambda *a: None)
    assert abs(first["rm/bias"]) > 1e-3  # a real shift, so that "normalised twice" would show
    weights = (out / "ckpt" / MODEL_FILE).read_bytes()
    (out / "summary.json").unlink()  # the kill: after the final re-save, before the summary

    again = train_reward(cfg, out, resume=True, log=lambda *a: None)
    assert again["rm/bias"] == first["rm/bias"]
    assert again["rm/reference_std"] == first["rm/reference_std"]
    assert again["rm/accuracy"] == first["rm/accuracy"]
    assert (out / "ckpt" / MODEL_FILE).read_bytes() == weights
    meta = checkpoint_meta(out / "ckpt")
    assert meta["bias"] == first["rm/bias"] and meta["normalised_at_step"] == 4
    assert json.loads((out / "summary.json").read_text())["rm/bias"] == first["rm/bias"]


def pretrain_config(corpus: Path, steps: int, dtype: str) -> PretrainConfig:
    return load_config(PretrainConfig, None, [
        f"data.path={corpus}", "data.vocab_size=300", "model.preset=micro", "model.block_size=32",
        "optim.batch_size=4", f"optim.max_steps={steps}", "optim.warmup_steps=1", f"run.save_every={steps}",
        "run.eval_every=100", "run.eval_batches=1", "run.progress=false", f"run.dtype={dtype}",
        "sample_prompt=ROMEO:",
    ])  # fmt: skip


@pytest.fixture
def measures_once(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """run.dtype=auto's timing says "bf16 is fast" the first time and "it is not" ever after (a machine
    that got busier, or another machine). Returns the list of calls."""
    calls: list[str] = []

    def bf16_is_fast(device_type: str) -> bool:
        calls.append(device_type)
        return len(calls) == 1

    monkeypatch.setattr(loop, "bf16_is_fast", bf16_is_fast)
    return calls


def dtype_of(out: Path) -> str:
    return checkpoint_meta(out / "ckpt")["dtype"]


def run_pretrain(cfg: PretrainConfig, out: Path, data_dir: Path, resume: bool = False) -> None:
    pretrain(cfg, out, resume=resume, data_dir=data_dir)


def test_auto_dtype_is_not_measured_again_on_resume(
    tmp_path: Path, data_dir: Path, corpus: Path, measures_once: list[str], capsys
) -> None:
    out = tmp_path / "run"
    run_pretrain(pretrain_config(corpus, 2, "auto"), out, data_dir)
    assert dtype_of(out) == "bfloat16" and len(measures_once) == 1
    capsys.readouterr()
    run_pretrain(pretrain_config(corpus, 4, "auto"), out, data_dir, resume=True)
    assert "resumed from" in capsys.readouterr().out
    assert dtype_of(out) == "bfloat16" and len(measures_once) == 1  # the record, not a new timing
    assert checkpoint_meta(out / "ckpt")["step"] == 4
    run_pretrain(pretrain_config(corpus, 2, "auto"), tmp_path / "fresh", data_dir)  # control: no resume
    assert dtype_of(tmp_path / "fresh") == "float32" and len(measures_once) == 2


def test_explicit_dtype_on_resume_wins_with_a_warning(
    tmp_path: Path, data_dir: Path, corpus: Path, measures_once: list[str], capsys
) -> None:
    out = tmp_path / "run"
    run_pretrain(pretrain_config(corpus, 2, "auto"), out, data_dir)
    assert dtype_of(out) == "bfloat16"
    capsys.readouterr()
    run_pretrain(pretrain_config(corpus, 4, "float32"), out, data_dir, resume=True)
    printed = capsys.readouterr().out
    warnings = [line for line in printed.splitlines() if line.startswith("warning: run.dtype")]
    assert len(warnings) == 1 and "float32" in warnings[0] and "bfloat16" in warnings[0]
    assert "dtype=float32" in printed and dtype_of(out) == "float32"
