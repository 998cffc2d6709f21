"""`picochat pipeline`: every stage of the recipe in order, on the embedded default, in one run directory.

    runs/NAME/
      data/       tokenizer.json + token shards              (stage: tokenizer)
      pretrain/   base model checkpoint, metrics, samples     (stage: pretrain)
      sample/     samples from the base model                  (stage: sample)
      eval/       bits/byte vs bigram, zero-/few-shot (GPT-2/3) (stage: eval)
      finetune/   GPT-1 heads, one dir per task                  (stage: finetune)
      sft/        chat policy (supervised fine-tuning)           (stage: sft)
      rm/         comparisons collected from SFT + reward model  (stage: rm)
      ppo/        RLHF policy, plain PPO, with its win rate      (stage: ppo)
      rm_R/, ppo_R/  round R >= 2 of `--rounds N`: comparisons from round R-1's policy, the RM
                  retrained on every round's comparisons, PPO continued from round R-1 (KL to SFT)
      ppo_ptx/    RLHF policy, PPO-ptx                           (stage: ppo_ptx)
      transcripts/ the same prompts answered by base, SFT and RL (stage: transcripts)
      report.md, report.html, plots/                             (stage: report)
      pipeline.json   environment, per-stage wall time, headline numbers

Each stage writes `summary.json` last; a stage whose summary exists is skipped, so rerunning an
interrupted pipeline continues where it stopped (and `--resume` also resumes the stage that was cut off
from its last checkpoint). Stage settings come from the preset; `STAGE.key=value` overrides reach one
stage (e.g. `pretrain.optim.max_steps=100`).
"""

from __future__ import annotations

import json
import platform
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from picochat.checkpoint import atomic_write_text, write_json
from picochat.config import (
    ConfigError,
    PretrainConfig,
    check_choice,
    check_range,
    config_class,
    load_config,
    merge,
    save_config,
)

STAGE_NAMES = (
    "tokenizer", "pretrain", "sample", "eval", "finetune", "sft", "rm", "ppo", "ppo_ptx", "transcripts", "report",
)  # fmt: skip
SUMMARY = "summary.json"
ALWAYS_RUN = ("report",)  # cheap, and must reflect every stage that ran

