from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from picochat.checkpoint import load_checkpoint
from picochat.config import OptimConfig, RunConfig
from picochat.data.shards import RandomWindows
from picochat.model import GPT, IGNORE_INDEX, GPTConfig
from picochat.train.loop import NonFiniteError, Prefetcher, StepOut, Trainer, batch_to, lr_at, read_metrics
from picochat.train.pretrain import lm_loss

RUN = dict(progress=False, log_every=1, eval_every=1000, save_every=1000)


def make_trainer(tok, out: Path, batch: int, accum: int, steps: int = 6, seed: int = 0, **run) -> Trainer:
    torch.manual_seed(seed)
    model = GPT(GPTConfig.from_preset("micro", vocab_size=tok.vocab_size, block_size=16))
    ids = np.random.default_rng(0).integers(0, tok.vocab_size, 5000)
    source = RandomWindows(ids, 16, batch, seed=seed)
    optim = OptimConfig(max_steps=steps, batch_size=batch, grad_accum=accum, warmup_steps=2, lr=1e-2)
    return Trainer(
        model=model, tok=tok, source=source, loss_fn=lm_loss, optim_cfg=optim,
        run_cfg=RunConfig(**{**RUN, **run}), out_dir=out,
    )  # fmt: skip


def losses(out: Path) -> list[float]:
    return [r["train/loss"] for r in read_metrics(out / "metrics.jsonl") if "train/loss" in r]


def test_lm_loss_is_the_summed_token_cross_entropy_and_survives_no_targets() -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("micro", vocab_size=64, block_size=16))
    x = torch.randint(0, 64, (3, 16))
    y = torch.randint(0, 64, (3, 16))
    y[1, :10] = IGNORE_INDEX  # SFT-style masked targets
    out = lm_loss(model, (x, y))
    logits, _ = model(x)
    ref = torch.nn.functional.cross_entropy(
        logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    assert out.n_items == 48 - 10 and out.n_tokens == 48
    assert float(out.loss_sum) == pytest.approx(float(ref), rel=1e-5)
    empty = lm_loss(model, (x, torch.full_like(y, IGNORE_INDEX)))  # no target: zero, not NaN, still a graph
    assert empty.n_items == 0 and float(empty.loss_sum) == 0.0
    empty.loss_sum.backward()
    assert all(p.grad is None or torch.all(p.grad == 0) for p in model.parameters())


def test_lr_schedule_warmup_then_cosine_to_floor() -> None:
    cfg = OptimConfig(lr=1.0, warmup_steps=10, max_steps=110, min_lr_ratio=0.1)
    assert lr_at(0, cfg) < lr_at(5, cfg) < lr_at(9, cfg) <= 1.0
    assert lr_at(10, cfg) == pytest.approx(1.0)
    assert lr_at(60, cfg) == pytest.approx(0.55)
    assert lr_at(110, cfg) == pytest.approx(0.1)


def test_micro_batch_times_accum_is_the_same_big_batch(tok, tmp_path: Path) -> None:
    """micro 8 x accum 1 == micro 2 x accum 4 (same windows, same gradient)."""
    a = make_trainer(tok, tmp_path / "a", batch=8, accum=1)
    a.run()
    b = make_trainer(tok, tmp_path / "b", batch=2, accum=4)
    # the accumulated run must draw the same 8 windows per step: same generator, 4 draws of 2
    b.source = _Regroup(RandomWindows(b.source.ids, 16, 8, seed=0), 4)
    b.run()
    assert losses(tmp_path / "a") == pytest.approx(losses(tmp_path / "b"), rel=1e-5)


class _Regroup:
    """Serve a big batch as n consecutive micro-batches."""

    def __init__(self, source: RandomWindows, n: int) -> None:
        self.source, self.n, self.queue = source, n, []

    def next_batch(self):
        if not self.queue:
            x, y = self.source.next_batch()
            self.queue = list(zip(x.chunk(self.n), y.chunk(self.n), strict=True))
        return self.queue.pop(0)

    def state_dict(self):
        return self.source.state_dict()

    def load_state_dict(self, state):
        self.source.load_state_dict(state)


class Killed(Exception):
    pass


def test_resume_is_exact(tok, tmp_path: Path) -> None:
    """8 steps straight == killed during step 6 (last checkpoint at 4) + resume to 8: same losses, same weights."""
    make_trainer(tok, tmp_path / "straight", batch=4, accum=1, steps=8).run()
    crashing = make_trainer(tok, tmp_path / "resumed", batch=4, accum=1, steps=8, save_every=4)
    calls = {"n": 0}

    def dies_at_step_6(model, batch) -> StepOut:
        calls["n"] += 1
        if calls["n"] == 6:
            raise Killed
        return lm_loss(model, batch)

    crashing.loss_fn = dies_at_step_6
    with pytest.raises(Killed):
        crashing.run()
    resumed = make_trainer(tok, tmp_path / "resumed", batch=4, accum=1, steps=8, seed=99)  # other init seed
    resumed.run(resume=True)
    assert resumed.state.step == 8
    assert losses(tmp_path / "straight") == losses(tmp_path / "resumed")
    m1, _ = load_checkpoint(tmp_path / "straight" / "ckpt")
    m2, _ = load_checkpoint(tmp_path / "resumed" / "ckpt")
    for (k, v1), v2 in zip(m1.state_dict().items(), m2.state_dict().values(), strict=True):
        assert torch.equal(v1, v2), k


def test_prefetching_one_batch_ahead_trains_and_resumes_exactly_the_same(tok, tmp_path: Path) -> None:
    """The CUDA read-ahead (here on the CPU, unpinned): same losses as reading in step, and a run killed
    while a batch is held ahead resumes at that batch, not after it."""
    make_trainer(tok, tmp_path / "plain", batch=2, accum=2, steps=8).run()

    def ahead(out: Path, seed: int = 0, **run) -> Trainer:
        trainer = make_trainer(tok, out, batch=2, accum=2, steps=8, seed=seed, **run)
        trainer.source = Prefetcher(trainer.source, torch.device("cpu"), pin=False)
        return trainer

    crashing = ahead(tmp_path / "ahead", save_every=3)
    calls = {"n": 0}

    def dies_in_step_5(model, batch) -> StepOut:
        calls["n"] += 1
        if calls["n"] == 10:  # step 5's second micro-batch; step 3's checkpoint was saved with one ahead
            raise Killed
        return lm_loss(model, batch)

    crashing.loss_fn = dies_in_step_5
    with pytest.raises(Killed):
        crashing.run()
    ahead(tmp_path / "ahead", seed=99).run(resume=True)
    assert losses(tmp_path / "plain") == losses(tmp_path / "ahead")
    m1, _ = load_checkpoint(tmp_path / "plain" / "ckpt")
    m2, _ = load_checkpoint(tmp_path / "ahead" / "ckpt")
    for (k, v1), v2 in zip(m1.state_dict().items(), m2.state_dict().values(), strict=True):
        assert torch.equal(v1, v2), k


def test_batch_to_moves_the_tensors_of_tuples_and_dataclasses() -> None:
    from picochat.train.finetune import TaskBatch

    batch = TaskBatch(
        ids=torch.ones(2, 3), lengths=torch.tensor([3, 2]), labels=torch.tensor([1]), n_seq=2, fmt="x"
    )
    moved = batch_to((batch, [torch.zeros(1)]), torch.device("meta"), pin=False)
    assert isinstance(moved, tuple) and isinstance(moved[1], list)
    assert moved[0].ids.is_meta and moved[0].labels.is_meta and moved[1][0].is_meta
    assert (moved[0].n_seq, moved[0].fmt) == (2, "x") and not batch.ids.is_meta


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tok, tmp_path: Path) -> None:
    trainer = make_trainer(tok, tmp_path, batch=2, accum=1, steps=6, save_every=2)
    calls = {"n": 0}

    def poisoned(model, batch) -> StepOut:
        calls["n"] += 1
        out = lm_loss(model, batch)
        if calls["n"] == 4:
            out.loss_sum = out.loss_sum * float("nan")
        return out

    trainer.loss_fn = poisoned
    with pytest.raises(NonFiniteError, match="step 4"):
        trainer.run()
    model, _ = load_checkpoint(tmp_path / "ckpt")  # still loadable: the step-2 checkpoint
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_nonfinite_skip_policy_continues(tok, tmp_path: Path) -> None:
    trainer = make_trainer(tok, tmp_path, batch=2, accum=1, steps=4, on_nonfinite="skip")
    calls = {"n": 0}

    def poisoned(model, batch) -> StepOut:
        calls["n"] += 1
        out = lm_loss(model, batch)
        if calls["n"] == 2:
            out.loss_sum = out.loss_sum * float("inf")
        return out

    trainer.loss_fn = poisoned
    state = trainer.run()
    assert state.step == 4
    recorded = losses(tmp_path)
    assert not math.isfinite(recorded[1]) and all(math.isfinite(v) for i, v in enumerate(recorded) if i != 1)


