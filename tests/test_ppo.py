"""PPO end to end on a toy: a micro policy that names one of four fruits at random learns to say the
target word, and the stage's plumbing (config, checkpoints, resume, win rate) behaves."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from picochat.config import ConfigError, PPOConfig, load_config
from picochat.eval.winrate import compare, mean_ci, overoptimization
from picochat.model import GPT, GPTConfig, with_head
from picochat.tokenizer import Tokenizer
from picochat.train.loop import read_metrics
from picochat.train.ppo import ppo

pytestmark = pytest.mark.usefixtures("one_thread")

WORDS = ["apple", "banana", "cherry", "grape"]
TARGET = "cherry"
PROMPTS = ["name a fruit", "say a fruit", "pick a fruit", "any fruit?"]


def target_reward(prompts: Sequence[str], answers: Sequence[str]) -> list[float]:
    return [1.0 if a.strip() == TARGET else 0.0 for a in answers]


@pytest.fixture(scope="module")
def toy_policy(one_thread: None) -> tuple[GPT, Tokenizer]:
    """A micro GPT fine-tuned for a few seconds to answer every prompt with one fruit, uniformly."""
    torch.manual_seed(0)
    tok = Tokenizer.train([" ".join(WORDS + PROMPTS)] * 20, vocab_size=300)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=300))
    rows = [
        tok.render_conversation([{"role": "user", "content": p}, {"role": "assistant", "content": w}])
        for p in PROMPTS
        for w in WORDS
    ]
    T = max(len(ids) for ids, _ in rows)
    x = torch.full((len(rows), T), tok.eot_id)
    y = torch.full((len(rows), T), -100)
    for i, (ids, mask) in enumerate(rows):
        x[i, : len(ids)] = torch.tensor(ids)
        targets = [t if m else -100 for t, m in zip(ids[1:], mask[1:], strict=True)]
        y[i, : len(targets)] = torch.tensor(targets)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(150):
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), tok


def toy_config(**ppo_overrides: object) -> PPOConfig:
    items = {
        "iterations": 8, "rollout_batch": 32, "minibatch": 8, "epochs": 2, "max_new_tokens": 6,
        "beta": 0.01, "adaptive_kl": False, "samples_to_print": 0, **ppo_overrides,
    }  # fmt: skip
    overrides = [f"ppo.{k}={v}" for k, v in items.items()]
    overrides += [
        "optim.lr=3e-3",
        "value.lr=3e-3",
        "run.dtype=float32",
        "run.progress=false",
        "run.save_every=4",
    ]
    return load_config(PPOConfig, None, overrides)


def target_rate(model: GPT, tok: Tokenizer, n: int = 200) -> float:
    from picochat.engine import Engine

    prompts = [tok.render_prompt([{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]) for i in range(n)]
    texts = [
        Engine(model, tok).decode_completion(a)
        for a in Engine(model, tok).generate_ids(prompts, _params(), seed=123)
    ]
    return sum(t.strip() == TARGET for t in texts) / n


def _params():  # noqa: ANN202
    from picochat.engine import SamplingParams

    return SamplingParams(max_new_tokens=6, temperature=1.0)


def test_ppo_increases_the_toy_reward(toy_policy: tuple[GPT, Tokenizer], tmp_path: Path) -> None:
    model, tok = toy_policy
    before = target_rate(model, tok)
    assert 0.1 < before < 0.45  # the SFT policy picks the target about 1 time in 4
    policy, summary = ppo(
        toy_config(), tmp_path, policy=model, tok=tok, reward_fn=target_reward, prompts=PROMPTS
    )
    after = target_rate(policy, tok)
    assert after > before + 0.3, (before, after)
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert len(records) == 8
    assert records[-1]["ppo/reward_rm"] > records[0]["ppo/reward_rm"]
    assert records[-1]["ppo/kl_k1"] > records[0]["ppo/kl_k1"]
    assert all(r["ppo/kl_k3"] >= 0 for r in records)
    assert math.isnan(records[0]["ppo/gold_score"])  # no tasks: no gold labeler
    assert target_rate(model, tok) == before  # the caller's model is untouched
    assert (tmp_path / "ckpt" / "model.safetensors").is_file()
    assert (tmp_path / "value" / "model.safetensors").is_file()
    assert sorted(p.name for p in (tmp_path / "snapshots").iterdir()) == ["iter_0004", "iter_0008"]
    assert json.loads((tmp_path / "summary.json").read_text())["iterations"] == 8
    curve = overoptimization(tmp_path / "metrics.jsonl")
    assert [c["iteration"] for c in curve] == list(range(1, 9))


def test_first_epoch_ratios_are_one_and_shared_trunk_runs(
    toy_policy: tuple[GPT, Tokenizer], tmp_path: Path
) -> None:
    model, tok = toy_policy
    cfg = toy_config(iterations=1, epochs=1, minibatch=32, micro_batch=8)
    cfg = load_config(PPOConfig, None, ["value.share_trunk=true"], base=json.loads(json.dumps(_tree(cfg))))
    policy, _ = ppo(cfg, tmp_path, policy=model, tok=tok, reward_fn=target_reward, prompts=PROMPTS)
    rec = read_metrics(tmp_path / "metrics.jsonl")[0]
    # one epoch, one minibatch: the update sees the rollout's own log-probs, nothing is clipped
    assert rec["ppo/clipfrac"] == 0.0
    assert abs(rec["ppo/approx_kl"]) < 1e-6
    assert policy.config.n_head_outputs == 1
    assert not (tmp_path / "value").exists()


def _tree(cfg: PPOConfig) -> dict:
    import dataclasses

    return dataclasses.asdict(cfg)


def test_resume_continues_from_the_checkpoint(toy_policy: tuple[GPT, Tokenizer], tmp_path: Path) -> None:
    model, tok = toy_policy
    short = toy_config(iterations=2, epochs=1)
    ppo(short, tmp_path, policy=model, tok=tok, reward_fn=target_reward, prompts=PROMPTS)
    full = toy_config(iterations=3, epochs=1)
    _, summary = ppo(
        full, tmp_path, policy=model, tok=tok, reward_fn=target_reward, prompts=PROMPTS, resume=True
    )
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["iteration"] for r in records] == [1, 2, 3]
    assert summary["iterations"] == 3 and summary["episodes"] == 96


def test_reward_model_path_scores_the_last_token(toy_policy: tuple[GPT, Tokenizer], tmp_path: Path) -> None:
    """With a checkpointed RM (a GPT with a 1-output head), the critic starts as a copy of it."""
    from picochat.checkpoint import save_checkpoint

    model, tok = toy_policy
    rm = with_head(model, 1)
    save_checkpoint(tmp_path / "rm", rm, tok, meta={"kind": "reward", "bias": 0.5, "std": 2.0})
    cfg = load_config(PPOConfig, None, [f"rm={tmp_path / 'rm'}", "ppo.iterations=1", "ppo.epochs=1", "ppo.rollout_batch=8",
                                        "ppo.minibatch=8", "ppo.max_new_tokens=4", "run.progress=false", "run.dtype=float32"])  # fmt: skip
    _, summary = ppo(cfg, tmp_path / "run", policy=model, tok=tok, prompts=PROMPTS)
    assert summary["iterations"] == 1
    rec = read_metrics(tmp_path / "run" / "metrics.jsonl")[0]
    assert math.isfinite(rec["ppo/reward_rm"])


def test_critic_from_the_rm_predicts_normalised_scores(toy_policy: tuple[GPT, Tokenizer]) -> None:
    """The critic copies the RM's trunk, and its head is rescaled so that it outputs the score PPO trains
    on, (raw - shift) / scale, at every position; the RM itself is untouched."""
    from picochat.train.ppo import critic_from_reward_model

    model, _ = toy_policy
    torch.manual_seed(0)
    rm = with_head(model, 1)
    torch.nn.init.normal_(rm.head.weight, std=1.0)
    torch.nn.init.constant_(rm.head.bias, 3.0)
    before = rm.head.weight.clone()
    critic = critic_from_reward_model(rm, (0.5, 4.0))
    ids = torch.randint(0, model.config.vocab_size, (2, 7))
    with torch.no_grad():
        raw = rm.head_outputs(rm.hidden(ids))
        value = critic.head_outputs(critic.hidden(ids))
    torch.testing.assert_close(value, (raw - 0.5) / 4.0)
    assert torch.equal(rm.head.weight, before)


def test_config_errors_name_the_field() -> None:
    with pytest.raises(ConfigError, match="minibatch"):
        load_config(PPOConfig, None, ["ppo.rollout_batch=10", "ppo.minibatch=4"])
    with pytest.raises(ConfigError, match="kl_estimator"):
        load_config(PPOConfig, None, ["ppo.kl_estimator=k2"])
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(PPOConfig, None, ["ppo.noptepochs=4"])


def test_ptx_without_data_dir_is_an_error(toy_policy: tuple[GPT, Tokenizer], tmp_path: Path) -> None:
    model, tok = toy_policy
    with pytest.raises(ValueError, match="data-dir"):
        ppo(
            toy_config(ptx_coef=0.5),
            tmp_path,
            policy=model,
            tok=tok,
            reward_fn=target_reward,
            prompts=PROMPTS,
        )


def test_heldout_lm_windows_do_not_depend_on_ptx_batch(tmp_path: Path) -> None:
    """PPO and PPO-ptx report held-out LM loss on the same text whatever ppo.ptx_batch is (the report puts
    both rows side by side); the ptx training windows do follow ptx_batch."""
    from picochat.config import CorpusConfig
    from picochat.train.ppo import HELDOUT_LM_WINDOWS, open_ptx
    from picochat.train.pretrain import prepare_data

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(
        "".join(f"Line {i}: the {w} is {i % 13} acts long.\n" for i, w in enumerate(WORDS * 100))
    )
    data = prepare_data(
        CorpusConfig(path=str(corpus), vocab_size=300, val_fraction=0.2), tmp_path / "data", log=print
    )
    held = {}
    for batch in (1, 2, 4):
        cfg = toy_config(ptx_coef=0.1, ptx_batch=batch, ptx_block=16)
        source, held[batch] = open_ptx(cfg, str(tmp_path / "data"), 32, data.tok)
        assert source.next_batch()[0].shape == (batch, 16)
    assert len(held[1]) == HELDOUT_LM_WINDOWS[0]
    for batch in (2, 4):
        assert all(torch.equal(a[0], b[0]) for a, b in zip(held[1], held[batch], strict=True))


def test_win_rate_counts_ties_half_and_has_an_interval() -> None:
    res = compare([1.0, 0.5, 0.2, 0.0], [0.0, 0.5, 0.9, 0.0])
    assert res["win_rate"] == pytest.approx((1 + 0.5 + 0 + 0.5) / 4)
    assert res["wins"] == 1 and res["ties"] == 2
    assert res["ci_low"] < res["win_rate"] < res["ci_high"]
    mean, low, high = mean_ci([1.0] * 10)
    assert (mean, low, high) == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="pairs"):
        compare([1.0], [])
