"""`picochat <stage>`: the command line. Every subcommand takes `--config file.toml`, `key=value`
overrides, `--out DIR` and `--resume`; errors in user input print one line and exit non-zero.

This is the only module that reads environment variables (torchrun's RANK / WORLD_SIZE / LOCAL_RANK).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from picochat.config import ConfigError, field_help

USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, NotADirectoryError, PermissionError)
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    help: str
    config_cls: type | None
    run: Callable[[argparse.Namespace, Any], None]
    add_args: Callable[[argparse.ArgumentParser], None] | None = None


def dist_from_env(env: Mapping[str, str], device_name: str = "auto") -> Any:
    """Read torchrun's variables, start the process group (gloo on CPU, nccl on GPU) and return a Dist."""
    from picochat.train.loop import Dist, resolve_device

    world = int(env.get("WORLD_SIZE", "1"))
    rank = int(env.get("RANK", "0"))
    local_rank = int(env.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if world > 1:
        import torch
        import torch.distributed as torch_dist

        if device.type == "cuda":
            torch.cuda.set_device(device)
        if not torch_dist.is_initialized():
            torch_dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(rank=rank, world_size=world, local_rank=local_rank, device=device)


def out_dir(args: argparse.Namespace, cfg: Any, default: str) -> Path:
    return Path(args.out or getattr(getattr(cfg, "run", None), "out", "") or default)


# -- subcommands -----------------------------------------------------------------------------------


def cmd_tokenizer(args: argparse.Namespace, cfg: Any) -> None:
    from picochat.train.pretrain import prepare_data

    out = out_dir(args, cfg, "runs/tokenizer")
    data = prepare_data(cfg.data, out / "data")
    print(f"tokenizer: {data.tok.vocab_size} ids; wrote {out / 'data'} (tokenizer.json, train.bin, val.bin, data.json)")


def cmd_pretrain(args: argparse.Namespace, cfg: Any) -> None:
    from picochat.train.pretrain import pretrain

    out = out_dir(args, cfg, "runs/pretrain")
    dist = dist_from_env(os.environ, cfg.run.device)
    data_dir = Path(args.data_dir) if args.data_dir else None
    pretrain(cfg, out, dist=dist, resume=args.resume, data_dir=data_dir)


def add_pretrain_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="use the shards written by `picochat tokenizer` (DIR/data)")


def cmd_sample(args: argparse.Namespace, cfg: Any) -> None:
    from picochat.checkpoint import load_checkpoint
    from picochat.engine import Engine
    from picochat.train.loop import resolve_device

    ckpt = args.ckpt or cfg.ckpt
    if not ckpt:
        raise ConfigError("sample needs a checkpoint: --ckpt runs/NAME/ckpt")
    model, tok = load_checkpoint(ckpt, device=resolve_device(cfg.device))
    engine = Engine(model, tok)
    prompt = args.prompt if args.prompt is not None else cfg.prompt
    max_new = min(cfg.max_new_tokens, model.config.block_size - 1)
    for i, text in enumerate(
        engine.generate(
            [prompt], max_new_tokens=max_new, temperature=cfg.temperature, top_k=cfg.top_k,
            top_p=cfg.top_p, seed=cfg.seed, num_samples=cfg.num_samples,
        )  # fmt: skip
    ):
        if cfg.num_samples > 1:
            print(f"--- sample {i + 1}/{cfg.num_samples}")
        print(prompt + text)


def add_sample_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", help="checkpoint directory (runs/NAME/ckpt)")
    p.add_argument("--prompt", help="text to continue")


def cmd_pipeline(args: argparse.Namespace, cfg: Any) -> None:
    from picochat.pipeline import run_pipeline

    run_pipeline(cfg, Path(args.out) if args.out else None, resume=args.resume, stages=args.stages, overrides=args.overrides)


def add_pipeline_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default=None, help="tiny (default, 2-core CPU), micro (smoke test), small-cpu, gpt2 (one GPU)")
    p.add_argument("--stages", default=None, help="comma-separated subset of stages to run")


def build_commands() -> list[Command]:
    from picochat.config import PretrainConfig, SampleConfig, TokenizerStageConfig
    from picochat.pipeline import PipelineConfig

    return [
        Command("pipeline", "run the whole recipe on the embedded default and write a report", PipelineConfig, cmd_pipeline, add_pipeline_args),
        Command("tokenizer", "train (or pick) the tokenizer and write token shards", TokenizerStageConfig, cmd_tokenizer),
        Command("pretrain", "pre-train a GPT on the corpus (causal LM)", PretrainConfig, cmd_pretrain, add_pretrain_args),
        Command("sample", "generate text from a checkpoint", SampleConfig, cmd_sample, add_sample_args),
    ]


def config_epilog(cls: type) -> str:
    rows = field_help(cls)
    width = max(len(k) for k, _, _ in rows)
    return "config keys (key=value):\n" + "\n".join(f"  {k:<{width}}  {h} (default {d})" for k, d, h in rows)


def make_parser(commands: list[Command]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="picochat", description="The GPT lineage end to end: pre-train, fine-tune, SFT, RM, PPO, serve.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for c in commands:
        p = sub.add_parser(
            c.name, help=c.help, description=c.help,
            epilog=config_epilog(c.config_cls) if c.config_cls else None,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )  # fmt: skip
        if c.config_cls is not None:
            p.add_argument("--config", help="TOML config file (a run's config.toml reproduces it)")
            p.add_argument("--out", help="output directory")
            p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
            p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.lr=1e-3")
        if c.add_args:
            c.add_args(p)
        p.set_defaults(command_obj=c)
    return parser


def main(argv: list[str] | None = None) -> int:
    from picochat.checkpoint import CheckpointError
    from picochat.config import load_config
    from picochat.train.loop import NonFiniteError, StopRequested

    commands = build_commands()
    args = make_parser(commands).parse_args(argv)
    command: Command = args.command_obj
    try:
        cfg = None
        if command.config_cls is not None:
            base = None
            if command.name == "pipeline":
                from picochat.pipeline import preset_base

                base = preset_base(args.preset)
            cfg = load_config(command.config_cls, args.config, [o for o in args.overrides if _is_own_override(command, o)], base)
        command.run(args, cfg)
    except StopRequested as e:
        print(f"picochat: stopped; resume with --resume (checkpoint {e})", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print("picochat: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except NonFiniteError as e:
        print(f"picochat: error: {e}", file=sys.stderr)
        return 1
    except (ConfigError, CheckpointError, *USER_ERRORS) as e:
        print(f"picochat: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0


def _is_own_override(command: Command, item: str) -> bool:
    """The pipeline passes `stage.key=value` overrides on to its stages; everything else is validated."""
    if command.name != "pipeline":
        return True
    from picochat.pipeline import STAGE_NAMES

    return item.split(".", 1)[0] not in STAGE_NAMES


if __name__ == "__main__":
    sys.exit(main())