# Per-preset settings for each stage (merged over the stage config's defaults).
PIPELINE_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "micro": {  # smoke test: every stage in seconds
        "pretrain": {
            "model": {"preset": "micro"},
            "data": {"vocab_size": 512},
            "optim": {"max_steps": 40, "batch_size": 8, "warmup_steps": 5},
            "run": {"eval_every": 20, "save_every": 20, "eval_batches": 2},
        },
        "eval": {"n": 8, "shots": [0, 1], "max_lm_tokens": 4000},
        "finetune": {
            "overrides": ["optim.max_steps=4", "optim.batch_size=8", "eval_train_examples=16", "max_len=48"],
        },
        "sft": {
            "n_task_demos": 200,
            "n_chitchat": 30,
            "n_chatterbot": 30,
            "eval_tasks": 8,
            "eval_max_new_tokens": 8,
            "optim": {"max_steps": 6, "batch_size": 4},
            "run": {"eval_every": 6, "save_every": 6, "eval_batches": 1, "log_every": 2},
        },
        "rm": {
            "n_heldout": 8,
            "collect": {"n_prompts": 16, "max_new_tokens": 8},
            "optim": {"max_steps": 6, "batch_size": 4, "warmup_steps": 1},
            "run": {"eval_every": 6, "save_every": 6, "log_every": 2},
        },
        "ppo": {
            "ppo": {"iterations": 2, "rollout_batch": 8, "minibatch": 4, "max_new_tokens": 8, "n_prompts": 32}
        },
        "ppo_ptx": {
            "ppo": {
                "iterations": 2,
                "rollout_batch": 8,
                "minibatch": 4,
                "max_new_tokens": 8,
                "n_prompts": 32,
                "ptx_coef": 1.0,
                "ptx_block": 32,
            },
        },
    },
    "tiny": {  # the default: the whole recipe on a 2-core CPU (measured 11.8-14.7 min, see README)
        "pretrain": {  # 128 wide (tiny's 4 layers, 4 heads): ~2.7x fewer FLOPs per token than 256, more steps
            "model": {"preset": "tiny", "n_embd": 128},
            "optim": {"max_steps": 400, "batch_size": 8, "lr": 2e-3, "warmup_steps": 20},
            "run": {"eval_every": 200, "save_every": 200, "eval_batches": 8, "log_every": 40},
        },
        "eval": {"n": 40, "shots": [0, 1, 4]},
        "finetune": {
            "overrides": [
                "optim.max_steps=80",
                "optim.batch_size=16",
                "optim.lr=1e-3",
                "eval_train_examples=100",
                "max_len=80",  # fits every nli pair and 99% of the paraphrase pairs (48 would cut 32% of nli)
            ],
            # The pair tasks need a word of one text compared with a word of the other, which 80 steps do
            # not teach (nli 0.355, synthetic paraphrase 0.510). Measured from the tiny base (fp32, 2 seeds):
            # nli 600 steps lr 2e-3 0.41 / 0.417 (1000 steps overfit: 0.38); Bible paraphrase 80 steps 0.50,
            # 300 steps lr 1e-3 0.573 / 0.567, lr 2e-3 0.588 / 0.583, 600 steps 0.608 / 0.632
            "task_overrides": {
                "nli": ["optim.max_steps=600", "optim.lr=2e-3"],
                "paraphrase": ["optim.max_steps=300", "optim.lr=2e-3"],
            },
        },
        # 750 + 750 dialogues (SFTConfig default 1500 + 2000) put 80% of the conversations (not 63%) on the
        # checkable tasks: at 200 steps exact task accuracy 0.000 -> 0.071 (0.000 with the default mix),
        # held-out chat loss 4.99 (4.97); 300 + 300 gave 0.125 and 0.089 (two seeds) at chat loss 5.7
        "sft": {
            "n_chitchat": 750,
            "n_chatterbot": 750,
            "eval_tasks": 112,
            "eval_max_new_tokens": 32,
            "optim": {"max_steps": 200, "batch_size": 16, "lr": 2e-3, "warmup_steps": 10},
            "run": {"eval_every": 100, "save_every": 100, "eval_batches": 4, "log_every": 20},
        },
        # label smoothing 0.1 (same comparisons, 3 seeds): held-out accuracy 0.760 / 0.760 / 0.742 -> 0.778 /
        # 0.814 / 0.783, shift 0.68 -> 0.74, calibration error 0.135 -> 0.046 (the RM was overconfident)
        "rm": {
            "n_heldout": 192,
            "label_smoothing": 0.1,
            "collect": {"n_prompts": 1024, "max_new_tokens": 32},
            "optim": {"max_steps": 100, "lr": 1e-3, "warmup_steps": 5},
            "run": {"eval_every": 50, "save_every": 50, "log_every": 10},
        },
        # 36 iterations: packed episodes made them affordable; 12 left the win rate at 0.57-0.64 greedy.
        # horizon 256 episodes (default 2000): 36 iterations of 32 episodes could move β by at most 12% at
        # 2000, so the KL drifted to 5.5 nats in one run and its greedy answers collapsed (win rate 0.28 /
        # 0.56 sampled); at 256 the same SFT and RM gave KL 2.2, 0.41 / 0.57 (another run's SFT/RM: 0.57 /
        # 0.64 at 2000, 0.52 / 0.65 at 256, gold score 0.155 -> 0.174 greedy). horizon 64 (β moves up to
        # 10% per iteration): at 256 a later run's KL still reached 5.0-7.2 nats against the target 2 (seeds
        # 1337 / 2 / 3: 0.36 / 0.52, 0.45 / 0.60, 0.39 / 0.60); at 64 the same SFT/RM held KL 1.5-3.0 and gave
        # 0.48 / 0.56, 0.53 / 0.57, 0.46 / 0.56; on the previous run's SFT/RM (KL 2.8 at 256: 0.45 / 0.61)
        # 0.42 / 0.60 at KL 2.6
        "ppo": {"ppo": {"iterations": 36, "max_new_tokens": 32, "horizon": 64}, "optim": {"lr": 6e-5}},
        # γ = 0.01 (win rate greedy / sampled, KL, held-out LM loss; SFT 7.05): at 36 iterations γ = 0.1 gave
        # 0.59 / 0.60, KL 7.4, 5.91; 0.03: 0.66 / 0.65, KL 6.6, 6.06; 0.01: 0.67 / 0.68, KL 4.4, 6.35.
        # ptx_batch 2 windows of 128 tokens per minibatch (default 4): the ptx forward and backward were a
        # third of the stage's time
        "ppo_ptx": {
            "ppo": {"iterations": 36, "max_new_tokens": 32, "ptx_coef": 0.01, "horizon": 64, "ptx_batch": 2},
            "optim": {"lr": 6e-5},
        },
    },
    "small-cpu": {
        "pretrain": {
            "model": {"preset": "small-cpu"},
            "optim": {"max_steps": 2000, "batch_size": 16, "lr": 1e-3, "warmup_steps": 100},
            "run": {"eval_every": 200, "save_every": 200},
        },
    },
    "gpt2": {  # one GPU: GPT-2 124M shapes with the real GPT-2 BPE
        "pretrain": {
            "model": {"preset": "gpt2"},
            "data": {"tokenizer": "gpt2"},
            "optim": {"max_steps": 2000, "batch_size": 16, "grad_accum": 4, "lr": 6e-4, "warmup_steps": 100},
            "run": {"eval_every": 250, "save_every": 250, "eval_batches": 20},
        },
    },
}


