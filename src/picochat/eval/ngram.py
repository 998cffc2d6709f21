"""Add-k smoothed bigram language model over token ids: the baseline every report compares the Transformer to.

    P(next = j | prev = i) = (c(i, j) + k) / (c(i) + k·V)                         (add-k / Lidstone smoothing)

with c(i, j) the count of the pair (i, j) in the training ids and c(i) = Σ_j c(i, j) the count of i as a
left context; k = 1 is Laplace. The first token of a sequence has no left context and gets the add-k smoothed
unigram P(j) = (c(j) + k) / (N + k·V). Cross-entropy is reported in nats per token and in bits per byte,
bpb = Σ −ln P / ln 2 / n_bytes, so models with different tokenizers can be compared (as in GPT-2 §3,
following the bits-per-character tradition of the character-LM literature).

Storage: a dense V×V float32 table is 256 MB at V = 8192, so the pair counts are kept sparse, CSR-style:
the distinct pair codes i·V + j from `np.unique`, sorted, so row i is a contiguous slice found with
`np.searchsorted`. Log-probabilities are computed on the fly from counts; nothing V×V is ever materialised.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

K_GRID = (0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class BigramLM:
    """Fitted counts. Build with `BigramLM.fit`; every query is a pure function of these arrays."""

    vocab_size: int  # V
    k: float  # add-k pseudo-count, > 0
    pair_codes: np.ndarray  # (P,) int64, sorted distinct prev·V + next
    pair_counts: np.ndarray  # (P,) int64, count of each pair
    row_totals: np.ndarray  # (V,) int64, c(prev) as a left context
    unigram: np.ndarray  # (V,) int64, c(token) over all training ids

    @classmethod
    def fit(cls, ids: np.ndarray, vocab_size: int, k: float = 0.1) -> BigramLM:
        """Count bigrams of one id stream (documents joined by an end-of-text id, as the shards store them)."""
        ids = _check_ids(ids, vocab_size, "ids")
        if not k > 0:
            raise ValueError(f"k must be > 0 (add-k smoothing), got {k}")
        codes = ids[:-1] * vocab_size + ids[1:]  # (N-1,) pair code prev·V + next
        pair_codes, pair_counts = np.unique(codes, return_counts=True)
        return cls(
            vocab_size=vocab_size,
            k=float(k),
            pair_codes=pair_codes,
            pair_counts=pair_counts.astype(np.int64),
            row_totals=np.bincount(ids[:-1], minlength=vocab_size).astype(np.int64),
            unigram=np.bincount(ids, minlength=vocab_size).astype(np.int64),
        )

    def with_k(self, k: float) -> BigramLM:
        """The same counts with another smoothing constant (counts are shared, not copied)."""
        if not k > 0:
            raise ValueError(f"k must be > 0 (add-k smoothing), got {k}")
        return BigramLM(
            vocab_size=self.vocab_size,
            k=float(k),
            pair_codes=self.pair_codes,
            pair_counts=self.pair_counts,
            row_totals=self.row_totals,
            unigram=self.unigram,
        )

    def pair_count(self, prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        """c(prev, next) for arrays of equal shape, by binary search in the sorted pair codes."""
        codes = np.asarray(prev, dtype=np.int64) * self.vocab_size + np.asarray(nxt, dtype=np.int64)
        # fit() sees at least one pair, so pair_codes is never empty and the clipped index is valid
        pos = np.minimum(np.searchsorted(self.pair_codes, codes), len(self.pair_codes) - 1)
        return np.where(self.pair_codes[pos] == codes, self.pair_counts[pos], 0)

    def logprob(self, prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        """ln P(next | prev), elementwise over arrays of equal shape; float64."""
        prev = np.asarray(prev, dtype=np.int64)
        num = self.pair_count(prev, nxt) + self.k
        den = self.row_totals[prev] + self.k * self.vocab_size
        return np.log(num) - np.log(den)

    def unigram_logprob(self, tokens: np.ndarray) -> np.ndarray:
        """ln P(token) under the add-k unigram, the fallback for a sequence's first token."""
        num = self.unigram[np.asarray(tokens, dtype=np.int64)] + self.k
        return np.log(num) - math.log(self.unigram.sum() + self.k * self.vocab_size)

    def next_logprobs(self, prev: int) -> np.ndarray:
        """ln P(· | prev) over the whole vocabulary, (V,); one row at a time, never the V×V table."""
        lo, hi = np.searchsorted(self.pair_codes, [prev * self.vocab_size, (prev + 1) * self.vocab_size])
        row = np.full(self.vocab_size, self.k)
        row[self.pair_codes[lo:hi] - prev * self.vocab_size] += self.pair_counts[lo:hi]
        return np.log(row) - math.log(self.row_totals[prev] + self.k * self.vocab_size)

    def token_nll(self, ids: np.ndarray) -> np.ndarray:
        """−ln P of every token of one sequence, (N,): unigram for the first, bigram for the rest."""
        ids = _check_ids(ids, self.vocab_size, "ids", min_len=1)
        first = -self.unigram_logprob(ids[:1])
        return np.concatenate([first, -self.logprob(ids[:-1], ids[1:])])

    def mean_nll(self, ids: np.ndarray) -> float:
        """Cross-entropy in nats per token over one sequence."""
        return float(self.token_nll(ids).mean())

    def bits_per_byte(self, ids: np.ndarray, n_bytes: int) -> float:
        """Total NLL in bits divided by the UTF-8 byte count of the text the ids encode."""
        if n_bytes <= 0:
            raise ValueError(
                f"n_bytes must be the positive UTF-8 length of the evaluated text, got {n_bytes}"
            )
        return float(self.token_nll(ids).sum() / math.log(2) / n_bytes)


def fit_k(
    train_ids: np.ndarray, val_ids: np.ndarray, vocab_size: int, grid: tuple[float, ...] = K_GRID
) -> tuple[BigramLM, dict[float, float]]:
    """Fit counts on train and pick the k in `grid` with the lowest validation nats/token.
    Returns the chosen model and {k: val nll} for the report."""
    base = BigramLM.fit(train_ids, vocab_size, k=grid[0])
    scores = {k: base.with_k(k).mean_nll(val_ids) for k in grid}
    best = min(scores, key=scores.__getitem__)
    return base.with_k(best), scores


def _check_ids(ids: np.ndarray, vocab_size: int, name: str, min_len: int = 2) -> np.ndarray:
    arr = np.asarray(ids)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(
            f"{name} must be a 1-D integer array of token ids, got shape {arr.shape} dtype {arr.dtype}"
        )
    if len(arr) < min_len:
        raise ValueError(f"{name} has {len(arr)} tokens; need at least {min_len}")
    if vocab_size <= 0 or arr.min() < 0 or arr.max() >= vocab_size:
        raise ValueError(
            f"{name} holds ids in [{arr.min()}, {arr.max()}] but vocab_size is {vocab_size}; "
            "pass the tokenizer's vocab_size (all ids incl. special tokens)"
        )
    return arr.astype(np.int64)
