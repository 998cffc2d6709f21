"""PPO iteration speed: picochat's `ppo` vs TRL's `PPOTrainer` on the same policy, reward model and critic,
interleaved in one run; plus picochat's rollout tokens/s against the engine's raw batched generation.

Same work on both sides (InstructGPT step 3, arXiv 2203.02155; PPO, arXiv 1707.06347):
- Identical weights: a random-init GPT policy (the `tiny` preset, 4L/4H/256d, ctx 256) and a random-init
  reward model (same shape, 1-output head), exported with picochat.hf.to_hf / to_hf_classifier. The
  frozen reference is a copy of the policy; the critic starts from the reward model (InstructGPT §3.5),
  a separate network on both sides.
- The same prompts: task prompts from picochat.data.tasks rendered with the chat template, tokenized
  by a byte-level BPE trained in-process (vocab 8192, the tiny preset's).
- Matched hyperparameters: 32 episodes per iteration, 4 minibatches of 8, 4 PPO epochs, responses
  of 24 tokens sampled at temperature 1 (no top-k/top-p) stopping at <|end|>, fixed KL coefficient
  β = 0.05 with the k1 estimator, γ = 1, λ = 0.95, ε = 0.2, value clip 0.2, whitened advantages, no
  reward whitening, dropout off, one optimizer step per minibatch (no gradient accumulation).
  TRL gets per_device_train_batch_size=32, gradient_accumulation_steps=1, num_mini_batches=4 (its
  local_mini_batch_size is then 8), so it also steps 4 times per epoch.
- Each side runs its real trainer: `picochat.train.ppo.ppo`, timed over the `ppo_iteration` calls its
  loop makes (rollout, score, advantages, update; set-up and checkpoint writing are left out), and
  `trl.experimental.ppo.PPOTrainer.train`, timed from its `on_train_begin` to its last `on_step_end`
  callback (its constructor and final hooks are left out). Models are rebuilt for every run so both
  start from the same weights. Rounds alternate A, B, B, A; medians of time per iteration, as wall
  time and as process CPU time (all threads), which other processes on a shared machine disturb less.

Known differences, kept because they are what each trainer does: TRL takes the rollout log-probs from
the logits that `generate` returned, picochat recomputes them with a batched forward (so its KV-cache
sampling never has to agree bit for bit with the training forward); TRL's forwards compute LM logits
at every position, picochat's only at the answer positions; picochat's critic has its own AdamW
(lr 1e-4) where TRL puts policy and critic in one optimizer with loss pg + 0.1·vf; a response without
<|end|> scores -1 in picochat and score - 1 in TRL; picochat packs each forward's episodes into unpadded
rows (`ppo.pack`, see train/ppo.py) where TRL pads every row to the longest prompt (`--pack off` or
`--pack both` times picochat's padded layout too).

Final line: `ratio: X.XX` = TRL wall seconds per iteration ÷ picochat's (target ≥ 2); the line before
gives the same ratio by CPU time. Each picochat line also gives the CPU seconds per iteration of its
phases (rollout, score, update; advantages are the small rest). Before them, the rollout line:
picochat's rollout phase (`ppo.rollout`: sampling plus packing the batch) in answer tokens/s against
`Engine.generate_ids` on the same prompts, batch and length (target ≥ 80%).

TRL removed its PPOTrainer in 1.13 (huggingface/trl#7020); install 1.12 (`pip install -e ".[bench]"`).

    python benchmarks/ppo_speed.py            # tiny model, 3 rounds of 2 iterations (a few minutes)
    python benchmarks/ppo_speed.py --quick    # micro model, seconds: checks the set-up end to end
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import allocator, choose_dtype, interleaved, machine, median, spread  # noqa: E402
from picochat.checkpoint import save_checkpoint  # noqa: E402
from picochat.config import OptimConfig, PPOConfig, PPOHParams, RunConfig, ValueConfig  # noqa: E402
from picochat.data import tasks as task_suite  # noqa: E402
from picochat.data.corpus import shakespeare_documents  # noqa: E402
from picochat.engine import Engine, SamplingParams  # noqa: E402
from picochat.hf import hf_tokenizer, to_hf, to_hf_classifier  # noqa: E402
from picochat.model import GPT, GPTConfig, with_head  # noqa: E402
from picochat.tokenizer import Tokenizer  # noqa: E402
from picochat.train import ppo as ppo_stage  # noqa: E402

PAD_TOKEN = "<|delim|>"  # TRL masks every pad id; the chat template never uses <|delim|>


@dataclass(frozen=True, slots=True)
class Setup:
    """The settings both trainers get."""

    model: GPTConfig
    vocab: int = 8192  # BPE vocabulary trained in-process
    n_prompts: int = 256
    rollout_batch: int = 32  # episodes per iteration
    minibatch: int = 8  # episodes per optimizer step
    epochs: int = 4
    response_len: int = 24
    beta: float = 0.05  # β, fixed KL coefficient
    temperature: float = 1.0
    lr: float = 2e-5
    critic_lr: float = 1e-4
    seed: int = 0

    @property
    def num_mini_batches(self) -> int:
        return self.rollout_batch // self.minibatch


FULL = Setup(model=GPTConfig.from_preset("tiny", dropout=0.0))
QUICK = Setup(
    model=GPTConfig.from_preset("micro", block_size=128, dropout=0.0), vocab=1024, n_prompts=32,
    rollout_batch=8, minibatch=4, epochs=1, response_len=8,
)  # fmt: skip


@dataclass
class Shared:
    """What both sides start from, built once: tokenizer, prompts, initial weights, the RM checkpoint."""

    setup: Setup
    tok: Tokenizer
    prompts: list[str]  # user messages
    prompt_ids: list[list[int]]  # rendered with the chat template, ending in <|assistant|>
    policy: GPT
    rm: GPT
    rm_path: Path
    dtype: torch.dtype | None
    work: Path


def build_shared(setup: Setup, work: Path, dtype: torch.dtype | None) -> Shared:
    tasks = task_suite.make_tasks(setup.n_prompts, "train", setup.seed, None)
    prompts = [t.prompt for t in tasks]
    texts = shakespeare_documents()[: 4 if setup.vocab <= 1024 else 16] + prompts
    tok = Tokenizer.train(texts, vocab_size=setup.vocab)
    vocab = -(-tok.vocab_size // 64) * 64  # rows rounded up to a multiple of 64, as the pipeline does
    cfg = replace(setup.model, vocab_size=vocab)
    torch.manual_seed(setup.seed)
    policy = GPT(cfg).eval()
    rm = with_head(GPT(cfg), 1).eval()
    rm_path = save_checkpoint(work / "rm", rm, tok, meta={"kind": "reward", "std": 1.0})
    room = cfg.block_size - setup.response_len  # picochat keeps a prompt's last `room` tokens; TRL too
    ids = [tok.render_prompt([{"role": "user", "content": p}])[-room:] for p in prompts]
    return Shared(setup, tok, prompts, ids, policy, rm, rm_path, dtype, work)


# -- picochat ----------------------------------------------------------------------------------------------


def picochat_config(sh: Shared, iterations: int, pack: bool = True) -> PPOConfig:
    s = sh.setup
    hp = PPOHParams(
        iterations=iterations, rollout_batch=s.rollout_batch, epochs=s.epochs, minibatch=s.minibatch,
        max_new_tokens=s.response_len, temperature=s.temperature, beta=s.beta, adaptive_kl=False,
        kl_estimator="k1", gamma=1.0, lam=0.95, clip_eps=0.2, vf_clip=0.2, whiten_advantages=True,
        n_prompts=s.n_prompts, samples_to_print=0, pack=pack,
    )  # fmt: skip
    optim = OptimConfig(lr=s.lr, warmup_steps=0, min_lr_ratio=1.0, weight_decay=0.0, max_steps=1)
    dtype = "bfloat16" if sh.dtype is not None else "float32"
    run = RunConfig(seed=s.seed, device="cpu", dtype=dtype, progress=False, log_every=10**6, save_every=10**6)
    return PPOConfig(rm=str(sh.rm_path), ppo=hp, value=ValueConfig(lr=s.critic_lr), optim=optim, run=run)


@dataclass(frozen=True, slots=True)
class PerIteration:
    wall: float  # seconds per iteration
    cpu: float  # process CPU seconds per iteration (all threads); less disturbed by other processes
    phases: dict[str, float] = field(default_factory=dict)  # CPU seconds per iteration of each phase


PHASES = {"rollout": "rollout", "score": "score_rollout", "update": "ppo_update"}  # name -> ppo.py function


def now() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def per_iteration(start: tuple[float, float], end: tuple[float, float], n: int) -> PerIteration:
    """Clock differences divided by n (iterations, or tokens for a rate)."""
    return PerIteration(wall=(end[0] - start[0]) / n, cpu=(end[1] - start[1]) / n)


def run_picochat(sh: Shared, iterations: int, pack: bool = True) -> PerIteration:
    """Time per iteration of picochat's `ppo`: the calls of `ppo_iteration` (rollout, score, advantages,
    update) that its loop makes; set-up and checkpoint writing are left out as TRL's constructor is.
    The CPU time of each phase is taken around its function (PHASES) the same way."""
    out = Path(tempfile.mkdtemp(dir=sh.work, prefix="picochat-"))
    inner = {name: getattr(ppo_stage, name) for name in ("ppo_iteration", *PHASES.values())}
    spent = {name: [0.0, 0.0] for name in inner}

    def timed(name: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            start = now()
            result = inner[name](*args, **kwargs)
            end = now()
            spent[name][0] += end[0] - start[0]
            spent[name][1] += end[1] - start[1]
            return result

        return call

    for name in inner:  # the stage looks these up in the module at every call
        setattr(ppo_stage, name, timed(name))
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            _, summary = ppo_stage.ppo(
                picochat_config(sh, iterations, pack), out, policy=sh.policy, tok=sh.tok, prompts=sh.prompts
            )
    finally:
        for name, fn in inner.items():
            setattr(ppo_stage, name, fn)
    if summary["iterations"] != iterations:
        raise RuntimeError(f"picochat ran {summary['iterations']} iterations, expected {iterations}")
    wall, cpu = spent["ppo_iteration"]
    phases = {phase: spent[name][1] / iterations for phase, name in PHASES.items()}
    return PerIteration(wall=wall / iterations, cpu=cpu / iterations, phases=phases)


# -- TRL ---------------------------------------------------------------------------------------------------


def trl_trainer(sh: Shared, iterations: int, out: Path) -> Any:
    """A fresh TRL PPOTrainer on copies of the shared weights (policy, reference, critic, reward model)."""
    from datasets import Dataset
    from trl.experimental.ppo import PPOConfig as TRLConfig
    from trl.experimental.ppo import PPOTrainer

    s = sh.setup
    hf_tok = hf_tokenizer(sh.tok, sh.policy.config.block_size)
    hf_tok.pad_token = PAD_TOKEN
    hf_tok.padding_side = "left"
    pad_id = hf_tok.pad_token_id
    args = TRLConfig(
        output_dir=str(out), per_device_train_batch_size=s.rollout_batch, gradient_accumulation_steps=1,
        num_mini_batches=s.num_mini_batches, num_ppo_epochs=s.epochs, total_episodes=iterations * s.rollout_batch,
        response_length=s.response_len, temperature=s.temperature, kl_coef=s.beta, kl_estimator="k1",
        gamma=1.0, lam=0.95, cliprange=0.2, cliprange_value=0.2, vf_coef=0.1, whiten_rewards=False,
        stop_token_id=sh.tok.special_id("<|end|>"), missing_eos_penalty=1.0, learning_rate=s.lr,
        local_rollout_forward_batch_size=s.rollout_batch, num_sample_generations=0, report_to="none",
        save_strategy="no", logging_strategy="no", disable_tqdm=True, use_cpu=True,
        bf16=sh.dtype is not None, seed=s.seed, dataloader_num_workers=0,
    )  # fmt: skip
    data = Dataset.from_dict({"input_ids": sh.prompt_ids})
    policy = to_hf(sh.policy)
    value = to_hf_classifier(with_head(sh.rm, 1), pad_token_id=pad_id)
    return PPOTrainer(
        args=args, processing_class=hf_tok, model=policy, ref_model=copy.deepcopy(policy),
        reward_model=to_hf_classifier(sh.rm, pad_token_id=pad_id), value_model=value,
        train_dataset=data, eval_dataset=data.select(range(min(8, len(data)))),
    )  # fmt: skip


def iteration_clock() -> Any:
    """A TrainerCallback noting the clocks at on_train_begin and at every on_step_end (one PPO iteration)."""
    from transformers import TrainerCallback

    class IterationClock(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[tuple[float, float]] = []

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.times = [now()]

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.times.append(now())

    return IterationClock()


def run_trl(sh: Shared, iterations: int) -> PerIteration:
    """Time per iteration of TRL's PPOTrainer.train (its constructor is not timed)."""
    out = Path(tempfile.mkdtemp(dir=sh.work, prefix="trl-"))
    trainer = trl_trainer(sh, iterations, out)
    clock = iteration_clock()
    trainer.add_callback(clock)
    with contextlib.redirect_stdout(io.StringIO()):
        trainer.train()
    if len(clock.times) != iterations + 1:
        raise RuntimeError(f"TRL ran {len(clock.times) - 1} iterations, expected {iterations}")
    return per_iteration(clock.times[0], clock.times[-1], iterations)