@config_class
class PipelineConfig:
    """`picochat pipeline`: the stages, their preset and where they write."""

    preset: str = "tiny"
    """stage settings: micro (seconds), tiny (2-core CPU, ~13 min), small-cpu, gpt2 (one GPU)"""
    out: str = ""
    """run directory (default runs/<preset>)"""
    seed: int = 1337
    """seed passed to every stage"""
    rounds: int = 1
    """RLHF rounds: each round after the first collects comparisons from the last PPO policy, retrains
    the reward model on all comparisons so far and continues PPO from that policy (InstructGPT §3.5)"""

    def __post_init__(self) -> None:
        check_choice("preset", self.preset, tuple(PIPELINE_PRESETS))
        check_range("rounds", self.rounds, 1, 20)


def preset_base(name: str | None) -> dict[str, Any] | None:
    if name is None:
        return None
    if name not in PIPELINE_PRESETS:
        raise ConfigError(f"unknown pipeline preset {name!r}; choose one of {sorted(PIPELINE_PRESETS)}")
    return {"preset": name}


@dataclass
class Context:
    """What stages share: the run directory, the config, and per-stage overrides."""

    cfg: PipelineConfig
    root: Path
    resume: bool
    overrides: dict[str, list[str]] = field(default_factory=dict)

    def stage_config(self, stage: str, cls: type, extra: dict[str, Any] | None = None) -> Any:
        """The stage's config: class defaults <- preset <- pipeline wiring (`extra`) <- user overrides."""
        base = json.loads(json.dumps(PIPELINE_PRESETS[self.cfg.preset].get(stage, {})))
        names = {f.name for f in fields(cls)}
        if "run" in names:
            base.setdefault("run", {})["seed"] = self.cfg.seed
        elif "seed" in names:
            base["seed"] = self.cfg.seed
        base = merge(base, extra or {})
        return load_config(cls, None, self.overrides.get(stage, []), base)

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)


def stage_tokenizer(ctx: Context) -> dict[str, Any]:
    from picochat.train.pretrain import prepare_data

    cfg = ctx.stage_config("pretrain", PretrainConfig)
    data = prepare_data(cfg.data, ctx.root / "data")
    return {"vocab_size": data.tok.vocab_size, **{k: data.meta[k] for k in ("train_tokens", "val_tokens")}}


def stage_pretrain(ctx: Context) -> dict[str, Any]:
    from picochat.train.pretrain import pretrain

    cfg = ctx.stage_config("pretrain", PretrainConfig)
    _, _, summary = pretrain(cfg, ctx.root / "pretrain", resume=ctx.resume, data_dir=ctx.root / "data")
    return summary


def stage_sample(ctx: Context) -> dict[str, Any]:
    from picochat.checkpoint import load_checkpoint
    from picochat.engine import Engine
    from picochat.train.loop import resolve_device

    model, tok = load_checkpoint(ctx.root / "pretrain" / "ckpt", device=resolve_device("auto"))
    prompts = ["ROMEO:\n", "JULIET:\n", "First Citizen:\n"]
    max_new = min(120, model.config.block_size - 8)
    texts = Engine(model, tok).generate(
        prompts, max_new_tokens=max_new, temperature=0.8, top_k=50, seed=ctx.cfg.seed
    )
    samples = [p + t for p, t in zip(prompts, texts, strict=True)]
    out = ctx.root / "sample"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "samples.txt", "\n\n---\n\n".join(samples) + "\n")
    print("\n---\n".join(samples))
    return {"samples": samples}


