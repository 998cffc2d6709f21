"""`picochat pipeline`: every stage of the recipe in order, on the embedded default, in one run directory.

    runs/NAME/
      data/       tokenizer.json + token shards              (stage: tokenizer)
      pretrain/   base model checkpoint, metrics, samples     (stage: pretrain)
      sample/     samples from the base model                  (stage: sample)
      pipeline.json   per-stage wall time and summaries

Each stage writes `summary.json` last; a stage whose summary exists is skipped, so rerunning an
interrupted pipeline continues where it stopped (and `--resume` also resumes the stage that was cut off
from its last checkpoint). Stage settings come from the preset; `STAGE.key=value` overrides reach one
stage (e.g. `pretrain.optim.max_steps=100`).
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from picochat.config import ConfigError, PretrainConfig, check_choice, config_class, load_config, save_config

STAGE_NAMES = ("tokenizer", "pretrain", "sample")
SUMMARY = "summary.json"

# Per-preset settings for each stage (merged over the stage config's defaults).
PIPELINE_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "micro": {  # smoke test: every stage in seconds
        "pretrain": {
            "model": {"preset": "micro"},
            "data": {"vocab_size": 512},
            "optim": {"max_steps": 40, "batch_size": 8, "warmup_steps": 5},
            "run": {"eval_every": 20, "save_every": 20, "eval_batches": 2},
        },
    },
    "tiny": {  # the default: the whole recipe on a 2-core CPU in ~15 minutes
        "pretrain": {
            "model": {"preset": "tiny"},
            "optim": {"max_steps": 600, "batch_size": 16, "lr": 3e-3, "warmup_steps": 30},
            "run": {"eval_every": 100, "save_every": 100, "eval_batches": 8},
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
    """stage settings: micro (seconds), tiny (2-core CPU, ~15 min), small-cpu, gpt2 (one GPU)"""
    out: str = ""
    """run directory (default runs/<preset>)"""
    seed: int = 1337
    """seed passed to every stage"""

    def __post_init__(self) -> None:
        check_choice("preset", self.preset, tuple(PIPELINE_PRESETS))


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
        base = json.loads(json.dumps(PIPELINE_PRESETS[self.cfg.preset].get(stage, {})))
        base.setdefault("run", {})["seed"] = self.cfg.seed
        for k, v in (extra or {}).items():
            base[k] = {**base.get(k, {}), **v} if isinstance(v, dict) else v
        return load_config(cls, None, self.overrides.get(stage, []), base)


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

    model, tok = load_checkpoint(ctx.root / "pretrain" / "ckpt")
    prompts = ["ROMEO:\n", "JULIET:\n", "First Citizen:\n"]
    max_new = min(120, model.config.block_size - 8)
    texts = Engine(model, tok).generate(prompts, max_new_tokens=max_new, temperature=0.8, top_k=50, seed=ctx.cfg.seed)
    samples = [p + t for p, t in zip(prompts, texts, strict=True)]
    out = ctx.root / "sample"
    out.mkdir(parents=True, exist_ok=True)
    (out / "samples.txt").write_text("\n\n---\n\n".join(samples) + "\n")
    print("\n---\n".join(samples))
    return {"samples": samples}


STAGES: dict[str, Callable[[Context], dict[str, Any]]] = {
    "tokenizer": stage_tokenizer,
    "pretrain": stage_pretrain,
    "sample": stage_sample,
}


def environment() -> dict[str, Any]:
    from picochat.train.loop import resolve_device, resolve_dtype

    device = resolve_device("auto")
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
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
    selected = list(STAGE_NAMES) if not stages else [s.strip() for s in stages.split(",") if s.strip()]
    unknown = [s for s in selected if s not in STAGES]
    if unknown:
        raise ConfigError(f"unknown stage(s) {unknown}; stages are {list(STAGE_NAMES)}")
    ctx = Context(cfg=cfg, root=root, resume=resume, overrides=split_overrides(overrides or []))
    for stage in ctx.overrides:  # validate every stage override before spending minutes on earlier stages
        if stage in ("tokenizer", "pretrain"):
            ctx.stage_config("pretrain", PretrainConfig)
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
        if done.exists():
            print(f"[{k}/{len(selected)}] {stage}: done already ({done}), skipping")
            continue
        print(f"[{k}/{len(selected)}] {stage} ...  (pipeline elapsed {time.perf_counter() - t_start:.0f} s)")
        t0 = time.perf_counter()
        summary = STAGES[stage](ctx)
        seconds = time.perf_counter() - t0
        done.parent.mkdir(parents=True, exist_ok=True)
        done.write_text(json.dumps({"seconds": seconds, **summary}, indent=2) + "\n")
        record["stages"][stage] = {"seconds": seconds}
        record_path.write_text(json.dumps(record, indent=2) + "\n")
        print(f"[{k}/{len(selected)}] {stage}: {seconds:.1f} s")
    total = time.perf_counter() - t_start
    record["total_seconds_last_invocation"] = total
    record_path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"pipeline: finished in {total:.0f} s; outputs in {root}")
    return record
