"""Supervised fine-tuning (SFT) of a base checkpoint on chat demonstrations: InstructGPT (arXiv 2203.02155)
§3.5, "we fine-tune GPT-3 on our labeler demonstrations using supervised learning", ChatGPT's step 1.

Loss: the mean next-token negative log-likelihood over assistant tokens only,
    L = -Σ_t m_t · log p(x_t | x_<t) / Σ_t m_t,
where m_t = 1 on assistant content tokens and the <|end|> closing each answer (the mask of
`Tokenizer.render_conversation`), so the model learns to answer and to stop, never to imitate the user.
`sft_loss` returns the sum and the count; the shared loop divides by the global count, so micro-batching,
accumulation and ranks all give the gradient of one big batch.

What this stage adds to the shared loop:
- data: the mixture of `data/sft_mix.py` (task demonstrations + chitchat + chatterbot, or a user JSONL);
- truncation (`truncate_conversation`): a conversation longer than the context keeps its leading whole
  turns up to the last assistant answer that fits; if even the first answer does not fit, the tokens are
  cut at the window and the cut answer trains only on the tokens it kept (it gets no <|end|>, so the model
  is never taught to stop early); a conversation whose first answer starts past the window is dropped;
- packing (`pack_rows`): whole conversations are packed into rows of block_size + 1 tokens, best fit from
  a 64-conversation lookahead, the rest of a row padded with <|endoftext|> and masked out. Deviation:
  packed conversations attend to the ones before them in the row (separated by <|endoftext|>, as in
  GPT-2/3 pre-training) instead of getting a block-diagonal mask; the loss never covers them;
- optional pre-training mix (`ptx_fraction`): that fraction of rows are random windows of the pre-training
  shard with the LM loss on every token (their tokens count in the same per-token mean);
- evaluation: held-out assistant-token loss during training (`val/loss`, split into `val/task_loss` and
  `val/chat_loss`), and after training the checkable-task score of greedy answers, before (base) and
  after SFT, with the rate of answers that stop at <|end|>.

Under torchrun (DDP or FSDP) each step's batch_size × world_size rows are dealt out by rank
(`PackedSFTBatches`); rank 0 runs the task evaluations and writes the outputs.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from picochat.checkpoint import load_checkpoint, write_json
from picochat.config import SFTConfig, save_config
from picochat.data.sft_mix import Labeled, build_sft_mix, mix_counts
from picochat.data.tasks import Task, make_tasks, score
from picochat.engine import Engine, SamplingParams
from picochat.model import GPT, IGNORE_INDEX
from picochat.tokenizer import Tokenizer
from picochat.train.loop import (
    CKPT_DIR,
    Dist,
    StepOut,
    Trainer,
    pin_resumed_dtype,
    resolve_dtype,
    seed_everything,
)
from picochat.train.pretrain import lm_loss, open_data

LOOKAHEAD = 64  # conversations the packer may choose from when filling a row
EXACT = 0.95  # a task answer with gold score >= EXACT counts as correct
BASE_EVAL = "base_eval.json"
CHAT_PROMPTS = ("Hello! How are you today?", "What is a computer?", "Can you tell me a joke?")

Example = tuple[list[int], list[int]]  # (ids, mask) of one rendered conversation


# -- one conversation ---------------------------------------------------------------------------------


def answer_ends(mask: Sequence[int]) -> list[int]:
    """Indices of the last token (<|end|>) of each assistant answer: where a run of mask 1s ends."""
    return [i for i, m in enumerate(mask) if m and (i + 1 == len(mask) or not mask[i + 1])]


def truncate_conversation(ids: Sequence[int], mask: Sequence[int], limit: int) -> Example | None:
    """Fit a rendered conversation into `limit` tokens (block_size + 1: inputs plus the last target).

    Keeps everything up to the last assistant <|end|> that fits (whole turns). If no answer ends inside
    the limit, cuts at the limit, keeping the partial answer's mask (its tokens are true next tokens; it
    has no <|end|>). Returns None when no assistant token would be a target (nothing to learn from).
    """
    if len(ids) != len(mask):
        raise ValueError(f"ids and mask differ in length ({len(ids)} vs {len(mask)})")
    if len(ids) <= limit:
        return list(ids), list(mask)
    ends = [e for e in answer_ends(mask) if e < limit]
    cut = ends[-1] + 1 if ends else limit
    ids, mask = list(ids[:cut]), list(mask[:cut])
    return (ids, mask) if any(mask[1:]) else None


def shift_targets(ids: Sequence[int], mask: Sequence[int]) -> tuple[list[int], list[int]]:
    """(inputs, targets): inputs = ids[:-1]; targets = ids[1:] where mask[1:] is 1, else IGNORE_INDEX."""
    targets = [t if m else IGNORE_INDEX for t, m in zip(ids[1:], mask[1:], strict=True)]
    return list(ids[:-1]), targets


def encode_conversations(
    tok: Tokenizer, items: Sequence[Labeled], block_size: int
) -> tuple[list[Example], list[str], int]:
    """Render and truncate every conversation; returns (examples, their sources, number dropped)."""
    examples, sources, dropped = [], [], 0
    for source, messages in items:
        fitted = truncate_conversation(*tok.render_conversation(messages), block_size + 1)
        if fitted is None:
            dropped += 1
            continue
        examples.append(fitted)
        sources.append(source)
    return examples, sources, dropped


# -- packing --------------------------------------------------------------------------------------------


def pack_rows(
    lengths: Sequence[int], capacity: int, order: Sequence[int], lookahead: int = LOOKAHEAD
) -> list[list[int]]:
    """Group item indices into rows whose lengths sum to <= capacity, visiting items in `order`.

    Each row takes, while any fits, the longest item that fits among the next `lookahead` items (best
    fit). Every item appears exactly once; an item longer than capacity raises ValueError.
    """
    too_long = [i for i in order if lengths[i] > capacity]
    if too_long:
        raise ValueError(
            f"item {too_long[0]} has {lengths[too_long[0]]} tokens, more than the row capacity {capacity}"
        )
    queue = list(reversed(order))  # pop() takes the next item in order
    buffer: list[int] = []
    rows: list[list[int]] = []
    while queue or buffer:
        while queue and len(buffer) < lookahead:
            buffer.append(queue.pop())
        row, room = [], capacity
        while True:
            fits = [k for k, i in enumerate(buffer) if lengths[i] <= room]
            if not fits:
                break
            k = max(fits, key=lambda k: lengths[buffer[k]])
            item = buffer.pop(k)
            row.append(item)
            room -= lengths[item]
            if queue:
                buffer.append(queue.pop())
        rows.append(row)
    return rows


def materialize_row(
    examples: Sequence[Example], row: Sequence[int], block_size: int, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) LongTensors of length block_size for one packed row, padding masked out."""
    ids = [t for i in row for t in examples[i][0]]
    mask = [m for i in row for m in examples[i][1]]
    pad = block_size + 1 - len(ids)
    x, y = shift_targets(ids + [pad_id] * pad, mask + [0] * pad)
    return torch.tensor(x, dtype=torch.long), torch.tensor(y, dtype=torch.long)


