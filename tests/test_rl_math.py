"""The RLHF tensor math against references written here: hand-worked numbers and plain Python loops."""

from __future__ import annotations

import math

import pytest
import torch

from picochat.train import rl_math


def test_masked_stats_match_torch_on_the_unmasked_slice() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 7, generator=g)
    lengths = [7, 3, 5, 1]
    mask = torch.zeros(4, 7)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
    real = torch.cat([x[b, :n] for b, n in enumerate(lengths)])
    assert torch.allclose(rl_math.masked_mean(x, mask), real.mean())
    assert torch.allclose(rl_math.masked_var(x, mask), real.var(unbiased=True))
    assert torch.allclose(rl_math.masked_var(x, mask, unbiased=False), real.var(unbiased=False))
    white = rl_math.masked_whiten(x, mask)
    expected = (real - real.mean()) / real.std(unbiased=True)
    got = torch.cat([white[b, :n] for b, n in enumerate(lengths)])
    assert torch.allclose(got, expected, atol=1e-5)
    assert (white[mask == 0] == 0).all()
    kept = rl_math.masked_whiten(x, mask, shift_mean=False)
    got_kept = torch.cat([kept[b, :n] for b, n in enumerate(lengths)])
    assert torch.allclose(got_kept, expected + real.mean(), atol=1e-5)
    row_means = rl_math.masked_mean(x, mask, dim=1)
    assert torch.allclose(row_means, torch.stack([x[b, :n].mean() for b, n in enumerate(lengths)]))


def test_logprobs_use_the_temperature_and_entropy_matches_definition() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 5, generator=g)
    ids = torch.randint(5, (2, 3), generator=g)
    lp = rl_math.logprobs_from_logits(logits, ids, temperature=0.5)
    probs = torch.softmax(logits / 0.5, dim=-1)
    for b in range(2):
        for t in range(3):
            assert math.isclose(float(lp[b, t]), math.log(float(probs[b, t, ids[b, t]])), rel_tol=1e-5)
    ent = rl_math.entropy_from_logits(logits, 0.5)
    assert torch.allclose(ent, -(probs * probs.log()).sum(-1), atol=1e-6)
    with pytest.raises(ValueError, match="temperature"):
        rl_math.logprobs_from_logits(logits, ids, temperature=0.0)


def test_kl_estimators_k1_k3() -> None:
    logp = torch.tensor([[-1.0, -2.0, -0.5]])
    ref = torch.tensor([[-1.5, -1.0, -0.5]])
    k1 = rl_math.kl_per_token(logp, ref, "k1")
    assert torch.allclose(k1, torch.tensor([[0.5, -1.0, 0.0]]))
    k3 = rl_math.kl_per_token(logp, ref, "k3")
    # k3 = (r - 1) - log r with log r = ref - logp
    expected = [math.exp(-0.5) - 1 + 0.5, math.exp(1.0) - 1 - 1.0, 0.0]
    assert torch.allclose(k3, torch.tensor([expected]), atol=1e-6)
    assert (k3 >= 0).all()
    with pytest.raises(ValueError, match=r"k1.*k3"):
        rl_math.kl_per_token(logp, ref, "k2")


