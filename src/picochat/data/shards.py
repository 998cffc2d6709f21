"""Token shards: a flat array of token ids on disk behind a checked header, read through a memmap.

File layout (after llm.c's `train_gpt2.py` shards): a 256-int32 header — magic, version, bytes per token,
token count — then the ids as uint16 (vocab <= 65,536) or uint32. A reader checks the header and tells the
user which step to rerun when it does not match.

`RandomWindows` draws random contiguous windows of block_size + 1 tokens (input and shifted target). Its
position is the state of one numpy Generator that every rank shares: each step draws the windows of the
whole global batch and rank r takes its own slice, so N ranks see exactly the batches one process would,
with no overlap, and a resumed run continues with the same next batches.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

MAGIC = 20251126
VERSION = 1
HEADER_INTS = 256


class ShardError(ValueError):
    """A token shard that is missing, truncated or of another format."""


def write_shard(path: str | Path, ids: np.ndarray | list[int], vocab_size: int) -> Path:
    """Write ids to `path` atomically (temp file + rename)."""
    path = Path(path)
    dtype = np.uint16 if vocab_size <= 2**16 else np.uint32
    arr = np.asarray(ids, dtype=np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= vocab_size):
        raise ValueError(f"token ids out of range [0, {vocab_size}) for shard {path}")
    header = np.zeros(HEADER_INTS, dtype=np.int32)
    header[:4] = [MAGIC, VERSION, np.dtype(dtype).itemsize, arr.size]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(header.tobytes())
        f.write(arr.astype(dtype).tobytes())
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    return path


def read_shard(path: str | Path) -> np.ndarray:
    """Memory-map the ids of a shard (read-only), checking its header."""
    path = Path(path)
    hint = "rerun `picochat tokenizer` (or delete the file to rebuild it)"
    if not path.is_file():
        raise ShardError(f"token shard {path} does not exist; {hint}")
    size = path.stat().st_size
    if size < HEADER_INTS * 4:
        raise ShardError(f"{path} is too short to be a token shard ({size} bytes); {hint}")
    header = np.fromfile(path, dtype=np.int32, count=HEADER_INTS)
    if header[0] != MAGIC:
        raise ShardError(f"{path} is not a picochat token shard (bad magic {header[0]}); {hint}")
    if header[1] != VERSION:
        raise ShardError(f"{path} has shard version {header[1]}, expected {VERSION}; {hint}")
    itemsize, count = int(header[2]), int(header[3])
    dtype = {2: np.uint16, 4: np.uint32}.get(itemsize)
    if dtype is None:
        raise ShardError(f"{path}: unsupported token size {itemsize} bytes; {hint}")
    if size != HEADER_INTS * 4 + itemsize * count:
        raise ShardError(f"{path} is truncated: header says {count} tokens, file has {size} bytes; {hint}")
    return np.memmap(path, dtype=dtype, mode="r", offset=HEADER_INTS * 4, shape=(count,))


@dataclass
class RandomWindows:
    """Random (x, y) windows of block_size tokens from one shard; resumable via state_dict()."""

    ids: np.ndarray
    block_size: int
    batch_size: int  # per rank
    seed: int
    rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        if len(self.ids) <= self.block_size + 1:
            raise ValueError(
                f"only {len(self.ids)} tokens of data for windows of {self.block_size + 1}: "
                "use more text or a smaller model.block_size"
            )
        self.rng = np.random.default_rng(self.seed)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        n_global = self.batch_size * self.world_size
        starts = self.rng.integers(0, len(self.ids) - self.block_size - 1, size=n_global)
        mine = starts[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
        rows = np.stack([self.ids[s : s + self.block_size + 1] for s in mine]).astype(np.int64)
        chunk = torch.from_numpy(rows)  # (B, T+1)
        return chunk[:, :-1], chunk[:, 1:]

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]


def eval_windows(
    ids: np.ndarray, block_size: int, batch_size: int, n_batches: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Fixed, evenly spaced validation windows (the same every evaluation, so curves are comparable)."""
    n = batch_size * n_batches
    last = len(ids) - block_size - 1
    if last < 1:
        raise ValueError(f"validation split has only {len(ids)} tokens; need more than {block_size + 1}")
    starts = np.linspace(0, last, num=n).astype(np.int64)
    rows = torch.from_numpy(np.stack([ids[s : s + block_size + 1] for s in starts]).astype(np.int64))
    return [(rows[i : i + batch_size, :-1], rows[i : i + batch_size, 1:]) for i in range(0, n, batch_size)]