# -- rollout vs raw generation -----------------------------------------------------------------------------


def rollout_runs(sh: Shared) -> dict[str, Any]:
    """Two callables returning answer tokens/s: picochat's rollout phase and the engine on the same batch."""
    cfg = picochat_config(sh, iterations=1)
    models = ppo_stage.build_models(cfg, torch.device("cpu"), sh.policy, sh.tok, None)
    pool = ppo_stage.text_prompt_pool(sh.tok, sh.prompts)
    first = ppo_stage.rollout(models, pool, cfg, 0, sh.dtype)
    prompts = [pool.ids[i] for i in first.prompt_index]
    engine = Engine(models.policy, sh.tok, autocast_dtype=sh.dtype)
    params = SamplingParams(max_new_tokens=sh.setup.response_len, temperature=sh.setup.temperature)

    def ppo_rollout() -> PerIteration:  # seconds per answer token
        start = now()
        ro = ppo_stage.rollout(models, pool, cfg, 0, sh.dtype)  # iteration 0: the same prompts every call
        return per_iteration(start, now(), int(ro.mask.sum()))

    def engine_raw() -> PerIteration:
        start = now()
        out = engine.generate_ids(prompts, params, stop_ids=(), seed=0)
        return per_iteration(start, now(), sum(map(len, out)))

    return {"ppo.rollout": ppo_rollout, "Engine.generate_ids": engine_raw}


