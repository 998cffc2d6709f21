"""GPT-1 supervised fine-tuning: task-specific input transformations and a linear head on the extract token.

GPT-1 (Radford et al. 2018, "Improving Language Understanding by Generative Pre-Training") §3.2-3.3:
the final hidden state h_l^m of the last input token feeds a linear layer, P(y | x) = softmax(h_l^m W_y)
(eq. 3), trained on L2 = Σ log P(y | x) (eq. 4) together with the language-modelling objective on the
same task sequences, L3 = L2 + λ·L1 (eq. 5). Inputs become token sequences with start/delimiter/extract
tokens (§3.3, Fig. 1):

    classification   <|start|> text <|extract|>                         head -> n classes
    entailment       <|start|> premise <|delim|> hypothesis <|extract|>  head -> 3 classes
    similarity       <|start|> a <|delim|> b <|extract|>  and  <|start|> b <|delim|> a <|extract|>;
                     the two extract hidden states are ADDED element-wise, then the head -> 2 classes
    multiple choice  <|start|> context <|delim|> answer_i <|extract|>  for each answer; head -> 1 score
                     per answer, softmax over the answers

Batches are RIGHT-padded: attention is causal, so no real token ever sees a pad on its right, and the head
reads the hidden state at index length-1 (the extract token). L1 is the next-token loss over the real
tokens of the task sequences; each example contributes its mean per-token NLL, so an example with four
answer sequences weighs as much as one with a single sequence.

Deviations from GPT-1: no dropout in the classifier (tiny CPU models use dropout 0), a cosine schedule
from the shared loop instead of GPT-1's linear decay, and the head initialised with std 1/sqrt(C+1)
(model.py) instead of N(0, 0.02). Under torchrun (DDP or FSDP) the loss runs inside the wrapper's
forward (train/parallel.py); each step's batch_size × world_size examples are dealt out by rank, so N
ranks with batch B take the steps of one process with batch N·B.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from picochat.checkpoint import load_checkpoint, write_json
from picochat.config import FinetuneConfig, save_config
from picochat.data.gpt1_tasks import (
    FORMATS,
    TASKS,
    TaskSet,
    fixed_label_names,
    infer_format,
    load_task,
    load_task_jsonl,
)
from picochat.model import GPT, IGNORE_INDEX, with_head
from picochat.tokenizer import Tokenizer
from picochat.train.loop import CKPT_DIR, Dist, StepOut, Trainer, pin_resumed_dtype, seed_everything

START, DELIM, EXTRACT = "<|start|>", "<|delim|>", "<|extract|>"


@dataclass(frozen=True, slots=True)
class Example:
    """One task example as token sequences: 1 (classification, entailment), 2 (similarity), K (choices)."""

    seqs: tuple[tuple[int, ...], ...]
    label: int


@dataclass(frozen=True, slots=True)
class TaskBatch:
    """B examples of one format, their sequences stacked example-major and right-padded."""

    ids: torch.Tensor  # (N, T) long, N = B * n_seq, pad = <|endoftext|>
    lengths: torch.Tensor  # (N,) long, real tokens per sequence (the extract token is at length-1)
    labels: torch.Tensor  # (B,) long
    n_seq: int  # sequences per example
    fmt: str


# -- input transformations (pure) --------------------------------------------------------------------


def fit_pair(first: list[int], second: list[int], room: int) -> tuple[list[int], list[int]]:
    """Shorten a pair to at most `room` tokens together: `second` keeps its start (at least half the room
    when both are long), `first` loses tokens from its LEFT, so the part next to the delimiter survives."""
    keep_second = min(len(second), max(room - len(first), room // 2))
    keep_first = min(len(first), room - keep_second)
    return first[len(first) - keep_first :], second[:keep_second]


def fit_symmetric(a: list[int], b: list[int], room: int) -> tuple[list[int], list[int]]:
    """Shorten a similarity pair (each keeps its start) so that swapping a and b swaps the result; the
    order-sum of the two sequences then stays symmetric."""
    if len(a) + len(b) <= room:
        return a, b
    half = room // 2
    if len(a) <= half:
        return a, b[: room - len(a)]
    if len(b) <= half:
        return a[: room - len(b)], b
    return a[:half], b[:half]


def encode_example(tok: Tokenizer, fmt: str, row: dict, max_len: int) -> list[list[int]]:
    """The GPT-1 input transformation of one row (module docstring), each sequence <= max_len tokens."""
    s, d, e = (tok.special_id(name) for name in (START, DELIM, EXTRACT))
    if fmt == "classification":
        if max_len < 3:
            raise ValueError(f"max_len={max_len} leaves no room for text between start and extract")
        text = tok.encode(row["text"])
        return [[s, *text[max(0, len(text) - (max_len - 2)) :], e]]
    if max_len < 4:
        raise ValueError(f"max_len={max_len} leaves no room for two texts between start, delim and extract")
    room = max_len - 3
    if fmt == "entailment":
        premise, hyp = fit_pair(tok.encode(row["premise"]), tok.encode(row["hypothesis"]), room)
        return [[s, *premise, d, *hyp, e]]
    if fmt == "similarity":
        a, b = fit_symmetric(tok.encode(row["a"]), tok.encode(row["b"]), room)
        return [[s, *a, d, *b, e], [s, *b, d, *a, e]]
    if fmt == "multiple_choice":
        context = tok.encode(row["context"])
        out = []
        for choice in row["choices"]:
            ctx, ans = fit_pair(context, tok.encode(choice), room)
            out.append([s, *ctx, d, *ans, e])
        return out
    raise ValueError(f"unknown task format {fmt!r}; expected one of {list(FORMATS)}")


def encode_rows(tok: Tokenizer, fmt: str, rows: Sequence[dict], max_len: int) -> list[Example]:
    return [
        Example(tuple(tuple(q) for q in encode_example(tok, fmt, r, max_len)), int(r["label"])) for r in rows
    ]


def collate(examples: Sequence[Example], fmt: str, pad_id: int) -> TaskBatch:
    """Right-pad the sequences of `examples` into one (N, T) batch, example-major."""
    seqs = [q for ex in examples for q in ex.seqs]
    n_seq = len(examples[0].seqs)
    if any(len(ex.seqs) != n_seq for ex in examples):
        raise ValueError("every example of a batch needs the same number of sequences (choices)")
    T = max(len(q) for q in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    for i, q in enumerate(seqs):
        ids[i, : len(q)] = torch.tensor(q, dtype=torch.long)
    return TaskBatch(
        ids=ids,
        lengths=torch.tensor([len(q) for q in seqs], dtype=torch.long),
        labels=torch.tensor([ex.label for ex in examples], dtype=torch.long),
        n_seq=n_seq,
        fmt=fmt,
    )


# -- the head and the losses (pure tensor functions) --------------------------------------------------


def extract_states(hidden: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Hidden state of each sequence's last real token (the extract token): (N, T, C) -> (N, C)."""
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), lengths - 1]


