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

USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    FileNotFoundError,
    NotADirectoryError,
    PermissionError,
)
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
    print(
        f"tokenizer: {data.tok.vocab_size} ids; wrote {out / 'data'} (tokenizer.json, train.bin, val.bin, data.json)"
    )


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
            [prompt],
            max_new_tokens=max_new,
            temperature=cfg.temperature,
            top_k=cfg.top_k,
            top_p=cfg.top_p,
            seed=cfg.seed,
            num_samples=cfg.num_samples,
        )  # fmt: skip
    ):
        if cfg.num_samples > 1:
            print(f"--- sample {i + 1}/{cfg.num_samples}")
        print(prompt + text)


def add_sample_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", help="checkpoint directory (runs/NAME/ckpt)")
    p.add_argument("--prompt", help="text to continue")


def cmd_pipeline(args: argparse.Namespace, cfg: Any) -> None:
    from dataclasses import replace

    from picochat.pipeline import run_pipeline

    if args.rounds is not None:
        cfg = replace(cfg, rounds=args.rounds)
    run_pipeline(
        cfg,
        Path(args.out) if args.out else None,
        resume=args.resume,
        stages=args.stages,
        overrides=args.overrides,
    )


def add_pipeline_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--preset",
        default=None,
        help="tiny (default, 2-core CPU), micro (smoke test), small-cpu, gpt2 (one GPU)",
    )
    p.add_argument("--stages", default=None, help="comma-separated subset of stages to run")
    p.add_argument(
        "--rounds", type=int, default=None,
        help="RLHF rounds (collect -> RM -> PPO); rounds after the first start from the last PPO policy",
    )  # fmt: skip


def cmd_collect(args: argparse.Namespace, cfg: Any) -> None:
    from dataclasses import replace

    from picochat.train.collect import run_collect

    given = {"policy": args.policy, "k": args.k, "n_prompts": args.n_prompts}
    cfg = replace(cfg, **{k: v for k, v in given.items() if v is not None})
    out = Path(args.out or "runs/collect/prefs.jsonl")
    summary = run_collect(cfg, out)
    print(f"collect: {summary['n_records']} ranked prompts in {out}")


def add_collect_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--policy", help="policy checkpoint to sample from (runs/NAME/sft/ckpt)")
    p.add_argument("--k", type=int, help="answers per prompt, 4..9")
    p.add_argument("--n-prompts", type=int, help="task prompts to sample for")


def cmd_rm(args: argparse.Namespace, cfg: Any) -> None:
    from dataclasses import replace

    from picochat.train.reward import train_reward

    given = {"sft": args.ckpt, "data": args.data, "heldout": args.heldout}
    cfg = replace(cfg, **{k: v for k, v in given.items() if v})
    out = out_dir(args, cfg, "runs/rm")
    train_reward(cfg, out, dist=dist_from_env(os.environ, cfg.run.device), resume=args.resume)


def add_rm_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", help="SFT checkpoint the reward model starts from")
    p.add_argument(
        "--data", action="append", help="ranking or pairwise JSONL (repeat for more); none = collect"
    )
    p.add_argument("--heldout", help="held-out ranking JSONL (default: collect on the heldout task split)")


def cmd_sft(args: argparse.Namespace, cfg: Any) -> None:
    from dataclasses import replace

    from picochat.train.sft import sft

    cfg = replace(cfg, **{k: v for k, v in {"ckpt": args.ckpt, "data": args.data}.items() if v})
    out = out_dir(args, cfg, "runs/sft")
    sft(cfg, out, dist=dist_from_env(os.environ, cfg.run.device), resume=args.resume)


def add_sft_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", help="base checkpoint to fine-tune (runs/NAME/pretrain/ckpt)")
    p.add_argument(
        "--data",
        help='JSONL of {"messages": [...]} conversations (added to the mix; data_mode=replace: alone)',
    )


def cmd_chat(args: argparse.Namespace, cfg: Any) -> None:
    from picochat.chat import ChatOptions, run_chat

    options = ChatOptions(
        system=args.system, temperature=args.temperature, top_k=args.top_k or None, top_p=args.top_p,
        max_new_tokens=args.max_new_tokens, seed=args.seed,
    )  # fmt: skip
    run_chat(args.ckpt, options, message=args.message, device=args.device)


def add_chat_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", required=True, help="checkpoint to chat with (runs/NAME/sft/ckpt)")
    p.add_argument("--system", default="", help="system prompt, kept however long the chat gets")
    p.add_argument("--message", help="answer this one message and exit (non-interactive)")
    p.add_argument("--temperature", type=float, default=0.8, help="sampling temperature (0 = greedy)")
    p.add_argument("--top-k", type=int, default=50, help="sample among the k most likely tokens (0 = all)")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass (default off)")
    p.add_argument("--max-new-tokens", type=int, default=128, help="longest answer in tokens")
    p.add_argument("--seed", type=int, default=None, help="sampling seed (default random)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")


