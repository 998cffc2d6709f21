"""PPO with packed episodes (ppo.pack): the packed layout holds exactly each episode's real tokens, and
scoring, the reward model and two optimizer steps give the same numbers as the padded layout (fp32), for
a separate critic, a shared trunk and gradient accumulation."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import pytest
import torch

from picochat.config import PPOConfig, load_config
from picochat.model import GPT, GPTConfig, with_head
from picochat.tokenizer import Tokenizer
from picochat.train import ppo as stage

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = (torch.device("cpu"), None)  # (device, autocast dtype): plain fp32


def random_rollout(
    vocab: int, prompt_lens: Sequence[int], answer_lens: Sequence[int], seed: int
) -> stage.Rollout:
    """A rollout laid out as `ppo.rollout` does: prompts left-padded to P, answers right-padded to R."""
    gen = torch.Generator().manual_seed(seed)
    P, R, B = max(prompt_lens), max(answer_lens), len(prompt_lens)
    ids = torch.full((B, P + R), 7, dtype=torch.long)  # pad id: any token; padding is masked
    pad_mask = torch.zeros(B, P + R, dtype=torch.bool)
    answers = []
    for b, (p, a) in enumerate(zip(prompt_lens, answer_lens, strict=True)):
        ids[b, P - p : P + a] = torch.randint(0, vocab, (p + a,), generator=gen)
        pad_mask[b, P - p : P + a] = True
        answers.append(ids[b, P : P + a].tolist())
    return stage.Rollout(
        ids=ids, pad_mask=pad_mask, mask=pad_mask[:, P:].float(), P=P, answers=answers,
        texts=[str(a) for a in answers], prompt_index=list(range(B)),
        ended=torch.rand(B, generator=gen) < 0.7,
    )  # fmt: skip


PROMPTS = [3, 12, 5, 9, 4, 11, 6, 8]
ANSWERS = [6, 1, 10, 4, 9, 3, 10, 7]


def test_packed_rows_hold_each_episode_and_point_at_its_answer() -> None:
    ro = random_rollout(100, PROMPTS, ANSWERS, seed=0)
    rows = torch.tensor([5, 0, 2, 7, 1])
    packed = stage.packed_rows(ro, rows, capacity=32)
    lengths = [PROMPTS[r] + ANSWERS[r] for r in rows.tolist()]  # 14, 9, 15, 15, 13 = 66 tokens
    assert packed.ids.shape[0] == 3 and packed.ids.shape[1] <= 32  # 66 tokens need 3 rows of 32
    assert int((packed.segments > 0).sum()) == sum(lengths)  # every real token once, no padding inside
    K = packed.answer_keep.shape[1]  # most answer tokens in a row
    slots = packed.answer_keep.flatten()[packed.answer_at]  # (M,) slot predicting each real answer token
    lasts = packed.last_keep.flatten()[packed.last_at]  # (b,) each episode's last slot
    assert len(slots) == sum(ANSWERS[r] for r in rows.tolist())  # nothing past an answer's end
    start = 0
    for b, r in enumerate(rows.tolist()):
        row = int(packed.answer_at[start]) // K
        col, last = slots[start : start + ANSWERS[r]], int(lasts[b])
        assert int(packed.last_at[b]) // packed.last_keep.shape[1] == row
        assert (packed.answer_at[start : start + ANSWERS[r]] // K == row).all()
        start += ANSWERS[r]
        first = int(col[0]) - PROMPTS[r] + 1
        seg = packed.segments[row, first]
        assert (packed.segments[row] == seg).sum() == lengths[b]  # one contiguous run of its own id
        episode = ro.ids[r][ro.pad_mask[r]]
        assert torch.equal(packed.ids[row, first : first + lengths[b]], episode)
        # the state predicting answer token t sits one slot before it; `last` is the final answer token
        assert torch.equal(packed.ids[row, col + 1], ro.ids[r, ro.P : ro.P + ANSWERS[r]])
        assert last == first + lengths[b] - 1
    assert K == 16  # the rows hold answers of 10 + 6, 7 and 3 + 1 tokens
    assert packed.ids.shape[1] == 27  # fills 15 + 9, 15, 14 + 13: as even as whole episodes allow


def test_balanced_rows_are_few_and_even() -> None:
    assert stage.balanced_rows([5, 9, 7], 10) == [(2, 0, 1), (0, 0, 1), (1, 0, 1)]  # longest first
    assert stage.balanced_rows([5, 9, 1, 4], 10) == [(1, 0, 1), (0, 0, 1), (0, 9, 2), (1, 5, 2)]
    # first-fit would fill one row to 16 (8 + 4 + 4) and leave 8 in the other; each row gets 12 here
    places = stage.balanced_rows([4, 4, 4, 4, 8], 16)
    fills = [
        sum(n for n, (r, _, _) in zip([4, 4, 4, 4, 8], places, strict=True) if r == row) for row in (0, 1)
    ]
    assert fills == [12, 12]
    assert stage.balanced_rows([6, 6, 6], 10) == [(0, 0, 1), (1, 0, 1), (2, 0, 1)]  # 2 rows cannot hold 18
    assert stage.balanced_rows([40, 3], 32) == [(0, 0, 1), (1, 0, 1)]  # too long: a row of its own


def ppo_setup(
    tok: Tokenizer, share_trunk: bool, micro_batch: int, pack: bool
) -> tuple[stage.Models, stage.Optimizers, PPOConfig]:
    overrides = [
        "ppo.rollout_batch=8", "ppo.minibatch=8", f"ppo.micro_batch={micro_batch}", f"ppo.pack={pack}",
        f"value.share_trunk={share_trunk}", "optim.lr=1e-3", "value.lr=1e-3", "run.dtype=float32",
    ]  # fmt: skip
    cfg = load_config(PPOConfig, None, overrides)
    torch.manual_seed(0)
    policy = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=tok.vocab_size))
    models = stage.build_models(cfg, CPU[0], policy, tok, reward_fn=lambda p, a: [0.0] * len(a))
    opt, _ = stage.make_optimizers(models, cfg, CPU[0])
    return models, opt, cfg


def params(models: stage.Models) -> dict[str, torch.Tensor]:
    nets = {"policy": models.policy, "critic": models.critic}
    return {f"{k}.{n}": p.detach().clone() for k, m in nets.items() if m for n, p in m.named_parameters()}


@pytest.mark.parametrize(
    ("share_trunk", "micro_batch"), [(False, 0), (True, 0), (False, 4)], ids=["critic", "shared", "accum"]
)
def test_minibatch_step_packed_equals_padded(tok: Tokenizer, share_trunk: bool, micro_batch: int) -> None:
    ro = random_rollout(tok.vocab_size, PROMPTS, ANSWERS, seed=1)
    pool = stage.text_prompt_pool(tok, [f"prompt {i}" for i in range(8)])
    results = {}
    for pack in (False, True):
        models, opt, cfg = ppo_setup(tok, share_trunk, micro_batch, pack)
        sc = stage.score_rollout(models, pool, ro, cfg, CPU)
        gen = torch.Generator().manual_seed(2)  # old log-probs and values off the current ones: ratios
        sc.logprobs += 0.3 * torch.randn(sc.logprobs.shape, generator=gen) * ro.mask  # clip, values clip
        sc.values += 0.5 * torch.randn(sc.values.shape, generator=gen) * ro.mask
        adv = stage.compute_advantages(sc, ro.mask, cfg, beta=0.05)
        before = params(models)
        state = stage.PPOState()
        stats = [
            stage.minibatch_step(models, opt, ro, sc, adv, rows, cfg, state, CPU, None)
            for rows in (torch.tensor([3, 0, 6, 1, 5, 2, 7, 4]), torch.arange(8))  # two optimizer steps
        ]
        after = params(models)
        results[pack] = (sc, stats, {k: after[k] - before[k] for k in before})
    (sc0, stats0, delta0), (sc1, stats1, delta1) = results[False], results[True]
    for field in ("logprobs", "ref_logprobs", "values", "score"):
        torch.testing.assert_close(getattr(sc1, field), getattr(sc0, field), atol=1e-5, rtol=0)
    torch.testing.assert_close(sc1.entropy * ro.mask, sc0.entropy * ro.mask, atol=1e-5, rtol=0)  # unmasked
    assert stats0[0]["clipfrac"] > 0 and stats0[0]["vf_clipfrac"] > 0  # the comparison is not trivial
    for s0, s1 in zip(stats0, stats1, strict=True):
        assert s0.keys() == s1.keys()
        for k in s0:
            assert s1[k] == pytest.approx(s0[k], rel=1e-5, abs=1e-6), k
    assert max(float(d.abs().max()) for d in delta0.values()) > 1e-4  # the steps moved the weights
    for k in delta0:
        torch.testing.assert_close(delta1[k], delta0[k], atol=1e-5, rtol=0, msg=k)


def test_packed_reward_model_scores_the_last_token(tok: Tokenizer) -> None:
    ro = random_rollout(tok.vocab_size, PROMPTS, ANSWERS, seed=3)
    models, _, cfg = ppo_setup(tok, False, 0, True)
    torch.manual_seed(4)
    models.rm, models.reward_fn = with_head(copy.deepcopy(models.policy), 1).eval(), None
    pool = stage.text_prompt_pool(tok, ["p"] * 8)
    padded = stage.reward_scores(models, pool, ro, chunk=3, pack=False)
    packed = stage.reward_scores(models, pool, ro, chunk=3, pack=True)
    torch.testing.assert_close(packed, padded, atol=1e-5, rtol=0)
    assert padded.std() > 0
