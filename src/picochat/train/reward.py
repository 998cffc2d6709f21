"""Reward model: a GPT with a scalar head, trained on K-way rankings (InstructGPT, arXiv 2203.02155, §3.5).

The reward r(x, y) is the head's output on the final hidden state of the LAST token of prompt + answer;
every answer is closed with <|end|>, so the model always reads the end token's state (Stiennon et al.,
arXiv 2009.01325, §3.4 put the head on the final token too). The model starts from the SFT checkpoint.

Loss, InstructGPT eq. 1:

    loss(θ) = −1/C(K,2) · E_(x, y_w, y_l)~D [ log σ(r_θ(x, y_w) − r_θ(x, y_l)) ]

over ALL K-choose-2 pairs of one prompt, and the K answers of a prompt sit in ONE batch element: each
answer is encoded once and the C(K,2) score differences are taken from a (K, K) matrix. Why (§3.5):
the pairs of a prompt are strongly correlated, and shuffling them into separate examples makes every
answer pass through the model K−1 times per epoch, which overfits in a single epoch; as one element
they get one gradient step per prompt. It is also faster: K forward passes per prompt instead of
2·C(K,2) (4 instead of 12 for K = 4, 9 instead of 72 for K = 9).

Options: a margin m (−log σ(Δ − m), Llama 2 §3.2.2 uses a graded one) and label smoothing ε
(−(1−ε)·log σ(Δ) − ε·log σ(−Δ), the loss for labels flipped with probability ε).

Deviations: K varies per prompt (padding is masked), ties recorded by the labeler give no pair, and
the batch loss is the sum over pairs divided by the global number of pairs (the shared loop's rule), so
with ties or mixed K a prompt weighs by its number of pairs rather than exactly 1/C(K,2) each.
After training the reward is NORMALISED: a bias is added to the head so that the SFT policy's own
samples (the collected answers: reference outputs) score mean 0, as InstructGPT does before RL; their
score std is reported and stored with the bias in the checkpoint meta, together with the step it was
applied at: a --resume that finds those weights already normalised (killed after the final re-save,
before summary.json) reuses the recorded bias and std instead of shifting the head a second time.
Under torchrun (DDP or FSDP) the loss runs inside the wrapper's forward (train/parallel.py); each step's
batch_size × world_size prompts are dealt out by rank. Rank 0 collects the preferences (the others read
its files), evaluates, normalises and writes the outputs.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from picochat.checkpoint import (
    checkpoint_meta,
    load_checkpoint,
    load_trainer_state,
    save_checkpoint,
    write_json,
)
from picochat.config import RewardConfig, save_config
from picochat.data.preferences import PreferenceRecord, prompt_messages, read_any, write_preferences
from picochat.data.tasks import make_tasks
from picochat.model import GPT, with_head
from picochat.tokenizer import Tokenizer
from picochat.train.collect import collect_records
from picochat.train.loop import (
    CKPT_DIR,
    Dist,
    StepOut,
    Trainer,
    dtype_name,
    pin_resumed_dtype,
    resolve_dtype,
    seed_everything,
)

END = "<|end|>"
NORMALISED_AT = "normalised_at_step"  # checkpoint meta: the training step whose weights carry the bias


class RankLoss(NamedTuple):
    """Pairwise ranking loss of a batch: summed over pairs, with the pair count and correct count."""

    loss_sum: torch.Tensor
    n_pairs: torch.Tensor
    n_correct: torch.Tensor

    @property
    def mean(self) -> torch.Tensor:
        return self.loss_sum / self.n_pairs.clamp(min=1)

    @property
    def accuracy(self) -> torch.Tensor:
        return self.n_correct / self.n_pairs.clamp(min=1)


def pairwise_rank_loss(
    scores: torch.Tensor,
    levels: torch.Tensor,
    mask: torch.Tensor,
    margin: float = 0.0,
    label_smoothing: float = 0.0,
) -> RankLoss:
    """−log σ(r_w − r_l − margin) summed over every ranked pair of every row.

    scores (B, K) rewards; levels (B, K) rank levels, 0 = best, equal = tie (no pair); mask (B, K) True
    on real answers (rows with fewer than K answers are padded). Accuracy counts Δ > 0 as right and
    Δ = 0 as half right.
    """
    scores = scores.float()
    diff = scores[:, :, None] - scores[:, None, :]  # (B, K, K): r_i - r_j
    real = mask[:, :, None] & mask[:, None, :]
    wins = real & (levels[:, :, None] < levels[:, None, :])  # (B, K, K): answer i ranked above answer j
    z = diff - margin
    per_pair = -(1.0 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)
    loss_sum = torch.where(wins, per_pair, torch.zeros_like(per_pair)).sum()
    right = (diff > 0).float() + 0.5 * (diff == 0).float()
    n_correct = torch.where(wins, right, torch.zeros_like(right)).sum().detach()
    return RankLoss(loss_sum, wins.sum(), n_correct)


# -- encoding and scoring ----------------------------------------------------------------------------


def encode_answer(tok: Tokenizer, prompt_ids: Sequence[int], answer: str, block_size: int) -> list[int]:
    """prompt + answer + <|end|>, keeping the last block_size tokens (the reward reads the last one)."""
    return [*prompt_ids, *tok.encode(answer), tok.special_id(END)][-block_size:]


def encode_record(tok: Tokenizer, record: PreferenceRecord, block_size: int) -> list[list[int]]:
    """The K token sequences of a record (the chat-rendered prompt is encoded once)."""
    prompt_ids = tok.render_prompt(prompt_messages(record.prompt))
    return [encode_answer(tok, prompt_ids, c, block_size) for c in record.completions]


def right_pad(
    seqs: Sequence[Sequence[int]], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids (N, T) right-padded, lengths (N,)). Right padding needs no attention mask: causal attention
    never lets a real token see the padding after it."""
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    ids = torch.full((len(seqs), int(lengths.max())), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return ids.to(device), lengths.to(device)


def sequence_rewards(model: nn.Module, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reward per sequence (N,): the head on the hidden state at position length − 1."""
    gpt: GPT = getattr(model, "module", model)
    return gpt.head_outputs(gpt.final_states(ids, lengths))[:, 0].float()


@torch.no_grad()
def score_sequences(
    model: GPT, seqs: Sequence[Sequence[int]], pad_id: int, batch_size: int = 64
) -> list[float]:
    """Rewards of token sequences (prompt + answer + <|end|>), batched by similar length."""
    device = next(model.parameters()).device
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    out = [0.0] * len(seqs)
    was_training = model.training
    model.eval()
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        ids, lengths = right_pad([seqs[i] for i in chunk], pad_id, device)
        for i, r in zip(chunk, sequence_rewards(model, ids, lengths).tolist(), strict=True):
            out[i] = r
    model.train(was_training)
    return out


def score_records(
    model: GPT, tok: Tokenizer, records: Sequence[PreferenceRecord], batch_size: int = 64
) -> list[list[float]]:
    """Rewards of every completion of every record, as one list per record."""
    block = model.config.block_size
    seqs = [s for r in records for s in encode_record(tok, r, block)]
    flat = score_sequences(model, seqs, tok.eot_id, batch_size)
    out, pos = [], 0
    for r in records:
        out.append(flat[pos : pos + r.k])
        pos += r.k
    return out


def score_texts(
    model: GPT, tok: Tokenizer, prompts: Sequence[Any], answers: Sequence[str], batch_size: int = 64
) -> list[float]:
    """Rewards of (prompt, answer) pairs; a prompt is a string (user message) or a message list."""
    block = model.config.block_size
    seqs = [
        encode_answer(tok, tok.render_prompt(prompt_messages(p)), a, block)
        for p, a in zip(prompts, answers, strict=True)
    ]
    return score_sequences(model, seqs, tok.eot_id, batch_size)


# -- batches -----------------------------------------------------------------------------------------


@dataclass
class RankBatch:
    """B prompts with up to K answers each, the answers flattened into N rows of ids."""

    ids: torch.Tensor  # (N, T) right-padded
    lengths: torch.Tensor  # (N,)
    slot: torch.Tensor  # (N,) flat index into (B, K)
    levels: torch.Tensor  # (B, K) rank levels (0 = best)
    mask: torch.Tensor  # (B, K) True on real answers


def collate(items: Sequence[tuple[list[list[int]], list[int]]], pad_id: int) -> RankBatch:
    """Batch (sequences, levels) items of variable K."""
    k_max = max(len(levels) for _, levels in items)
    seqs = [s for s_list, _ in items for s in s_list]
    ids, lengths = right_pad(seqs, pad_id, torch.device("cpu"))
    slot = torch.tensor([b * k_max + i for b, (s_list, _) in enumerate(items) for i in range(len(s_list))])
    levels = torch.zeros(len(items), k_max, dtype=torch.long)
    mask = torch.zeros(len(items), k_max, dtype=torch.bool)
    for b, (_, lv) in enumerate(items):
        levels[b, : len(lv)] = torch.tensor(lv)
        mask[b, : len(lv)] = True
    return RankBatch(ids, lengths, slot, levels, mask)


class RankingSource:
    """Shuffled epochs over encoded records, batch_size prompts per batch (resumable). Every rank draws
    the same global batch of batch_size × world_size prompts and keeps its own slice."""

    def __init__(
        self, items: list[tuple[list[list[int]], list[int]]], batch_size: int, pad_id: int, seed: int,
        rank: int = 0, world_size: int = 1,
    ) -> None:  # fmt: skip
        if not items:
            raise ValueError("no ranked prompts to train on: every record was empty or all-tied")
        self.items, self.batch_size, self.pad_id, self.seed = items, batch_size, pad_id, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.pos = 0, 0
        self.order = self._order()

    def _order(self) -> list[int]:
        order = list(range(len(self.items)))
        random.Random(f"picochat-rm:{self.seed}:{self.epoch}").shuffle(order)
        return order

    def next_batch(self) -> RankBatch:
        picked: list[int] = []
        n_global = self.batch_size * self.world_size
        while len(picked) < n_global:
            if self.pos >= len(self.order):
                self.epoch, self.pos = self.epoch + 1, 0
                self.order = self._order()
            take = self.order[self.pos : self.pos + n_global - len(picked)]
            picked += take
            self.pos += len(take)
        mine = picked[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
        return collate([self.items[i] for i in mine], self.pad_id)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
        self.order = self._order()


def batch_scores(model: nn.Module, batch: RankBatch) -> torch.Tensor:
    """Rewards of a batch arranged as (B, K) (padding slots hold 0 and are masked)."""
    device = next(model.parameters()).device
    rewards = sequence_rewards(model, batch.ids.to(device), batch.lengths.to(device))  # (N,)
    flat = torch.zeros(batch.mask.numel(), device=device, dtype=rewards.dtype)
    flat = flat.index_put((batch.slot.to(device),), rewards)
    return flat.view(batch.mask.shape)  # (B, K)


def make_loss_fn(margin: float, label_smoothing: float) -> Any:
    def rank_loss(model: nn.Module, batch: RankBatch) -> StepOut:
        scores = batch_scores(model, batch)
        device = scores.device
        out = pairwise_rank_loss(
            scores, batch.levels.to(device), batch.mask.to(device), margin, label_smoothing
        )
        return StepOut(
            loss_sum=out.loss_sum, n_items=int(out.n_pairs), n_tokens=int(batch.lengths.sum()),
            metrics={"acc": float(out.n_correct)},
        )  # fmt: skip

    return rank_loss


# -- normalisation -----------------------------------------------------------------------------------


@torch.no_grad()
def normalize_reward(model: GPT, reference_scores: Sequence[float]) -> tuple[float, float]:
    """Add a bias to the head so the reference outputs score mean 0. Returns (bias added, their std)."""
    if len(reference_scores) < 2:
        raise ValueError(f"normalisation needs >= 2 reference outputs, got {len(reference_scores)}")
    values = torch.tensor(list(reference_scores), dtype=torch.float64)
    mean, std = float(values.mean()), float(values.std())
    if model.head is None or model.head.bias is None:
        raise ValueError("the reward model's head has no bias to shift; build it with model.bias=True")
    model.head.bias.sub_(mean)
    return -mean, std


def recorded_normalisation(ckpt_dir: Path, step: int) -> tuple[float, float] | None:
    """(bias, std) recorded in ckpt_dir's meta if its weights are step `step`'s, already normalised.

    The stage normalises after training and re-saves; a run killed after that re-save but before
    summary.json resumes with nothing left to train. Normalising again would shift by the (now ~0) mean
    and record a bias of ~0, so the recorded values are reused. A checkpoint the training loop saved
    later (a resume with more steps) has no such record and is normalised afresh."""
    meta = checkpoint_meta(ckpt_dir)
    if meta.get(NORMALISED_AT) != step or "bias" not in meta or "std" not in meta:
        return None
    return float(meta["bias"]), float(meta["std"])


# -- the stage ---------------------------------------------------------------------------------------


def _load_or_collect(
    path_given: str, out_file: Path, reuse: bool, collect_fn: Any, log: Any
) -> list[PreferenceRecord]:
    if path_given:
        return read_any(path_given)
    if reuse and out_file.is_file():
        log(f"rm: reusing {out_file}")
        return read_any(out_file)
    records = collect_fn()
    write_preferences(out_file, records)
    return records


def prepare_preferences(
    cfg: RewardConfig, sft: GPT, tok: Tokenizer, out_dir: Path, reuse: bool, log: Any = print
) -> tuple[list[PreferenceRecord], list[PreferenceRecord], list[PreferenceRecord]]:
    """(train, heldout, shift) records: from the given files, or collected into out_dir/prefs/."""
    c = cfg.collect
    dtype = resolve_dtype(cfg.run.dtype, next(sft.parameters()).device)

    def gather(model: GPT, split: str, n: int, seed: int, temperature: float, name: str) -> Any:
        def run() -> list[PreferenceRecord]:
            t0 = time.perf_counter()
            tasks = make_tasks(n, split, seed)
            records, stats = collect_records(
                model, tok, tasks, c.k, temperature=temperature, noise=c.noise, seed=seed,
                max_new_tokens=c.max_new_tokens, batch_prompts=c.batch_prompts, autocast_dtype=dtype,
                tie_tolerance=c.tie_tolerance,
            )  # fmt: skip
            log(
                f"rm: collected {name}: {stats['n_records']}/{n} prompts kept, mean gold score "
                f"{stats['mean_gold_score']:.3f}, tied pairs {stats['tied_pair_fraction']:.1%} "
                f"({time.perf_counter() - t0:.0f} s)"
            )
            return records

        return run

    prefs = out_dir / "prefs"
    policy = sft
    if cfg.collect_policy:
        policy, _ = load_checkpoint(cfg.collect_policy, device=next(sft.parameters()).device)
    train: list[PreferenceRecord] = []
    for f in cfg.data:
        train += read_any(f)
    if not cfg.data:
        train = _load_or_collect("", prefs / "train.jsonl", reuse,
                                 gather(policy, c.split, c.n_prompts, c.seed, c.temperature, "train"), log)  # fmt: skip
    earlier = [r for f in cfg.extra_data for r in read_any(f)]  # earlier rounds' comparisons
    if not any(r.pairs() for r in earlier + train):  # before minutes of held-out and shift collection
        raise ValueError("no ranked prompts to train on: every record was empty or all-tied")
    heldout = _load_or_collect(cfg.heldout, prefs / "heldout.jsonl", reuse,
                               gather(policy, "heldout", cfg.n_heldout, c.seed + 1, c.temperature, "heldout"), log)  # fmt: skip
    shift_model = sft
    if cfg.shift_policy and not cfg.shift:
        shift_model, _ = load_checkpoint(cfg.shift_policy, device=next(sft.parameters()).device)
    shift_temp = c.temperature if cfg.shift_policy else cfg.shift_temperature
    shift = _load_or_collect(cfg.shift, prefs / "shift.jsonl", reuse,
                             gather(shift_model, "heldout", cfg.n_heldout, c.seed + 2, shift_temp, "shift"), log)  # fmt: skip
    return earlier + train, heldout, shift


def encode_items(
    tok: Tokenizer, records: Sequence[PreferenceRecord], block_size: int
) -> list[tuple[list[list[int]], list[int]]]:
    return [(encode_record(tok, r, block_size), r.levels()) for r in records if r.pairs()]


def reference_records(train: Sequence[PreferenceRecord]) -> list[PreferenceRecord]:
    """The policy's own samples: gold-labelled records (the labeler saw SFT outputs); else everything."""
    gold = [r for r in train if r.source == "gold"]
    return gold or list(train)


def train_reward(
    cfg: RewardConfig, out_dir: str | Path, dist: Dist | None = None, resume: bool = False, log: Any = print
) -> dict[str, Any]:
    """Train the reward model; writes out_dir/{ckpt, metrics.jsonl, config.toml, summary.json,
    calibration.json, prefs/*.jsonl when collected}. Returns the summary."""
    from picochat.eval.reward import evaluate_rankings, write_calibration

    dist = dist or Dist.alone(cfg.run.device)
    if not cfg.sft:
        raise ValueError("rm needs the SFT checkpoint it starts from: --ckpt runs/NAME/sft/ckpt")
    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    if dist.is_main:
        save_config(cfg, out_dir / "config.toml")
    say = log if dist.is_main else (lambda *a: None)
    cfg = replace(cfg, run=pin_resumed_dtype(cfg.run, out_dir / CKPT_DIR, resume, say))
    seed_everything(cfg.run.seed)
    sft, tok = load_checkpoint(cfg.sft, device=dist.device)
    if dist.is_main:  # rank 0 collects and writes prefs/*.jsonl, then the other ranks read them
        train, heldout, shift = prepare_preferences(cfg, sft, tok, out_dir, reuse=resume, log=log)
    if dist.enabled:
        torch.distributed.barrier()
    if not dist.is_main:
        train, heldout, shift = prepare_preferences(cfg, sft, tok, out_dir, reuse=True, log=lambda *a: None)
    t_data = time.perf_counter() - t0
    model = with_head(sft, 1)
    block = model.config.block_size
    items = encode_items(tok, train, block)
    source = RankingSource(items, cfg.optim.batch_size, tok.eot_id, cfg.run.seed, dist.rank, dist.world_size)
    eval_items = encode_items(tok, heldout, block)

    def eval_fn(m: nn.Module) -> dict[str, float]:
        loss_fn = make_loss_fn(0.0, 0.0)
        total = n = right = 0.0
        for start in range(0, len(eval_items), cfg.optim.batch_size):
            out = loss_fn(m, collate(eval_items[start : start + cfg.optim.batch_size], tok.eot_id))
            total, n, right = total + float(out.loss_sum), n + out.n_items, right + out.metrics["acc"]
        return {"val/loss": total / max(n, 1), "val/acc": right / max(n, 1)}

    trainer = Trainer(
        model=model, tok=tok, source=source, loss_fn=make_loss_fn(cfg.margin, cfg.label_smoothing),
        optim_cfg=cfg.optim, run_cfg=cfg.run, out_dir=out_dir, dist=dist,
        eval_fn=eval_fn if eval_items else None, meta={"stage": "reward", "kind": "reward"}, items_name="pairs",
    )  # fmt: skip
    state = trainer.run(resume=resume)
    if not dist.is_main:  # rank 0 normalises, evaluates and writes
        return {"steps": state.step, "train_s": state.elapsed_s}
    model = trainer.model.eval()  # under FSDP: the gathered full model

    recorded = recorded_normalisation(trainer.ckpt_dir, state.step) if resume else None
    if recorded is not None:
        bias, std = recorded
        log(f"rm: {trainer.ckpt_dir} is normalised already (bias {bias:+.4f}); reusing it")
    else:
        ref = reference_records(train)
        ref_scores = [s for row in score_records(model, tok, ref, cfg.score_batch) for s in row]
        bias, std = normalize_reward(model, ref_scores)
        meta = {"stage": "reward", "kind": "reward", "bias": bias, "std": std, "step": state.step,
                NORMALISED_AT: state.step, "tokens_seen": state.tokens_seen, "sft": str(cfg.sft),
                "dtype": dtype_name(trainer.dtype)}  # fmt: skip
        loaded = load_trainer_state(trainer.ckpt_dir)
        tensors, rest = loaded if loaded is not None else (None, None)
        save_checkpoint(trainer.ckpt_dir, model, tok, meta=meta, trainer_tensors=tensors, trainer_json=rest)

    head = evaluate_rankings(model, tok, heldout, cfg.calibration_bins, cfg.score_batch)
    moved = evaluate_rankings(model, tok, shift, cfg.calibration_bins, cfg.score_batch)
    train_eval = evaluate_rankings(
        model, tok, train[: len(heldout) or 1], cfg.calibration_bins, cfg.score_batch
    )
    calibration_path = write_calibration(out_dir / "calibration.json", head["calibration"])
    summary: dict[str, Any] = {
        "rm/accuracy": head["accuracy"], "rm/loss": head["loss"], "rm/per_family": head["per_family"],
        "rm/ece": head["calibration"]["ece"], "rm/calibration": str(calibration_path),
        "rm/shift_accuracy": moved["accuracy"], "rm/shift_per_family": moved["per_family"],
        "rm/train_accuracy": train_eval["accuracy"],
        "rm/bias": bias, "rm/reference_std": std,
        "n_train_prompts": len(items), "n_train_pairs": sum(len(r.pairs()) for r in train),
        "n_heldout_prompts": len(heldout), "n_heldout_pairs": head["n_pairs"],
        "n_shift_prompts": len(shift), "n_shift_pairs": moved["n_pairs"],
        "steps": state.step, "train_s": state.elapsed_s, "data_s": t_data,
        "wall_s": time.perf_counter() - t0, "ckpt": str(trainer.ckpt_dir),
    }  # fmt: skip
    write_json(out_dir / "summary.json", summary, sort_keys=False)
    log(
        f"rm: held-out pairwise accuracy {head['accuracy']:.3f} on {head['n_pairs']} pairs "
        f"(shift {moved['accuracy']:.3f}, train {train_eval['accuracy']:.3f}); reference std {std:.3f}; "
        f"wrote {trainer.ckpt_dir}, {out_dir / 'summary.json'}, {calibration_path}"
    )
    return summary