def cmd_finetune(args: argparse.Namespace, cfg: Any) -> None:
    from dataclasses import replace

    from picochat.train.finetune import finetune

    given = {"ckpt": args.ckpt, "task": args.task, "data": args.data}
    cfg = replace(cfg, **{k: v for k, v in given.items() if v})
    out = out_dir(args, cfg, f"runs/finetune/{Path(cfg.data).stem if cfg.data else cfg.task}")
    finetune(cfg, out, dist=dist_from_env(os.environ, cfg.run.device), resume=args.resume)


def add_finetune_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", help="base checkpoint (runs/NAME/pretrain/ckpt)")
    p.add_argument("--task", help="built-in task: sentiment, nli, paraphrase, cloze, paraphrase_synth")
    p.add_argument("--data", help="your own task JSONL (format inferred, or format=...)")


def cmd_eval(args: argparse.Namespace, cfg: Any) -> None:
    from dataclasses import replace

    from picochat.eval.fewshot import run_eval

    given = {"ckpt": args.ckpt, "data_dir": args.data_dir, "finetune_dir": args.finetune_dir}
    if args.tasks is not None:
        given["tasks"] = [t for t in args.tasks.split(",") if t]
    if args.shots is not None:
        try:
            given["shots"] = [int(k) for k in args.shots.split(",") if k]
        except ValueError:
            raise ConfigError(f"--shots {args.shots!r}: expected integers like 0,1,4") from None
    cfg = replace(cfg, **{k: v for k, v in given.items() if v is not None})
    run_eval(cfg, out_dir(args, cfg, "runs/eval"))


def add_eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", help="checkpoint to evaluate")
    p.add_argument("--data-dir", help="token shards (runs/NAME/data) for bits per byte and the bigram")
    p.add_argument("--tasks", help="comma-separated zero-/few-shot tasks (empty = none)")
    p.add_argument("--shots", help="comma-separated demonstration counts, e.g. 0,1,4")
    p.add_argument("--finetune-dir", help="directory with <task>/summary.json of finetune runs")


def cmd_serve(args: argparse.Namespace, cfg: Any) -> None:
    import torch

    from picochat.serve.app import serve
    from picochat.serve.labels import read_prompts

    if args.threads:
        torch.set_num_threads(args.threads)
    prompts = read_prompts(args.label_prompts) if args.label_prompts else None
    serve(
        args.ckpt, host=args.host, port=args.port, label_token=args.label_token, db=args.db or None,
        max_batch=args.max_batch, label_prompts=prompts, model_name=args.model_name, device=args.device,
        api_key=os.environ.get("PICOCHAT_API_KEY") or None,
    )  # fmt: skip


def add_serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", required=True, help="checkpoint directory to serve (runs/NAME/ckpt)")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    p.add_argument("--label-token", default=None, help="labeling page token (default: generated, printed)")
    p.add_argument("--db", default="labels.db", help="SQLite file for human rankings ('' disables labeling)")
    p.add_argument("--label-prompts", default=None, help="prompts to label: .txt lines or .jsonl 'prompt's")
    p.add_argument("--max-batch", type=int, default=32, help="most answers decoded together in one batch")
    p.add_argument("--model-name", default=None, help="model id in /v1/models (default picochat-<run>)")
    p.add_argument("--device", default="auto", help="auto (a GPU if there is one), cpu, cuda, cuda:N or mps")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")


def cmd_labels(args: argparse.Namespace, cfg: Any) -> None:
    from picochat.serve.labels import export_jsonl

    n = export_jsonl(args.db, args.out, include_all_bad=args.include_all_bad)
    print(f"labels: wrote {n} rankings from {args.db} to {args.out}")


def add_labels_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["export"], help="export: write the reward-model JSONL")
    p.add_argument("--db", required=True, help="SQLite file written by `picochat serve`")
    p.add_argument("--out", required=True, help="JSONL file to write")
    p.add_argument("--include-all-bad", action="store_true", help="also export rankings flagged all-bad")


def cmd_ppo(args: argparse.Namespace, cfg: Any) -> None:
    from dataclasses import replace

    from picochat.train.ppo import ppo

    given = {"policy": args.policy, "rm": args.rm, "data_dir": args.data_dir}
    cfg = replace(cfg, **{k: v for k, v in given.items() if v is not None})
    out = out_dir(args, cfg, "runs/ppo")
    dist = dist_from_env(os.environ, cfg.run.device)
    _, summary = ppo(cfg, out, dist=dist, resume=args.resume)
    if dist.is_main:
        print(f"ppo: {summary.get('iterations')} iterations; policy in {out / 'ckpt'}")


