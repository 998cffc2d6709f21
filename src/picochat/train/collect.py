"""Comparison collection: sample K answers per prompt from a policy and rank them with the gold labeler.

InstructGPT (arXiv 2203.02155, §3.5) shows labelers K = 4..9 outputs of the policy per prompt and asks
for a full ranking, so one prompt yields C(K, 2) comparisons. Here the labeler is the checkable task
suite (`data.tasks.rank`, optionally with Bradley–Terry noise). Deviations: answers that the labeler
cannot tell apart are recorded as a tie group (no training pair, DATA.md §4), and a prompt whose K answers
all tie is dropped, since it says nothing about which answer is better. "Cannot tell apart" means adjacent
in the ranking with gold scores closer than `tie_tolerance` (0 = only exactly equal scores): the graded
scorers give two wrong answers slightly different partial credit (e.g. 0.06 vs 0.10 string similarity to
the right word), a difference no person ranking them would see and no reward model can learn; InstructGPT's
labelers likewise rank near-equal outputs as ties.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from picochat.checkpoint import load_checkpoint
from picochat.config import CollectConfig
from picochat.data.preferences import PreferenceRecord, Prompt, prompt_messages, write_preferences
from picochat.data.tasks import Task, make_tasks, rank, score, task_to_dict
from picochat.engine import Engine, SamplingParams
from picochat.model import GPT
from picochat.tokenizer import Tokenizer
from picochat.train.loop import resolve_device, resolve_dtype

K_RANGE = (4, 9)  # InstructGPT §3.5: labelers rank between 4 and 9 responses


def check_k(k: int, allowed: tuple[int, int] = K_RANGE) -> None:
    if not allowed[0] <= k <= allowed[1]:
        raise ValueError(
            f"k={k} answers per prompt; expected {allowed[0]}..{allowed[1]} (InstructGPT ranks 4 to 9)"
        )


def tie_groups(ranking: Sequence[int], scores: Sequence[float], tolerance: float = 0.0) -> list[list[int]]:
    """Runs of consecutive ranking positions whose neighbouring gold scores differ by at most `tolerance`
    (only runs of 2 or more; tolerance 0 groups exactly equal scores)."""
    groups: list[list[int]] = []
    for i in ranking:
        if groups and abs(scores[groups[-1][-1]] - scores[i]) <= tolerance:
            groups[-1].append(i)
        else:
            groups.append([i])
    return [g for g in groups if len(g) > 1]


def rank_completions(
    task: Task,
    completions: list[str],
    noise: float,
    rng: random.Random,
    prompt: Prompt | None = None,
    tie_tolerance: float = 0.0,
) -> PreferenceRecord | None:
    """A gold-ranked record of the completions, or None when they all tie."""
    scores = [score(task, c) for c in completions]
    ranking = rank(task, completions, noise=noise, rng=rng)
    ties = tie_groups(ranking, scores, tie_tolerance)
    if ties and len(ties[0]) == len(completions):
        return None
    return PreferenceRecord(
        prompt=task.prompt if prompt is None else prompt, completions=list(completions), ranking=ranking,
        source="gold", ties=ties, task=task_to_dict(task), scores=scores,
    )  # fmt: skip


def sample_completions(
    model: GPT,
    tok: Tokenizer,
    prompts: Sequence[Prompt],
    k: int,
    *,
    temperature: float = 1.0,
    max_new_tokens: int = 48,
    batch_prompts: int = 16,
    seed: int = 0,
    autocast_dtype: Any = None,
) -> list[list[str]]:
    """k sampled answers per prompt (chat-rendered, stopping at <|end|>), batched over prompts."""
    engine = Engine(model, tok, autocast_dtype=autocast_dtype)
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature)
    out: list[list[str]] = []
    for start in range(0, len(prompts), batch_prompts):
        chunk = [tok.render_prompt(prompt_messages(p)) for p in prompts[start : start + batch_prompts]]
        ids = engine.generate_ids(chunk, params, num_samples=k, seed=seed + start)
        texts = [engine.decode_completion(c).strip() for c in ids]
        out += [texts[i * k : (i + 1) * k] for i in range(len(chunk))]
    return out


def collect_records(
    model: GPT,
    tok: Tokenizer,
    tasks: Sequence[Task],
    k: int,
    *,
    temperature: float = 1.0,
    noise: float = 0.0,
    seed: int = 0,
    max_new_tokens: int = 48,
    batch_prompts: int = 16,
    autocast_dtype: Any = None,
    tie_tolerance: float = 0.0,
) -> tuple[list[PreferenceRecord], dict[str, float]]:
    """Sample, rank and drop all-tied prompts. Returns the records and headline numbers."""
    samples = sample_completions(
        model, tok, [t.prompt for t in tasks], k, temperature=temperature, max_new_tokens=max_new_tokens,
        batch_prompts=batch_prompts, seed=seed, autocast_dtype=autocast_dtype,
    )  # fmt: skip
    rng = random.Random(f"picochat-collect:{seed}")
    records, gold, tied_pairs, all_pairs = [], [], 0, 0
    for task, completions in zip(tasks, samples, strict=True):
        scores = [score(task, c) for c in completions]
        gold += scores
        all_pairs += k * (k - 1) // 2
        record = rank_completions(task, completions, noise, rng, tie_tolerance=tie_tolerance)
        if record is None:  # all k answers tie
            tied_pairs += k * (k - 1) // 2
            continue
        tied_pairs += sum(len(g) * (len(g) - 1) // 2 for g in record.ties)
        records.append(record)
    stats = {
        "n_prompts": len(tasks), "n_records": len(records), "n_all_tied": len(tasks) - len(records),
        "mean_gold_score": sum(gold) / max(len(gold), 1), "tied_pair_fraction": tied_pairs / max(all_pairs, 1),
    }  # fmt: skip
    return records, stats


def collect(
    policy_ckpt: str | Path,
    out_path: str | Path,
    n_prompts: int = 512,
    k: int = 4,
    split: str = "train",
    seed: int = 0,
    temperature: float = 1.0,
    noise: float = 0.0,
    *,
    max_new_tokens: int = 48,
    batch_prompts: int = 16,
    device: str = "auto",
    tie_tolerance: float = 0.0,
    log: Any = print,
) -> dict[str, Any]:
    """Sample k answers for n_prompts tasks of `split` from the policy, gold-rank them, write JSONL."""
    check_k(k)
    t0 = time.perf_counter()
    dev = resolve_device(device)
    model, tok = load_checkpoint(policy_ckpt, device=dev)
    tasks = make_tasks(n_prompts, split, seed)
    records, stats = collect_records(
        model, tok, tasks, k, temperature=temperature, noise=noise, seed=seed, max_new_tokens=max_new_tokens,
        batch_prompts=batch_prompts, autocast_dtype=resolve_dtype("auto", dev), tie_tolerance=tie_tolerance,
    )  # fmt: skip
    write_preferences(out_path, records)
    summary = {**stats, "k": k, "split": split, "noise": noise, "temperature": temperature,
               "tie_tolerance": tie_tolerance, "out": str(out_path), "wall_s": time.perf_counter() - t0}  # fmt: skip
    log(
        f"collect: {stats['n_records']}/{n_prompts} prompts kept (all {k} answers tied in {stats['n_all_tied']}), "
        f"mean gold score {stats['mean_gold_score']:.3f}, tied pairs {stats['tied_pair_fraction']:.1%}; wrote {out_path}"
    )
    return summary


def run_collect(cfg: CollectConfig, out_path: str | Path, log: Any = print) -> dict[str, Any]:
    """`collect` with the settings of a CollectConfig (the CLI and pipeline entry point)."""
    if not cfg.policy:
        raise ValueError("collect needs a policy checkpoint: --policy runs/NAME/sft/ckpt")
    return collect(
        cfg.policy, out_path, cfg.n_prompts, cfg.k, cfg.split, cfg.seed, cfg.temperature, cfg.noise,
        max_new_tokens=cfg.max_new_tokens, batch_prompts=cfg.batch_prompts, device=cfg.device,
        tie_tolerance=cfg.tie_tolerance, log=log,
    )  # fmt: skip
