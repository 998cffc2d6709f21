"""RLHF with PPO and PPO-ptx: InstructGPT (Ouyang et al., arXiv 2203.02155) step 3, following the
lm-human-preferences recipe (Ziegler et al., arXiv 1909.08593) and PPO (Schulman et al., arXiv 1707.06347).

Objective (InstructGPT eq. 2): maximise E[r_θ(x, y) - β·log(π_RL(y|x) / π_SFT(y|x))] + γ·E_pretrain[log π_RL(x)].
Each iteration runs four phases, one function each:
  1. rollout: draw task prompts (data.tasks, train split), sample answers with the engine (KV cache,
     temperature T, stop at <|end|>, at most ppo.max_new_tokens).
  2. score: batched forwards (length-sorted chunks of ppo.minibatch episodes) for the policy's and the
     frozen reference's log-probs (from logits / T, the distribution the rollout sampled), the critic's
     values and the reward model's score on the last token of prompt + answer. The score is divided by the RM's meta std (its bias is in the head); an
     answer that never produced <|end|> gets the no-EOS penalty (lm-human-preferences).
  3. advantages: per-token KL-shaped rewards (-β·KL every token, + score on the last), GAE, whitening.
  4. update: ppo.epochs passes over minibatches (with optional gradient accumulation) of the clipped
     surrogate + clipped value loss (+ γ·LM loss on pre-training windows for PPO-ptx), stepped through
     train.loop.optimizer_step (the one place with clipping, LR schedule and the non-finite check).
Then β follows the adaptive KL controller (or stays fixed) and one metrics record is appended.

Deviations and choices:
- Packing (`ppo.pack`, on by default): every forward over rollout episodes (scoring, and each
  micro-batch of the update) lays the episodes' real tokens (prompt + answer) end to end in as few,
  evenly filled rows of at most block_size tokens as a longest-first greedy finds (`packed_rows`), with
  a block-diagonal causal mask and positions restarting at each episode (`GPT.hidden(segments=...)`).
  Why: the matmuls, most of the update's time, then run on real tokens only, where a left-padded batch
  (what TRL's trainer runs) pays for every pad column of the longest prompt. ppo.pack=false: each
  episode is its own left-padded row, minus the padding columns none of the micro-batch uses
  (`trimmed_rows`). Either way micro-batches group episodes of similar prompt length
  (`by_prompt_length`), and losses, gradients and stats are the same up to float rounding.
- Only the states that are read are computed in the last block (`GPT.hidden(keep=...)`): the slots
  predicting the real answer tokens (slot offset + prompt_len - 1 + t, t < answer length) for the
  policy, the reference and the critic, and each episode's last token for the reward model. The LM head
  and value head then run on the M real answer tokens, (M, V) logits instead of (b, R, V) (answers
  end at <|end|> well before ppo.max_new_tokens: 10 of 32 tokens on the tiny pipeline), and `per_token`
  lays the results out as the (b, R) tensors `rl_math.ppo_losses` takes.
- The critic is a separate GPT initialised from the reward model (InstructGPT §3.5), its head divided by
  the RM's std so that it starts in the units of the normalised score; with a python reward function
  instead of an RM (toys and tests) it starts from the policy's trunk with a fresh head.
  `value.share_trunk=true` puts the value head on the policy (one optimizer, loss pg + vf_coef·vf).
- Dropout is off during PPO (every model is in eval mode), so the first epoch's ratios are exactly 1.
- The policy LR schedule is the shared warmup+cosine over the derived number of optimizer steps; the
  default config makes it constant (warmup 0, floor 1.0).

Under torchrun (DDP; FSDP is refused because generation needs the full policy on every rank) every rank
samples its own ppo.rollout_batch episodes (prompt draw and sampling seeds offset by rank), so one
iteration sees rollout_batch × world_size episodes and each optimizer step minibatch × world_size. The
policy/value losses run through the DDP wrappers (train/parallel.py: StageForward), with the token
count of the whole step (all ranks) as denominator, so N ranks give the gradient of one process with the
same episodes. Rewards (when ppo.whiten_rewards) and advantages are whitened with the mean and variance
of every rank's tokens, the metrics are averaged over the ranks (so β moves in step everywhere), and
only rank 0 writes logs and checkpoints. The frozen reference and the reward model need no wrapper.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from picochat.checkpoint import (
    TIED_KEY,
    CheckpointError,
    checkpoint_meta,
    flatten_optimizer,
    load_checkpoint,
    load_model_weights,
    load_trainer_state,
    model_state,
    save_checkpoint,
    unflatten_optimizer,
    write_json,
)
from picochat.config import OptimConfig, PPOConfig, save_config
from picochat.data import tasks as task_suite
from picochat.engine import Engine, SamplingParams
from picochat.model import GPT, with_head
from picochat.tokenizer import Tokenizer
from picochat.train import rl_math
from picochat.train.loop import (
    METRICS_FILE,
    Dist,
    GracefulStop,
    MetricsLog,
    NonFiniteError,
    StopRequested,
    autocast,
    build_optimizer,
    dtype_name,
    optimizer_step,
    pin_resumed_dtype,
    read_metrics,
    resolve_dtype,
    restore_rng,
    rng_tensors,
    seed_everything,
)
from picochat.train.parallel import (
    StageForward,
    all_reduce_,
    global_masked_whiten,
    mean_over_ranks,
    no_sync,
    wrap_model,
)

RewardFn = Callable[[Sequence[str], Sequence[str]], Sequence[float]]  # (user prompts, answers) -> scores
POLICY_DIR = "ckpt"
VALUE_DIR = "value"
SNAPSHOT_DIR = "snapshots"
RANK_SEED_STRIDE = 1_000_003  # added per rank to the rollout seeds (rank 0 = one process)
HELDOUT_LM_WINDOWS = (4, 4)  # held-out LM loss: batches x windows, fixed so PPO and PPO-ptx share the text


@dataclass(frozen=True, slots=True)
class PromptPool:
    """User prompts, their rendered chat ids and (for task prompts) the tasks the gold labeler scores."""

    texts: list[str]
    ids: list[list[int]]
    tasks: list[task_suite.Task] | None = None


@dataclass
class Models:
    """The four models of RLHF: trainable policy (+ critic), frozen reference and reward."""

    policy: GPT
    ref: GPT
    critic: GPT | None  # None: the value head sits on the policy trunk
    tok: Tokenizer
    rm: GPT | None = None
    rm_norm: tuple[float, float] = (0.0, 1.0)  # (shift, scale): score = (raw - shift) / scale
    reward_fn: RewardFn | None = None
    # the modules the losses run through, `fwd(fn, *args)` = fn(model, *args): DDP under torchrun
    policy_fwd: nn.Module | None = None
    critic_fwd: nn.Module | None = None
    dist: Dist = field(default_factory=Dist)


@dataclass
class Rollout:
    """A batch of episodes as one tensor: left-padded prompts (width P) then right-padded answers (width R)."""

    ids: torch.Tensor  # (B, P + R)
    pad_mask: torch.Tensor  # (B, P + R) bool, True on real tokens
    mask: torch.Tensor  # (B, R) float, 1 on answer tokens
    P: int
    answers: list[list[int]]
    texts: list[str]  # answers decoded (cut at <|end|>)
    prompt_index: list[int]
    ended: torch.Tensor  # (B,) bool: the answer produced <|end|>


@dataclass
class Scored:
    logprobs: torch.Tensor  # (B, R) policy log-probs at rollout time (the "old" ones)
    ref_logprobs: torch.Tensor  # (B, R)
    values: torch.Tensor  # (B, R)
    score: torch.Tensor  # (B,) final score (normalised, penalised, clipped)
    rm_score: torch.Tensor  # (B,) normalised reward before the no-EOS penalty
    entropy: torch.Tensor  # (B, R)


@dataclass
class PPOState:
    iteration: int = 0
    step: int = 0  # optimizer steps
    beta: float = 0.0
    episodes: int = 0
    elapsed_s: float = 0.0
    ptx_data: dict[str, Any] = field(default_factory=dict)  # PPO-ptx window sampler position (exact resume)


# -- setup ---------------------------------------------------------------------------------------------


def load_reward_model(path: str | Path, device: torch.device) -> tuple[GPT, tuple[float, float]]:
    """The RM checkpoint (a GPT with a 1-output head) and its normalisation (shift, scale).

    train/reward.py already folds its meta "bias" into the head (reference answers score mean 0), so
    only the meta "std" is applied here: score = raw / std."""
    model, _ = load_checkpoint(path, device=device)
    if model.config.n_head_outputs != 1:
        raise ValueError(
            f"{path} is not a reward model: its head has {model.config.n_head_outputs} outputs, expected 1 "
            "(train one with `picochat rm`)"
        )
    meta = checkpoint_meta(path)
    std = float(meta.get("std", 1.0)) or 1.0
    return model.requires_grad_(False), (0.0, std)


def critic_from_reward_model(rm: GPT, norm: tuple[float, float]) -> GPT:
    """A trainable copy of the RM whose head gives the NORMALISED score (raw − shift) / scale.

    The critic learns returns made of normalised scores; a head left in the RM's raw units (std ~6 on the
    tiny pipeline) starts with value errors of that size, so the first iterations' advantages are noise
    while the critic shrinks its outputs (measured: explained variance −5 and 80% of value updates
    clipped at the start)."""
    critic = with_head(rm, 1)
    shift, scale = norm
    assert critic.head is not None
    with torch.no_grad():
        critic.head.weight.div_(scale)
        critic.head.bias.sub_(shift).div_(scale)
    return critic


def build_models(
    cfg: PPOConfig,
    device: torch.device,
    policy: GPT | None,
    tok: Tokenizer | None,
    reward_fn: RewardFn | None,
) -> Models:
    if policy is None or tok is None:
        if not cfg.policy:
            raise ValueError("ppo needs an SFT policy: pass --policy runs/NAME/sft/ckpt (or policy=...)")
        policy, tok = load_checkpoint(cfg.policy, device=device)
    policy = copy.deepcopy(policy).to(device).eval()  # never mutate the caller's model
    rm, norm = None, (0.0, 1.0)
    if reward_fn is None:
        if not cfg.rm:
            raise ValueError("ppo needs a reward model: pass --rm runs/NAME/rm/ckpt (or rm=...)")
        rm, norm = load_reward_model(cfg.rm, device)
        if not cfg.ppo.normalize_reward:
            norm = (0.0, 1.0)
    if cfg.reference:
        ref = load_checkpoint(cfg.reference, device=device)[0].requires_grad_(False)
        if ref.config.vocab_size != policy.config.vocab_size:
            raise ValueError(
                f"reference {cfg.reference} has {ref.config.vocab_size} token ids but the policy "
                f"{cfg.policy} has {policy.config.vocab_size}; the KL penalty needs the same tokenizer"
            )
    else:
        ref = copy.deepcopy(policy).requires_grad_(False)
    if cfg.value.share_trunk:
        policy, critic = with_head(policy, 1).eval(), None
    elif rm is not None:
        critic = critic_from_reward_model(rm, norm).eval().requires_grad_(True)
    else:
        critic = with_head(policy, 1).eval().requires_grad_(True)
    return Models(policy=policy, ref=ref, critic=critic, tok=tok, rm=rm, rm_norm=norm, reward_fn=reward_fn)


def task_prompt_pool(
    tok: Tokenizer, n: int, split: str, seed: int, families: Sequence[str] | None
) -> PromptPool:
    tasks = task_suite.make_tasks(n, split, seed, families)
    ids = [tok.render_prompt([{"role": "user", "content": t.prompt}]) for t in tasks]
    return PromptPool(texts=[t.prompt for t in tasks], ids=ids, tasks=tasks)


def text_prompt_pool(tok: Tokenizer, prompts: Sequence[str]) -> PromptPool:
    if not prompts:
        raise ValueError("prompts is empty; pass at least one user prompt")
    return PromptPool(
        texts=list(prompts), ids=[tok.render_prompt([{"role": "user", "content": p}]) for p in prompts]
    )


# -- phase 1: rollout ------------------------------------------------------------------------------------


def rollout(
    models: Models, pool: PromptPool, cfg: PPOConfig, iteration: int, dtype: torch.dtype | None
) -> Rollout:
    """Sample one answer for each of ppo.rollout_batch random prompts and pack them into one tensor."""
    hp, tok = cfg.ppo, models.tok
    offset = RANK_SEED_STRIDE * models.dist.rank  # every rank draws its own prompts and samples
    gen = torch.Generator().manual_seed(cfg.run.seed * 100_003 + iteration + offset)
    index = torch.randint(len(pool.ids), (hp.rollout_batch,), generator=gen).tolist()
    block = models.policy.config.block_size
    max_new = min(hp.max_new_tokens, block - 2)
    prompts = [pool.ids[i][-(block - max_new) :] for i in index]
    end_id = tok.special_id("<|end|>")
    params = SamplingParams(max_new_tokens=max_new, temperature=hp.temperature)
    engine = Engine(models.policy, tok, autocast_dtype=dtype)
    answers = engine.generate_ids(
        prompts, params, stop_ids=[end_id], seed=cfg.run.seed * 7919 + iteration + offset
    )
    P, R = max(map(len, prompts)), max(map(len, answers))
    B = len(prompts)
    ids = torch.full((B, P + R), tok.eot_id, dtype=torch.long)
    pad_mask = torch.zeros(B, P + R, dtype=torch.bool)
    for b, (p, a) in enumerate(zip(prompts, answers, strict=True)):
        ids[b, P - len(p) : P] = torch.tensor(p)
        ids[b, P : P + len(a)] = torch.tensor(a)
        pad_mask[b, P - len(p) : P + len(a)] = True
    device = models.policy.lm_head.weight.device
    return Rollout(
        ids=ids.to(device), pad_mask=pad_mask.to(device), mask=pad_mask[:, P:].float().to(device), P=P,
        answers=answers, texts=[engine.decode_completion(a) for a in answers], prompt_index=index,
        ended=torch.tensor([bool(a) and a[-1] == end_id for a in answers], device=device),
    )  # fmt: skip


# -- phase 2: score ----------------------------------------------------------------------------------------


def trimmed_rows(ro: Rollout, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(ids, pad_mask, P) of the episodes `rows` without the left-padding columns none of them uses.

    The rollout pads every prompt to the longest of the whole batch. Padding is masked out of attention
    and of the position ids, so dropping those columns changes no output, only the work."""
    pad_mask = ro.pad_mask[rows]  # (b, P + R)
    lead = int(pad_mask[:, : ro.P].any(0).int().argmax())  # first column holding a real prompt token
    return ro.ids[rows, lead:], pad_mask[:, lead:], ro.P - lead


