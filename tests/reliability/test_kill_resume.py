"""Crash and resume through the real command line: a training stage is interrupted several times at
random steps (SIGKILL, plus one graceful SIGINT/SIGTERM), resumed each time with `--resume`, and must end
bitwise equal to an uninterrupted run: the same weights, the same optimizer state, the same loss curve.

Deterministic settings: float32 (`run.dtype=auto` may pick bf16 on one run and not on another), one torch
thread per process, a checkpoint every step (`run.save_every=1`), so a kill can land in the middle of a
checkpoint write as well as in a forward or backward pass.
"""

from __future__ import annotations

import json
import random
import signal
from pathlib import Path

import pytest

from picochat.checkpoint import CONFIG_FILE, MODEL_FILE, TRAINER_TENSORS

MAX_STEPS = 30
PRETRAIN = (
    "model.preset=micro", "model.block_size=32", "data.vocab_size=300", "optim.batch_size=4",
    f"optim.max_steps={MAX_STEPS}", "optim.warmup_steps=3", "run.save_every=1", "run.log_every=1",
    "run.eval_every=10", "run.eval_batches=1", "run.progress=false", "run.dtype=float32", "run.seed=7",
)  # fmt: skip
SFT_STEPS = 16
SFT = (
    "n_task_demos=60", "n_chitchat=0", "n_chatterbot=8", "eval_tasks=2", "eval_max_new_tokens=4",
    "optim.batch_size=4", f"optim.max_steps={SFT_STEPS}", "optim.warmup_steps=2", "run.save_every=1",
    "run.log_every=1", "run.eval_every=5", "run.eval_batches=1", "run.progress=false", "run.dtype=float32",
)  # fmt: skip
GRACEFUL_EXIT = 130