def add_ppo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--policy", help="SFT checkpoint (initial policy and frozen reference)")
    p.add_argument("--rm", help="reward-model checkpoint")
    p.add_argument("--data-dir", help="pre-training shards (runs/NAME/data) for PPO-ptx and held-out LM loss")


def cmd_winrate(args: argparse.Namespace, cfg: Any) -> None:
    import json

    from picochat.eval.winrate import winrate_report

    if not args.policy or not args.baseline:
        raise ConfigError("winrate needs --policy RL_CKPT and --baseline SFT_CKPT")
    report = winrate_report(
        args.policy, args.baseline, n=args.n, seed=args.seed, temperature=args.temperature,
        max_new_tokens=args.max_new_tokens, run_dir=args.run_dir, device=args.device,
    )  # fmt: skip
    text = json.dumps(report, indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    print(text)


def add_winrate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--policy", help="RL policy checkpoint (e.g. runs/NAME/ppo/ckpt)")
    p.add_argument("--baseline", help="baseline checkpoint (the SFT policy)")
    p.add_argument("--n", type=int, default=200, help="held-out task prompts")
    p.add_argument("--seed", type=int, default=0, help="task and sampling seed")
    p.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (0 = greedy)")
    p.add_argument("--max-new-tokens", type=int, default=24, help="longest answer")
    p.add_argument("--run-dir", help="PPO run dir: adds RM-vs-gold curve, win rate vs KL")
    p.add_argument("--device", default="auto", help="auto (a GPU if there is one), cpu, cuda or cuda:N")
    p.add_argument("--out", help="also write the JSON report here")


def cmd_export_hf(args: argparse.Namespace, cfg: Any) -> None:
    from picochat.hf import export_hf

    out = export_hf(args.ckpt, args.out, dtype=args.dtype, task=args.task)
    print(f"export-hf: wrote {out} (load with transformers' AutoModelForCausalLM.from_pretrained)")


def add_export_hf_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", required=True, help="picochat checkpoint directory")
    p.add_argument("--out", required=True, help="output directory for the transformers model")
    p.add_argument(
        "--dtype", default=None, choices=["float16", "bfloat16"], help="weights dtype (default float32)"
    )
    p.add_argument("--task", default="auto", choices=["auto", "causal-lm", "classifier"],
                   help="auto: a checkpoint with a head exports as GPT2ForSequenceClassification")  # fmt: skip


def cmd_import_hf(args: argparse.Namespace, cfg: Any) -> None:
    from picochat.hf import import_hf

    out = import_hf(args.hf_dir, args.out, allow_pickle=args.allow_pickle)
    print(f"import-hf: wrote picochat checkpoint {out}")


def add_import_hf_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("hf_dir", help="local transformers GPT-2 directory (config.json + model.safetensors)")
    p.add_argument("--out", required=True, help="picochat checkpoint directory to write")
    p.add_argument("--allow-pickle", action="store_true",
                   help="accept pytorch_model.bin (loaded with torch.load(weights_only=True)); off by default")  # fmt: skip


def cmd_report(args: argparse.Namespace, cfg: Any) -> None:
    from picochat.report import build_report

    md_path, html_path = build_report(args.run)
    print(f"report: wrote {md_path} and {html_path}")


def add_report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="pipeline run directory (runs/NAME)")


def cmd_scaling(args: argparse.Namespace, cfg: Any) -> None:
    from picochat.scaling import run_scaling

    out = out_dir(args, cfg, "runs/scaling")
    run_scaling(cfg, out, ratio=args.ratio)
    print(f"scaling: wrote {out / 'scaling.json'}, {out / 'scaling.png'}, {out / 'config.toml'}")


def add_scaling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ratio", type=float, help="target / largest member compute (default 100 CPU, 1000 GPU)")