def test_weight_decay_only_on_matrices(tok, tmp_path: Path) -> None:
    trainer = make_trainer(tok, tmp_path, batch=2, accum=1)
    decay, no_decay = trainer.optimizer.param_groups
    assert decay["weight_decay"] > 0 and all(p.dim() >= 2 for p in decay["params"])
    assert no_decay["weight_decay"] == 0 and all(p.dim() < 2 for p in no_decay["params"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error a CPU-only machine gives")
@pytest.mark.parametrize("stage", ["pretrain", "finetune", "sft", "reward", "ppo"])
def test_a_stage_called_without_dist_runs_on_run_device(stage: str, tmp_path: Path) -> None:
    """Called from Python with no `dist`, a stage resolves cfg.run.device (here cuda, missing) instead of
    quietly training on the CPU, which `picochat pipeline` did on GPU machines for every stage but PPO."""
    import importlib

    from picochat import config

    module = importlib.import_module(f"picochat.train.{stage}")
    run_stage = getattr(module, "train_reward" if stage == "reward" else stage)
    cfg_class = {"pretrain": config.PretrainConfig, "finetune": config.FinetuneConfig, "sft": config.SFTConfig,
                 "reward": config.RewardConfig, "ppo": config.PPOConfig}[stage]  # fmt: skip
    with pytest.raises(ValueError, match="CUDA is not available"):
        run_stage(cfg_class(run=RunConfig(device="cuda")), tmp_path)


def test_resolve_device_names_its_choices_for_an_unknown_device() -> None:
    from picochat.train.loop import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    for bad in ("gpu", "cuda:x", "cuda:"):
        with pytest.raises(ValueError, match="unknown device .*auto, cpu, cuda, cuda:N or mps"):
            resolve_device(bad)