def stage_eval(ctx: Context) -> dict[str, Any]:
    from picochat.config import EvalConfig
    from picochat.eval.fewshot import run_eval

    cfg = ctx.stage_config(
        "eval", EvalConfig, {"ckpt": str(ctx.path("pretrain", "ckpt")), "data_dir": str(ctx.path("data"))}
    )
    return run_eval(cfg, ctx.path("eval"))


def stage_finetune(ctx: Context) -> dict[str, Any]:
    from picochat.data.gpt1_tasks import TASKS
    from picochat.train.finetune import run_finetune_all

    preset = PIPELINE_PRESETS[ctx.cfg.preset].get("finetune", {})
    tasks = preset.get("tasks", TASKS)
    # per task: the preset's common settings, its settings for that task, then the seed and the user's own
    last = [f"run.seed={ctx.cfg.seed}", *ctx.overrides.get("finetune", [])]
    per_task = {name: [*preset.get("task_overrides", {}).get(name, []), *last] for name in tasks}
    return run_finetune_all(
        ctx.path("pretrain", "ckpt"), ctx.path("finetune"), tasks=tasks, overrides=preset.get("overrides", []),
        resume=ctx.resume, task_overrides=per_task,
    )  # fmt: skip


def stage_sft(ctx: Context) -> dict[str, Any]:
    from picochat.config import SFTConfig
    from picochat.train.sft import sft

    cfg = ctx.stage_config(
        "sft", SFTConfig, {"ckpt": str(ctx.path("pretrain", "ckpt")), "ptx_data": str(ctx.path("data"))}
    )
    return sft(cfg, ctx.path("sft"), resume=ctx.resume)


def stage_rm(ctx: Context) -> dict[str, Any]:
    from picochat.config import RewardConfig
    from picochat.train.reward import train_reward

    cfg = ctx.stage_config("rm", RewardConfig, {"sft": str(ctx.path("sft", "ckpt"))})
    return train_reward(cfg, ctx.path("rm"), resume=ctx.resume)


def ppo_stage(
    ctx: Context, name: str, out: str | None = None, wiring: dict[str, Any] | None = None
) -> dict[str, Any]:
    from picochat.config import PPOConfig
    from picochat.train.ppo import run_ppo

    base = {"policy": str(ctx.path("sft", "ckpt")), "rm": str(ctx.path("rm", "ckpt"))}
    cfg = ctx.stage_config(name, PPOConfig, {**base, **(wiring or {}), "data_dir": str(ctx.path("data"))})
    return run_ppo(
        cfg,
        ctx.path(out or name),
        resume=ctx.resume,
        data_dir=ctx.path("data"),
        winrate_n=WINRATE_PROMPTS[ctx.cfg.preset],
    )


def stage_ppo(ctx: Context) -> dict[str, Any]:
    return ppo_stage(ctx, "ppo")


ROUND_STAGE = re.compile(r"^(rm|ppo)_(\d+)$")


def round_dir(kind: str, r: int) -> str:
    """Output directory of round r's "rm" or "ppo" stage: rm, ppo for round 1; rm_2, ppo_2, ... after."""
    return kind if r == 1 else f"{kind}_{r}"


def stage_rm_round(ctx: Context, r: int) -> dict[str, Any]:
    """Round r >= 2: new comparisons sampled from round r-1's PPO policy (fresh prompts), and a reward
    model trained from SFT on those plus every earlier round's comparisons."""
    from picochat.config import RewardConfig
    from picochat.train.reward import train_reward

    earlier = [str(ctx.path(round_dir("rm", q), "prefs", "train.jsonl")) for q in range(1, r)]
    wiring = {
        "sft": str(ctx.path("sft", "ckpt")),
        "collect_policy": str(ctx.path(round_dir("ppo", r - 1), "ckpt")),
        "extra_data": earlier,
        "collect": {"seed": 1000 * (r - 1)},
    }
    cfg = ctx.stage_config("rm", RewardConfig, wiring)
    return train_reward(cfg, ctx.path(round_dir("rm", r)), resume=ctx.resume)


def stage_ppo_round(ctx: Context, r: int) -> dict[str, Any]:
    """Round r >= 2: PPO continued from round r-1's policy against round r's reward model; the KL penalty
    and the win-rate baseline stay with the SFT policy."""
    return ppo_stage(
        ctx, "ppo", out=round_dir("ppo", r),
        wiring={"policy": str(ctx.path(round_dir("ppo", r - 1), "ckpt")), "reference": str(ctx.path("sft", "ckpt")),
                "rm": str(ctx.path(round_dir("rm", r), "ckpt"))},
    )  # fmt: skip


