"""Reward model: the K-choose-2 loss against a per-pair loop, reading the last token, normalisation, and a
micro RM that learns a synthetic preference."""

from __future__ import annotations

import itertools
import json
import math
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from picochat.checkpoint import checkpoint_meta, load_checkpoint, save_checkpoint
from picochat.config import CollectConfig, OptimConfig, RewardConfig, RunConfig
from picochat.data.preferences import PreferenceRecord, write_preferences
from picochat.eval.reward import calibration
from picochat.model import GPT, with_head
from picochat.tokenizer import Tokenizer
from picochat.train.reward import (
    RankingSource,
    encode_record,
    normalize_reward,
    pairwise_rank_loss,
    right_pad,
    score_records,
    sequence_rewards,
    train_reward,
)


def naive_loss(
    scores: torch.Tensor, rankings: list[list[int]], ties: list[list[int]], margin: float, eps: float
) -> tuple[torch.Tensor, int, float]:
    """Mean over every (winner, loser) pair, one pair at a time, as a per-pair data loader would see them."""
    losses, right = [], 0.0
    for b, ranking in enumerate(rankings):
        for pos_w, pos_l in itertools.combinations(range(len(ranking)), 2):
            w, lo = ranking[pos_w], ranking[pos_l]
            if {w, lo} <= set(ties[b]):
                continue
            z = scores[b, w] - scores[b, lo] - margin
            losses.append(-(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z))
            right += float(scores[b, w] > scores[b, lo])
    return torch.stack(losses).mean(), len(losses), right / len(losses)


@pytest.mark.parametrize(("margin", "eps"), [(0.0, 0.0), (0.5, 0.1)])
def test_k_choose_2_loss_equals_the_per_pair_loop(margin: float, eps: float) -> None:
    torch.manual_seed(0)
    rankings = [[2, 0, 3, 1], [1, 0], [4, 2, 0, 1, 3, 5], [0, 2, 1]]  # K = 4, 2, 6, 3: padded to 6
    ties = [[], [], [0, 1], []]  # answers 0 and 1 of row 2 are tied (adjacent in its ranking)
    records = [
        PreferenceRecord("p", ["x"] * len(r), r, ties=[t] if t else [])
        for r, t in zip(rankings, ties, strict=True)
    ]
    k_max = 6
    levels = torch.zeros(4, k_max, dtype=torch.long)
    mask = torch.zeros(4, k_max, dtype=torch.bool)
    for b, rec in enumerate(records):
        levels[b, : rec.k] = torch.tensor(rec.levels())
        mask[b, : rec.k] = True
    scores = torch.randn(4, k_max, requires_grad=True)
    padded = scores.masked_fill(~mask, 123.0)  # garbage in the padding must not matter
    out = pairwise_rank_loss(padded, levels, mask, margin, eps)
    (grad_fast,) = torch.autograd.grad(out.mean, scores)
    ref, n_pairs, acc = naive_loss(scores, rankings, ties, margin, eps)
    (grad_ref,) = torch.autograd.grad(ref, scores)
    assert int(out.n_pairs) == n_pairs == 6 + 1 + (15 - 1) + 3
    torch.testing.assert_close(out.mean, ref)
    torch.testing.assert_close(grad_fast, grad_ref)
    assert float(out.accuracy) == pytest.approx(acc)
    assert torch.all(grad_fast[~mask] == 0)


def test_reward_reads_the_end_token_and_ignores_padding(tok: Tokenizer, micro_model: GPT) -> None:
    model = with_head(micro_model, 1).eval()
    record = PreferenceRecord("What is 2 + 3?", ["5", "it is five, I think"], [0, 1])
    seqs = encode_record(tok, record, model.config.block_size)
    assert all(s[-1] == tok.special_id("<|end|>") for s in seqs)
    ids, lengths = right_pad(seqs, tok.eot_id, torch.device("cpu"))
    with torch.no_grad():
        batched = sequence_rewards(model, ids, lengths)
        alone = [float(sequence_rewards(model, torch.tensor([s]), torch.tensor([len(s)]))[0]) for s in seqs]
    torch.testing.assert_close(batched, torch.tensor(alone), atol=1e-5, rtol=1e-5)


def test_normalisation_makes_reference_outputs_mean_zero(tok: Tokenizer, micro_model: GPT) -> None:
    torch.manual_seed(1)
    model = with_head(micro_model, 1).eval()
    with torch.no_grad():
        model.head.bias.fill_(2.5)
    records = [
        PreferenceRecord(f"say {i}", [f"{i} {w}" for w in ("a", "bb", "the fox", "Romeo")], [0, 1, 2, 3])
        for i in range(5)
    ]
    before = [s for row in score_records(model, tok, records) for s in row]
    bias, std = normalize_reward(model, before)
    after = torch.tensor([s for row in score_records(model, tok, records) for s in row])
    assert abs(float(after.mean())) < 1e-5
    assert bias == pytest.approx(-sum(before) / len(before))
    assert std == pytest.approx(float(torch.tensor(before).std()), rel=1e-4)
    assert float(after.std()) == pytest.approx(std, rel=1e-3)  # a bias shift keeps the spread