def build_commands() -> list[Command]:
    from picochat.config import (
        CollectConfig,
        EvalConfig,
        FinetuneConfig,
        PPOConfig,
        PretrainConfig,
        RewardConfig,
        SampleConfig,
        ScalingConfig,
        SFTConfig,
        TokenizerStageConfig,
    )
    from picochat.pipeline import PipelineConfig

    return [
        Command(
            "scaling",
            "predictable scaling: fit a sweep of small models, predict and train a 100x bigger one",
            ScalingConfig,
            cmd_scaling,
            add_scaling_args,
        ),
        Command(
            "pipeline",
            "run the whole recipe on the embedded default and write a report",
            PipelineConfig,
            cmd_pipeline,
            add_pipeline_args,
        ),
        Command(
            "tokenizer",
            "train (or pick) the tokenizer and write token shards",
            TokenizerStageConfig,
            cmd_tokenizer,
        ),
        Command(
            "pretrain",
            "pre-train a GPT on the corpus (causal LM)",
            PretrainConfig,
            cmd_pretrain,
            add_pretrain_args,
        ),
        Command("sample", "generate text from a checkpoint", SampleConfig, cmd_sample, add_sample_args),
        Command(
            "report", "rebuild report.md / report.html of a run directory", None, cmd_report, add_report_args
        ),
        Command(
            "export-hf",
            "export a checkpoint to a transformers directory",
            None,
            cmd_export_hf,
            add_export_hf_args,
        ),
        Command(
            "import-hf", "import a transformers GPT-2 directory", None, cmd_import_hf, add_import_hf_args
        ),
        Command("serve", "web chat, OpenAI API, labeling page (--ckpt)", None, cmd_serve, add_serve_args),
        Command("labels", "export human rankings (labels export)", None, cmd_labels, add_labels_args),
        Command(
            "collect",
            "sample K answers per prompt and rank them with the gold labeler",
            CollectConfig,
            cmd_collect,
            add_collect_args,
        ),
        Command(
            "rm",
            "train the reward model on rankings (collects them when no --data)",
            RewardConfig,
            cmd_rm,
            add_rm_args,
        ),
        Command(
            "sft",
            "supervised fine-tuning on chat demonstrations (--ckpt BASE)",
            SFTConfig,
            cmd_sft,
            add_sft_args,
        ),
        Command(
            "ppo",
            "RLHF with PPO / PPO-ptx (--policy SFT --rm RM [--data-dir DATA])",
            PPOConfig,
            cmd_ppo,
            add_ppo_args,
        ),
        Command(
            "winrate",
            "gold-judged win rate of an RL policy over SFT on held-out prompts",
            None,
            cmd_winrate,
            add_winrate_args,
        ),
        Command(
            "chat", "chat with a checkpoint in the terminal (--ckpt PATH)", None, cmd_chat, add_chat_args
        ),
        Command(
            "finetune",
            "GPT-1 fine-tuning with a task head (--task NAME --ckpt BASE)",
            FinetuneConfig,
            cmd_finetune,
            add_finetune_args,
        ),
        Command(
            "eval",
            "bits per byte vs bigram, zero-/few-shot and fine-tuned accuracy",
            EvalConfig,
            cmd_eval,
            add_eval_args,
        ),
    ]


def config_epilog(cls: type) -> str:
    rows = field_help(cls)
    width = max(len(k) for k, _, _ in rows)
    return "config keys (key=value):\n" + "\n".join(f"  {k:<{width}}  {h} (default {d})" for k, d, h in rows)


class CommandParser(argparse.ArgumentParser):
    """A subcommand's parser; its config-key epilog is built only when help is shown (reading every field
    docstring from source costs about a second, which every command would otherwise pay at start)."""

    config_cls: type | None = None

    def format_help(self) -> str:
        if self.config_cls is not None and self.epilog is None:
            self.epilog = config_epilog(self.config_cls)
        return super().format_help()


def make_parser(commands: list[Command]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="picochat", description="The GPT lineage end to end: pre-train, fine-tune, SFT, RM, PPO, serve."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=CommandParser)
    for c in commands:
        p = sub.add_parser(
            c.name, help=c.help, description=c.help, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        p.config_cls = c.config_cls
        if c.config_cls is not None:
            p.add_argument("--config", help="TOML config file (a run's config.toml reproduces it)")
            p.add_argument("--out", help="output directory")
            p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
            p.add_argument(
                "overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.lr=1e-3"
            )
        if c.add_args:
            c.add_args(p)
        p.set_defaults(command_obj=c)
    return parser


def main(argv: list[str] | None = None) -> int:
    from picochat.allocator import tune_malloc
    from picochat.checkpoint import CheckpointError
    from picochat.config import load_config
    from picochat.train.loop import NonFiniteError, StopRequested

    commands = build_commands()
    args = make_parser(commands).parse_args(argv)
    command: Command = args.command_obj
    try:
        tune_malloc()  # large CPU buffers reused between steps, not page-faulted in again (allocator.py)
        cfg = None
        if command.config_cls is not None:
            base = None
            if command.name == "pipeline":
                from picochat.pipeline import preset_base

                base = preset_base(args.preset)
            cfg = load_config(
                command.config_cls,
                args.config,
                [o for o in args.overrides if _is_own_override(command, o)],
                base,
            )
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
    except ModuleNotFoundError as e:
        extra = {"transformers": "hf", "playwright": "browser"}.get(e.name or "", "dev")
        print(f"picochat: error: {e}; install it with pip install -e '.[{extra}]'", file=sys.stderr)
        return EXIT_USER_ERROR
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
