"""The tensor math of RLHF with PPO, as pure functions (no models, no state besides the KL controllers).

- Masked statistics and whitening over the response tokens of a right-padded batch (TRL's helpers).
- Per-token log-probs and entropy from logits divided by the sampling temperature, so training scores
  exactly the distribution the rollout sampled from.
- KL-shaped rewards, InstructGPT (arXiv 2203.02155) eq. 2 / lm-human-preferences (Ziegler et al., arXiv
  1909.08593) eq. 2: every response token gets -β·KL_t, the last one also gets the reward-model score.
- KL estimators from Schulman's note "Approximating KL divergence" (2020): with log r = log π_ref - log π,
  k1 = -log r (unbiased, can be negative per sample) and k3 = (r - 1) - log r (unbiased and >= 0).
- Generalised advantage estimation (Schulman et al., arXiv 1506.02438, eq. 16): vectorised over the batch,
  one backward pass over time.
- The PPO losses (Schulman et al., arXiv 1707.06347, eq. 7): clipped surrogate, plus the clipped value loss
  of the OpenAI baselines / lm-human-preferences implementation.
- Adaptive and fixed KL controllers (Ziegler et al. §2.2), with the same `update(current_kl, n_steps)`.

Shapes: B rows (episodes), T response positions; `mask` (B, T) is 1 on real response tokens and 0 on the
right padding after a response ended.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

KL_ESTIMATORS = ("k1", "k3")


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of x where mask is 1 (over all elements, or along `dim`)."""
    return (x * mask).sum() if dim is None else (x * mask).sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of x over the elements where mask is 1 (over all elements, or along `dim`)."""
    if dim is None:
        return masked_sum(x, mask) / mask.sum().clamp(min=1)
    return masked_sum(x, mask, dim) / mask.sum(dim).clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of x over the masked elements (Bessel-corrected when `unbiased` and n > 1)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    n = mask.sum()
    if unbiased and n > 1:
        var = var * n / (n - 1)
    return var


def masked_whiten(
    x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """(x - mean) / std over the masked elements; masked-out elements come back as 0.

    shift_mean=False keeps the mean and only rescales (lm-human-preferences does that for rewards)."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask


def logprobs_from_logits(logits: torch.Tensor, ids: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log softmax(logits / T) at ids: logits (B, T, V), ids (B, T) -> (B, T), in float32."""
    if temperature <= 0:
        raise ValueError(f"temperature={temperature}; log-probs need a sampling temperature > 0")
    logp = F.log_softmax(logits.float() / temperature, dim=-1)  # (B, T, V)
    return logp.gather(-1, ids[..., None]).squeeze(-1)


def entropy_from_logits(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy (nats) of softmax(logits / T) per position: (B, T, V) -> (B, T)."""
    logp = F.log_softmax(logits.float() / temperature, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def kl_per_token(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(π || π_ref) from the sampled tokens' log-probs (B, T) -> (B, T)."""
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"kl_estimator={estimator!r}; expected one of {list(KL_ESTIMATORS)}")
    log_ratio = ref_logprobs - logprobs  # log r, r = π_ref / π
    if estimator == "k1":
        return -log_ratio
    return torch.expm1(log_ratio) - log_ratio


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last 1 in each row of a right-padded mask (B, T) -> (B,); 0 for an empty row."""
    positions = torch.arange(mask.shape[1], device=mask.device)[None, :]  # (1, T)
    return (positions * (mask > 0)).max(dim=1).values


def kl_shaped_rewards(
    score: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    beta: float,
    kl_estimator: str = "k1",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards (B, T): -β·KL_t on every response token, plus score (B,) on the last one.

    Returns (rewards, kl) with kl the per-token estimate (B, T), both zero on padding.
    """
    kl = kl_per_token(logprobs, ref_logprobs, kl_estimator) * mask  # (B, T)
    rewards = -beta * kl
    last = last_token_index(mask)  # (B,)
    rows = torch.arange(mask.shape[0], device=mask.device)
    rewards[rows, last] += score.to(rewards.dtype)
    return rewards * mask, kl


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimates and returns (both (B, T), zero on padding).

    δ_t = r_t + γ·V_{t+1} - V_t with V = 0 after the last response token (the episode ends there);
    A_t = δ_t + γλ·A_{t+1}; returns R_t = A_t + V_t (the value-function targets).
    """
    rewards, values = rewards * mask, values * mask
    T = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    next_adv = torch.zeros_like(rewards[:, 0])
    next_value = torch.zeros_like(values[:, 0])
    for t in reversed(range(T)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_adv = (delta + gamma * lam * next_adv) * mask[:, t]
        advantages[:, t] = next_adv
        next_value = values[:, t]
    returns = (advantages + values) * mask
    return advantages, returns


@dataclass(frozen=True, slots=True)
class PPOLosses:
    """The two losses (differentiable scalars) and detached diagnostics."""

    pg_loss: torch.Tensor
    vf_loss: torch.Tensor
    stats: dict[str, float]


def ppo_losses(
    new_logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float,
    vf_clip: float,
    n_tokens: float | None = None,
) -> PPOLosses:
    """Clipped surrogate (PPO eq. 7, negated to minimise) and clipped value loss, summed over response
    tokens and divided by `n_tokens` (default: this batch's count; pass the whole minibatch's count when
    the minibatch is split into accumulation micro-batches, so the gradients add up to the minibatch mean).

    pg: max(-A·ρ, -A·clip(ρ, 1-ε, 1+ε)) with ρ = exp(new - old).
    vf: ½·max((V - R)², (clip(V, V_old ± vf_clip) - R)²).
    """
    denom = float(mask.sum()) if n_tokens is None else float(n_tokens)
    denom = max(denom, 1.0)
    log_ratio = new_logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    pg_unclipped = -advantages * ratio
    pg_clipped = -advantages * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    pg_loss = masked_sum(torch.maximum(pg_unclipped, pg_clipped), mask) / denom
    values_clipped = old_values + torch.clamp(values - old_values, -vf_clip, vf_clip)
    vf_unclipped = (values - returns) ** 2
    vf_clipped = (values_clipped - returns) ** 2
    vf_loss = 0.5 * masked_sum(torch.maximum(vf_unclipped, vf_clipped), mask) / denom
    with torch.no_grad():
        stats = {
            "clipfrac": float(masked_mean((pg_clipped > pg_unclipped).float(), mask)),
            "approx_kl": float(masked_mean(torch.expm1(-log_ratio) + log_ratio, mask)),  # k3 of old vs new
            "approx_kl_k1": float(masked_mean(0.5 * log_ratio**2, mask)),  # lm-human-preferences' approxkl
            "vf_clipfrac": float(masked_mean((vf_clipped > vf_unclipped).float(), mask)),
            "ratio_mean": float(masked_mean(ratio, mask)),
            "n_tokens": float(mask.sum()),
        }
    return PPOLosses(pg_loss=pg_loss, vf_loss=vf_loss, stats=stats)


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var[R - V] / Var[R] over the masked tokens (1 = perfect critic, 0 = no better than a constant)."""
    var_r = float(masked_var(returns, mask, unbiased=False))
    if var_r == 0:
        return float("nan")
    return 1.0 - float(masked_var(returns - values, mask, unbiased=False)) / var_r


class FixedKLController:
    """β stays at its initial value."""

    def __init__(self, init_beta: float) -> None:
        if init_beta < 0:
            raise ValueError(f"ppo.beta={init_beta}; expected a KL coefficient >= 0")
        self.value = init_beta

    def update(self, current_kl: float, n_steps: int) -> float:
        return self.value


class AdaptiveKLController:
    """Ziegler et al. (arXiv 1909.08593) §2.2: e = clip(KL/target - 1, -0.2, 0.2); β ← β·(1 + e·n/horizon),
    with n the number of episodes in the batch just used."""

    def __init__(self, init_beta: float, target: float, horizon: int) -> None:
        if init_beta < 0:
            raise ValueError(f"ppo.beta={init_beta}; expected a KL coefficient >= 0")
        if target <= 0:
            raise ValueError(f"ppo.target_kl={target}; the adaptive controller needs a target KL > 0 (nats)")
        if horizon <= 0:
            raise ValueError(f"ppo.horizon={horizon}; expected a positive number of episodes")
        self.value = init_beta
        self.target = target
        self.horizon = horizon

    def update(self, current_kl: float, n_steps: int) -> float:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
        return self.value