def test_ranking_source_resumes_at_the_same_batch() -> None:
    items = [([[i, i + 1]] * 2, [0, 1]) for i in range(7)]
    a = RankingSource(items, batch_size=3, pad_id=0, seed=5)
    a.next_batch(), a.next_batch()
    state = a.state_dict()
    b = RankingSource(items, batch_size=3, pad_id=0, seed=5)
    b.load_state_dict(state)
    for _ in range(4):  # crosses an epoch boundary
        torch.testing.assert_close(a.next_batch().ids, b.next_batch().ids)


def test_calibration_bins_are_symmetric() -> None:
    calib = calibration([2.0, -1.0, 0.5, 3.0], n_bins=4)
    counts = [b["n"] for b in calib["bins"]]
    assert sum(counts) == 8 and counts == counts[::-1]
    assert 0.0 <= calib["ece"] <= 1.0


WORDS = ["fox", "dog", "light", "window", "lazy", "quick", "brown", "art", "thou", "soft"]


def word_preference_set(n: int, seed: int) -> list[PreferenceRecord]:
    """K = 4 answers of random words; more occurrences of "Romeo" is better (a tie-free gold ranking)."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        counts = rng.sample([0, 1, 2, 3], 4)
        answers = []
        for c in counts:
            words = [rng.choice(WORDS) for _ in range(rng.randint(3, 6))] + ["Romeo"] * c
            rng.shuffle(words)
            answers.append(" ".join(words))
        ranking = sorted(range(4), key=lambda j: -counts[j])
        task = {"family": "romeo"}
        records.append(
            PreferenceRecord(f"Tell me about {rng.choice(WORDS)} {i}.", answers, ranking, "gold", task=task)
        )
    return records


def test_micro_reward_model_learns_a_synthetic_preference(
    tmp_path: Path, tok: Tokenizer, micro_model: GPT
) -> None:
    save_checkpoint(tmp_path / "sft", micro_model, tok)
    train = write_preferences(tmp_path / "train.jsonl", word_preference_set(64, seed=0))
    heldout = write_preferences(tmp_path / "heldout.jsonl", word_preference_set(32, seed=1))
    cfg = RewardConfig(
        sft=str(tmp_path / "sft"), data=[str(train)], heldout=str(heldout), shift=str(heldout),
        collect=CollectConfig(), optim=OptimConfig(lr=1e-2, warmup_steps=5, max_steps=20, batch_size=8),
        run=RunConfig(progress=False, eval_every=20, save_every=20, log_every=20, dtype="float32"),
    )  # fmt: skip
    summary = train_reward(cfg, tmp_path / "rm", log=lambda *a: None)
    assert summary["rm/accuracy"] > 0.9
    assert summary["rm/per_family"]["romeo"]["n_pairs"] == 32 * 6
    meta = checkpoint_meta(tmp_path / "rm" / "ckpt")
    assert meta["kind"] == "reward" and math.isfinite(meta["bias"]) and meta["std"] > 0
    rm, _ = load_checkpoint(tmp_path / "rm" / "ckpt")
    ref = [s for row in score_records(rm, tok, word_preference_set(64, seed=0)) for s in row]
    assert abs(sum(ref) / len(ref)) < 1e-3  # the saved head carries the normalising bias
    assert json.loads((tmp_path / "rm" / "calibration.json").read_text())["n_pairs"] == 32 * 6


def test_all_tied_training_data_fails_before_collecting_the_evaluation_sets(
    tmp_path: Path, tok: Tokenizer, micro_model: GPT
) -> None:
    save_checkpoint(tmp_path / "sft", micro_model, tok)
    tied = [
        PreferenceRecord("Say hi.", ["hi", "hello", "hey", "yo"], [0, 1, 2, 3], "gold", ties=[[0, 1, 2, 3]])
    ]
    train = write_preferences(tmp_path / "train.jsonl", tied)
    cfg = RewardConfig(sft=str(tmp_path / "sft"), data=[str(train)], run=RunConfig(progress=False))
    with pytest.raises(ValueError, match="no ranked prompts to train on"):
        train_reward(cfg, tmp_path / "rm", log=lambda *a: None)
    assert not (tmp_path / "rm" / "prefs" / "heldout.jsonl").exists()  # nothing sampled for held-out
