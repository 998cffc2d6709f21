"""Predictable scaling: the power-law fitter, the FLOP count, the family plan and a micro end-to-end sweep."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from picochat.config import ScalingConfig, load_config
from picochat.model import GPT, GPTConfig, flops_per_token
from picochat.scaling import (
    fit_power_law,
    matmul_params,
    member_shape,
    plan_member,
    plan_sweep,
    plan_target,
    power_law,
    run_scaling,
    scaling_section,
    train_member,
)
from picochat.train.loop import Dist
from picochat.train.pretrain import open_data


def synthetic_points(seed: int, noise: float) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    flops = np.geomspace(1e9, 3e10, 7)
    losses = power_law(flops, 150.0, 0.2, 1.0) * np.exp(rng.normal(0.0, noise, flops.size))
    return flops, losses


def test_fit_recovers_known_law_from_noisy_points() -> None:
    flops, losses = synthetic_points(seed=0, noise=0.002)
    fit = fit_power_law(flops, losses)
    assert fit.b == pytest.approx(0.2, rel=0.15)
    assert fit.c == pytest.approx(1.0, rel=0.1)
    assert fit.a == pytest.approx(150.0, rel=0.8)  # a and b trade off; the curve is what matters
    far = 3e12  # 100x the largest point
    assert float(fit.predict(far)) == pytest.approx(float(power_law(far, 150.0, 0.2, 1.0)), rel=0.03)
    lo, hi = fit.band(far)
    assert lo < float(power_law(far, 150.0, 0.2, 1.0)) < hi


def test_fit_is_exact_without_noise_and_robust_to_one_outlier() -> None:
    flops, losses = synthetic_points(seed=0, noise=0.0)
    exact = fit_power_law(flops, losses)
    assert (exact.b, exact.c) == (pytest.approx(0.2, rel=1e-4), pytest.approx(1.0, rel=1e-4))
    assert exact.rms_rel_residual < 1e-6
    bad = losses.copy()
    bad[3] *= 1.10  # one member 10% off (e.g. a bad run)
    truth = float(power_law(3e12, 150.0, 0.2, 1.0))
    robust = abs(float(fit_power_law(flops, bad).predict(3e12)) / truth - 1)
    plain = abs(float(fit_power_law(flops, bad, loss="linear").predict(3e12)) / truth - 1)
    assert robust < 0.6 * plain  # soft-L1 halves the outlier's pull on a 100x extrapolation


def test_pure_power_law_fit_holds_c_at_zero_and_is_steadier() -> None:
    flops = np.geomspace(1e9, 3e10, 6)
    exact = fit_power_law(flops, power_law(flops, 150.0, 0.2, 0.0), fit_c=False)
    assert (exact.a, exact.b, exact.c) == (pytest.approx(150.0, rel=1e-6), pytest.approx(0.2, rel=1e-6), 0.0)
    assert exact.dof == 4 and exact.rms_rel_residual < 1e-9
    # with 1% noise on 6 points the free c swings a 100x extrapolation several times more than c = 0 does
    rng = np.random.default_rng(0)
    far, truth = 3e12, float(power_law(3e12, 150.0, 0.2, 0.0))
    spread = {}
    for fit_c in (True, False):
        preds = []
        for _ in range(12):
            noisy = power_law(flops, 150.0, 0.2, 0.0) * np.exp(rng.normal(0.0, 0.01, flops.size))
            preds.append(float(fit_power_law(flops, noisy, fit_c=fit_c).predict(far)))
        spread[fit_c] = np.std(np.log(np.array(preds) / truth))
    assert spread[False] < 0.5 * spread[True]


def test_weights_from_the_seed_spread_discount_a_noisy_point() -> None:
    flops = np.geomspace(1e9, 3e10, 6)
    truth = power_law(flops, 150.0, 0.2, 0.0)
    bad = truth.copy()
    bad[2] *= 1.03  # a member whose few seeds happened to land high; its spread says so
    rel_se = np.array([0.002, 0.002, 0.05, 0.002, 0.002, 0.002])
    far, want = 3e12, float(power_law(3e12, 150.0, 0.2, 0.0))
    plain = float(fit_power_law(flops, bad, fit_c=False, loss="linear").predict(far))
    weighted = float(fit_power_law(flops, bad, fit_c=False, loss="linear", rel_se=rel_se).predict(far))
    assert abs(weighted / want - 1) < 0.05 * abs(plain / want - 1)
    same = fit_power_law(flops, bad, fit_c=False, rel_se=np.full(6, 0.01))  # equal weights change nothing
    assert same.b == pytest.approx(fit_power_law(flops, bad, fit_c=False).b, rel=1e-9)
    with pytest.raises(ValueError, match="rel_se"):
        fit_power_law(flops, bad, rel_se=[0.01, 0.01])


def test_band_widens_away_from_the_data() -> None:
    flops, losses = synthetic_points(seed=1, noise=0.003)
    fit = fit_power_law(flops, losses)
    lo, hi = fit.band(np.array([1e10, 1e12, 1e14]))
    widths = np.log(hi / lo)
    assert np.all(np.diff(widths) > 0)


def test_fit_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=">= 3"):
        fit_power_law([1e9, 2e9], [3.0, 2.9])
    with pytest.raises(ValueError, match="positive and finite"):
        fit_power_law([1e9, 2e9, 4e9], [3.0, float("nan"), 2.8])


def test_flops_per_token_matches_a_hand_count() -> None:
    cfg = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=512)
    # per block: qkv 32x96, proj 32x32, MLP 32x128 and 128x32; plus the tied LM head 512x32
    n = 2 * (32 * 96 + 32 * 32 + 32 * 128 + 128 * 32) + 512 * 32
    assert n == 40960 == matmul_params(cfg)
    attention = 12 * 2 * 32 * 64  # QK^T and AV: 2 matmuls x 2 (fwd) x 3 (fwd+bwd) per layer, per token
    assert flops_per_token(cfg) == 6 * n + attention == 294912
    model = GPT(cfg)
    weights = sum(
        m.weight.numel()
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and "h." in name
    )
    assert weights + model.lm_head.weight.numel() == n


def test_family_plan_follows_its_rules() -> None:
    cfg = ScalingConfig()
    assert member_shape(24, aspect=32, head_dim=4) == (1, 6)
    assert member_shape(80, aspect=32, head_dim=4) == (3, 20)  # 2.5 rounds up
    with pytest.raises(ValueError, match="multiple of head_dim"):
        member_shape(10, aspect=32, head_dim=4)
    sweep = plan_sweep(cfg, vocab_size=264)
    assert [m.n_embd for m in sweep] == sorted(cfg.widths)
    for m in sweep:
        assert m.vocab_size == 320  # the tokenizer's 264 ids, padded to a multiple of 64 as pretrain does
        assert m.tokens == m.steps * m.batch_size * cfg.block_size
        assert m.tokens >= cfg.tokens_per_param * m.params
        assert m.flops == m.flops_per_token * m.tokens
    assert [m.flops for m in sweep] == sorted(m.flops for m in sweep)
    assert sweep[0].lr > sweep[-1].lr  # wider members take smaller steps
    target = plan_target(sweep, 100.0, cfg, vocab_size=264)
    assert target.flops >= 100 * sweep[-1].flops
    smaller = plan_member("x", target.n_embd - cfg.head_dim, cfg, vocab_size=264)
    assert smaller.flops < 100 * sweep[-1].flops  # the target is the narrowest member that qualifies


def test_config_validates_the_family() -> None:
    with pytest.raises(ValueError, match="at least 3"):
        load_config(ScalingConfig, overrides=["widths=[8,8,12]"])
    with pytest.raises(ValueError, match="multiple of head_dim"):
        load_config(ScalingConfig, overrides=["widths=[8,10,12]"])


def test_micro_sweep_end_to_end(tmp_path: Path, sample_text: str, one_thread: None) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(sample_text * 3)
    overrides = [
        f"data.path={corpus}", "data.vocab_size=264", "widths=[4,8,12]", "block_size=16", "tokens_per_param=0.3",
        "min_steps=3", "eval_tokens=512", "optim.batch_size=2", "batch_ref_tokens=1000", "run.device=cpu",
        "run.progress=false", "run.dtype=float32",
    ]  # fmt: skip
    cfg = load_config(ScalingConfig, overrides=[*overrides, "seeds_per_member=2"])
    out = tmp_path / "scaling"
    summary = run_scaling(cfg, out, ratio=3.0, log=lambda *a: None)
    res = json.loads((out / "scaling.json").read_text())
    assert (out / "scaling.png").stat().st_size > 10_000
    assert (out / "config.toml").is_file()
    assert len(res["sweep"]) == 3 and res["target"] is not None
    numbers = [r["val_loss"] for r in res["sweep"]] + [res["target"]["val_loss"], res["rel_error"]]
    numbers += [res["fit"][k] for k in ("a", "b", "c")] + [res["prediction"]["loss"]]
    assert all(math.isfinite(x) for x in numbers)
    assert res["prediction"]["ratio"] >= 3.0
    assert summary["rel_error"] == res["rel_error"]
    for rec in res["sweep"]:  # each size trained with seeds run.seed and run.seed + 1; the fit sees the mean
        assert [r["seed"] for r in rec["runs"]] == [cfg.run.seed, cfg.run.seed + 1]
        losses = [r["val_loss"] for r in rec["runs"]]
        assert losses[0] != losses[1]
        assert rec["val_loss"] == pytest.approx(np.mean(losses))
        assert rec["val_loss_sd"] == pytest.approx(np.std(losses, ddof=1))
    means = ([r["member"]["flops"] for r in res["sweep"]], [r["val_loss"] for r in res["sweep"]])
    assert res["fit"]["c"] == 0.0  # the default holds c = 0
    rel_se = [r["val_loss_sd"] / r["val_loss"] / math.sqrt(2) for r in res["sweep"]]
    assert res["fit"]["b"] == pytest.approx(fit_power_law(*means, fit_c=False, rel_se=rel_se).b)
    with_c = fit_power_law(*means, fit_c=True, rel_se=rel_se)  # GPT-4's form, reported beside the headline
    assert res["fit_with_c"]["c"] == pytest.approx(with_c.c)
    assert res["prediction_with_c"] == pytest.approx(float(with_c.predict(res["prediction"]["flops"])))
    actual = res["target"]["val_loss"]
    assert res["rel_error_with_c"] == pytest.approx((res["prediction_with_c"] - actual) / actual)
    # the second seed's run is exactly the run a single-seed sweep with that seed would train
    one = load_config(
        ScalingConfig, overrides=[*overrides, "seeds_per_member=1", f"run.seed={cfg.run.seed + 1}"]
    )
    first, data = res["sweep"][0], open_data(out / "data")
    plan = plan_member(first["member"]["name"], first["member"]["n_embd"], one, data.tok.vocab_size)
    assert asdict(plan) == first["member"]
    alone = train_member(plan, one, tmp_path / "alone", data, Dist(device=torch.device("cpu")))
    assert alone["val_loss"] == first["runs"][1]["val_loss"]
    section = scaling_section(out, root=tmp_path)
    assert "Predictable scaling" in section and "(scaling/scaling.png)" in section
    again = run_scaling(cfg, out, ratio=3.0, log=lambda *a: None)  # finished members are reused
    assert again["rel_error"] == summary["rel_error"]
    assert all(r["reused"] for r in json.loads((out / "scaling.json").read_text())["sweep"])
