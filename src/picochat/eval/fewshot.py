"""Zero-shot (GPT-2) and few-shot in-context (GPT-3) accuracy on the GPT-1 task sets, and `picochat eval`.

Every test row becomes a prompt plus a list of verbal choices; the model's answer is the choice with the
highest total log-probability given the prompt (GPT-2, Radford et al. 2019, §3; scored with
`Engine.score_ids`). GPT-3 (arXiv 2005.14165, §2 and appendix G) adds k solved demonstrations from the
TRAIN split before the test prompt, separated by blank lines, and also normalises by answer length; both
accuracies are reported (`accuracy`: total log-prob, `accuracy_norm`: mean log-prob per answer token).

Verbalisers (the wording the model must complete):
    classification   "{text}\\nSentiment:" -> " negative" | " positive"   (other sets: "Label:" + label names)
    entailment       "{premise}\\nQuestion: {hypothesis} True, False or Maybe?\\nAnswer:" -> " True" | " Maybe" | " False"
    similarity       "{a}\\n{b}\\nQuestion: Do both sentences mean the same thing?\\nAnswer:" -> " No" | " Yes"
    multiple choice  "{context}" -> " {answer_i}"
Demonstrations are dropped (the last ones first) until the prompt and the longest choice fit the context.

Deviation from GPT-3: demonstrations are drawn per test row with a seeded RNG, and GPT-3's
"unconditional" normalisation (dividing by P(answer | "Answer:")) is not computed.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from picochat.checkpoint import write_json
from picochat.data.gpt1_tasks import TaskSet, load_task
from picochat.engine import Engine
from picochat.model import GPT
from picochat.tokenizer import Tokenizer

DEMO_SEPARATOR = "\n\n"
NLI_WORDS = [" True", " Maybe", " False"]  # entailment, neutral, contradiction
SIMILARITY_WORDS = [" No", " Yes"]  # different, paraphrase


@dataclass(frozen=True, slots=True)
class ChoiceItem:
    """A test row as text: the model continues `prompt` with one of `choices`; `label` is the right one."""

    prompt: str
    choices: tuple[str, ...]
    label: int

    @property
    def solved(self) -> str:
        """The item with its right answer: a demonstration."""
        return self.prompt + self.choices[self.label]


def render_item(task: TaskSet, row: dict) -> ChoiceItem:
    """The verbalised prompt and choices of one row (module docstring)."""
    fmt, label = task.format, int(row["label"])
    if fmt == "classification":
        cue = "Sentiment" if task.name == "sentiment" else "Label"
        return ChoiceItem(f"{row['text']}\n{cue}:", tuple(f" {name}" for name in task.label_names), label)
    if fmt == "entailment":
        prompt = f"{row['premise']}\nQuestion: {row['hypothesis']} True, False or Maybe?\nAnswer:"
        return ChoiceItem(prompt, tuple(NLI_WORDS), label)
    if fmt == "similarity":
        prompt = f"{row['a']}\n{row['b']}\nQuestion: Do both sentences mean the same thing?\nAnswer:"
        return ChoiceItem(prompt, tuple(SIMILARITY_WORDS), label)
    if fmt == "multiple_choice":
        return ChoiceItem(row["context"], tuple(f" {c}" for c in row["choices"]), label)
    raise ValueError(f"unknown task format {fmt!r} for zero-/few-shot evaluation")


def build_prompt(
    tok: Tokenizer, item: ChoiceItem, demos: Sequence[ChoiceItem], block_size: int
) -> tuple[list[int], int]:
    """Token ids of `demos` (solved, blank-line separated) then the item's prompt, dropping the last
    demonstrations until the prompt plus its longest choice fits block_size. Returns (ids, demos kept)."""
    longest = max(len(tok.encode(c)) for c in item.choices)
    for keep in range(len(demos), -1, -1):
        text = "".join(d.solved + DEMO_SEPARATOR for d in demos[:keep]) + item.prompt
        ids = tok.encode(text)
        if len(ids) + longest <= block_size:
            return ids, keep
    room = block_size - longest
    if room < 1:
        raise ValueError(f"a choice of {longest} tokens does not fit the {block_size}-token context")
    return ids[-room:], 0  # even the bare prompt is too long: keep its end, next to the answer


def pick_demos(train: Sequence[ChoiceItem], k: int, rng: random.Random) -> list[ChoiceItem]:
    return rng.sample(list(train), min(k, len(train)))


def score_items(
    engine: Engine, prompts: Sequence[list[int]], items: Sequence[ChoiceItem], batch_size: int
) -> tuple[list[int], list[int]]:
    """Predicted choice per item by total log-prob and by mean log-prob per token."""
    tok = engine.tok
    pairs = [(p, tok.encode(c)) for p, it in zip(prompts, items, strict=True) for c in it.choices]
    scores = engine.score_ids(pairs, batch_size=batch_size)
    by_sum, by_mean, at = [], [], 0
    for it in items:
        chunk = scores[at : at + len(it.choices)]
        at += len(it.choices)
        sums = [sum(s) for s in chunk]
        means = [sum(s) / len(s) for s in chunk]
        by_sum.append(max(range(len(sums)), key=sums.__getitem__))
        by_mean.append(max(range(len(means)), key=means.__getitem__))
    return by_sum, by_mean


def fewshot_accuracy(
    model: GPT, tok: Tokenizer, task: TaskSet, k: int, n: int = 200, seed: int = 0, batch_size: int = 16
) -> dict[str, Any]:
    """Accuracy of the first n test rows (a seeded sample when the split is larger) with k demonstrations."""
    rng = random.Random(seed)
    rows = task.test if len(task.test) <= n else rng.sample(task.test, n)
    items = [render_item(task, r) for r in rows]
    train = [render_item(task, r) for r in task.train]
    prompts, kept = [], []
    for i, item in enumerate(items):
        demos = pick_demos(train, k, random.Random(seed * 1_000_003 + i)) if k else []
        ids, n_kept = build_prompt(tok, item, demos, model.config.block_size)
        prompts.append(ids)
        kept.append(n_kept)
    by_sum, by_mean = score_items(Engine(model, tok), prompts, items, batch_size)
    labels = [it.label for it in items]
    return {
        "task": task.name, "k": k, "n": len(items),
        "accuracy": sum(p == y for p, y in zip(by_sum, labels, strict=True)) / len(items),
        "accuracy_norm": sum(p == y for p, y in zip(by_mean, labels, strict=True)) / len(items),
        "chance": 1.0 / len(items[0].choices), "mean_demos": sum(kept) / len(kept),
    }  # fmt: skip


def fewshot_table(
    model: GPT,
    tok: Tokenizer,
    tasks: Sequence[str | TaskSet],
    ks: Sequence[int] = (0, 1, 4),
    n: int = 200,
    seed: int = 0,
    batch_size: int = 16,
) -> list[dict[str, Any]]:
    """One row per (task, k): {task, k, n, accuracy, accuracy_norm, chance, mean_demos}."""
    rows = []
    for t in tasks:
        task = load_task(t) if isinstance(t, str) else t
        rows += [fewshot_accuracy(model, tok, task, k, n, seed, batch_size) for k in ks]
    return rows


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A plain-text table; floats with 3 decimals."""
    cells = [
        [f"{r.get(c, ''):.3f}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in columns]
        for r in rows
    ]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))
    body = ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join([line, "-" * len(line), *body])


