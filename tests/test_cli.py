"""The command line as a user runs it: subprocesses, exit codes, one-line errors, outputs on disk."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def picochat(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "picochat.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, sample_text: str) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "text.txt"
    path.write_text(sample_text * 3)
    return path


MICRO = ["model.preset=micro", "model.block_size=32", "data.vocab_size=300", "optim.batch_size=4",
         "run.progress=false", "run.eval_batches=1", "run.log_every=1"]  # fmt: skip


def test_pretrain_writes_checkpoint_config_metrics_and_resumes(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    r = picochat(
        "pretrain", "--out", str(out), f"data.path={corpus}", "optim.max_steps=6", "run.save_every=3", *MICRO
    )
    assert r.returncode == 0, r.stderr
    for name in (
        "ckpt/model.safetensors",
        "ckpt/trainer.json",
        "config.toml",
        "metrics.jsonl",
        "samples.txt",
        "summary.json",
    ):
        assert (out / name).exists(), name
    assert "bits/byte" in r.stdout and str(out) in r.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["val/bpb"] > 0
    # the written config reproduces the run; --resume with more steps continues from step 6
    r2 = picochat(
        "pretrain", "--out", str(out), "--config", str(out / "config.toml"), "--resume", "optim.max_steps=8"
    )
    assert r2.returncode == 0, r2.stderr
    assert "resumed from" in r2.stdout and "at step 6" in r2.stdout
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 8


def test_sample_prints_continuation(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert (
        picochat("pretrain", "--out", str(out), f"data.path={corpus}", "optim.max_steps=2", *MICRO).returncode
        == 0
    )
    r = picochat("sample", "--ckpt", str(out / "ckpt"), "--prompt", "ROMEO:", "max_new_tokens=10", "seed=1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ROMEO:")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["pretrain", "optim.lr=abc"], "optim.lr"),
        (["pretrain", "optim.lrr=1"], "unknown key"),
        (["pretrain", "data.path=/no/such/file"], "/no/such/file"),
        (["sample", "--ckpt", "/no/such/ckpt"], "/no/such/ckpt"),
        (["pretrain", "--config", "/no/such.toml"], "/no/such.toml"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(args: list[str], message: str) -> None:
    r = picochat(*args)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("picochat: error:") and message in lines[0]
    assert "Traceback" not in r.stderr


def test_empty_and_binary_corpus_rejected(tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("   \n")
    binary = tmp_path / "blob.txt"
    binary.write_bytes(b"\x00\x01\x02\xff" * 100)
    for path in (empty, binary):
        r = picochat("pretrain", "--out", str(tmp_path / "o"), f"data.path={path}", *MICRO)
        assert r.returncode == 2 and str(path) in r.stderr and "Traceback" not in r.stderr


def test_sigterm_writes_a_checkpoint_then_resume_finishes(corpus: Path, tmp_path: Path) -> None:
    """A graceful stop (SIGTERM, as from a scheduler, or Ctrl-C) saves the current step before exiting."""
    import signal
    import time

    out = tmp_path / "run"
    args = [
        "pretrain",
        "--out",
        str(out),
        f"data.path={corpus}",
        "optim.max_steps=100000",
        "run.save_every=100000",
        *MICRO,
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "picochat.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "resume with --resume" in stderr
    saved = json.loads((out / "ckpt" / "config.json").read_text())["meta"]["step"]
    assert saved >= 3
    r = picochat(
        "pretrain",
        "--out",
        str(out),
        "--resume",
        f"data.path={corpus}",
        f"optim.max_steps={saved + 2}",
        *MICRO,
    )
    assert r.returncode == 0, r.stderr
    assert f"at step {saved}" in r.stdout