def by_prompt_length(ro: Rollout, rows: torch.Tensor, chunk: int) -> list[torch.Tensor]:
    """`rows` sorted by prompt length, cut into pieces of at most `chunk`: each piece has little padding."""
    lengths = ro.pad_mask[rows, : ro.P].sum(1)
    return list(rows[lengths.argsort(stable=True)].split(chunk))


@dataclass(frozen=True, slots=True)
class Padded:
    """Episodes one per row: left-padded prompts then right-padded answers (`trimmed_rows`)."""

    ids: torch.Tensor  # (b, P + R)
    pad_mask: torch.Tensor  # (b, P + R) bool, True on real tokens
    P: int
    last: torch.Tensor  # (b,) column of each episode's last real token

    def answer_states(self, model: GPT) -> torch.Tensor:
        """(M, C): the states predicting each real answer token (columns P-1 .. P+R-2), in the order of
        the episodes' answer masks read row by row."""
        b, width = self.ids.shape
        columns = torch.arange(self.P - 1, width - 1, device=self.ids.device).expand(b, -1)  # (b, R)
        return model.hidden(self.ids, pad_mask=self.pad_mask, keep=columns)[self.pad_mask[:, self.P :]]

    def last_states(self, model: GPT) -> torch.Tensor:
        """(b, C): the state on each episode's last real token."""
        return model.hidden(self.ids, pad_mask=self.pad_mask, keep=self.last[:, None])[:, 0]