def stage_names(rounds: int) -> list[str]:
    """The pipeline's stages in order, with rounds 2..N of (rm, ppo) after the first PPO."""
    names = list(STAGE_NAMES)
    at = names.index("ppo") + 1
    names[at:at] = [f"{kind}_{r}" for r in range(2, rounds + 1) for kind in ("rm", "ppo")]
    return names


def run_stage(name: str, ctx: Context) -> dict[str, Any]:
    match = ROUND_STAGE.match(name)
    if match:
        kind, r = match.group(1), int(match.group(2))
        return (stage_rm_round if kind == "rm" else stage_ppo_round)(ctx, r)
    return STAGES[name](ctx)


def stage_ppo_ptx(ctx: Context) -> dict[str, Any]:
    return ppo_stage(ctx, "ppo_ptx")


TRANSCRIPT_PROMPTS = (
    "When I was 8 my brother was half my age. How old is he when I am 50?",
    "What is 12 + 9?",
    'Reverse the word "planet".',
    "hi! how was your weekend?",
)


def stage_transcripts(ctx: Context) -> dict[str, Any]:
    """The same user prompts answered greedily by the base model, the SFT policy and the RL policies."""
    from picochat.checkpoint import load_checkpoint
    from picochat.engine import Engine, SamplingParams
    from picochat.train.loop import resolve_device

    models = {
        "base": ("pretrain", "ckpt"),
        "SFT": ("sft", "ckpt"),
        "PPO": ("ppo", "ckpt"),
        "PPO-ptx": ("ppo_ptx", "ckpt"),
    }
    if ctx.cfg.rounds > 1:
        models[f"PPO round {ctx.cfg.rounds}"] = (round_dir("ppo", ctx.cfg.rounds), "ckpt")
    answers: dict[str, list[str]] = {}
    for label, parts in models.items():
        if not ctx.path(*parts).is_dir():
            continue
        model, tok = load_checkpoint(ctx.path(*parts), device=resolve_device("auto"))
        engine = Engine(model, tok)
        prompts = [tok.render_prompt([{"role": "user", "content": p}]) for p in TRANSCRIPT_PROMPTS]
        outs = engine.generate_ids(prompts, SamplingParams(max_new_tokens=48, temperature=0))
        answers[label] = [engine.decode_completion(o) for o in outs]
    items = [
        {"prompt": p, "answers": {label: texts[i] for label, texts in answers.items()}}
        for i, p in enumerate(TRANSCRIPT_PROMPTS)
    ]
    for item in items:
        print(f"user: {item['prompt']}")
        for label, text in item["answers"].items():
            print(f"  {label:>8}: {text!r}")
    return {"transcripts": items}


def headline(root: Path) -> dict[str, Any]:
    """The numbers the README and the report lead with, read from the stage summaries."""

    def read(*parts: str) -> dict[str, Any]:
        path = root.joinpath(*parts)
        return json.loads(path.read_text()) if path.is_file() else {}

    out: dict[str, Any] = {}
    pre, ev = read("pretrain", SUMMARY), read("eval", SUMMARY)
    if pre:
        out["val bits/byte (GPT)"] = pre.get("val/bpb")
    if ev.get("lm"):
        out["val bits/byte (bigram)"] = ev["lm"].get("bigram/bpb")
    ft = read("finetune", SUMMARY)
    for row in ft.get("table", []):
        out[f"fine-tuned accuracy: {row['task']} (chance {row['chance']:.2f})"] = row.get("accuracy")
    sft = read("sft", SUMMARY)
    for key in ("task_score", "task_accuracy", "end_rate"):
        if key in sft.get("after", {}):
            out[f"checkable-task {key}: base -> SFT"] = f"{sft['before'][key]:.3f} -> {sft['after'][key]:.3f}"
    rm = read("rm", SUMMARY)
    if "rm/accuracy" in rm:
        out["RM held-out pairwise accuracy"] = rm["rm/accuracy"]
    from picochat.report import rl_run_names

    for name in rl_run_names(root):
        s = read(name, SUMMARY)
        if "winrate/win_rate" in s:
            out[f"{name} win rate over SFT"] = s["winrate/win_rate"]
        if "winrate_sampled/win_rate" in s:
            out[f"{name} win rate over SFT (sampled)"] = s["winrate_sampled/win_rate"]
            out[f"{name} KL to SFT (k1, last iteration)"] = s.get("last/ppo/kl_k1")
    return out


