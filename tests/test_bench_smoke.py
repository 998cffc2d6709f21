"""Smoke test of benchmarks/ppo_speed.py's matched set-up: TRL's PPOTrainer gets the same weights, the same
prompts and the same amount of work per iteration as picochat's `ppo`. Skips without TRL <= 1.12
(`pip install -e ".[bench]"`)."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("trl.experimental.ppo", reason="TRL with PPOTrainer (<= 1.12) is not installed")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import ppo_speed  # noqa: E402
from picochat.model import GPTConfig  # noqa: E402
from picochat.train.loop import read_metrics  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

SETUP = ppo_speed.Setup(
    model=GPTConfig.from_preset("micro", block_size=96, dropout=0.0), vocab=320, n_prompts=12,
    rollout_batch=4, minibatch=2, epochs=2, response_len=4,
)  # fmt: skip


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> ppo_speed.Shared:
    return ppo_speed.build_shared(SETUP, tmp_path_factory.mktemp("ppo_speed"), None)


@pytest.fixture(scope="module")
def trainer(shared: ppo_speed.Shared, tmp_path_factory: pytest.TempPathFactory) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ppo_speed.trl_trainer(shared, 1, tmp_path_factory.mktemp("trl"))


def test_trl_models_hold_the_same_weights(shared: ppo_speed.Shared, trainer: Any) -> None:
    ids = torch.tensor([shared.prompt_ids[0]])  # (1, T)
    with torch.no_grad():
        ours = shared.policy(ids)[0]
        theirs = trainer.model.policy(input_ids=ids).logits
        assert torch.allclose(ours, theirs, atol=1e-4)
        assert torch.allclose(trainer.ref_model(input_ids=ids).logits, ours, atol=1e-4)
        rm_ours = shared.rm.head_outputs(shared.rm.hidden(ids)[:, -1])[:, 0]  # head bias is 0 at init
        rm_theirs = trainer.reward_model(input_ids=ids).logits[:, 0]
        assert torch.allclose(rm_ours, rm_theirs, atol=1e-4)


def test_trl_gets_the_same_batch_sizes_as_picochat(shared: ppo_speed.Shared, trainer: Any) -> None:
    args, hp = trainer.args, ppo_speed.picochat_config(shared, 1).ppo
    assert args.batch_size == hp.rollout_batch  # episodes per iteration
    assert args.local_mini_batch_size == hp.minibatch  # episodes per optimizer step
    assert args.per_device_train_batch_size >= args.local_mini_batch_size  # no gradient accumulation
    assert args.num_ppo_epochs == hp.epochs and args.response_length == hp.max_new_tokens
    assert args.kl_coef == hp.beta and not hp.adaptive_kl
    assert args.num_total_batches == 1
    assert trainer.train_dataset["input_ids"] == shared.prompt_ids


def test_one_iteration_each_does_the_same_number_of_optimizer_steps(
    shared: ppo_speed.Shared, tmp_path: Path
) -> None:
    steps = SETUP.epochs * SETUP.num_mini_batches
    pico = ppo_speed.run_picochat(shared, 1)
    assert 0 < pico.wall < 60
    run = sorted(shared.work.glob("picochat-*"))[-1]
    assert read_metrics(run / "metrics.jsonl")[-1]["step"] == steps
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = ppo_speed.trl_trainer(shared, 1, tmp_path)
        clock = ppo_speed.iteration_clock()
        trainer.add_callback(clock)
        trainer.train()
    assert len(clock.times) == 2  # on_train_begin + one on_step_end: one iteration
    assert trainer.state.episode == SETUP.rollout_batch
    assert {int(s["step"]) for s in trainer.optimizer.state.values()} == {steps}
