"""Numerical faults: a NaN injected into the loss or into the gradients is caught before the optimizer
step. With run.on_nonfinite=stop the run ends with an error naming the step and the last good checkpoint
(which loads, and resumes); with =skip the step makes no update and training goes on.
(tests/test_loop.py covers a NaN loss with stop and an inf loss with skip; this is the full table.)"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from picochat.checkpoint import checkpoint_meta, load_checkpoint
from picochat.config import OptimConfig, RunConfig
from picochat.data.shards import RandomWindows
from picochat.model import GPT, GPTConfig
from picochat.train.loop import NonFiniteError, StepOut, Trainer, read_metrics
from picochat.train.pretrain import lm_loss

BAD_STEP = 3
STEPS = 5


def make_trainer(tok, out: Path, loss_fn, on_nonfinite: str) -> Trainer:
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("micro", vocab_size=tok.vocab_size, block_size=16))
    ids = np.random.default_rng(0).integers(0, tok.vocab_size, 4000)
    return Trainer(
        model=model, tok=tok, source=RandomWindows(ids, 16, 4, seed=0), loss_fn=loss_fn,
        optim_cfg=OptimConfig(max_steps=STEPS, batch_size=4, warmup_steps=1, lr=1e-2),
        run_cfg=RunConfig(progress=False, log_every=1, eval_every=1000, save_every=1, dtype="float32",
                          on_nonfinite=on_nonfinite),
        out_dir=out,
    )  # fmt: skip


class Injector:
    """A loss_fn that poisons step BAD_STEP (its loss or its gradients) and records the weights then,
    so the next step can check that the poisoned step changed nothing."""

    def __init__(self, where: str) -> None:
        self.where, self.calls = where, 0
        self.before_bad: list[torch.Tensor] = []
        self.after_bad: list[torch.Tensor] = []

    def __call__(self, model, batch) -> StepOut:
        self.calls += 1
        params = list(model.parameters())
        if self.calls == BAD_STEP + 1:
            self.after_bad = [p.detach().clone() for p in params]
        out = lm_loss(model, batch)
        if self.calls == BAD_STEP:
            self.before_bad = [p.detach().clone() for p in params]
            if self.where == "loss":
                out.loss_sum = out.loss_sum * float("nan")
            else:
                handle = []

                def nan_grad(grad: torch.Tensor) -> torch.Tensor:
                    handle[0].remove()  # one backward only
                    return torch.full_like(grad, float("nan"))

                handle.append(params[-1].register_hook(nan_grad))
        return out


@pytest.mark.parametrize("where", ["loss", "gradient"])
def test_stop_names_the_step_and_keeps_the_last_good_checkpoint(tok, tmp_path: Path, where: str) -> None:
    inject = Injector(where)
    trainer = make_trainer(tok, tmp_path, inject, "stop")
    what = "loss" if where == "loss" else "gradient norm"
    with pytest.raises(NonFiniteError, match=f"non-finite {what} at step {BAD_STEP};.*step {BAD_STEP - 1}"):
        trainer.run()
    for p, q in zip(trainer.model.parameters(), inject.before_bad, strict=True):
        assert torch.equal(p, q)  # the bad step updated nothing
    assert checkpoint_meta(tmp_path / "ckpt")["step"] == BAD_STEP - 1
    model, _ = load_checkpoint(tmp_path / "ckpt")
    assert all(torch.isfinite(p).all() for p in model.parameters())
    resumed = make_trainer(tok, tmp_path, lm_loss, "stop")
    assert resumed.run(resume=True).step == STEPS  # the fault was transient: resume finishes the run


@pytest.mark.parametrize("where", ["loss", "gradient"])
def test_skip_makes_no_update_and_goes_on(tok, tmp_path: Path, where: str, capsys) -> None:
    inject = Injector(where)
    state = make_trainer(tok, tmp_path, inject, "skip").run()
    assert state.step == STEPS
    for p, q in zip(inject.after_bad, inject.before_bad, strict=True):
        assert torch.equal(p, q)
    assert f"step {BAD_STEP}; step skipped" in capsys.readouterr().out
    records = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "train/loss" in r]
    bad = records[BAD_STEP - 1]
    assert not math.isfinite(bad["train/loss"] if where == "loss" else bad["gnorm"])
    assert all(math.isfinite(r["train/loss"]) and math.isfinite(r["gnorm"]) for r in records[BAD_STEP:])
    model, _ = load_checkpoint(tmp_path / "ckpt")
    assert all(torch.isfinite(p).all() for p in model.parameters())
