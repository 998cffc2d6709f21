"""Killing `picochat pipeline` mid-stage and rerunning it: finished stages are skipped untouched (their
summary.json keeps its bytes and mtime), the stage that was cut off resumes from its last checkpoint
(`--resume`) or restarts cleanly (the same command without it), and the run ends with its report.

One run directory goes through three invocations of the same command:
  1. killed (SIGKILL) in the middle of SFT training, after a few per-step checkpoints;
  2. rerun with --resume: SFT continues from its checkpoint; killed again once PPO has started;
  3. rerun without --resume: PPO restarts from scratch and the pipeline finishes.
The resumed SFT policy must be bitwise equal to an uninterrupted `picochat sft` run of the config the
pipeline wrote (sft/config.toml).
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

from picochat.checkpoint import MODEL_FILE
from picochat.pipeline import STAGE_NAMES, SUMMARY

SFT_STEPS = 10
OVERRIDES = (
    "pretrain.data.vocab_size=300", "sft.n_chitchat=0", f"sft.optim.max_steps={SFT_STEPS}",
    "sft.run.save_every=1", "sft.run.log_every=1", "sft.run.dtype=float32",
)  # fmt: skip


def finished(root: Path) -> dict[str, tuple[bytes, int]]:
    """Per finished stage: the bytes and mtime (ns) of its summary.json."""
    out = {}
    for stage in STAGE_NAMES:
        path = root / stage / SUMMARY
        if path.is_file():
            out[stage] = (path.read_bytes(), path.stat().st_mtime_ns)
    return out


def assert_untouched(before: dict[str, tuple[bytes, int]], root: Path, stdout: str) -> None:
    now = finished(root)
    for stage, (data, mtime) in before.items():
        if stage == "report":  # always rebuilt: it reflects every stage
            continue
        assert now[stage] == (data, mtime), f"{stage}/summary.json was rewritten"
        assert f"{stage}: done already" in stdout, stage


def test_killed_pipeline_resumes_then_restarts_and_finishes(cli, tmp_path: Path, corpus: Path) -> None:
    root = tmp_path / "run"
    command = [
        "pipeline",
        "--preset",
        "micro",
        "--out",
        str(root),
        f"pretrain.data.path={corpus}",
        *OVERRIDES,
    ]

    # 1. kill during SFT training, some steps after its first checkpoint
    proc = cli.start(*command)
    sft_metrics = root / "sft" / "metrics.jsonl"
    cli.wait_until(proc, lambda: cli.last_step(sft_metrics) >= 3)
    proc.send_signal(signal.SIGKILL)
    code, _, _ = cli.finish(proc)
    assert code == -signal.SIGKILL
    done_1 = finished(root)
    assert {"tokenizer", "pretrain", "sample", "eval", "finetune"} <= set(done_1) and "sft" not in done_1
    ckpt_step = json.loads((root / "sft" / "ckpt" / "config.json").read_text())["meta"]["step"]
    assert ckpt_step >= 2  # step 3 was logged; its checkpoint may not have been written

    # an uninterrupted SFT run of the very config the pipeline resolved, beside the next invocation
    ref = cli.start("sft", "--config", str(root / "sft" / "config.toml"), "--out", str(tmp_path / "sft_ref"))

    # 2. --resume: SFT continues from its checkpoint; kill again once PPO has begun
    proc = cli.start(*command, "--resume")
    cli.wait_until(proc, lambda: (root / "ppo" / "config.toml").is_file())
    proc.send_signal(signal.SIGKILL)
    code, stdout_2, err_2 = cli.finish(proc)
    assert code == -signal.SIGKILL, err_2[-2000:]
    assert_untouched(done_1, root, stdout_2)
    resumed_at = int(stdout_2.split(f"resumed from {root / 'sft' / 'ckpt'} at step ")[1].split()[0])
    assert resumed_at >= ckpt_step
    steps = [r["step"] for r in cli.read_records(sft_metrics) if "train/loss" in r]
    assert steps == list(range(1, SFT_STEPS + 1))  # no gap, no repeated step across the kill
    done_2 = finished(root)
    assert {"sft", "rm"} <= set(done_2) and len(done_2) < len(STAGE_NAMES)  # killed in ppo (or just after)

    code, _, err = cli.finish(ref)
    assert code == 0, err[-3000:]
    cli.assert_same_tensors(root / "sft" / "ckpt" / MODEL_FILE, tmp_path / "sft_ref" / "ckpt" / MODEL_FILE)
    assert cli.curve(sft_metrics) == cli.curve(tmp_path / "sft_ref" / "metrics.jsonl")

    # 3. the same command without --resume: PPO restarts cleanly, everything else is skipped
    code, stdout_3, err_3 = cli.run(*command)
    assert code == 0, err_3[-3000:]
    assert_untouched(done_2, root, stdout_3)
    assert "resumed from" not in stdout_3
    assert (root / "report.md").is_file() and (root / "report.html").is_file()
    assert set(finished(root)) == set(STAGE_NAMES)
    if "ppo" not in done_2:  # restarted cleanly: one run of iterations from 1, none repeated
        iterations = [r["iteration"] for r in cli.read_records(root / "ppo" / "metrics.jsonl")]
        assert iterations == list(range(1, len(iterations) + 1))
    record = json.loads((root / "pipeline.json").read_text())
    assert set(record["stages"]) == set(STAGE_NAMES)
