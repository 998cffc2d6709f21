"""glibc malloc tuning (picochat/allocator.py): it stops large buffers from being page-faulted in on every
allocation, and leaves an allocator the user chose alone."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from picochat.allocator import allocator_chosen

# 20 "steps" that each hold two buffers of 8 MiB and more (a tiny model's embedding gradient is 8 MiB),
# 64 KiB larger each step (longer answers, a larger batch); prints the minor page faults of the steps after
# a warm-up one. With glibc's defaults a buffer larger than any freed before is fresh mmap'd memory, so each
# step faults all its pages in again.
FAULTS = """
import resource, torch
from picochat.allocator import tune_malloc
print(tune_malloc())
def steps(first, n):
    for i in range(first, first + n):
        buffers = [torch.ones(2048 + 16 * i, 1024) for _ in range(2)]
        del buffers
steps(0, 1)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
steps(1, 20)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(env_extra: dict[str, str]) -> tuple[str, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "PICOCHAT_MALLOC"}
    env.pop("LD_PRELOAD", None)
    out = subprocess.run(
        [sys.executable, "-c", FAULTS], env={**env, **env_extra}, capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0], int(out[1])


def huge_pages_always() -> bool:
    """Transparent huge pages for every allocation: 2 MiB faults, too few to count 4 KiB pages by."""
    try:
        return "[always]" in Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return False


@pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc" or huge_pages_always(),
    reason="glibc with 4 KiB pages only",
)
def test_tuned_malloc_reuses_large_buffers() -> None:
    tuned, tuned_faults = faults({})
    default, default_faults = faults({"PICOCHAT_MALLOC": "default"})
    assert (tuned, default) == ("True", "False")
    # untuned, every step faults its 16+ MiB in again (4096+ pages of 4 KiB; measured 88.7k faults in all)
    assert default_faults > 20 * 3000, (tuned_faults, default_faults)
    assert tuned_faults < default_faults / 4, (tuned_faults, default_faults)  # measured 0.6k-15k


def test_an_allocator_the_user_chose_is_left_alone() -> None:
    assert allocator_chosen({}) is None
    assert allocator_chosen({"PATH": "/bin"}) is None
    assert allocator_chosen({"PICOCHAT_MALLOC": "default"}) == "PICOCHAT_MALLOC=default"
    assert (
        allocator_chosen({"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"})
        == "LD_PRELOAD=/usr/lib/libjemalloc.so.2"
    )
    assert allocator_chosen({"LD_PRELOAD": "libtcmalloc_minimal.so.4"}) is not None
    assert allocator_chosen({"MALLOC_ARENA_MAX": "2"}) == "MALLOC_ARENA_MAX is set"
    assert allocator_chosen({"PICOCHAT_MALLOC": "tuned"}) is None
    with pytest.raises(ValueError, match="PICOCHAT_MALLOC must be 'tuned' or 'default'.*'off'"):
        allocator_chosen({"PICOCHAT_MALLOC": "off"})