def head_logits(model: GPT, h: torch.Tensor, fmt: str, n_seq: int) -> torch.Tensor:
    """Class logits (B, n_classes), or (B, K) answer scores for multiple choice, from extract states (N, C)."""
    C = h.shape[-1]
    if fmt == "similarity":
        return model.head_outputs(h.view(-1, n_seq, C).sum(1))  # (B, C) order-sum -> (B, 2)
    if fmt == "multiple_choice":
        return model.head_outputs(h).view(-1, n_seq)  # (N, 1) -> (B, K)
    return model.head_outputs(h)  # (B, n_classes)


def classify_logits(model: GPT, batch: TaskBatch) -> torch.Tensor:
    """(B, n_classes) logits (multiple choice: (B, K)) for a collated batch."""
    device = next(model.parameters()).device
    h = model.final_states(batch.ids.to(device), batch.lengths.to(device))  # right padding: no pad mask
    return head_logits(model, h, batch.fmt, batch.n_seq)


def lm_targets(ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Next-token targets (N, T-1): ids shifted left, IGNORE_INDEX past each sequence's last real token."""
    targets = ids[:, 1:].clone()
    pos = torch.arange(targets.shape[1], device=ids.device)[None, :]  # (1, T-1)
    targets[pos >= (lengths[:, None] - 1)] = IGNORE_INDEX
    return targets


def aux_lm_nll(
    model: GPT, hidden: torch.Tensor, ids: torch.Tensor, lengths: torch.Tensor, n_seq: int
) -> torch.Tensor:
    """Σ over examples of the mean next-token NLL over the real tokens of each example's sequences: GPT-1's
    L1 on task data. The LM head runs only on positions that have a target (`GPT.weighted_lm_nll`)."""
    targets = lm_targets(ids, lengths)  # (N, T-1)
    keep = targets != IGNORE_INDEX
    counts = keep.sum(1).view(-1, n_seq).sum(1).clamp(min=1)  # (B,) target tokens per example
    row_weights = (1.0 / counts.float()).repeat_interleave(n_seq)[:, None].expand_as(keep)[keep]  # (M,)
    return model.weighted_lm_nll(hidden[:, :-1][keep], targets[keep], row_weights)


def finetune_loss(model: nn.Module, batch: TaskBatch, aux_lm_weight: float) -> StepOut:
    """StepOut with loss_sum = Σ_examples [CE_cls + λ·L1_example] (GPT-1 eq. 5, as a loss to minimise)."""
    gpt: GPT = getattr(model, "module", model)
    device = next(gpt.parameters()).device
    ids, lengths, labels = batch.ids.to(device), batch.lengths.to(device), batch.labels.to(device)
    if aux_lm_weight > 0:  # L1 reads every position's state
        hidden = gpt.hidden(ids)  # (N, T, C)
        h = extract_states(hidden, lengths)
    else:
        h = gpt.final_states(ids, lengths)  # (N, C), the last block at the extract token only
    logits = head_logits(gpt, h, batch.fmt, batch.n_seq)  # (B, classes)
    cls = F.cross_entropy(logits.float(), labels, reduction="none")  # (B,)
    loss_sum = cls.sum()
    metrics = {"cls_loss": float(cls.detach().sum()), "correct": float((logits.argmax(-1) == labels).sum())}
    if aux_lm_weight > 0:
        lm = aux_lm_nll(gpt, hidden, ids, lengths, batch.n_seq)  # Σ_examples L1_example
        loss_sum = loss_sum + aux_lm_weight * lm
        metrics["lm_loss"] = float(lm.detach())
    return StepOut(loss_sum=loss_sum, n_items=len(labels), n_tokens=int(lengths.sum()), metrics=metrics)


@dataclass(frozen=True, slots=True)
class FinetuneLoss:
    """loss_fn for the Trainer: `finetune_loss` with a fixed λ (a value, not a closure)."""

    aux_lm_weight: float  # λ in GPT-1 eq. 5

    def __call__(self, model: nn.Module, batch: TaskBatch) -> StepOut:
        return finetune_loss(model, batch, self.aux_lm_weight)


# -- data order ----------------------------------------------------------------------------------------


class ExampleBatches:
    """Shuffled epochs over the training examples; resumable (generator state at the epoch start + index).

    Every rank draws the same global batch of batch_size × world_size examples and keeps its own slice.
    """

    def __init__(
        self, examples: Sequence[Example], fmt: str, batch_size: int, pad_id: int, seed: int,
        rank: int = 0, world_size: int = 1,
    ) -> None:  # fmt: skip
        if not examples:
            raise ValueError("no training examples: the task's train split is empty")
        self.examples, self.fmt, self.batch_size, self.pad_id = list(examples), fmt, batch_size, pad_id
        self.rank, self.world_size = rank, world_size
        self.rng = np.random.default_rng(seed)
        self.epoch_state = self.rng.bit_generator.state
        self.order = self.rng.permutation(len(self.examples))
        self.pos = 0

    def next_batch(self) -> TaskBatch:
        picked: list[Example] = []
        n_global = self.batch_size * self.world_size
        while len(picked) < n_global:
            if self.pos == len(self.order):
                self.epoch_state = self.rng.bit_generator.state
                self.order, self.pos = self.rng.permutation(len(self.examples)), 0
            take = self.order[self.pos : self.pos + n_global - len(picked)]
            picked += [self.examples[i] for i in take]
            self.pos += len(take)
        mine = picked[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
        return collate(mine, self.fmt, self.pad_id)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch_rng": self.epoch_state, "pos": self.pos}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["epoch_rng"]
        self.epoch_state = state["epoch_rng"]
        self.order = self.rng.permutation(len(self.examples))
        self.pos = int(state["pos"])


# -- evaluation ----------------------------------------------------------------------------------------


@torch.no_grad()
def predict(
    model: GPT, examples: Sequence[Example], fmt: str, pad_id: int, batch_size: int = 64
) -> list[int]:
    """Argmax class (or answer index) of each example."""
    was_training = model.training
    model.eval()
    preds: list[int] = []
    for i in range(0, len(examples), batch_size):
        preds += (
            classify_logits(model, collate(examples[i : i + batch_size], fmt, pad_id)).argmax(-1).tolist()
        )
    model.train(was_training)
    return preds


def accuracy(preds: Sequence[int], examples: Sequence[Example]) -> float:
    return sum(p == ex.label for p, ex in zip(preds, examples, strict=True)) / max(len(examples), 1)


@dataclass
class HeldOutEval:
    """eval_fn for the Trainer: held-out accuracy and classification loss; keeps the last result."""

    examples: list[Example]
    fmt: str
    pad_id: int
    batch_size: int
    last: dict[str, float] | None = None

    def __call__(self, model: nn.Module) -> dict[str, float]:
        gpt: GPT = getattr(model, "module", model)
        correct, loss = 0, 0.0
        for i in range(0, len(self.examples), self.batch_size):
            batch = collate(self.examples[i : i + self.batch_size], self.fmt, self.pad_id)
            logits = classify_logits(gpt, batch).float()
            labels = batch.labels.to(logits.device)
            loss += float(F.cross_entropy(logits, labels, reduction="sum"))
            correct += int((logits.argmax(-1) == labels).sum())
        n = max(len(self.examples), 1)
        self.last = {"val/loss": loss / n, "val/accuracy": correct / n}
        return self.last


# -- the stage -----------------------------------------------------------------------------------------


def build_task(cfg: FinetuneConfig) -> TaskSet:
    """A built-in task (cfg.task) or the user's JSONL (cfg.data; test from cfg.test_data or a held-out share)."""
    if not cfg.data:
        return load_task(cfg.task, seed=cfg.task_seed, level=cfg.level)
    fmt = cfg.format or None
    rows = load_task_jsonl(cfg.data, fmt)
    fmt = fmt or infer_format(rows)
    if cfg.test_data:
        test = load_task_jsonl(cfg.test_data, fmt)
        train = rows
    else:
        shuffled = rows[:]
        random.Random(cfg.task_seed).shuffle(shuffled)
        n_test = max(1, round(len(rows) * cfg.test_fraction))
        if n_test >= len(rows):
            raise ValueError(
                f"{cfg.data}: {len(rows)} rows are too few to hold out a test split; add rows or give test_data"
            )
        test, train = shuffled[:n_test], shuffled[n_test:]
    name = Path(cfg.data).stem
    return TaskSet(
        name=name, format=fmt, label_names=fixed_label_names(fmt, train + test), train=train, test=test
    )


def n_outputs(task: TaskSet) -> int:
    """Head width: classes, or 1 score per answer for multiple choice."""
    return 1 if task.format == "multiple_choice" else len(task.label_names)


def chance_accuracy(task: TaskSet) -> float:
    n = len(task.test[0]["choices"]) if task.format == "multiple_choice" else len(task.label_names)
    return 1.0 / max(n, 1)


def majority_accuracy(task: TaskSet) -> float:
    labels = [int(r["label"]) for r in task.test]
    return max(labels.count(v) for v in set(labels)) / len(labels)


def finetune(
    cfg: FinetuneConfig, out_dir: Path, dist: Dist | None = None, resume: bool = False
) -> dict[str, Any]:
    """Fine-tune cfg.ckpt on one task; writes out_dir/{ckpt, metrics.jsonl, config.toml, summary.json}."""
    dist = dist or Dist.alone(cfg.run.device)
    if not cfg.ckpt:
        raise ValueError("finetune needs a base checkpoint: --ckpt runs/NAME/pretrain/ckpt (or ckpt=PATH)")
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    if dist.is_main:
        save_config(cfg, out_dir / "config.toml")
    say = print if dist.is_main else (lambda *a: None)
    cfg = replace(cfg, run=pin_resumed_dtype(cfg.run, out_dir / CKPT_DIR, resume, say))
    base, tok = load_checkpoint(cfg.ckpt, device=dist.device)
    task = build_task(cfg)
    max_len = min(cfg.max_len, base.config.block_size)
    train = encode_rows(tok, task.format, task.train, max_len)
    test = encode_rows(tok, task.format, task.test, max_len)
    seed_everything(cfg.run.seed)
    model = with_head(base, n_outputs(task))
    evaluator = HeldOutEval(test, task.format, tok.eot_id, cfg.eval_batch_size)
    trainer = Trainer(
        model=model, tok=tok, optim_cfg=cfg.optim, run_cfg=cfg.run, out_dir=out_dir, dist=dist,
        source=ExampleBatches(
            train, task.format, cfg.optim.batch_size, tok.eot_id, cfg.run.seed, dist.rank, dist.world_size
        ),
        loss_fn=FinetuneLoss(cfg.aux_lm_weight), eval_fn=evaluator, items_name="examples",
        meta={"stage": "finetune", "task": task.name, "format": task.format, "label_names": task.label_names},
    )  # fmt: skip
    if dist.is_main:
        print(
            f"finetune: {task.name} ({task.format}), {len(train)} train / {len(test)} test, λ={cfg.aux_lm_weight}"
        )
    state = trainer.run(resume=resume)
    if not dist.is_main:  # rank 0 evaluates and writes the summary
        return {"task": task.name, "steps": state.step, "train_s": state.elapsed_s}
    model = trainer.model  # under FSDP: the gathered full model
    held_out = evaluator.last or trainer.evaluate()
    sub = train[: cfg.eval_train_examples]
    summary = {
        "task": task.name, "format": task.format, "label_names": task.label_names,
        "level": task.meta.get("level", cfg.level), "n_train": len(train), "n_test": len(test), "accuracy": held_out["val/accuracy"],
        "val_loss": held_out["val/loss"], "chance": chance_accuracy(task), "majority": majority_accuracy(task),
        "train_accuracy": accuracy(predict(model, sub, task.format, tok.eot_id, cfg.eval_batch_size), sub),
        "steps": state.step, "aux_lm_weight": cfg.aux_lm_weight, "lr": cfg.optim.lr,
        "train_s": state.elapsed_s, "wall_s": time.perf_counter() - t0,
    }  # fmt: skip
    write_json(out_dir / "summary.json", summary, sort_keys=False)
    print(
        f"finetune: {task.name} held-out accuracy {summary['accuracy']:.3f} (chance {summary['chance']:.3f}, "
        f"train {summary['train_accuracy']:.3f}); wrote {out_dir / 'ckpt'}, {out_dir / 'summary.json'}"
    )
    return summary


def run_finetune_all(
    base_ckpt: str | Path,
    out_dir: str | Path,
    tasks: Sequence[str] = tuple(TASKS),
    overrides: Sequence[str] = (),
    resume: bool = False,
    task_overrides: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, Any]:
    """Fine-tune the base on each built-in task into out_dir/<task>/; returns {task: summary} plus a table.

    A task whose summary.json exists is not retrained (rerunning continues an interrupted run).
    `overrides` are FinetuneConfig key=value strings applied to every task, then `task_overrides[name]`
    to that task alone (a task that needs more steps than the others, say)."""
    from picochat.config import load_config

    out_dir = Path(out_dir)
    results: dict[str, Any] = {}
    for name in tasks:
        task_dir = out_dir / name
        done = task_dir / "summary.json"
        if done.is_file():
            results[name] = json.loads(done.read_text())
            continue
        own = (task_overrides or {}).get(name, ())
        cfg = load_config(FinetuneConfig, None, [f"ckpt={base_ckpt}", f"task={name}", *overrides, *own])
        results[name] = finetune(cfg, task_dir, resume=resume)
    table = [
        {k: results[n][k] for k in ("task", "format", "accuracy", "chance", "train_accuracy", "wall_s")}
        for n in tasks
    ]
    summary = {
        "tasks": results,
        "table": table,
        "mean_accuracy": sum(r["accuracy"] for r in table) / max(len(table), 1),
    }
    write_json(out_dir / "summary.json", summary, sort_keys=False)
    return summary


__all__ = [
    "Example", "ExampleBatches", "FinetuneLoss", "HeldOutEval", "TaskBatch", "accuracy", "aux_lm_nll",
    "build_task", "chance_accuracy", "classify_logits", "collate", "encode_example", "encode_rows",
    "extract_states", "finetune", "finetune_loss", "fit_pair", "fit_symmetric", "head_logits", "lm_targets",
    "predict", "run_finetune_all",
]  # fmt: skip