# -- main --------------------------------------------------------------------------------------------------


def shown(name: str, t: PerIteration) -> PerIteration:
    phases = ", ".join(f"{k} {v:.2f}" for k, v in t.phases.items())
    print(
        f"  {name:<15} {t.wall:.3f} s/iteration (CPU {t.cpu:.3f} s{'; ' + phases if phases else ''})",
        flush=True,
    )
    return t


def describe(setup: Setup, sh: Shared) -> str:
    c = sh.policy.config
    lens = [len(p) for p in sh.prompt_ids]
    return (
        f"model {c.n_layer}L/{c.n_head}H/{c.n_embd}d ctx {c.block_size} vocab {c.vocab_size} "
        f"({sh.policy.num_params() / 1e6:.1f}M params; policy, reference, critic and RM each); "
        f"prompts {min(lens)}..{max(lens)} tokens (mean {sum(lens) / len(lens):.0f}); "
        f"{setup.rollout_batch} episodes/iteration, minibatch {setup.minibatch}, {setup.epochs} epochs, "
        f"response {setup.response_len} tokens, β {setup.beta}, T {setup.temperature}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians are reported)")
    ap.add_argument("--iterations", type=int, default=2, help="PPO iterations per run")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--quick", action="store_true", help="micro model, small batches: checks the set-up")
    ap.add_argument(
        "--pack", choices=("on", "off", "both"), default="on",
        help="picochat's ppo.pack: packed rows (on), padded rows (off), or both interleaved as two runs",
    )  # fmt: skip
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers 5 deprecations inside TRL
    try:
        import transformers
        import trl
        import trl.experimental.ppo  # noqa: F401
    except ImportError as err:
        raise SystemExit(
            f"ppo_speed needs TRL with its PPOTrainer (1.12 is the last release that has it): {err}; "
            'install it with `pip install -e ".[bench]"`'
        ) from err
    transformers.logging.set_verbosity_error()

    setup = QUICK if args.quick else FULL
    print(f"{machine()}, transformers {transformers.__version__}, trl {trl.__version__}")
    print(allocator())
    choice = choose_dtype(torch.device("cpu"))
    print(choice.describe())
    with tempfile.TemporaryDirectory(prefix="ppo_speed-") as tmp:
        sh = build_shared(setup, Path(tmp), choice.dtype)
        print(describe(setup, sh))
        variants = {"on": {"picochat": True}, "off": {"picochat": False}}.get(
            args.pack, {"picochat": True, "picochat-padded": False}
        )  # name -> ppo.pack
        runs = {
            name: (lambda name=name, pack=pack: shown(name, run_picochat(sh, args.iterations, pack)))
            for name, pack in variants.items()
        }
        runs["trl"] = lambda: shown("trl", run_trl(sh, args.iterations))
        run_picochat(sh, 1), run_trl(sh, 1)  # warm-up: thread pool, allocator, kernel selection
        times = interleaved(runs, args.rounds)
        rollout = interleaved(rollout_runs(sh), args.rounds + 2)
    s_it = {k: median([t.wall for t in v]) for k, v in times.items()}
    cpu_it = {k: median([t.cpu for t in v]) for k, v in times.items()}
    for k, v in times.items():
        phases = {p: median([t.phases[p] for t in v]) for p in v[0].phases}
        print(
            f"{k:<15} {s_it[k]:.3f} s/iteration (runs {spread([t.wall for t in v])} s); "
            f"CPU {cpu_it[k]:.3f} s/iteration (runs {spread([t.cpu for t in v])} s)"
            + "".join(f"; {p} {c:.2f}" for p, c in phases.items())
        )
    if "picochat-padded" in cpu_it:
        padded = cpu_it["trl"] / cpu_it["picochat-padded"]
        print(f"CPU-time ratio against picochat with ppo.pack=false: {padded:.2f}")
    print(f"CPU-time ratio (less disturbed by other processes): {cpu_it['trl'] / cpu_it['picochat']:.2f}")
    tok_s = {k: 1 / median([t.wall for t in v]) for k, v in rollout.items()}
    cpu_tok_s = {k: 1 / median([t.cpu for t in v]) for k, v in rollout.items()}
    share = tok_s["ppo.rollout"] / tok_s["Engine.generate_ids"]
    print(
        f"rollout: ppo.rollout {tok_s['ppo.rollout']:,.0f} tok/s vs Engine.generate_ids "
        f"{tok_s['Engine.generate_ids']:,.0f} tok/s at batch {setup.rollout_batch} × {setup.response_len} "
        f"tokens -> {share:.0%} (target >= 80%; by CPU time "
        f"{cpu_tok_s['ppo.rollout'] / cpu_tok_s['Engine.generate_ids']:.0%})"
    )
    print(json.dumps({"s_per_iteration": s_it, "cpu_s_per_iteration": cpu_it, "rollout_tok_s": tok_s}))
    print(f"ratio: {s_it['trl'] / s_it['picochat']:.2f}")


if __name__ == "__main__":
    main()
