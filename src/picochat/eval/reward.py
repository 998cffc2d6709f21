"""Reward-model evaluation: pairwise accuracy, per task family, calibration and distribution shift.

- Pairwise accuracy (the number InstructGPT, arXiv 2203.02155, reports for its RMs): the share
  of untied (winner, loser) pairs of held-out rankings with r(winner) > r(loser) (equal rewards count
  half). This is the headline; per family it shows which gold labelers the RM has learned.
- Calibration (Stiennon et al., arXiv 2009.01325, also check their RMs'): Bradley–Terry predicts
  P(a beats b) = σ(r_a − r_b). Every pair enters in both orientations, (σ(Δ), 1) and (σ(−Δ), 0), so the
  bins cover [0, 1]; each bin reports its mean prediction and the empirical win frequency, plus the
  expected calibration error (ECE, count-weighted |prediction − frequency|).
- Distribution shift: the same accuracy on rankings of answers from another policy (e.g. a hotter or
  the base model), as the RM must judge the RL policy's outputs, which drift from SFT's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from picochat.checkpoint import write_json
from picochat.data.preferences import PreferenceRecord
from picochat.model import GPT
from picochat.tokenizer import Tokenizer


def pair_deltas(
    records: Sequence[PreferenceRecord], scores: Sequence[Sequence[float]]
) -> list[tuple[str, float]]:
    """(family, r_winner − r_loser) for every untied pair of every record."""
    return [(r.family, s[w] - s[lose]) for r, s in zip(records, scores, strict=True) for w, lose in r.pairs()]


def _right(delta: float) -> float:
    return 1.0 if delta > 0 else 0.5 if delta == 0 else 0.0


def accuracy(deltas: Sequence[float]) -> float:
    """Share of pairs ordered right (ties half); NaN when there are no pairs."""
    return sum(map(_right, deltas)) / len(deltas) if deltas else math.nan


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def sigmoid(x: float) -> float:
    return math.exp(log_sigmoid(x))


def per_family(pairs: Sequence[tuple[str, float]]) -> dict[str, dict[str, float]]:
    """{family: {"accuracy", "n_pairs"}}, families sorted by name."""
    groups: dict[str, list[float]] = {}
    for family, d in pairs:
        groups.setdefault(family, []).append(d)
    return {f: {"accuracy": accuracy(ds), "n_pairs": len(ds)} for f, ds in sorted(groups.items())}


def calibration(deltas: Sequence[float], n_bins: int = 10) -> dict[str, Any]:
    """Reliability data of P(w beats l) = σ(Δ) (both orientations of every pair) and the ECE."""
    if n_bins < 2:
        raise ValueError(f"n_bins={n_bins}; expected >= 2")
    preds = [(sigmoid(d), 1.0) for d in deltas] + [(sigmoid(-d), 0.0) for d in deltas]
    bins = [
        {"lo": i / n_bins, "hi": (i + 1) / n_bins, "n": 0, "sum_pred": 0.0, "sum_win": 0.0}
        for i in range(n_bins)
    ]
    for p, won in preds:
        b = bins[min(int(p * n_bins), n_bins - 1)]
        b["n"] += 1
        b["sum_pred"] += p
        b["sum_win"] += won
    out, ece = [], 0.0
    for b in bins:
        n = b["n"]
        mean_pred = b["sum_pred"] / n if n else None
        freq = b["sum_win"] / n if n else None
        if n:
            ece += n / len(preds) * abs(mean_pred - freq)
        out.append({"lo": b["lo"], "hi": b["hi"], "n": n, "mean_pred": mean_pred, "empirical": freq})
    return {"bins": out, "ece": ece if preds else math.nan, "n_pairs": len(deltas)}


def evaluate_rankings(
    model: GPT, tok: Tokenizer, records: Sequence[PreferenceRecord], n_bins: int = 10, batch_size: int = 64
) -> dict[str, Any]:
    """Accuracy, mean pair loss, per-family accuracy and calibration of the RM on ranked records."""
    from picochat.train.reward import score_records

    scores = score_records(model, tok, records, batch_size)
    pairs = pair_deltas(records, scores)
    deltas = [d for _, d in pairs]
    return {
        "accuracy": accuracy(deltas),
        "loss": -sum(map(log_sigmoid, deltas)) / len(deltas) if deltas else math.nan,
        "n_pairs": len(deltas),
        "n_prompts": len(records),
        "per_family": per_family(pairs),
        "calibration": calibration(deltas, n_bins),
    }


def write_calibration(path: str | Path, calib: dict[str, Any]) -> Path:
    """Write calibration data as JSON (for the report's reliability plot)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, calib, sort_keys=False)
    return path