def read_finetune_summaries(finetune_dir: str | Path) -> list[dict[str, Any]]:
    """The summary.json of each <task>/ run under a finetune directory, sorted by task."""
    root = Path(finetune_dir)
    if not root.is_dir():
        raise FileNotFoundError(
            f"finetune directory {root} does not exist; pass the --out of `picochat finetune` runs"
        )
    found = [json.loads(p.read_text()) for p in sorted(root.glob("*/summary.json"))]
    return [s for s in found if "accuracy" in s and "task" in s]


def run_eval(cfg: Any, out_dir: str | Path) -> dict[str, Any]:
    """`picochat eval` (cfg: config.EvalConfig): bpb + bigram baseline (with a data dir), zero-/few-shot table,
    fine-tuned accuracies; prints the tables and writes out_dir/eval.json. Returns the JSON dict."""
    from picochat.checkpoint import load_checkpoint
    from picochat.eval.lm import evaluate_data_dir
    from picochat.train.loop import resolve_device

    if not cfg.ckpt:
        raise ValueError("eval needs a checkpoint: --ckpt runs/NAME/pretrain/ckpt")
    t0 = time.perf_counter()
    model, tok = load_checkpoint(cfg.ckpt, device=resolve_device(cfg.device))
    out: dict[str, Any] = {"ckpt": str(cfg.ckpt)}
    if cfg.data_dir:
        lm = evaluate_data_dir(
            model, tok, cfg.data_dir, batch_size=cfg.batch_size, max_tokens=cfg.max_lm_tokens
        )
        out["lm"] = lm
        print(
            f"bits per byte: GPT {lm['val/bpb']:.3f} | bigram {lm['bigram/bpb']:.3f} (k={lm['k']:g}) | "
            f"unigram {lm['unigram/bpb']:.3f}   (nats/token: {lm['val/loss']:.3f} / {lm['bigram/loss']:.3f})"
        )
    if cfg.tasks and cfg.shots:
        out["fewshot"] = fewshot_table(model, tok, cfg.tasks, cfg.shots, cfg.n, cfg.seed, cfg.batch_size)
        print(
            format_table(
                out["fewshot"], ["task", "k", "n", "accuracy", "accuracy_norm", "chance", "mean_demos"]
            )
        )
    if cfg.finetune_dir:
        out["finetune"] = read_finetune_summaries(cfg.finetune_dir)
        print(
            format_table(out["finetune"], ["task", "format", "accuracy", "chance", "train_accuracy", "steps"])
        )
    out["wall_s"] = time.perf_counter() - t0
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "eval.json", out, sort_keys=False)
    print(f"eval: wrote {out_dir / 'eval.json'} ({out['wall_s']:.1f} s)")
    return out
