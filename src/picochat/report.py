"""The report card of a pipeline run: `runs/NAME/report.md` and `report.html`, with PNG plots.

Everything is read back from what the stages wrote (`pipeline.json`, each stage's `summary.json` and
`metrics.jsonl`), never recomputed, so the report's numbers are the logged ones. Sections appear only
for stages that ran. Plots use matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import html
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import markdown as md  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402

from picochat.checkpoint import atomic_write_bytes, atomic_write_text  # noqa: E402
from picochat.train.loop import read_metrics  # noqa: E402

PLOTS = "plots"


def save_figure(fig: Any, path: Path, **kwargs: Any) -> Path:
    """fig.savefig(path), but atomic: rendered in memory, then put in place in one step (a crash while
    saving never leaves a truncated image over the last good one)."""
    buf = io.BytesIO()
    fig.savefig(buf, format=path.suffix.lstrip(".") or "png", **kwargs)
    return atomic_write_bytes(path, buf.getvalue())


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError:
        return {}


def fmt(value: Any, digits: int = 3) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:.{digits}f}"
    return str(value)


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def series(records: list[dict[str, Any]], key: str, x: str = "step") -> tuple[list[float], list[float]]:
    pts = [(r[x], r[key]) for r in records if key in r and x in r and isinstance(r[key], (int, float))]
    return [p[0] for p in pts], [p[1] for p in pts]


def line_plot(
    path: Path,
    curves: list[tuple[str, list[float], list[float]]],
    title: str,
    ylabel: str,
    hlines: Sequence[tuple[str, float]] = (),
    xlabel: str = "step",
) -> Path | None:
    curves = [c for c in curves if c[1]]
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=110)
    for label, xs, ys in curves:
        ax.plot(xs, ys, label=label, marker="." if len(xs) < 30 else None)
    for label, y in hlines:
        ax.axhline(y, linestyle="--", color="gray", linewidth=1)
        ax.text(ax.get_xlim()[0], y, f" {label}", va="bottom", color="gray", fontsize=8)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, path)
    plt.close(fig)
    return path


def image(path: Path | None, root: Path, alt: str) -> str:
    return f"![{alt}]({path.relative_to(root).as_posix()})\n" if path else ""


# -- sections ---------------------------------------------------------------------------------------


def section_environment(root: Path, record: dict[str, Any]) -> str:
    env = record.get("environment", {})
    out = ["## Environment", table(["item", "value"], sorted(env.items()))] if env else []
    stages = record.get("stages", {})
    if stages:
        rows = []
        for name, info in stages.items():
            summary = read_json(root / name / "summary.json")
            rate = summary.get("tok/s")
            rows.append([name, info.get("seconds", float("nan")), fmt(rate, 0) if rate else ""])
        total = sum(info.get("seconds", 0.0) for info in stages.values())
        rows.append(["**total**", total, ""])
        out += ["", "### Wall time per stage", table(["stage", "seconds", "tok/s"], rows)]
    return "\n".join(out)


def section_pretrain(root: Path) -> str:
    summary = read_json(root / "pretrain" / "summary.json")
    if not summary:
        return ""
    records = read_metrics(root / "pretrain" / "metrics.jsonl")
    evals = read_json(root / "eval" / "summary.json").get("lm", {})
    bigram = evals.get("bigram/bpb")
    plots = root / PLOTS
    loss_png = line_plot(
        plots / "pretrain_loss.png",
        [("train", *series(records, "train/loss")), ("val", *series(records, "val/loss"))],
        "Pre-training loss", "nats / token",
        [("bigram", evals["bigram/loss"])] if "bigram/loss" in evals else [],
    )  # fmt: skip
    bpb_png = line_plot(
        plots / "pretrain_bpb.png", [("GPT val", *series(records, "val/bpb"))], "Validation bits per byte", "bits/byte",
        [("bigram baseline", bigram)] if bigram else [],
    )  # fmt: skip
    rows = [["GPT (ours)", summary.get("val/loss"), summary.get("val/bpb")]]
    if bigram:
        rows.append(["bigram (add-k)", evals.get("bigram/loss"), bigram])
    if "unigram/bpb" in evals:
        rows.append(["unigram", evals.get("unigram/loss"), evals.get("unigram/bpb")])
    samples = (
        (root / "pretrain" / "samples.txt").read_text()
        if (root / "pretrain" / "samples.txt").exists()
        else ""
    )
    out = [
        "## Pre-training",
        f"{fmt(summary.get('steps'))} steps, {fmt(summary.get('tokens_seen'))} tokens, "
        f"{fmt(summary.get('tok/s'), 0)} tok/s.",
        "",
        table(["model", "val loss (nats/token)", "val bits/byte"], rows),
        "",
        image(loss_png, root, "pre-training loss"),
        image(bpb_png, root, "bits per byte"),
    ]
    if samples:
        out += ["Sample from the base model:", "", "```", samples.split("\n---\n")[0].strip()[:800], "```"]
    return "\n".join(out)


def section_evals(root: Path) -> str:
    evals = read_json(root / "eval" / "summary.json")
    finetune = read_json(root / "finetune" / "summary.json")
    if not evals and not finetune:
        return ""
    out = ["## GPT-1 fine-tuning, GPT-2 zero-shot, GPT-3 few-shot"]
    shots = evals.get("fewshot", [])
    tasks: dict[str, dict[str, Any]] = {}
    for row in shots:
        tasks.setdefault(row["task"], {"chance": row.get("chance")})[f"{row['k']}-shot"] = row["accuracy"]
    for row in finetune.get("table", []):
        tasks.setdefault(row["task"], {"chance": row.get("chance")})["fine-tuned"] = row.get("accuracy")
    ks = sorted(
        {k for t in tasks.values() for k in t if k.endswith("-shot")}, key=lambda s: int(s.split("-")[0])
    )
    header = ["task", "chance", *ks, "fine-tuned"]
    rows = [
        [name, t.get("chance"), *[t.get(k) for k in ks], t.get("fine-tuned")] for name, t in tasks.items()
    ]
    out += ["Held-out accuracy:", "", table(header, rows)]
    return "\n".join(out)


def section_sft(root: Path) -> str:
    summary = read_json(root / "sft" / "summary.json")
    if not summary:
        return ""
    records = read_metrics(root / "sft" / "metrics.jsonl")
    png = line_plot(
        root / PLOTS / "sft_loss.png",
        [("train (assistant tokens)", *series(records, "train/loss")), ("held-out", *series(records, "val/loss"))],
        "SFT loss", "nats / assistant token",
    )  # fmt: skip
    rows = [[k, v] for k, v in summary.items() if isinstance(v, (int, float)) and k != "seconds"]
    before, after = summary.get("before", {}), summary.get("after", {})
    for key in ("task_score", "task_accuracy", "end_rate"):
        if key in before or key in after:
            rows.append([f"{key} (base -> SFT)", f"{fmt(before.get(key))} -> {fmt(after.get(key))}"])
    out = [
        "## Supervised fine-tuning (chat)",
        table(["metric", "value"], rows),
        "",
        image(png, root, "SFT loss"),
    ]
    samples = summary.get("chat_samples", [])
    if samples:
        out += ["Held-out chat samples from the SFT policy:", ""]
        out += [
            f"- **user:** {html.escape(x['user'])} — **assistant:** {html.escape(x['assistant'])!s}".replace(
                "\n", " "
            )
            for x in samples[:4]
        ]
    return "\n".join(out)


def section_rm(root: Path) -> str:
    summary = read_json(root / "rm" / "summary.json")
    if not summary:
        return ""
    rows = [[k, v] for k, v in summary.items() if isinstance(v, (int, float)) and k != "seconds"]
    out = [
        "## Reward model (collect K answers from SFT, rank with the gold labeler, train on all pairs)",
        table(["metric", "value"], rows),
    ]
    families = summary.get("rm/per_family") or summary.get("per_family")
    if isinstance(families, dict):
        fam_rows = [
            [
                k,
                v.get("accuracy") if isinstance(v, dict) else v,
                v.get("n_pairs") if isinstance(v, dict) else "",
            ]
            for k, v in families.items()
        ]
        out += [
            "",
            "Held-out pairwise accuracy per task family:",
            "",
            table(["family", "accuracy", "pairs"], fam_rows),
        ]
    calib = read_json(root / "rm" / "calibration.json")
    if calib.get("bins"):
        bins = calib["bins"]
        xs = [b["mean_pred"] for b in bins if b.get("n")]
        ys = [b["empirical"] for b in bins if b.get("n")]
        if xs:
            fig, ax = plt.subplots(figsize=(4, 4), dpi=110)
            ax.plot([0.5, 1], [0.5, 1], "--", color="gray")
            ax.plot(xs, ys, marker="o")
            ax.set_xlabel("predicted P(preferred)")
            ax.set_ylabel("observed frequency")
            ax.set_title("RM calibration (held-out)")
            fig.tight_layout()
            png = root / PLOTS / "rm_calibration.png"
            png.parent.mkdir(parents=True, exist_ok=True)
            save_figure(fig, png)
            plt.close(fig)
            out += ["", image(png, root, "RM calibration")]
    return "\n".join(out)


PPO_CURVES = [
    ("ppo/reward_rm", "reward model score"),
    ("ppo/gold_score", "gold score"),
    ("ppo/kl_k1", "KL to SFT (k1)"),
    ("ppo/entropy", "entropy"),
    ("ppo/response_len", "response length"),
]


def rl_run_names(root: Path) -> list[str]:
    """The RL runs of a pipeline directory in order: ppo, ppo_2, ppo_3, ... (rounds), then ppo_ptx."""
    rounds = sorted(
        (p.name for p in root.glob("ppo_*") if p.name.split("_")[1].isdigit()),
        key=lambda n: int(n.split("_")[1]),
    )
    return [name for name in ("ppo", *rounds, "ppo_ptx") if (root / name / "metrics.jsonl").exists()]


def section_ppo(root: Path) -> str:
    runs = rl_run_names(root)
    if not runs:
        return ""
    out = ["## RLHF: PPO against the reward model"]
    for key, label in PPO_CURVES:
        png = line_plot(
            root / PLOTS / f"{key.replace('/', '_')}.png",
            [(name, *series(read_metrics(root / name / "metrics.jsonl"), key, "iteration")) for name in runs],
            label, label, xlabel="PPO iteration",
        )  # fmt: skip
        out.append(image(png, root, label))
    rows = []
    for name in runs:
        s = read_json(root / name / "summary.json")
        for prefix, decoding in (("winrate", "greedy"), ("winrate_sampled", "sampled")):
            if f"{prefix}/win_rate" not in s:
                continue
            rows.append([
                name, decoding, s[f"{prefix}/win_rate"], s.get(f"{prefix}/ci_low"), s.get(f"{prefix}/ci_high"),
                s.get(f"{prefix}/gold_policy"), s.get(f"{prefix}/gold_baseline"), s.get("last/ppo/kl_k1"),
                s.get("ptx/heldout_lm_loss_rl"), s.get("ptx/heldout_lm_loss_sft"),
            ])  # fmt: skip
    headers = [
        "policy", "answers", "win rate", "95% CI low", "95% CI high", "gold score (RL)", "gold score (SFT)",
        "final KL", "held-out LM loss (RL)", "held-out LM loss (SFT)",
    ]  # fmt: skip
    out += [
        "",
        "### Win rate over SFT (gold labeler, held-out prompts)",
        "",
        "Greedy answers, and answers sampled at the rollout temperature (the distribution PPO optimises); "
        "a tie counts one half.",
        "",
        table(headers, rows),
    ]
    return "\n".join(out)


def section_transcripts(root: Path) -> str:
    data = read_json(root / "transcripts" / "summary.json")
    items = data.get("transcripts", [])
    if not items:
        return ""
    out = ["## Sample chats (same prompts)"]
    for item in items:
        out.append(f"**User:** {item['prompt']}\n")
        for model, answer in item["answers"].items():
            out.append(f"- *{model}:* {answer!s}".replace("\n", " "))
        out.append("")
    return "\n".join(out)


def section_scaling(root: Path) -> str:
    """`picochat scaling --out runs/NAME/scaling` results, when the run directory has them."""
    from picochat.scaling import scaling_section

    return scaling_section(root / "scaling", root)


SECTIONS = [
    section_pretrain, section_evals, section_sft, section_rm, section_ppo, section_transcripts, section_scaling,
]  # fmt: skip


def build_report(root: str | Path, headline: dict[str, Any] | None = None) -> tuple[Path, Path]:
    """Write root/report.md and root/report.html from the run's logs; returns both paths. The headline
    table is `headline` when given (the pipeline passes the numbers it is about to record), else the one
    recorded in pipeline.json."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"run directory {root} does not exist")
    record = read_json(root / "pipeline.json")
    parts = [f"# picochat report: `{root.name}`", ""]
    headline = record.get("headline", {}) if headline is None else headline
    if headline:
        parts += ["## Headline numbers", table(["metric", "value"], list(headline.items())), ""]
    parts.append(section_environment(root, record))
    parts += [s(root) for s in SECTIONS]
    text = "\n\n".join(p for p in parts if p) + "\n"
    md_path = root / "report.md"
    atomic_write_text(md_path, text)
    body = md.markdown(text, extensions=["tables", "fenced_code"])
    html_path = root / "report.html"
    atomic_write_text(
        html_path, HTML_PAGE.format(title=html.escape(f"picochat report: {root.name}"), body=body)
    )
    return md_path, html_path


HTML_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 960px; margin: 2em auto; padding: 0 1em; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1em; }}
th, td {{ border: 1px solid #ccc; padding: 4px 10px; text-align: left; }}
th {{ background: #f3f3f3; }}
img {{ max-width: 100%; }}
pre {{ background: #f7f7f7; padding: 0.8em; overflow-x: auto; }}
h1 {{ border-bottom: 2px solid #444; }}
</style></head>
<body>
{body}
</body></html>
"""
