"""Held-out language-modelling quality: loss and bits per byte of a GPT, and the n-gram baselines beside it.

Bits per byte = total NLL in nats / ln 2 / UTF-8 bytes of the text (GPT-2 §3 reports bpb/bpc so that models
with different tokenizers compare). The GPT is scored on the whole held-out split in non-overlapping
windows of block_size + 1 tokens (each window predicts its last block_size tokens; context restarts at a
window edge, so this is slightly pessimistic next to a sliding window). The bigram and unigram baselines
(add-k smoothed, `eval/ngram.py`, k chosen on the held-out split as `fit_k` does) are scored on the same
token ids, so every report shows how much the Transformer beats counting.

Deviation: when `max_tokens` caps the GPT's evaluation, bpb uses the split's tokens-per-byte ratio for the
evaluated prefix (as `train/pretrain.py` does), since a prefix has no exact byte count.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from picochat.eval.ngram import fit_k
from picochat.model import GPT
from picochat.tokenizer import Tokenizer


def lm_windows(ids: np.ndarray, block_size: int) -> list[np.ndarray]:
    """Non-overlapping windows of up to block_size + 1 tokens covering `ids`; consecutive windows share one
    token (the last input of one is the first of the next), so every token but the first is predicted once."""
    step = block_size
    return [
        ids[s : s + block_size + 1]
        for s in range(0, max(len(ids) - 1, 1), step)
        if len(ids[s : s + block_size + 1]) > 1
    ]


@torch.no_grad()
def evaluate_lm(
    model: GPT, val_ids: np.ndarray, val_bytes: int, *, batch_size: int = 8, max_tokens: int = 0
) -> dict[str, float]:
    """{"val/loss" (nats/token), "val/bpb", "val/tokens"} over the held-out ids (all of them, or the first
    max_tokens). val_bytes is the UTF-8 size of the text that all of val_ids encode."""
    if val_bytes <= 0:
        raise ValueError(f"val_bytes must be the positive UTF-8 size of the held-out text, got {val_bytes}")
    ids = np.asarray(val_ids, dtype=np.int64)
    if len(ids) < 2:
        raise ValueError(f"held-out split has {len(ids)} tokens; need at least 2")
    if max_tokens:
        ids = ids[: max_tokens + 1]
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    windows = lm_windows(ids, model.config.block_size)
    total, count = 0.0, 0
    for i in range(0, len(windows), batch_size):
        chunk = windows[i : i + batch_size]
        same = [w for w in chunk if len(w) == len(chunk[0])]  # full windows batch; a short tail goes alone
        for group in (same, [w for w in chunk if len(w) != len(chunk[0])]):
            if not group:
                continue
            rows = torch.from_numpy(np.stack(group)).to(device)  # (B, T+1)
            logits, _ = model(rows[:, :-1])  # (B, T, V)
            nll = F.cross_entropy(logits.float().flatten(0, 1), rows[:, 1:].flatten(), reduction="sum")
            total += float(nll)
            count += rows[:, 1:].numel()
    model.train(was_training)
    nats = total / count
    tokens_per_byte = len(val_ids) / val_bytes
    return {"val/loss": nats, "val/bpb": nats * tokens_per_byte / math.log(2), "val/tokens": float(count)}


def bigram_baseline(
    train_ids: np.ndarray, val_ids: np.ndarray, vocab_size: int, val_bytes: int
) -> dict[str, float]:
    """Add-k bigram and unigram cross-entropy on the held-out ids, k picked from ngram.K_GRID on val.
    Returns {"bigram/loss", "bigram/bpb", "unigram/loss", "unigram/bpb", "k"} (losses in nats/token)."""
    if val_bytes <= 0:
        raise ValueError(f"val_bytes must be the positive UTF-8 size of the held-out text, got {val_bytes}")
    train = np.asarray(train_ids, dtype=np.int64)
    val = np.asarray(val_ids, dtype=np.int64)
    bigram, _ = fit_k(train, val, vocab_size)
    bi_nll = float(bigram.token_nll(val).sum())
    uni_nll = float(-bigram.unigram_logprob(val).sum())
    n, to_bits = len(val), 1.0 / math.log(2) / val_bytes
    return {
        "bigram/loss": bi_nll / n,
        "bigram/bpb": bi_nll * to_bits,
        "unigram/loss": uni_nll / n,
        "unigram/bpb": uni_nll * to_bits,
        "k": bigram.k,
    }


def evaluate_data_dir(
    model: GPT, tok: Tokenizer, data_dir: str | Path, *, batch_size: int = 8, max_tokens: int = 0
) -> dict[str, Any]:
    """GPT bpb and the bigram baseline on the shards of a `picochat tokenizer` data dir.
    The checkpoint's tokenizer must be the one the shards were written with."""
    from picochat.train.pretrain import open_data

    data = open_data(Path(data_dir))
    if data.tok.identity() != tok.identity():
        raise ValueError(
            f"{data_dir}/tokenizer.json is not the checkpoint's tokenizer, so the token ids mean different "
            "things; pass the data dir this model was pre-trained on (runs/NAME/data)"
        )
    out: dict[str, Any] = evaluate_lm(
        model, data.val_ids, data.val_bytes, batch_size=batch_size, max_tokens=max_tokens
    )
    out.update(bigram_baseline(data.train_ids, data.val_ids, tok.vocab_size, data.val_bytes))
    return out
