"""Helpers for the reliability suite: run `picochat` as a user does (a subprocess with one torch thread),
interrupt it at a chosen training step with a chosen signal, and compare run directories bit for bit."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from picochat.config import CorpusConfig
from picochat.train.pretrain import prepare_data

TIMING_KEYS = (
    "ms",
    "tok/s",
    "elapsed_s",
    "seconds",
    "wall_s",
    "train_s",
    "data_s",
    "rollout/tok_s",
    "update/tok_s",
)


class Cli:
    """Start `python -m picochat.cli ...` with one torch thread; output goes to numbered log files."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.logs.mkdir(parents=True, exist_ok=True)
        self.env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
            "PYTHONFAULTHANDLER": "1",
        }  # SIGABRT dumps every thread's stack (diagnosing a hang)
        self.count = 0

    def start(self, *args: str) -> subprocess.Popen:
        self.count += 1
        out = open(self.logs / f"{self.count:02d}.out", "w")  # noqa: SIM115 (closed in finish)
        err = open(self.logs / f"{self.count:02d}.err", "w")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "picochat.cli", *args], stdout=out, stderr=err, env=self.env, text=True
        )
        proc.log_files = (out, err)  # type: ignore[attr-defined]
        return proc

    def finish(self, proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str, str]:
        """Wait for the process; returns (exit code, stdout, stderr)."""
        try:
            code = proc.wait(timeout=timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for f in proc.log_files:  # type: ignore[attr-defined]
                f.close()
        out, err = (Path(f.name).read_text() for f in proc.log_files)  # type: ignore[attr-defined]
        return code, out, err

    def run(self, *args: str, timeout: float = 300) -> tuple[int, str, str]:
        return self.finish(self.start(*args), timeout)

    @staticmethod
    def read_records(path: Path) -> list[dict[str, Any]]:
        """JSONL records of a file that another process may be writing (a torn last line is skipped)."""
        if not path.is_file():
            return []
        out = []
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    @staticmethod
    def last_step(metrics: Path) -> int:
        return max((int(r.get("step", 0)) for r in Cli.read_records(metrics)), default=0)

    @staticmethod
    def wait_until(proc: subprocess.Popen, ready: Callable[[], bool], timeout: float = 240) -> None:
        """Poll `ready` until it holds; fail if the process exits first or time runs out."""
        deadline = time.monotonic() + timeout
        while not ready():
            if proc.poll() is not None:
                raise AssertionError(f"process exited ({proc.returncode}) before the condition held")
            if time.monotonic() > deadline:
                raise AssertionError("timed out waiting for the process")
            time.sleep(0.01)

    @staticmethod
    def interrupt_at_step(
        proc: subprocess.Popen, metrics: Path, step: int, sig: signal.Signals, rng: random.Random
    ) -> int:
        """Once metrics.jsonl shows `step`, wait a random fraction of a step and send `sig`. Returns the
        last step logged before the signal."""
        Cli.wait_until(proc, lambda: Cli.last_step(metrics) >= step)
        time.sleep(rng.uniform(0.0, 0.05))  # land anywhere in a step: forward, backward, checkpoint write
        seen = Cli.last_step(metrics)
        proc.send_signal(sig)
        return seen

    @staticmethod
    def curve(metrics: Path) -> list[dict[str, Any]]:
        """The metrics log without wall-clock fields: what must be equal step for step."""
        return [Cli.without_timing(r) for r in Cli.read_records(metrics)]

    @staticmethod
    def assert_same_tensors(a: Path, b: Path) -> None:
        """Two safetensors files hold the same names with bitwise-equal tensors (and equal bytes)."""
        ta, tb = load_file(str(a)), load_file(str(b))
        assert sorted(ta) == sorted(tb), (a, b)
        for name in ta:
            assert ta[name].dtype == tb[name].dtype and ta[name].shape == tb[name].shape, name
            assert torch.equal(ta[name], tb[name]), f"{a}: tensor {name} differs from {b}"
        assert a.read_bytes() == b.read_bytes(), f"{a} and {b} differ in bytes"

    @staticmethod
    def without_timing(obj: Any) -> Any:
        """`obj` without wall-clock fields, NaN spelled "nan"."""
        if isinstance(obj, dict):
            return {k: Cli.without_timing(v) for k, v in obj.items() if k not in TIMING_KEYS}
        if isinstance(obj, list):
            return [Cli.without_timing(v) for v in obj]
        if isinstance(obj, float) and obj != obj:
            return "nan"  # so that NaN == NaN when two curves are compared
        return obj


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """In-process training in this folder uses one thread, like the subprocesses (the machine is shared)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path / "logs")


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory, sample_text: str) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "text.txt"
    path.write_text(sample_text * 3)
    return path


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory, corpus: Path) -> Path:
    """Token shards every run of a comparison shares (so both sides see the same tokenizer)."""
    out = tmp_path_factory.mktemp("data") / "data"
    prepare_data(CorpusConfig(path=str(corpus), vocab_size=300), out, log=lambda *a: None)
    return out