def kill_schedule(seed: int, n: int, last: int, graceful: signal.Signals) -> list[tuple[int, signal.Signals]]:
    """n increasing random steps in [2, last] (at least 3 apart), all SIGKILL but the one at n // 2."""
    rng = random.Random(seed)
    while True:
        steps = sorted(rng.sample(range(2, last + 1), n))
        if all(b - a >= 3 for a, b in zip(steps, steps[1:], strict=False)):
            break
    return [(s, graceful if i == n // 2 else signal.SIGKILL) for i, s in enumerate(steps)]


def interrupted_run(cli, args: list[str], out: Path, schedule, seed: int) -> list[dict]:
    """Start `args`, interrupt per `schedule`, resume after each interruption, finish. Returns one
    record per interruption: the signal, the step logged before it, the step the run resumed from."""
    rng = random.Random(seed)
    metrics = out / "metrics.jsonl"
    events = []
    proc = cli.start(*args)
    logged = 0  # the last step in metrics.jsonl when the current process started
    for step, sig in schedule:
        # a resumed process rewrites metrics.jsonl only once it has loaded its checkpoint; until then the
        # killed run's steps are still there, so wait for a step this process logged itself
        seen = cli.interrupt_at_step(proc, metrics, max(step, logged + 1), sig, rng)
        code, _, err = cli.finish(proc)
        logged = cli.last_step(metrics)
        event = {"signal": sig.name, "seen": seen, "code": code, "stderr": err}
        if sig == signal.SIGKILL:
            assert code == -signal.SIGKILL, err[-2000:]
        else:
            assert code == GRACEFUL_EXIT and "resume with --resume" in err, err[-2000:]
            saved = json.loads((out / "ckpt" / CONFIG_FILE).read_text())["meta"]["step"]
            assert saved >= seen and saved == cli.last_step(metrics), "graceful stop lost a step"
        proc = cli.start(*args, "--resume")
        events.append(event)
    code, stdout, err = cli.finish(proc)
    assert code == 0, err[-3000:]
    return events


def assert_same_run(cli, a: Path, b: Path) -> None:
    """Two run directories hold bitwise-equal weights and trainer state and the same curve."""
    cli.assert_same_tensors(a / "ckpt" / MODEL_FILE, b / "ckpt" / MODEL_FILE)
    cli.assert_same_tensors(a / "ckpt" / TRAINER_TENSORS, b / "ckpt" / TRAINER_TENSORS)
    curve_a, curve_b = cli.curve(a / "metrics.jsonl"), cli.curve(b / "metrics.jsonl")
    assert [r["step"] for r in curve_a] == [r["step"] for r in curve_b]
    assert curve_a == curve_b
    summary_a = json.loads((a / "summary.json").read_text())
    summary_b = json.loads((b / "summary.json").read_text())
    assert cli.without_timing(summary_a) == cli.without_timing(summary_b)


def pretrain_args(out: Path, data_dir: Path, corpus: Path) -> list[str]:
    return ["pretrain", "--out", str(out), "--data-dir", str(data_dir), f"data.path={corpus}", *PRETRAIN]


def check_pretrain_kills(cli, tmp_path: Path, data_dir: Path, corpus: Path, seed: int) -> list[dict]:
    ref = cli.start(*pretrain_args(tmp_path / "straight", data_dir, corpus))  # runs beside the killed one
    schedule = kill_schedule(seed, 3, MAX_STEPS // 2 + 3, signal.SIGINT)  # leave steps after the last
    events = interrupted_run(cli, pretrain_args(tmp_path / "killed", data_dir, corpus), tmp_path / "killed",
                             schedule, seed)  # fmt: skip
    code, _, err = cli.finish(ref)
    assert code == 0, err[-3000:]
    assert_same_run(cli, tmp_path / "straight", tmp_path / "killed")
    assert (tmp_path / "straight" / "samples.txt").read_text() == (
        tmp_path / "killed" / "samples.txt"
    ).read_text()
    return events


def test_pretrain_survives_three_kills_and_a_sigint_bitwise(
    cli, tmp_path: Path, data_dir: Path, corpus: Path
) -> None:
    events = check_pretrain_kills(cli, tmp_path, data_dir, corpus, seed=0)
    assert [e["signal"] for e in events] == ["SIGKILL", "SIGINT", "SIGKILL"]


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_pretrain_kills_more_seeds(cli, tmp_path: Path, data_dir: Path, corpus: Path, seed: int) -> None:
    check_pretrain_kills(cli, tmp_path, data_dir, corpus, seed)


@pytest.fixture(scope="module")
def base_ckpt(tmp_path_factory: pytest.TempPathFactory, data_dir: Path, corpus: Path) -> Path:
    """A micro base model for the SFT runs (trained once for this module)."""
    from picochat.cli import main

    out = tmp_path_factory.mktemp("base")
    args = pretrain_args(out, data_dir, corpus)
    args = [a for a in args if not a.startswith(("optim.max_steps", "run.save_every"))]
    assert main([*args, "optim.max_steps=6", "run.save_every=6"]) == 0
    return out / "ckpt"


def sft_args(out: Path, base: Path) -> list[str]:
    return ["sft", "--out", str(out), "--ckpt", str(base), *SFT]


def test_sft_survives_a_kill_and_a_sigterm_bitwise(cli, tmp_path: Path, base_ckpt: Path) -> None:
    ref = cli.start(*sft_args(tmp_path / "straight", base_ckpt))
    schedule = kill_schedule(0, 2, SFT_STEPS - 6, signal.SIGTERM)
    events = interrupted_run(cli, sft_args(tmp_path / "killed", base_ckpt), tmp_path / "killed", schedule, 0)
    code, _, err = cli.finish(ref)
    assert code == 0, err[-3000:]
    assert [e["signal"] for e in events] == ["SIGKILL", "SIGTERM"]
    assert_same_run(cli, tmp_path / "straight", tmp_path / "killed")


@pytest.fixture(scope="module")
def rlhf_run(tmp_path_factory: pytest.TempPathFactory, corpus: Path) -> Path:
    """Shards, SFT policy and reward model of a micro pipeline (the inputs of PPO)."""
    from picochat.cli import main

    root = tmp_path_factory.mktemp("rlhf") / "run"
    argv = ["pipeline", "--preset", "micro", "--out", str(root), "--stages", "tokenizer,pretrain,sft,rm",
            f"pretrain.data.path={corpus}", "pretrain.data.vocab_size=300", "sft.n_chitchat=0"]  # fmt: skip
    assert main(argv) == 0
    return root


def ppo_args(out: Path, root: Path) -> list[str]:
    return [
        "ppo", "--out", str(out), "--policy", str(root / "sft" / "ckpt"), "--rm", str(root / "rm" / "ckpt"),
        "--data-dir", str(root / "data"), "ppo.ptx_coef=1.0", "ppo.ptx_block=32", "ppo.iterations=8",
        "ppo.rollout_batch=8", "ppo.minibatch=4", "ppo.max_new_tokens=8", "ppo.n_prompts=32",
        "run.save_every=1", "run.dtype=float32", "run.progress=false",
    ]  # fmt: skip


@pytest.mark.slow
def test_ppo_ptx_survives_kills_bitwise(cli, tmp_path: Path, rlhf_run: Path) -> None:
    """PPO-ptx (policy, separate value model, pre-training windows) killed twice at random optimizer steps
    and stopped once by SIGTERM, which finishes the iteration, checkpoints it and exits 130."""
    ref = cli.start(*ppo_args(tmp_path / "straight", rlhf_run))
    schedule = kill_schedule(0, 3, 40, signal.SIGTERM)  # optimizer steps; 8 per iteration
    interrupted_run(cli, ppo_args(tmp_path / "killed", rlhf_run), tmp_path / "killed", schedule, 0)
    code, _, err = cli.finish(ref)
    assert code == 0, err[-3000:]
    assert_same_run(cli, tmp_path / "straight", tmp_path / "killed")
    cli.assert_same_tensors(
        tmp_path / "straight" / "value" / MODEL_FILE, tmp_path / "killed" / "value" / MODEL_FILE
    )