def test_kl_penalty_is_zero_when_policy_equals_reference() -> None:
    logp = torch.tensor([[-1.0, -2.0, -0.3, 0.0], [-0.7, -0.1, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    score = torch.tensor([2.0, -1.0])
    for est in ("k1", "k3"):
        rewards, kl = rl_math.kl_shaped_rewards(score, logp, logp.clone(), mask, beta=0.3, kl_estimator=est)
        assert (kl == 0).all()
        expected = torch.tensor([[0.0, 0.0, 2.0, 0.0], [0.0, -1.0, 0.0, 0.0]])
        assert torch.equal(rewards, expected)


def test_kl_shaped_rewards_hand_computed() -> None:
    logp = torch.tensor([[-1.0, -1.0, -1.0]])
    ref = torch.tensor([[-2.0, -1.0, -0.5]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    rewards, kl = rl_math.kl_shaped_rewards(torch.tensor([5.0]), logp, ref, mask, beta=0.1)
    # kl k1 = logp - ref = [1, 0, (0.5 masked)]; rewards = -0.1*kl, score on the last real token (t=1)
    assert torch.allclose(kl, torch.tensor([[1.0, 0.0, 0.0]]))
    assert torch.allclose(rewards, torch.tensor([[-0.1, 5.0, 0.0]]))


def gae_loop(
    rewards: list[float], values: list[float], gamma: float, lam: float
) -> tuple[list[float], list[float]]:
    """Plain backwards loop over one episode (terminal after the last step)."""
    adv, last = [0.0] * len(rewards), 0.0
    for t in reversed(range(len(rewards))):
        next_v = values[t + 1] if t + 1 < len(rewards) else 0.0
        delta = rewards[t] + gamma * next_v - values[t]
        last = delta + gamma * lam * last
        adv[t] = last
    return adv, [a + v for a, v in zip(adv, values, strict=True)]


def test_gae_hand_computed_example() -> None:
    # r = [0, 0, 1], V = [0.5, 0.2, 0.4], γ = 0.9, λ = 0.8
    # δ2 = 1 - 0.4 = 0.6;  δ1 = 0 + 0.9·0.4 - 0.2 = 0.16;  δ0 = 0 + 0.9·0.2 - 0.5 = -0.32
    # A2 = 0.6;  A1 = 0.16 + 0.72·0.6 = 0.592;  A0 = -0.32 + 0.72·0.592 = 0.10624
    rewards = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    values = torch.tensor([[0.5, 0.2, 0.4, 9.0]])  # the padded value must be ignored
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    adv, ret = rl_math.gae(rewards, values, mask, gamma=0.9, lam=0.8)
    assert torch.allclose(adv, torch.tensor([[0.10624, 0.592, 0.6, 0.0]]), atol=1e-6)
    assert torch.allclose(ret, torch.tensor([[0.60624, 0.792, 1.0, 0.0]]), atol=1e-6)


def test_gae_matches_backwards_loop_on_ragged_batch() -> None:
    g = torch.Generator().manual_seed(3)
    B, T = 5, 9
    rewards, values = torch.randn(B, T, generator=g), torch.randn(B, T, generator=g)
    lengths = [9, 1, 4, 7, 2]
    mask = torch.zeros(B, T)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
    adv, ret = rl_math.gae(rewards, values, mask, gamma=0.97, lam=0.9)
    for b, n in enumerate(lengths):
        a_ref, r_ref = gae_loop(rewards[b, :n].tolist(), values[b, :n].tolist(), 0.97, 0.9)
        assert torch.allclose(adv[b, :n], torch.tensor(a_ref), atol=1e-5)
        assert torch.allclose(ret[b, :n], torch.tensor(r_ref), atol=1e-5)
        assert (adv[b, n:] == 0).all() and (ret[b, n:] == 0).all()


def clip_grad(advantage: float, log_ratio: float, eps: float = 0.2) -> float:
    new = torch.tensor([[log_ratio]], requires_grad=True)
    zeros = torch.zeros(1, 1)
    out = rl_math.ppo_losses(
        new, zeros, torch.tensor([[advantage]]), zeros, zeros, zeros, torch.ones(1, 1), eps, 1.0
    )
    out.pg_loss.backward()
    return float(new.grad)


def test_clipped_objective_gradient_sign() -> None:
    # positive advantage: minimising the loss pushes log π up (negative gradient) until ρ > 1 + ε ...
    assert clip_grad(1.0, 0.0) < 0
    assert clip_grad(1.0, math.log(1.1)) < 0
    # ... then the clipped term is active and the gradient is zero
    assert clip_grad(1.0, math.log(1.3)) == 0.0
    # negative advantage: pushes log π down until ρ < 1 - ε, then zero
    assert clip_grad(-1.0, 0.0) > 0
    assert clip_grad(-1.0, math.log(0.7)) == 0.0
    # the pessimistic bound keeps the gradient where the ratio moved the wrong way
    assert clip_grad(1.0, math.log(0.5)) < 0


def test_ppo_losses_hand_worked_values() -> None:
    new = torch.log(torch.tensor([[1.5, 0.9, 1.0]]))
    old = torch.zeros(1, 3)
    adv = torch.tensor([[2.0, -1.0, 5.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    values = torch.tensor([[1.0, 0.0, 0.0]])
    old_values = torch.tensor([[0.0, 0.0, 0.0]])
    returns = torch.tensor([[2.0, 1.0, 0.0]])
    out = rl_math.ppo_losses(new, old, adv, values, old_values, returns, mask, clip_eps=0.2, vf_clip=0.5)
    # token 0: max(-2·1.5, -2·1.2) = -2.4; token 1: max(0.9, clip(0.9)=0.9) = 0.9 -> mean -0.75
    assert math.isclose(float(out.pg_loss), -0.75, rel_tol=1e-6)
    # token 0: V=1 clipped to 0.5: max((1-2)², (0.5-2)²) = 2.25; token 1: max(1, 1) = 1 -> ½·mean = 0.8125
    assert math.isclose(float(out.vf_loss), 0.8125, rel_tol=1e-6)
    assert math.isclose(out.stats["clipfrac"], 0.5)
    assert math.isclose(out.stats["vf_clipfrac"], 0.5)
    # n_tokens rescales the sums (micro-batches of a larger minibatch)
    scaled = rl_math.ppo_losses(new, old, adv, values, old_values, returns, mask, 0.2, 0.5, n_tokens=4)
    assert math.isclose(float(scaled.pg_loss), -0.75 * 2 / 4, rel_tol=1e-6)


def test_adaptive_kl_controller_update_rule() -> None:
    ctl = rl_math.AdaptiveKLController(0.1, target=6.0, horizon=10000)
    # KL = 9: e = clip(9/6 - 1, -0.2, 0.2) = 0.2; β = 0.1·(1 + 0.2·512/10000) = 0.101024
    assert math.isclose(ctl.update(9.0, 512), 0.101024, rel_tol=1e-9)
    # KL = 5.4: e = -0.1; β = 0.101024·(1 - 0.1·1000/10000) = 0.10001376
    assert math.isclose(ctl.update(5.4, 1000), 0.101024 * 0.99, rel_tol=1e-9)
    # very small KL clips at -0.2
    before = ctl.value
    assert math.isclose(ctl.update(0.0, 10000), before * 0.8, rel_tol=1e-9)
    fixed = rl_math.FixedKLController(0.05)
    assert fixed.update(100.0, 512) == 0.05
    with pytest.raises(ValueError, match="target"):
        rl_math.AdaptiveKLController(0.1, target=0.0, horizon=10)


def test_explained_variance() -> None:
    returns = torch.tensor([[1.0, 2.0, 3.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    assert math.isclose(rl_math.explained_variance(returns.clone(), returns, mask), 1.0)
    assert math.isclose(
        rl_math.explained_variance(torch.full_like(returns, 2.0), returns, mask), 0.0, abs_tol=1e-6
    )
