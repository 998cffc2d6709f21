"""Shared helpers for the speed benchmarks: machine description, measured matmul peak per dtype, the
dtype choice that follows from it, and interleaved timing with medians.

Interleaving (A, B, A, B, ...) and taking medians is what makes a ratio trustworthy on a noisy, shared
machine: a slow patch hits both sides instead of one. MFU follows the PaLM paper (arXiv 2204.02311,
appendix B): achieved model FLOP/s over peak FLOP/s, where the peak is measured here with large matmuls
rather than taken from a data sheet (CPUs differ: AMX makes bf16 ~2x fp32, AVX2 alone makes it 10-30x
slower).
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch

from picochat.allocator import allocator_chosen, tune_malloc

M = TypeVar("M")  # one measurement: seconds, tokens/s, or a small record of both


def machine() -> str:
    """CPU model and core count (from lscpu where available), torch version, and the GPU if any."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5).stdout
        fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        cpu = fields.get("Model name", cpu).strip()
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}{gpu}"


def allocator() -> str:
    """Tune glibc malloc as the picochat CLI does (picochat/allocator.py), for the whole process: both
    frameworks measured here run under the same allocator. PICOCHAT_MALLOC=default measures without."""
    if tune_malloc():
        return "malloc: glibc tuned for the whole process, both sides (PICOCHAT_MALLOC=default: off)"
    return f"malloc: left as it is ({allocator_chosen(os.environ) or 'not glibc'})"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """bf16/fp16 autocast, or nothing for plain fp32 (dtype None)."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def matmul_peak(device: torch.device, dtype: torch.dtype | None, n: int, repeats: int = 10) -> float:
    """Peak FLOP/s of an n×n×n matmul (2·n³ FLOPs, best of `repeats`) in fp32 (dtype None) or under
    autocast to dtype. The best run, not the median: a peak is what the hardware can do, and noise on a
    shared machine only ever slows a run down."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    times = []
    with autocast(device, dtype):
        a @ b  # warm-up: thread pool, kernel selection
        for _ in range(repeats):
            sync(device)
            t = time.perf_counter()
            a @ b
            sync(device)
            times.append(time.perf_counter() - t)
    return 2 * n**3 / min(times)


@dataclass(frozen=True, slots=True)
class DtypeChoice:
    dtype: torch.dtype | None  # None = fp32
    peak_fp32: float  # FLOP/s
    peak_bf16: float  # FLOP/s under bf16 autocast

    @property
    def name(self) -> str:
        return "bfloat16" if self.dtype is not None else "float32"

    @property
    def peak(self) -> float:
        return self.peak_bf16 if self.dtype is not None else self.peak_fp32

    def describe(self) -> str:
        return (
            f"matmul peak: fp32 {self.peak_fp32 / 1e9:.1f} GFLOP/s, bf16 autocast {self.peak_bf16 / 1e9:.1f} "
            f"GFLOP/s -> dtype {self.name} (the faster one, for both frameworks)"
        )


def choose_dtype(device: torch.device) -> DtypeChoice:
    """Measure fp32 and bf16 matmul peaks and pick the faster dtype. On a CPU bf16 is measured on a smaller
    matmul first so that a CPU without bf16 units (10-30x slower) does not stall the benchmark; on a GPU a
    small matmul only measures launch latency, so both are measured at full size."""
    n = 8192 if device.type == "cuda" else 1536
    fp32 = matmul_peak(device, None, n)
    bf16 = matmul_peak(device, torch.bfloat16, 512, repeats=2) if device.type == "cpu" else math.inf
    if bf16 > 0.5 * fp32:  # plausible contender: measure it at full size
        bf16 = matmul_peak(device, torch.bfloat16, n)
    return DtypeChoice(dtype=torch.bfloat16 if bf16 > fp32 else None, peak_fp32=fp32, peak_bf16=bf16)


def interleaved(runs: dict[str, Callable[[], M]], rounds: int) -> dict[str, list[M]]:
    """Call each run once per round, in alternating order (A, B, B, A, A, B, ...); each run returns its own
    measurement (e.g. seconds). Returns every measurement per run."""
    names = list(runs)
    out: dict[str, list[M]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            out[name].append(runs[name]())
    return out


def median(values: list[float]) -> float:
    return statistics.median(values)


def spread(values: list[float]) -> str:
    """min..max as a short string, to show how noisy the machine was."""
    return f"{min(values):.3g}..{max(values):.3g}"