def is_ptx_row(g: int, fraction: float) -> bool:
    """Whether global row g is a pre-training row: rows where floor(g·f) steps up, spread evenly."""
    return math.floor((g + 1) * fraction) > math.floor(g * fraction)


@dataclass
class PackedSFTBatches:
    """Batches of packed SFT rows (plus optional pre-training windows); resumable and rank-sharded.

    One global stream of rows: each epoch shuffles the conversations (seeded by seed and epoch) and packs
    them. A step's batch_size × world_size global rows are dealt out by rank, so the rows a step sees do
    not depend on how they are split into micro-batches or ranks.
    """

    examples: list[Example]
    block_size: int
    batch_size: int  # per rank
    seed: int
    pad_id: int
    rank: int = 0
    world_size: int = 1
    ptx_ids: np.ndarray | None = None
    ptx_fraction: float = 0.0

    def __post_init__(self) -> None:
        if not self.examples:
            raise ValueError("no SFT conversations to train on (all empty or dropped by truncation)")
        if not 0.0 <= self.ptx_fraction < 1.0:
            raise ValueError(f"ptx_fraction={self.ptx_fraction}; expected a value in [0, 1)")
        if self.ptx_fraction > 0 and (self.ptx_ids is None or len(self.ptx_ids) <= self.block_size + 1):
            raise ValueError(
                f"ptx_fraction={self.ptx_fraction} needs a pre-training shard longer than {self.block_size + 1} tokens"
            )
        self.lengths = [len(ids) for ids, _ in self.examples]
        self.row = 0  # global rows handed out so far
        self.epoch = 0
        self.pos = 0  # next packed row of this epoch
        self.rows = self.pack(self.epoch)

    def pack(self, epoch: int) -> list[list[int]]:
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.examples)).tolist()
        return pack_rows(self.lengths, self.block_size + 1, order)

    def next_conversation_row(self) -> list[int]:
        if self.pos == len(self.rows):
            self.epoch, self.pos = self.epoch + 1, 0
            self.rows = self.pack(self.epoch)
        self.pos += 1
        return self.rows[self.pos - 1]

    def ptx_row(self, g: int) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.ptx_ids is not None
        start = int(
            np.random.default_rng([self.seed, 1, g]).integers(0, len(self.ptx_ids) - self.block_size - 1)
        )
        window = torch.from_numpy(self.ptx_ids[start : start + self.block_size + 1].astype(np.int64))
        return window[:-1], window[1:]

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        mine = range(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
        for j in range(self.batch_size * self.world_size):
            g = self.row + j
            if is_ptx_row(g, self.ptx_fraction):
                pair = self.ptx_row(g) if j in mine else None
            else:
                row = self.next_conversation_row()
                pair = (
                    materialize_row(self.examples, row, self.block_size, self.pad_id) if j in mine else None
                )
            if pair is not None:
                xs.append(pair[0])
                ys.append(pair[1])
        self.row += self.batch_size * self.world_size
        return torch.stack(xs), torch.stack(ys)  # (B, T) each

    def state_dict(self) -> dict[str, Any]:
        return {"row": self.row, "epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.row, self.epoch, self.pos = int(state["row"]), int(state["epoch"]), int(state["pos"])
        self.rows = self.pack(self.epoch)


def sft_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> StepOut:
    """Summed NLL over the batch's target tokens (assistant tokens; every token of a ptx row) and
    their count. The same computation as pre-training's `lm_loss`: the mask lives in the targets."""
    return lm_loss(model, batch)


# -- evaluation -----------------------------------------------------------------------------------------


def eval_batches(
    examples: Sequence[Example], block_size: int, batch_size: int, max_rows: int, pad_id: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Fixed held-out batches: the examples packed in their given order, at most max_rows rows."""
    if not examples:
        return []
    rows = pack_rows([len(ids) for ids, _ in examples], block_size + 1, range(len(examples)))[:max_rows]
    pairs = [materialize_row(examples, row, block_size, pad_id) for row in rows]
    return [
        (
            torch.stack([x for x, _ in pairs[i : i + batch_size]]),
            torch.stack([y for _, y in pairs[i : i + batch_size]]),
        )
        for i in range(0, len(pairs), batch_size)
    ]


def make_eval_fn(
    groups: dict[str, list[tuple[torch.Tensor, torch.Tensor]]],
) -> Callable[[nn.Module], dict[str, float]]:
    """Held-out assistant-token loss: val/<group>_loss per non-empty group and val/loss over all."""

    def evaluate(model: nn.Module) -> dict[str, float]:
        out: dict[str, float] = {}
        total = count = 0.0
        for name, batches in groups.items():
            g_total = g_count = 0.0
            for batch in batches:
                step = sft_loss(model, batch)
                g_total += float(step.loss_sum)
                g_count += float(step.n_items)
            if g_count:
                out[f"val/{name}_loss"] = g_total / g_count
            total, count = total + g_total, count + g_count
        return {"val/loss": total / max(count, 1.0), **out}

    return evaluate


def task_prompt(tok: Tokenizer, task: Task) -> list[int]:
    """The task's user message rendered as a chat prompt ending in <|assistant|>."""
    return tok.render_prompt([{"role": "user", "content": task.prompt}])


def answer_tasks(
    engine: Engine, tasks: Sequence[Task], max_new_tokens: int = 48, batch_size: int = 64
) -> list[tuple[str, bool]]:
    """Greedy answers (text, stopped at <|end|>) to each task, in batches."""
    end_id = engine.tok.special_id("<|end|>")
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0)
    out: list[tuple[str, bool]] = []
    for start in range(0, len(tasks), batch_size):
        prompts = [task_prompt(engine.tok, t) for t in tasks[start : start + batch_size]]
        for ids in engine.generate_ids(prompts, params, seed=0):
            out.append((engine.decode_completion(ids), end_id in ids))
    return out


def task_eval(
    model: GPT, tok: Tokenizer, tasks: Sequence[Task], max_new_tokens: int = 48,
    autocast_dtype: torch.dtype | None = None, n_samples: int = 7,
) -> dict[str, Any]:  # fmt: skip
    """Checkable-task quality of greedy answers: mean gold score, accuracy (score >= 0.95), the rate of
    answers that stopped at <|end|>, per-family numbers and the first `n_samples` transcripts."""
    if not tasks:
        raise ValueError("task_eval needs at least one task (eval_tasks > 0)")
    answers = answer_tasks(Engine(model, tok, autocast_dtype), tasks, max_new_tokens)
    scores = [score(t, a) for t, (a, _) in zip(tasks, answers, strict=True)]
    by_family: dict[str, dict[str, float]] = {}
    for fam in sorted({t.family for t in tasks}):
        s = [x for t, x in zip(tasks, scores, strict=True) if t.family == fam]
        by_family[fam] = {"score": sum(s) / len(s), "accuracy": sum(x >= EXACT for x in s) / len(s)}
    return {
        "task_score": sum(scores) / len(scores),
        "task_accuracy": sum(x >= EXACT for x in scores) / len(scores),
        "end_rate": sum(ended for _, ended in answers) / len(answers),
        "n_tasks": len(tasks),
        "by_family": by_family,
        "samples": [
            {
                "family": t.family,
                "prompt": t.prompt,
                "answer": a,
                "reference": t.reference,
                "score": round(x, 3),
            }
            for t, (a, _), x in list(zip(tasks, answers, scores, strict=True))[:n_samples]
        ],
    }


def chat_samples(model: GPT, tok: Tokenizer, max_new_tokens: int = 48) -> list[dict[str, str]]:
    """Greedy replies to a few fixed small-talk prompts (a glance at the chat behaviour)."""
    engine = Engine(model, tok)
    prompts = [tok.render_prompt([{"role": "user", "content": p}]) for p in CHAT_PROMPTS]
    ids = engine.generate_ids(prompts, SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0), seed=0)
    return [
        {"user": p, "assistant": engine.decode_completion(c)} for p, c in zip(CHAT_PROMPTS, ids, strict=True)
    ]


def headline(result: dict[str, Any]) -> str:
    return f"score {result['task_score']:.3f}, accuracy {result['task_accuracy']:.3f}, ends at <|end|> {result['end_rate']:.2f}"


# -- the stage ------------------------------------------------------------------------------------------


def ptx_shard(cfg: SFTConfig, tok: Tokenizer) -> np.ndarray | None:
    """Pre-training tokens for ptx rows: cfg.ptx_data, else the `data/` dir beside or above the checkpoint."""
    if cfg.ptx_fraction == 0:
        return None
    ckpt = Path(cfg.ckpt)
    candidates = [Path(cfg.ptx_data)] if cfg.ptx_data else [ckpt.parent / "data", ckpt.parent.parent / "data"]
    found = next((d for d in candidates if (d / "data.json").is_file()), None)
    if found is None:
        tried = ", ".join(str(d) for d in candidates)
        raise FileNotFoundError(
            f"ptx_fraction={cfg.ptx_fraction} needs pre-training shards; none in {tried}. Set ptx_data=DIR (a `picochat tokenizer` data dir)"
        )
    data = open_data(found)
    if data.tok.identity() != tok.identity():
        raise ValueError(
            f"{found}: its tokenizer is not the checkpoint's ({cfg.ckpt}); point ptx_data at the base model's data dir"
        )
    return data.train_ids


def base_eval(
    model: GPT,
    tok: Tokenizer,
    tasks: Sequence[Task],
    cfg: SFTConfig,
    out_dir: Path,
    dtype: torch.dtype | None,
) -> dict[str, Any]:
    """The base model's task numbers, computed once per run directory (a resumed run reuses them)."""
    path = out_dir / BASE_EVAL
    if path.is_file():
        cached = json.loads(path.read_text())
        if cached.get("ckpt") == cfg.ckpt and cached.get("n_tasks") == len(tasks):
            return cached
    result = {"ckpt": cfg.ckpt, **task_eval(model, tok, tasks, cfg.eval_max_new_tokens, dtype)}
    write_json(path, result, sort_keys=False)
    return result


def sft(cfg: SFTConfig, out_dir: Path, dist: Dist | None = None, resume: bool = False) -> dict[str, Any]:
    """Fine-tune cfg.ckpt on the SFT mix; writes out_dir/{ckpt, metrics.jsonl, config.toml, summary.json}
    and returns the summary (held-out loss, task numbers before/after, end rate, samples)."""
    dist = dist or Dist.alone(cfg.run.device)
    out_dir = Path(out_dir)
    log = print if dist.is_main else (lambda *a, **k: None)
    if not cfg.ckpt:
        raise ValueError("sft needs a base checkpoint: --ckpt runs/NAME/pretrain/ckpt (or ckpt=PATH)")
    if dist.is_main:
        save_config(cfg, out_dir / "config.toml")
    cfg = replace(cfg, run=pin_resumed_dtype(cfg.run, out_dir / CKPT_DIR, resume, log))
    seed_everything(cfg.run.seed)
    model, tok = load_checkpoint(cfg.ckpt, device=dist.device)
    block = model.config.block_size
    train_items, held_items = build_sft_mix(
        cfg.run.seed, n_task_demos=cfg.n_task_demos, n_chitchat=cfg.n_chitchat, n_chatterbot=cfg.n_chatterbot,
        max_turns=cfg.max_turns, n_heldout_tasks=max(cfg.eval_tasks, 280), data=cfg.data, data_mode=cfg.data_mode,
    )  # fmt: skip
    train_ex, _, dropped = encode_conversations(tok, train_items, block)
    held_ex, held_src, _ = encode_conversations(tok, held_items, block)
    log(
        f"sft: {len(train_ex)} training conversations {mix_counts(train_items)}, {dropped} dropped (answer past the {block}-token context)"
    )
    pad = tok.eot_id
    source = PackedSFTBatches(
        train_ex, block, cfg.optim.batch_size, seed=cfg.run.seed, pad_id=pad, rank=dist.rank,
        world_size=dist.world_size, ptx_ids=ptx_shard(cfg, tok), ptx_fraction=cfg.ptx_fraction,
    )  # fmt: skip
    max_rows = max(1, cfg.run.eval_batches * cfg.optim.batch_size // 2)
    task_held = [e for e, s in zip(held_ex, held_src, strict=True) if s.startswith("task:")]
    chat_held = [e for e, s in zip(held_ex, held_src, strict=True) if not s.startswith("task:")]
    eval_fn = make_eval_fn({
        "task": eval_batches(task_held, block, cfg.optim.batch_size, max_rows, pad),
        "chat": eval_batches(chat_held, block, cfg.optim.batch_size, max_rows, pad),
    })  # fmt: skip
    tasks = make_tasks(cfg.eval_tasks, "heldout", cfg.run.seed)
    dtype = resolve_dtype(cfg.run.dtype, dist.device)
    before = None
    if dist.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        before = base_eval(model, tok, tasks, cfg, out_dir, dtype)
        log(f"sft: base model on {len(tasks)} held-out tasks: {headline(before)}")
    trainer = Trainer(
        model=model, tok=tok, source=source, loss_fn=sft_loss, optim_cfg=cfg.optim, run_cfg=cfg.run,
        out_dir=out_dir, dist=dist, eval_fn=eval_fn, meta={"stage": "sft", "base_ckpt": cfg.ckpt},
        items_name="assistant tokens",
    )  # fmt: skip
    state = trainer.run(resume=resume)
    summary: dict[str, Any] = {
        "steps": state.step,
        "tokens_seen": state.tokens_seen,
        "elapsed_s": state.elapsed_s,
    }
    if not dist.is_main:
        return summary
    model = trainer.model  # under FSDP: the gathered full model
    model.eval()
    summary.update(trainer.evaluate())
    after = task_eval(model, tok, tasks, cfg.eval_max_new_tokens, trainer.dtype)
    summary.update({
        "train_mix": mix_counts(train_items), "heldout_mix": mix_counts(held_items), "dropped": dropped,
        "before": {k: v for k, v in before.items() if k != "ckpt"} if before else {},
        "after": after, "chat_samples": chat_samples(model, tok, cfg.eval_max_new_tokens),
    })  # fmt: skip
    write_json(out_dir / "summary.json", summary, sort_keys=False)
    log(f"sft: held-out assistant loss {summary['val/loss']:.4f} nats/token")
    log(f"sft: tasks before: {headline(summary['before'])}")
    log(f"sft: tasks after:  {headline(after)}")
    for s in after["samples"][:3]:
        log(f"  user: {s['prompt']}\n  assistant: {s['answer']}  (score {s['score']})")
    log(f"sft: wrote {out_dir / 'ckpt'}, {out_dir / 'metrics.jsonl'}, {out_dir / 'summary.json'}")
    return summary
