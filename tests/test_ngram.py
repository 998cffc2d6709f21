"""Bigram baseline: normalisation, the add-k formula by hand, bigram beats unigram, bits-per-byte arithmetic."""

import math

import numpy as np
import pytest

from picochat.eval.ngram import BigramLM, fit_k


def test_add_k_matches_hand_computation() -> None:
    # ids 0 1 0 2 0 1, V = 3: pairs (0,1) x2, (1,0) x1, (0,2) x1, (2,0) x1; c(prev=0) = 3
    ids = np.array([0, 1, 0, 2, 0, 1])
    lm = BigramLM.fit(ids, vocab_size=3, k=0.5)
    assert math.isclose(math.exp(lm.logprob(np.array([0]), np.array([1]))[0]), (2 + 0.5) / (3 + 0.5 * 3))
    assert math.isclose(math.exp(lm.logprob(np.array([0]), np.array([0]))[0]), (0 + 0.5) / (3 + 0.5 * 3))
    assert math.isclose(math.exp(lm.logprob(np.array([1]), np.array([0]))[0]), (1 + 0.5) / (1 + 0.5 * 3))
    # first token: unigram c(0) = 3 of N = 6
    assert math.isclose(math.exp(lm.unigram_logprob(np.array([0]))[0]), (3 + 0.5) / (6 + 0.5 * 3))
    # mean NLL of a sequence: unigram for the first token, bigrams after it
    seq = np.array([0, 1, 0])
    want = -(math.log(3.5 / 7.5) + math.log(2.5 / 4.5) + math.log(1.5 / 2.5)) / 3
    assert math.isclose(lm.mean_nll(seq), want)


@pytest.mark.parametrize("vocab_size", [7, 8192])
def test_next_token_distribution_sums_to_one(vocab_size: int) -> None:
    rng = np.random.default_rng(0)
    ids = rng.integers(0, min(vocab_size, 500), size=20_000)
    lm = BigramLM.fit(ids, vocab_size=vocab_size, k=0.1)
    for prev in [0, 1, 3, vocab_size - 1]:  # seen contexts and (for V = 8192) an unseen one
        row = lm.next_logprobs(prev)
        assert row.shape == (vocab_size,)
        assert math.isclose(np.exp(row).sum(), 1.0, rel_tol=1e-9)
        some = np.array([0, 2, vocab_size - 1])
        np.testing.assert_allclose(row[some], lm.logprob(np.full(3, prev), some))
    assert math.isclose(np.exp(lm.unigram_logprob(np.arange(vocab_size))).sum(), 1.0, rel_tol=1e-9)


def test_bigram_beats_unigram_on_structured_data() -> None:
    rng = np.random.default_rng(1)
    # a Markov chain where each token has two likely successors
    V = 50
    succ = rng.integers(0, V, size=(V, 2))
    seq = [0]
    for _ in range(30_000):
        seq.append(int(succ[seq[-1], rng.integers(0, 2)]) if rng.random() < 0.9 else int(rng.integers(0, V)))
    ids = np.array(seq)
    train, val = ids[:25_000], ids[25_000:]
    lm = BigramLM.fit(train, vocab_size=V, k=0.1)
    bigram = lm.mean_nll(val)
    unigram = float(-lm.unigram_logprob(val).mean())
    assert bigram < unigram - 1.0  # nats/token; the chain has ~1.3 nats of entropy, uniform-ish unigram ~3.9
    best, scores = fit_k(train, val, vocab_size=V)
    assert set(scores) and math.isclose(best.mean_nll(val), min(scores.values()))


def test_bits_per_byte_arithmetic() -> None:
    ids = np.array([0, 1, 0, 2, 0, 1])
    lm = BigramLM.fit(ids, vocab_size=3, k=1.0)
    total_nats = lm.mean_nll(ids) * len(ids)
    assert math.isclose(lm.bits_per_byte(ids, n_bytes=24), total_nats / math.log(2) / 24)
    with pytest.raises(ValueError, match="n_bytes"):
        lm.bits_per_byte(ids, n_bytes=0)


def test_bad_input_is_explained() -> None:
    with pytest.raises(ValueError, match="vocab_size is 3"):
        BigramLM.fit(np.array([0, 1, 5]), vocab_size=3)
    with pytest.raises(ValueError, match="1-D integer"):
        BigramLM.fit(np.array([[0, 1]]), vocab_size=3)
    with pytest.raises(ValueError, match="k must be > 0"):
        BigramLM.fit(np.array([0, 1]), vocab_size=3, k=0)