def stage_report(ctx: Context) -> dict[str, Any]:
    from picochat.report import build_report

    numbers = headline(ctx.root)
    md_path, html_path = build_report(ctx.root, numbers)
    print(f"report: wrote {md_path} and {html_path}")
    return {"report": str(md_path), "html": str(html_path), **numbers}


STAGES: dict[str, Callable[[Context], dict[str, Any]]] = {
    "tokenizer": stage_tokenizer,
    "pretrain": stage_pretrain,
    "sample": stage_sample,
    "eval": stage_eval,
    "finetune": stage_finetune,
    "sft": stage_sft,
    "rm": stage_rm,
    "ppo": stage_ppo,
    "ppo_ptx": stage_ppo_ptx,
    "transcripts": stage_transcripts,
    "report": stage_report,
}
WINRATE_PROMPTS = {"micro": 16, "tiny": 200, "small-cpu": 200, "gpt2": 400}


def stage_config_classes() -> dict[str, type]:
    from picochat.config import EvalConfig, PPOConfig, RewardConfig, SFTConfig

    return {
        "pretrain": PretrainConfig,
        "eval": EvalConfig,
        "sft": SFTConfig,
        "rm": RewardConfig,
        "ppo": PPOConfig,
        "ppo_ptx": PPOConfig,
    }


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), or "" elsewhere."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return ""


def environment() -> dict[str, Any]:
    from picochat.train.loop import resolve_device, resolve_dtype

    device = resolve_device("auto")
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "processor": cpu_model() or platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "device": str(device),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "dtype": str(resolve_dtype("auto", device) or torch.float32).replace("torch.", ""),
    }


def split_overrides(items: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for item in items:
        stage, _, rest = item.partition(".")
        if stage in STAGE_NAMES:
            out.setdefault(stage, []).append(rest)
    return out


def run_pipeline(
    cfg: PipelineConfig,
    out: Path | None = None,
    resume: bool = False,
    stages: str | None = None,
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    root = Path(out or cfg.out or f"runs/{cfg.preset}")
    names = stage_names(cfg.rounds)
    selected = names if not stages else [s.strip() for s in stages.split(",") if s.strip()]
    unknown = [s for s in selected if s not in names]
    if unknown:
        raise ConfigError(f"unknown stage(s) {unknown}; stages are {names} (rounds={cfg.rounds})")
    ctx = Context(cfg=cfg, root=root, resume=resume, overrides=split_overrides(overrides or []))
    for stage in ctx.overrides:  # validate every stage override before spending minutes on earlier stages
        if stage in stage_config_classes():
            ctx.stage_config(stage, stage_config_classes()[stage])
    root.mkdir(parents=True, exist_ok=True)
    save_config(cfg, root / "pipeline.toml")
    record_path = root / "pipeline.json"
    record = json.loads(record_path.read_text()) if record_path.exists() else {}
    record["environment"] = environment()
    record.setdefault("stages", {})
    t_start = time.perf_counter()
    print(f"pipeline: preset {cfg.preset}, writing {root}")
    for k, stage in enumerate(selected, 1):
        done = root / stage / SUMMARY
        if done.exists() and stage not in ALWAYS_RUN:
            print(f"[{k}/{len(selected)}] {stage}: done already ({done}), skipping")
            continue
        print(f"[{k}/{len(selected)}] {stage} ...  (pipeline elapsed {time.perf_counter() - t_start:.0f} s)")
        t0 = time.perf_counter()
        summary = run_stage(stage, ctx)
        seconds = time.perf_counter() - t0
        done.parent.mkdir(parents=True, exist_ok=True)
        write_json(done, {"seconds": seconds, **summary}, sort_keys=False)
        record["stages"][stage] = {"seconds": seconds}
        write_json(record_path, record, sort_keys=False)
        print(f"[{k}/{len(selected)}] {stage}: {seconds:.1f} s")
    total = time.perf_counter() - t_start
    record["total_seconds_last_invocation"] = total
    record["headline"] = headline(root)  # written by the loop, which owns pipeline.json (the report reads it)
    write_json(record_path, record, sort_keys=False)
    print(f"pipeline: finished in {total:.0f} s; outputs in {root}")
    return record
