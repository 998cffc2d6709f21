"""Win rate of an RL policy over its SFT baseline, judged by the gold labeler (InstructGPT §4, Fig. 1).

On N held-out task prompts (data.tasks, split "heldout": unseen templates and value pools) both policies
answer once with the same sampling seed and temperature (or greedily); each answer gets the family's gold
score. A win is gold(policy) > gold(baseline), a tie counts 0.5. The 95% interval is the normal
approximation mean ± 1.96·s/√N over the per-prompt outcomes (clipped to [0, 1]).

Judging by the gold labeler, not the reward model, is what makes reward hacking visible: `overoptimization`
reads a PPO run's metrics.jsonl into the RM-score vs gold-score curve (Gao et al., arXiv 2210.10760), and
`winrate_vs_kl` evaluates the run's snapshots against the baseline at the KL each one had reached.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from picochat.checkpoint import checkpoint_meta, load_checkpoint
from picochat.data import tasks as task_suite
from picochat.engine import Engine
from picochat.model import GPT
from picochat.tokenizer import Tokenizer
from picochat.train.loop import read_metrics, resolve_device


def answers(
    model: GPT, tok: Tokenizer, tasks: Sequence[task_suite.Task], max_new_tokens: int, temperature: float,
    seed: int, batch_size: int = 64,
) -> list[str]:  # fmt: skip
    """One answer per task prompt (chat template, stop at <|end|>), deterministic for a seed."""
    engine = Engine(model, tok)
    prompts = [tok.render_prompt([{"role": "user", "content": t.prompt}]) for t in tasks]
    out: list[str] = []
    for start in range(0, len(prompts), batch_size):
        out += engine.generate(
            prompts[start : start + batch_size],
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            seed=seed + start,
        )
    return out


def mean_ci(outcomes: Sequence[float]) -> tuple[float, float, float]:
    """(mean, low, high) with a 95% normal-approximation interval, clipped to [0, 1]."""
    n = len(outcomes)
    if n == 0:
        raise ValueError("no outcomes to average; evaluate on at least one prompt")
    mean = sum(outcomes) / n
    var = sum((x - mean) ** 2 for x in outcomes) / max(n - 1, 1)
    half = 1.96 * math.sqrt(var / n)
    return mean, max(0.0, mean - half), min(1.0, mean + half)


def compare(gold_policy: Sequence[float], gold_baseline: Sequence[float]) -> dict[str, float]:
    """Win rate (ties 0.5) with its 95% interval, from paired gold scores."""
    if len(gold_policy) != len(gold_baseline):
        raise ValueError(
            f"{len(gold_policy)} policy scores but {len(gold_baseline)} baseline scores; pass pairs"
        )
    outcomes = [
        1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(gold_policy, gold_baseline, strict=True)
    ]
    rate, low, high = mean_ci(outcomes)
    return {
        "win_rate": rate, "ci_low": low, "ci_high": high, "n": float(len(outcomes)),
        "wins": float(sum(o == 1.0 for o in outcomes)), "ties": float(sum(o == 0.5 for o in outcomes)),
        "gold_policy": sum(gold_policy) / len(gold_policy), "gold_baseline": sum(gold_baseline) / len(gold_baseline),
    }  # fmt: skip


def winrate(
    policy: GPT, baseline: GPT, tok: Tokenizer, *, n: int = 200, seed: int = 0, temperature: float = 0.0,
    max_new_tokens: int = 24, families: Sequence[str] | None = None, split: str = "heldout",
) -> dict[str, Any]:  # fmt: skip
    """Gold-judged win rate of `policy` over `baseline` on n prompts of `split` (default held-out)."""
    tasks = task_suite.make_tasks(n, split, seed, families)
    a = answers(policy, tok, tasks, max_new_tokens, temperature, seed)
    b = answers(baseline, tok, tasks, max_new_tokens, temperature, seed)
    gold_a = [task_suite.score(t, x) for t, x in zip(tasks, a, strict=True)]
    gold_b = [task_suite.score(t, x) for t, x in zip(tasks, b, strict=True)]
    result: dict[str, Any] = compare(gold_a, gold_b)
    result.update({"split": split, "temperature": temperature, "seed": seed})
    result["examples"] = [
        {"prompt": t.prompt, "policy": x, "baseline": y, "gold_policy": ga, "gold_baseline": gb}
        for t, x, y, ga, gb in list(zip(tasks, a, b, gold_a, gold_b, strict=True))[:5]
    ]
    return result


def overoptimization(metrics_path: str | Path) -> list[dict[str, float]]:
    """Per PPO iteration: KL to the SFT policy, mean RM score and mean gold score (reward hacking shows
    as the RM curve rising while the gold curve flattens or falls)."""
    rows = [r for r in read_metrics(metrics_path) if "ppo/reward_rm" in r]
    keys = ("iteration", "ppo/kl_k1", "ppo/kl_k3", "ppo/reward_rm", "ppo/gold_score")
    return [{k: r[k] for k in keys if k in r} for r in rows]


def winrate_vs_kl(
    run_dir: str | Path, baseline: GPT, tok: Tokenizer, **kwargs: Any
) -> list[dict[str, float]]:
    """Win rate of every snapshot in run_dir/snapshots against the baseline, with the KL it had reached."""
    out = []
    for snap in sorted((Path(run_dir) / "snapshots").glob("iter_*")):
        model, _ = load_checkpoint(snap, device=baseline.lm_head.weight.device)
        res = winrate(model, baseline, tok, **kwargs)
        meta = checkpoint_meta(snap)
        out.append(
            {
                "iteration": meta.get("iteration", -1),
                "kl_k1": meta.get("kl_k1", float("nan")),
                "win_rate": res["win_rate"],
                "ci_low": res["ci_low"],
                "ci_high": res["ci_high"],
            }
        )
    return out


def winrate_report(
    policy_path: str | Path, baseline_path: str | Path, *, n: int = 200, seed: int = 0, temperature: float = 0.0,
    max_new_tokens: int = 24, run_dir: str | Path | None = None, families: Sequence[str] | None = None,
    device: str = "auto",
) -> dict[str, Any]:  # fmt: skip
    """Everything `picochat eval --winrate` prints: the win rate, and with a PPO run directory the
    over-optimisation curve and win rate vs KL. JSON-able. device: auto (a GPU if there is one), cpu, cuda..."""
    dev = resolve_device(device)
    policy, tok = load_checkpoint(policy_path, device=dev)
    baseline, base_tok = load_checkpoint(baseline_path, device=dev)
    if tok.identity() != base_tok.identity():
        raise ValueError(
            f"{policy_path} and {baseline_path} use different tokenizers; compare policies of one run"
        )
    kw = {
        "n": n,
        "seed": seed,
        "temperature": temperature,
        "max_new_tokens": max_new_tokens,
        "families": families,
    }
    report: dict[str, Any] = {
        "policy": str(policy_path),
        "baseline": str(baseline_path),
        **winrate(policy, baseline, tok, **kw),
    }
    if run_dir is not None:
        report["overoptimization"] = overoptimization(Path(run_dir) / "metrics.jsonl")
        report["winrate_vs_kl"] = winrate_vs_kl(run_dir, baseline, tok, **kw)
    return report