@dataclass(frozen=True, slots=True)
class Packed:
    """Episodes (real prompt + answer tokens only) laid end to end in a few rows (`packed_rows`); the
    model attends within each episode only (`segments`), so every episode's states are its own.

    Only the states read are computed in the last block (`GPT.hidden(keep=...)`): a row's `answer_keep`
    lists the slots predicting the real answer tokens of its episodes, `last_keep` its episodes' last
    slots (`slot_lists`); `*_at` says where each one landed in the flattened (rows · K) result."""

    ids: torch.Tensor  # (rows, L)
    segments: torch.Tensor  # (rows, L) long: k = k-th episode of the row, 0 = padding at the row's end
    answer_keep: torch.Tensor  # (rows, K) slots predicting answer tokens (K = most answer tokens in a row)
    answer_at: torch.Tensor  # (M,) flat index of each real answer token's state, episode by episode
    last_keep: torch.Tensor  # (rows, J) slot of each episode's last real token (J = most episodes in a row)
    last_at: torch.Tensor  # (b,) flat index of each episode's last state

    def answer_states(self, model: GPT) -> torch.Tensor:
        """(M, C): the states predicting each real answer token, in the order of the episodes' answer
        masks read row by row."""
        states = model.hidden(self.ids, segments=self.segments, keep=self.answer_keep)  # (rows, K, C)
        return states.flatten(0, 1)[self.answer_at]

    def last_states(self, model: GPT) -> torch.Tensor:
        """(b, C): the state on each episode's last real token."""
        states = model.hidden(self.ids, segments=self.segments, keep=self.last_keep)  # (rows, J, C)
        return states.flatten(0, 1)[self.last_at]


Episodes = Padded | Packed


def balanced_rows(lengths: Sequence[int], capacity: int) -> list[tuple[int, int, int]]:
    """(row, offset, k) of each item, packing `lengths` into as few rows of at most `capacity` as this
    finds, with fills as even as possible (the rows' width is the fullest one): longest item first, each
    into the emptiest row (LPT scheduling), and one more row whenever an item does not fit. k = 1 + the
    items placed in that row before it. With one row per item every item fits (even one longer than
    `capacity`: the model then refuses it, as it would the padded row)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    n_rows = max(1, -(-sum(lengths) // capacity))
    while True:
        fills, counts = [0] * n_rows, [0] * n_rows
        places = [(0, 0, 0)] * len(lengths)
        for i in order:
            row = min(range(n_rows), key=fills.__getitem__)
            if fills[row] + lengths[i] > capacity and n_rows < len(lengths):
                break
            counts[row] += 1
            places[i] = (row, fills[row], counts[row])
            fills[row] += lengths[i]
        else:
            return places
        n_rows += 1


def packed_rows(ro: Rollout, rows: torch.Tensor, capacity: int) -> Packed:
    """The episodes `rows` packed into rows of at most `capacity` tokens with no padding between them.

    Episode b (prompt p_b tokens, answer a_b tokens) starts at slot o_b of its row; the state predicting
    answer token t < a_b sits at o_b + p_b - 1 + t."""
    device = ro.ids.device
    real = ro.pad_mask[rows]  # (b, P + R)
    n_prompt, n_answer = real[:, : ro.P].sum(1), real[:, ro.P :].sum(1)  # (b,), (b,)
    length = n_prompt + n_answer
    row, offset, seg = torch.tensor(balanced_rows(length.tolist(), capacity), device=device).T  # (b,) each
    n_rows, width = int(row.max()) + 1, int((offset + length).max())
    tokens = ro.ids[rows][real]  # (N,) every real token, episode after episode
    first = (length.cumsum(0) - length).repeat_interleave(length)  # (N,) index of its episode's first token
    dest = (row * width + offset).repeat_interleave(length) + torch.arange(len(tokens), device=device) - first
    ids = torch.zeros(n_rows * width, dtype=ro.ids.dtype, device=device)
    segments = torch.zeros(n_rows * width, dtype=torch.long, device=device)
    ids[dest] = tokens
    segments[dest] = seg.repeat_interleave(length)
    answer_keep, answer_at = slot_lists(row, offset + n_prompt - 1, n_answer, n_rows)
    last_keep, last_at = slot_lists(row, offset + length - 1, torch.ones_like(length), n_rows)
    return Packed(
        ids=ids.view(n_rows, width), segments=segments.view(n_rows, width), answer_keep=answer_keep,
        answer_at=answer_at, last_keep=last_keep, last_at=last_at,
    )  # fmt: skip


def slot_lists(
    row: torch.Tensor, first_slot: torch.Tensor, count: torch.Tensor, n_rows: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(keep (rows, K), at (N,)) for episodes in `row` (b,) that each read `count` (b,) consecutive slots
    from first_slot (b,): each row's slots in one list padded with slot 0 (the `keep` of GPT.hidden), and
    where each read slot landed in the flattened lists, episode after episode (for answer tokens, the
    order in which a (b, R) answer mask lists its True entries)."""
    device = row.device
    n = int(count.sum())
    episode = torch.repeat_interleave(torch.arange(len(row), device=device), count)  # (N,)
    t = torch.arange(n, device=device) - (count.cumsum(0) - count)[episode]  # index within the episode
    slot_row = row[episode]
    per_row = torch.bincount(slot_row, minlength=n_rows)  # slots read in each row
    order = torch.argsort(slot_row, stable=True)  # grouped by row, episode order kept
    column = torch.empty_like(order)
    column[order] = torch.arange(n, device=device) - (per_row.cumsum(0) - per_row)[slot_row[order]]
    K = max(int(per_row.max()), 1)
    keep = torch.zeros(n_rows, K, dtype=torch.long, device=device)
    keep[slot_row, column] = first_slot[episode] + t
    return keep, slot_row * K + column


