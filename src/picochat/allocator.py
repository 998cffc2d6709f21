"""Process-wide glibc malloc settings that keep large CPU tensors from being page-faulted in every step.

Every training step allocates its activations, logits and gradients afresh. glibc's malloc serves a
request above its mmap threshold with new pages from the kernel and unmaps them again on free, and gives
the free top of its heap back once it exceeds the trim threshold, so each step pays the kernel to
zero-fill and fault in the same buffers once more (on the PPO update of benchmarks/ppo_speed.py, the
embedding gradient alone: 2.4 ms to zero 8 MiB). The mmap threshold starts at 128 KiB and grows only to
sizes that were freed before (the trim threshold follows at twice that). `tune_malloc` raises it to
glibc's maximum (32 MiB on 64-bit) and keeps freed memory in the process (trim threshold, top pad), so
steps reuse the heap: the same effect as the MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ / MALLOC_TOP_PAD_
environment variables, or as preloading jemalloc or tcmalloc (what PyTorch's CPU performance guide
recommends). The price is memory kept after a peak: at most the trim threshold above the heap's top.

It changes nothing when the process already chose an allocator (LD_PRELOAD of jemalloc/tcmalloc, any
MALLOC_* variable), on a libc without `mallopt` (macOS, musl's is a no-op), or with
PICOCHAT_MALLOC=default ("tuned", the default, applies it; other values are refused).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys
from collections.abc import Mapping

# mallopt parameters (glibc malloc.h)
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
SETTINGS = {
    M_MMAP_THRESHOLD: 32 << 20,  # glibc's largest (HEAP_MAX_SIZE / 2 on 64-bit); larger values are refused
    M_TRIM_THRESHOLD: 256 << 20,  # free memory kept at the top of the heap before it is given back
    M_TOP_PAD: 64 << 20,  # extra heap requested per brk, fewer system calls while a step grows
}
PRELOADED = ("jemalloc", "tcmalloc", "mimalloc")


def allocator_chosen(env: Mapping[str, str]) -> str | None:
    """Why the process's malloc must be left alone (the user chose it), or None. PICOCHAT_MALLOC is
    "tuned" (or unset) or "default"; any other value is refused."""
    switch = env.get("PICOCHAT_MALLOC", "tuned")
    if switch not in ("tuned", "default"):
        raise ValueError(
            f"PICOCHAT_MALLOC must be 'tuned' or 'default' (glibc's own settings), got {switch!r}"
        )
    if switch == "default":
        return "PICOCHAT_MALLOC=default"
    preload = env.get("LD_PRELOAD", "")
    if any(name in preload for name in PRELOADED):
        return f"LD_PRELOAD={preload}"
    tuned = sorted(k for k in env if k.startswith("MALLOC_"))
    return f"{tuned[0]} is set" if tuned else None


@functools.cache
def tune_malloc() -> bool:
    """Apply SETTINGS through glibc's mallopt once per process; True when they took effect. Raises
    ValueError for a PICOCHAT_MALLOC value other than "tuned" or "default"."""
    if allocator_chosen(os.environ) is not None or sys.platform != "linux":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return False
    if not hasattr(libc, "gnu_get_libc_version"):  # glibc only: musl's mallopt does nothing
        return False
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return all(libc.mallopt(param, value) == 1 for param, value in SETTINGS.items())