def episode_rows(ro: Rollout, rows: torch.Tensor, pack: bool, capacity: int) -> Episodes:
    """The episodes `rows` laid out for one forward: packed (ppo.pack) or one trimmed, padded row each."""
    if pack:
        return packed_rows(ro, rows, capacity)
    ids, pad_mask, P = trimmed_rows(ro, rows)
    return Padded(ids=ids, pad_mask=pad_mask, P=P, last=P + ro.mask[rows].sum(1).long() - 1)


def response_outputs(
    model: GPT, batch: Episodes, logits: bool, values: bool
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """LM logits (M, V) predicting each real answer token and/or head values (M,) of the state before it,
    episode after episode (`per_token` lays them out as (b, R)). Nothing is computed past an answer's end."""
    hidden = batch.answer_states(model)  # (M, C)
    out_logits = model.lm_head(hidden) if logits else None
    out_values = model.head_outputs(hidden)[..., 0].float() if values else None
    return out_logits, out_values


def per_token(flat: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(M,) outputs of the real answer tokens -> (b, R) in the answer mask's places (bool (b, R)), 0
    elsewhere (differentiable)."""
    return torch.zeros(mask.shape, dtype=flat.dtype, device=flat.device).masked_scatter(mask, flat)


def policy_values(models: Models, batch: Episodes) -> tuple[torch.Tensor, torch.Tensor]:
    """(policy logits (M, V), values (M,)) for a (sub)batch, from one forward when the trunk is shared.
    Runs through models.policy_fwd / critic_fwd when set (the DDP wrappers: gradients are synced)."""
    policy = models.policy_fwd or StageForward(models.policy)
    if models.critic is None:
        logits, values = policy(response_outputs, batch, True, True)
    else:
        critic = models.critic_fwd or StageForward(models.critic)
        logits, _ = policy(response_outputs, batch, True, False)
        _, values = critic(response_outputs, batch, False, True)
    return logits, values


def pack_capacity(models: Models) -> int:
    """Longest packed row: the smallest context of the models that read the episodes."""
    gpts = (models.policy, models.ref, models.critic, models.rm)
    return min(m.config.block_size for m in gpts if m is not None)


def reward_scores(
    models: Models, pool: PromptPool, ro: Rollout, chunk: int, pack: bool = False
) -> torch.Tensor:
    """(B,) normalised reward: the RM head on the last real token (in length-sorted chunks of `chunk`
    episodes, packed when `pack`), or the python reward function."""
    if models.reward_fn is not None:
        raw = models.reward_fn([pool.texts[i] for i in ro.prompt_index], ro.texts)
        return torch.tensor([float(r) for r in raw], device=ro.ids.device)
    assert models.rm is not None
    raw = torch.zeros(len(ro.mask), device=ro.ids.device)  # (B,)
    for rows in by_prompt_length(ro, torch.arange(len(ro.mask), device=ro.ids.device), chunk):
        batch = episode_rows(ro, rows, pack, pack_capacity(models))
        last = batch.last_states(models.rm)  # (b, C)
        raw[rows] = models.rm.head_outputs(last)[:, 0].float()
    bias, std = models.rm_norm
    return (raw - bias) / std


def penalised(
    rm_score: torch.Tensor, ended: torch.Tensor, cfg: PPOConfig, dist: Dist | None = None
) -> torch.Tensor:
    """No-EOS penalty, then optional whitening (scale only, statistics of all ranks) and clipping."""
    hp = cfg.ppo
    penalty = torch.full_like(rm_score, hp.no_eos_penalty)
    fallback = penalty if hp.eos_penalty_mode == "replace" else rm_score + penalty
    score = torch.where(ended, rm_score, fallback)
    if hp.whiten_rewards and len(score) * (dist or Dist()).world_size > 1:
        score = global_masked_whiten(score, torch.ones_like(score), dist or Dist(), shift_mean=False)
    if hp.reward_clip > 0:
        score = score.clamp(-hp.reward_clip, hp.reward_clip)
    return score


@torch.no_grad()
def score_rollout(models: Models, pool: PromptPool, ro: Rollout, cfg: PPOConfig, dev_dtype: Any) -> Scored:
    """Old and reference log-probs, values and entropy in length-sorted chunks of ppo.minibatch episodes
    (less padding; (chunk, R, V) logits at a time instead of (B, R, V)), then the reward."""
    device, dtype = dev_dtype
    T, chunk = cfg.ppo.temperature, cfg.ppo.micro_batch or cfg.ppo.minibatch
    out = {k: torch.zeros_like(ro.mask) for k in ("logprobs", "ref_logprobs", "values", "entropy")}
    for rows in by_prompt_length(ro, torch.arange(len(ro.mask), device=ro.mask.device), chunk):
        batch = episode_rows(ro, rows, cfg.ppo.pack, pack_capacity(models))
        mask = ro.mask[rows].bool()  # (b, R)
        answer = ro.ids[rows, ro.P :][mask]  # (M,) the real answer tokens
        with autocast(device, dtype):
            logits, values = policy_values(models, batch)
            ref_logits, _ = response_outputs(models.ref, batch, True, False)
        out["logprobs"][rows] = per_token(rl_math.logprobs_from_logits(logits, answer, T), mask)
        out["ref_logprobs"][rows] = per_token(rl_math.logprobs_from_logits(ref_logits, answer, T), mask)
        out["values"][rows] = per_token(values.float(), mask)
        out["entropy"][rows] = per_token(rl_math.entropy_from_logits(logits, T), mask)
    with autocast(device, dtype):
        rm_score = reward_scores(models, pool, ro, chunk, cfg.ppo.pack)
    m = ro.mask
    return Scored(
        logprobs=out["logprobs"] * m, ref_logprobs=out["ref_logprobs"] * m, values=out["values"] * m,
        score=penalised(rm_score, ro.ended, cfg, models.dist), rm_score=rm_score, entropy=out["entropy"],
    )  # fmt: skip


# -- phase 3: advantages -----------------------------------------------------------------------------------


@dataclass
class Advantages:
    rewards: torch.Tensor  # (B, R)
    kl: torch.Tensor  # (B, R) estimator used in the reward
    advantages: torch.Tensor  # (B, R)
    returns: torch.Tensor  # (B, R)


def compute_advantages(
    sc: Scored, mask: torch.Tensor, cfg: PPOConfig, beta: float, dist: Dist | None = None
) -> Advantages:
    """KL-shaped rewards, GAE and (optionally) advantages whitened over the tokens of all ranks."""
    hp = cfg.ppo
    rewards, kl = rl_math.kl_shaped_rewards(
        sc.score, sc.logprobs, sc.ref_logprobs, mask, beta, hp.kl_estimator
    )
    advantages, returns = rl_math.gae(rewards, sc.values, mask, hp.gamma, hp.lam)
    if hp.whiten_advantages:
        advantages = global_masked_whiten(advantages, mask, dist or Dist())
    return Advantages(rewards=rewards, kl=kl, advantages=advantages, returns=returns)


# -- phase 4: update ----------------------------------------------------------------------------------------


@dataclass
class Optimizers:
    policy: torch.optim.Optimizer
    critic: torch.optim.Optimizer | None
    policy_sched: OptimConfig
    critic_sched: OptimConfig


def ptx_loss(policy: nn.Module, windows: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy on pre-training windows = -E_pretrain[log π(x)]."""
    x, y = (t.to(policy.lm_head.weight.device) for t in windows)
    _, loss = policy(x, targets=y, return_logits=False)
    return loss


def minibatch_step(
    models: Models, opt: Optimizers, ro: Rollout, sc: Scored, adv: Advantages, rows: torch.Tensor,
    cfg: PPOConfig, state: PPOState, dev_dtype: Any, ptx_batch: Any,
) -> dict[str, float]:  # fmt: skip
    """One optimizer step on the episodes `rows`, split into micro-batches whose gradients add up.

    Under DDP the loss denominator is the step's token count over all ranks divided by the world size
    (DDP averages the ranks' gradients), and only the last backward all-reduces; the ptx backward runs
    first, so a shared-trunk policy's unused value head never meets a synced forward."""
    hp, (device, dtype), dist = cfg.ppo, dev_dtype, models.dist
    micro = hp.micro_batch or len(rows)
    local_tokens = float(ro.mask[rows].sum())
    n_tokens = (
        float(all_reduce_(torch.tensor([local_tokens], dtype=torch.float64), dist)[0]) / dist.world_size
    )
    vf_weight = hp.vf_coef if models.critic is None else 1.0
    wrapped = [m for m in (models.policy_fwd, models.critic_fwd) if m is not None]
    totals: dict[str, float] = {}
    if ptx_batch is not None:
        with no_sync(wrapped, skip=True):
            with autocast(device, dtype):
                lm = (models.policy_fwd or StageForward(models.policy))(ptx_loss, ptx_batch)
            (hp.ptx_coef * lm).backward()
        totals["ptx_loss"] = float(lm.detach())
    chunks = by_prompt_length(ro, rows, micro)  # the same gradient sum, less padding per micro-batch
    capacity = pack_capacity(models)
    for i, j in enumerate(chunks):
        batch = episode_rows(ro, j, hp.pack, capacity)  # packed: no padding at all (ppo.pack)
        with no_sync(wrapped, skip=i != len(chunks) - 1):  # all-reduce on the last backward only
            with autocast(device, dtype):
                logits, values = policy_values(models, batch)
            mask = ro.mask[j].bool()  # (b, R); logits and values hold the real answer tokens only
            new_logprobs = rl_math.logprobs_from_logits(logits, ro.ids[j, ro.P :][mask], hp.temperature)
            losses = rl_math.ppo_losses(
                per_token(new_logprobs, mask), sc.logprobs[j], adv.advantages[j], per_token(values, mask),
                sc.values[j], adv.returns[j], ro.mask[j], hp.clip_eps, hp.vf_clip, n_tokens=n_tokens,
            )  # fmt: skip
            (losses.pg_loss + vf_weight * losses.vf_loss).backward()
        weight = losses.stats["n_tokens"] / max(n_tokens, 1.0)
        totals["pg_loss"] = totals.get("pg_loss", 0.0) + float(losses.pg_loss.detach())
        totals["value_loss"] = totals.get("value_loss", 0.0) + float(losses.vf_loss.detach())
        for k in ("clipfrac", "approx_kl", "approx_kl_k1", "vf_clipfrac"):
            totals[k] = totals.get(k, 0.0) + losses.stats[k] * weight
    gnorm, lr = optimizer_step(models.policy, opt.policy, state.step, opt.policy_sched)
    if models.critic is not None and opt.critic is not None:
        totals["value_gnorm"], _ = optimizer_step(models.critic, opt.critic, state.step, opt.critic_sched)
    if not math.isfinite(gnorm) or not math.isfinite(totals["pg_loss"]):
        raise NonFiniteError(
            f"non-finite PPO loss or gradient at iteration {state.iteration + 1}, step {state.step}; "
            "lower optim.lr or raise ppo.beta"
        )
    state.step += 1
    return {**totals, "gnorm": gnorm, "lr": lr}


def ppo_update(
    models: Models, opt: Optimizers, ro: Rollout, sc: Scored, adv: Advantages, cfg: PPOConfig,
    state: PPOState, dev_dtype: Any, ptx_source: Any,
) -> dict[str, float]:  # fmt: skip
    """ppo.epochs passes over shuffled minibatches; returns the stats averaged over all steps."""
    hp = cfg.ppo
    gen = torch.Generator().manual_seed(cfg.run.seed * 31337 + state.iteration)
    sums: dict[str, float] = {}
    n_steps = 0
    for _ in range(hp.epochs):
        perm = torch.randperm(hp.rollout_batch, generator=gen).to(ro.ids.device)
        for start in range(0, hp.rollout_batch, hp.minibatch):
            ptx_batch = ptx_source.next_batch() if ptx_source is not None else None
            stats = minibatch_step(
                models, opt, ro, sc, adv, perm[start : start + hp.minibatch], cfg, state, dev_dtype, ptx_batch
            )
            for k, v in stats.items():
                sums[k] = sums.get(k, 0.0) + v
            n_steps += 1
    return {k: v / n_steps for k, v in sums.items()}


# -- one iteration, metrics, samples -------------------------------------------------------------------------


def gold_scores(pool: PromptPool, ro: Rollout) -> list[float]:
    if pool.tasks is None:
        return []
    return [task_suite.score(pool.tasks[i], text) for i, text in zip(ro.prompt_index, ro.texts, strict=True)]


def iteration_record(
    ro: Rollout, sc: Scored, adv: Advantages, gold: list[float], upd: dict[str, float], beta: float,
    timing: dict[str, float],
) -> dict[str, float]:  # fmt: skip
    m = ro.mask
    k1 = rl_math.kl_per_token(sc.logprobs, sc.ref_logprobs, "k1") * m
    k3 = rl_math.kl_per_token(sc.logprobs, sc.ref_logprobs, "k3") * m
    rec = {
        "ppo/reward_rm": float(sc.rm_score.mean()), "ppo/score": float(sc.score.mean()),
        "ppo/gold_score": sum(gold) / len(gold) if gold else float("nan"),
        "ppo/kl_k1": float(k1.sum(1).mean()), "ppo/kl_k3": float(k3.sum(1).mean()),
        "ppo/entropy": float(rl_math.masked_mean(sc.entropy, m)),
        "ppo/clipfrac": upd["clipfrac"], "ppo/approx_kl": upd["approx_kl"],
        "ppo/approx_kl_k1": upd["approx_kl_k1"], "ppo/pg_loss": upd["pg_loss"],
        "ppo/value_loss": upd["value_loss"], "ppo/vf_clipfrac": upd["vf_clipfrac"],
        "ppo/explained_var": rl_math.explained_variance(sc.values, adv.returns, m),
        "ppo/response_len": float(m.sum(1).mean()), "ppo/eos_frac": float(ro.ended.float().mean()),
        "ppo/beta": beta, "ppo/return_mean": float(rl_math.masked_mean(adv.returns, m)),
        "ppo/gnorm": upd["gnorm"], "lr": upd["lr"],
        "rollout/tok_s": float(m.sum()) / max(timing["rollout"], 1e-9),
        "update/tok_s": timing["update_tokens"] / max(timing["update"], 1e-9),
    }  # fmt: skip
    if "ptx_loss" in upd:
        rec["ppo/ptx_loss"] = upd["ptx_loss"]
    return rec


def sample_lines(pool: PromptPool, ro: Rollout, sc: Scored, n: int) -> list[str]:
    kl = (rl_math.kl_per_token(sc.logprobs, sc.ref_logprobs, "k1") * ro.mask).sum(1)
    lines = []
    for b in range(min(n, len(ro.texts))):
        lines.append(
            f"  [{pool.texts[ro.prompt_index[b]]!r}] -> {ro.texts[b]!r} "
            f"(score {float(sc.score[b]):+.3f}, kl {float(kl[b]):.3f})"
        )
    return lines


def log_line(rec: dict[str, Any], total: int) -> str:
    return (
        f"iter {rec['iteration']}/{total} | rm {rec['ppo/reward_rm']:+.3f} | gold {rec['ppo/gold_score']:.3f} | "
        f"kl {rec['ppo/kl_k1']:.3f} (k3 {rec['ppo/kl_k3']:.3f}) | β {rec['ppo/beta']:.4f} | "
        f"clip {rec['ppo/clipfrac']:.3f} | ev {rec['ppo/explained_var']:.2f} | len {rec['ppo/response_len']:.1f} | "
        f"rollout {rec['rollout/tok_s']:.0f} tok/s | update {rec['update/tok_s']:.0f} tok/s"
    )


def ppo_iteration(
    models: Models, opt: Optimizers, pool: PromptPool, cfg: PPOConfig, state: PPOState, dev_dtype: Any,
    ptx_source: Any,
) -> tuple[dict[str, float], list[str]]:  # fmt: skip
    t0 = time.perf_counter()
    ro = rollout(models, pool, cfg, state.iteration, dev_dtype[1])
    t1 = time.perf_counter()
    sc = score_rollout(models, pool, ro, cfg, dev_dtype)
    adv = compute_advantages(sc, ro.mask, cfg, state.beta, models.dist)
    t2 = time.perf_counter()
    upd = ppo_update(models, opt, ro, sc, adv, cfg, state, dev_dtype, ptx_source)
    t3 = time.perf_counter()
    update_tokens = float(ro.pad_mask.sum()) * cfg.ppo.epochs
    timing = {"rollout": t1 - t0, "update": t3 - t2, "update_tokens": update_tokens}
    rec = iteration_record(ro, sc, adv, gold_scores(pool, ro), upd, state.beta, timing)
    return mean_over_ranks(rec, models.dist), sample_lines(pool, ro, sc, cfg.ppo.samples_to_print)


# -- checkpoints ----------------------------------------------------------------------------------------------


def save_ppo(out_dir: Path, models: Models, opt: Optimizers, state: PPOState, meta: dict[str, Any]) -> None:
    tensors, rest = flatten_optimizer(opt.policy.state_dict())
    tensors.update(rng_tensors())
    trainer_json = {"state": asdict(state), "optimizer": rest}
    meta = {**meta, "iteration": state.iteration, "step": state.step, "beta": state.beta}
    if models.critic is not None and opt.critic is not None:
        # the critic and its optimizer also ride in the policy's trainer state, so that one atomic write
        # commits both (a kill between the policy and value/ writes would resume with a stale critic)
        v_tensors, v_rest = flatten_optimizer(opt.critic.state_dict())
        tensors.update({f"critic.{k}": v for k, v in v_tensors.items()})
        tensors.update({f"critic.model.{k}": v for k, v in model_state(models.critic).items()})
        trainer_json["critic_optimizer"] = v_rest
    save_checkpoint(
        out_dir / POLICY_DIR,
        models.policy,
        models.tok,
        meta=meta,
        trainer_tensors=tensors,
        trainer_json=trainer_json,
    )
    if models.critic is not None and opt.critic is not None:
        save_checkpoint(
            out_dir / VALUE_DIR, models.critic, models.tok, meta={"kind": "value", "iteration": state.iteration},
            trainer_tensors=v_tensors, trainer_json={"optimizer": v_rest},
        )  # fmt: skip


def resume_ppo(out_dir: Path, models: Models, opt: Optimizers) -> PPOState | None:
    loaded = load_trainer_state(out_dir / POLICY_DIR)
    if loaded is None:
        return None
    tensors, rest = loaded
    load_model_weights(models.policy, out_dir / POLICY_DIR / "model.safetensors")
    opt.policy.load_state_dict(unflatten_optimizer(tensors, rest["optimizer"]))
    restore_rng(tensors)
    if models.critic is not None and opt.critic is not None and "critic_optimizer" in rest:
        critic = {
            k.removeprefix("critic.model."): v for k, v in tensors.items() if k.startswith("critic.model.")
        }
        missing, unexpected = models.critic.load_state_dict(critic, strict=False)
        if set(missing) - {TIED_KEY} or unexpected:
            raise CheckpointError(f"{out_dir / POLICY_DIR}: the saved critic does not fit the value model")
        v_tensors = {
            k.removeprefix("critic."): v for k, v in tensors.items() if k.startswith("critic.optim.")
        }
        opt.critic.load_state_dict(unflatten_optimizer(v_tensors, rest["critic_optimizer"]))
    elif models.critic is not None and opt.critic is not None:  # checkpoints written before the above
        v_loaded = load_trainer_state(out_dir / VALUE_DIR)
        if v_loaded is None:
            raise FileNotFoundError(
                f"{out_dir / VALUE_DIR} is missing or not resumable; rerun without --resume"
            )
        load_model_weights(models.critic, out_dir / VALUE_DIR / "model.safetensors")
        opt.critic.load_state_dict(unflatten_optimizer(v_loaded[0], v_loaded[1]["optimizer"]))
    return PPOState(**rest["state"])


# -- the stage ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PPOPlan:
    """Derived numbers, printed at the start (never written back into the config)."""

    policy_params: int
    critic: str
    optimizer_steps: int
    steps_per_iteration: int
    episodes: int
    device: str
    dtype: str
    ptx: bool


def make_optimizers(models: Models, cfg: PPOConfig, device: torch.device) -> tuple[Optimizers, PPOPlan]:
    hp = cfg.ppo
    per_iter = hp.epochs * (hp.rollout_batch // hp.minibatch)
    total = hp.iterations * per_iter
    sched = replace(cfg.optim, max_steps=total)
    critic_sched = replace(sched, lr=cfg.value.lr)
    models.policy.requires_grad_(True)
    opt = Optimizers(
        policy=build_optimizer(models.policy, sched, device),
        critic=build_optimizer(models.critic, critic_sched, device) if models.critic is not None else None,
        policy_sched=sched, critic_sched=critic_sched,
    )  # fmt: skip
    plan = PPOPlan(
        policy_params=models.policy.num_params(),
        critic="shared trunk" if models.critic is None else f"separate ({models.critic.num_params()} params)",
        optimizer_steps=total, steps_per_iteration=per_iter, episodes=hp.iterations * hp.rollout_batch,
        device=str(device), dtype="", ptx=hp.ptx_coef > 0,
    )  # fmt: skip
    return opt, plan


def open_ptx(
    cfg: PPOConfig, data_dir: str, block_size: int, tok: Tokenizer, dist: Dist | None = None
) -> tuple[Any, Any]:
    """(random train windows for PPO-ptx or None, fixed validation windows for held-out LM loss or None).
    Under torchrun each rank draws its own ptx windows."""
    if not data_dir:
        if cfg.ppo.ptx_coef > 0:
            raise ValueError("ppo.ptx_coef > 0 needs pre-training shards: pass --data-dir runs/NAME/data")
        return None, None
    from picochat.data.shards import RandomWindows, eval_windows
    from picochat.train.pretrain import open_data

    data = open_data(Path(data_dir))
    if data.tok.identity() != tok.identity():
        raise ValueError(
            f"{data_dir}/tokenizer.json is not the policy's tokenizer; pass the data dir of this run"
        )
    block = min(cfg.ppo.ptx_block, block_size)
    source = (
        RandomWindows(
            data.train_ids,
            block,
            cfg.ppo.ptx_batch,
            seed=cfg.run.seed,
            rank=(dist or Dist()).rank,
            world_size=(dist or Dist()).world_size,
        )  # fmt: skip
        if cfg.ppo.ptx_coef > 0
        else None
    )
    n_batches, per_batch = HELDOUT_LM_WINDOWS
    return source, eval_windows(data.val_ids, block, per_batch, n_batches)


@torch.no_grad()
def heldout_lm_loss(policy: GPT, windows: Any, dev_dtype: Any) -> float:
    device, dtype = dev_dtype
    with autocast(device, dtype):
        losses = [float(ptx_loss(policy, w)) for w in windows]
    return sum(losses) / len(losses)


def ppo(
    cfg: PPOConfig,
    out_dir: str | Path,
    *,
    dist: Dist | None = None,
    resume: bool = False,
    policy: GPT | None = None,
    tok: Tokenizer | None = None,
    reward_fn: RewardFn | None = None,
    prompts: Sequence[str] | None = None,
    data_dir: str | Path | None = None,
) -> tuple[GPT, dict[str, Any]]:
    """Run PPO; writes out_dir/{ckpt, value, snapshots/iter_N, metrics.jsonl, config.toml, summary.json}.

    `policy`/`tok` replace cfg.policy, `reward_fn(prompts, answers)` replaces the reward model and `prompts`
    (user messages) replace the task prompt pool (toys and tests; gold scores then are NaN).
    """
    dist = dist or Dist.alone(cfg.run.device)
    if dist.enabled and cfg.run.parallel != "ddp":
        raise ValueError(
            f"ppo under torchrun supports run.parallel=ddp only (got {cfg.run.parallel!r}): every rank "
            "generates rollouts with the full policy; set run.parallel=ddp"
        )
    out_dir = Path(out_dir)
    if dist.is_main:
        save_config(cfg, out_dir / "config.toml")
    say = print if dist.is_main else (lambda *a: None)
    cfg = replace(cfg, run=pin_resumed_dtype(cfg.run, out_dir / POLICY_DIR, resume, say))
    seed_everything(cfg.run.seed)
    device = dist.device
    dev_dtype = (device, resolve_dtype(cfg.run.dtype, device))
    models = build_models(cfg, device, policy, tok, reward_fn)
    models.dist = dist
    families = cfg.ppo.families
    pool = (
        text_prompt_pool(models.tok, prompts)
        if prompts
        else task_prompt_pool(models.tok, cfg.ppo.n_prompts, "train", cfg.run.seed, families)
    )
    ptx_source, val_windows = open_ptx(
        cfg, str(data_dir or cfg.data_dir), models.policy.config.block_size, models.tok, dist
    )
    opt, plan = make_optimizers(models, cfg, device)  # (sets requires_grad, so DDP comes after)
    models.policy_fwd = wrap_model(models.policy, dist, cfg.run, dev_dtype[1])
    if models.critic is not None:
        models.critic_fwd = wrap_model(models.critic, dist, cfg.run, dev_dtype[1])
    plan = replace(plan, dtype=dtype_name(dev_dtype[1]))
    if dist.is_main:
        print("plan: " + ", ".join(f"{k}={v}" for k, v in asdict(plan).items()))
    state = (resume_ppo(out_dir, models, opt) if resume else None) or PPOState(beta=cfg.ppo.beta)
    if ptx_source is not None and state.ptx_data:
        ptx_source.load_state_dict(state.ptx_data)
    kl_ctl: Any = (
        rl_math.AdaptiveKLController(state.beta, cfg.ppo.target_kl, cfg.ppo.horizon)
        if cfg.ppo.adaptive_kl else rl_math.FixedKLController(state.beta)
    )  # fmt: skip
    log = MetricsLog(out_dir / METRICS_FILE, dist.is_main, state.step if resume and state.iteration else None)
    meta = {
        "stage": "ppo",
        "policy": cfg.policy,
        "rm": cfg.rm,
        "ptx_coef": cfg.ppo.ptx_coef,
        "dtype": plan.dtype,
    }
    val_start = heldout_lm_loss(models.ref, val_windows, dev_dtype) if val_windows else None
    summary = run_iterations(models, opt, pool, cfg, state, kl_ctl, dev_dtype, ptx_source, log, out_dir, meta)
    if val_windows:
        summary["ptx/heldout_lm_loss_sft"] = val_start
        summary["ptx/heldout_lm_loss_rl"] = heldout_lm_loss(models.policy, val_windows, dev_dtype)
    if dist.is_main:
        write_json(out_dir / "summary.json", summary, sort_keys=False)
        print(f"ppo: wrote {out_dir / POLICY_DIR}, {out_dir / METRICS_FILE}, {out_dir / 'summary.json'}")
    return models.policy, summary


def run_iterations(
    models: Models, opt: Optimizers, pool: PromptPool, cfg: PPOConfig, state: PPOState, kl_ctl: Any,
    dev_dtype: Any, ptx_source: Any, log: MetricsLog, out_dir: Path, meta: dict[str, Any],
) -> dict[str, Any]:  # fmt: skip
    """The outer loop: iterate, update β, log, checkpoint (and snapshot) every run.save_every iterations.
    SIGINT/SIGTERM finish the current iteration, checkpoint it and raise StopRequested (--resume goes on)."""
    hp, run = cfg.ppo, cfg.run
    # a resumed run's "first" iteration is still iteration 1 (its record survived in the metrics log)
    first: dict[str, float] = next(iter(read_metrics(log.path)), {}) if state.iteration else {}
    rec: dict[str, Any] = {}
    main = models.dist.is_main  # only rank 0 prints and writes checkpoints
    bar = tqdm(
        total=hp.iterations, initial=state.iteration, disable=not (run.progress and main), desc="ppo",
        leave=False,
    )  # fmt: skip
    with GracefulStop() as stop, bar:
        while state.iteration < hp.iterations:
            t0 = time.perf_counter()
            stats, samples = ppo_iteration(models, opt, pool, cfg, state, dev_dtype, ptx_source)
            state.beta = kl_ctl.update(stats["ppo/kl_k1"], hp.rollout_batch)
            state.iteration += 1
            state.episodes += hp.rollout_batch
            state.elapsed_s += time.perf_counter() - t0
            rec = {"step": state.step, "iteration": state.iteration, "episodes": state.episodes, **stats}
            first = first or rec
            log.write(rec)
            bar.update(1)
            bar.set_postfix(rm=f"{stats['ppo/reward_rm']:+.2f}", kl=f"{stats['ppo/kl_k1']:.2f}")
            if main and (state.iteration % run.log_every == 0 or state.iteration in (1, hp.iterations)):
                tqdm.write(log_line(rec, hp.iterations) + "\n" + "\n".join(samples))
            due = state.iteration % run.save_every == 0 or state.iteration == hp.iterations
            if main and (due or stop.requested):
                state.ptx_data = ptx_source.state_dict() if ptx_source is not None else {}
                save_ppo(out_dir, models, opt, state, meta)
                save_checkpoint(
                    out_dir / SNAPSHOT_DIR / f"iter_{state.iteration:04d}", models.policy, models.tok,
                    meta={**meta, "iteration": state.iteration, "kl_k1": stats["ppo/kl_k1"]},
                )  # fmt: skip
            if stop.requested:
                if main:
                    tqdm.write(
                        f"ppo: stopped by signal at iteration {state.iteration}; checkpoint in {out_dir}"
                    )
                raise StopRequested(str(out_dir / POLICY_DIR))
    keys = ("ppo/reward_rm", "ppo/gold_score", "ppo/kl_k1", "ppo/kl_k3", "ppo/response_len", "ppo/beta")
    summary: dict[str, Any] = {
        "iterations": state.iteration,
        "episodes": state.episodes,
        "elapsed_s": state.elapsed_s,
    }
    summary.update({f"first/{k}": first[k] for k in keys if k in first})
    summary.update({f"last/{k}": rec[k] for k in keys if k in rec})
    return summary


def run_ppo(
    cfg: PPOConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    winrate_n: int = 200,
    data_dir: str | Path | None = None,
) -> dict[str, Any]:
    """The pipeline's PPO stage: train, then the gold-judged win rate over the SFT policy on held-out
    prompts, greedy (winrate.json) and sampled at the rollout temperature (winrate_sampled.json).
    Returns JSON-able headline numbers."""
    from picochat.eval.winrate import winrate

    policy, summary = ppo(cfg, out_dir, resume=resume, data_dir=data_dir)
    sft, tok = load_checkpoint(cfg.reference or cfg.policy, device=policy.lm_head.weight.device)
    keys = ("win_rate", "ci_low", "ci_high", "gold_policy", "gold_baseline")
    out = dict(summary)
    # greedy answers, and answers sampled at the rollout temperature (the distribution PPO optimised)
    for name, temperature in (("winrate", 0.0), ("winrate_sampled", cfg.ppo.temperature)):
        result = winrate(
            policy, sft, tok, n=winrate_n, seed=cfg.run.seed, temperature=temperature,
            max_new_tokens=cfg.ppo.max_new_tokens,
        )  # fmt: skip
        result["temperature"] = temperature
        write_json(Path(out_dir) / f"{name}.json", result, sort_keys=False)
        out.update({f"{name}/{k}": result[k] for k in keys})
    return out


__all__ = ["PromptPool", "RewardFn", "ppo", "run_ppo"]
