"""Training throughput: picochat vs Hugging Face transformers GPT2LMHeadModel on the same model, batch and
optimizer, interleaved in one run. Prints tok/s of each, MFU against the measured matmul peak, and a
final line `ratio: X.XX` (picochat tok/s ÷ transformers tok/s, medians over rounds).

Same work on both sides: identical weights (picochat.hf.to_hf), dropout 0, the same batch of random
tokens, next-token cross-entropy over every position, AdamW from picochat's `build_optimizer` (fused,
decay on matrices) stepped by the loop's `optimizer_step` (clipping, LR schedule). picochat runs the
stage's own loss (`pretrain.lm_loss`); transformers runs its standard `labels=` loss with its SDPA
attention. The dtype (fp32 or bf16 autocast) is the faster one by measured matmul peak, for both.
MFU = tok/s × flops_per_token (PaLM appendix B: 6·N + 12·L·C·T) ÷ peak FLOP/s of that dtype.

    python benchmarks/train_speed.py            # 6L/6H/384d, ctx 256, vocab 8192, batch 4 (~1 min quiet)
    python benchmarks/train_speed.py --gpt2     # also gpt2 124M, ctx 1024, batch 1 (a few more minutes)
    python benchmarks/train_speed.py --gpt2 --gpt2-batch 16 --compile   # on a GPU: both sides torch.compile'd
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DtypeChoice, allocator, autocast, choose_dtype, interleaved, machine, median, spread, sync  # noqa: E402
from picochat.config import OptimConfig  # noqa: E402
from picochat.hf import to_hf  # noqa: E402
from picochat.model import GPT, GPTConfig, flops_per_token  # noqa: E402
from picochat.train.loop import build_optimizer, optimizer_step  # noqa: E402
from picochat.train.pretrain import lm_loss  # noqa: E402

TINY = GPTConfig(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=8192, dropout=0.0)


@dataclass
class Runner:
    """One framework's model + optimizer, stepping on one fixed batch."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    x: torch.Tensor  # (B, T+1)
    picochat: bool
    dtype: torch.dtype | None
    cfg: OptimConfig
    step: int = 0

    def train_step(self) -> None:
        inp = self.x[:, :-1]
        with autocast(inp.device, self.dtype):
            if self.picochat:
                out = lm_loss(self.model, (inp, self.x[:, 1:]))
                loss, scale = out.loss_sum, 1.0 / out.n_items
            else:  # transformers shifts the labels itself (loss over T-1 positions of the same T inputs)
                loss, scale = self.model(input_ids=inp, labels=inp).loss, 1.0
        loss.backward()
        optimizer_step(self.model, self.optimizer, self.step, self.cfg, scale)
        self.step += 1

    def timed(self, steps: int) -> float:
        sync(self.x.device)
        t = time.perf_counter()
        for _ in range(steps):
            self.train_step()
        sync(self.x.device)
        return (time.perf_counter() - t) / steps


def build_runners(
    cfg: GPTConfig, batch: int, device: torch.device, dtype: torch.dtype | None, compile_models: bool
) -> dict[str, Runner]:
    torch.manual_seed(0)
    ours = GPT(cfg)
    theirs = to_hf(ours).train()
    theirs.set_attn_implementation("sdpa")
    ours.to(device).train()
    theirs.to(device)
    x = torch.randint(
        0, cfg.vocab_size, (batch, cfg.block_size + 1), generator=torch.Generator().manual_seed(1)
    ).to(device)
    optim = OptimConfig(warmup_steps=0, max_steps=10**6)
    opt_ours, opt_theirs = build_optimizer(ours, optim, device), build_optimizer(theirs, optim, device)
    if compile_models:
        ours, theirs = torch.compile(ours), torch.compile(theirs)
    return {
        "picochat": Runner(ours, opt_ours, x, True, dtype, optim),
        "transformers": Runner(theirs, opt_theirs, x, False, dtype, optim),
    }


def bench(
    name: str,
    cfg: GPTConfig,
    batch: int,
    rounds: int,
    steps: int,
    choice: DtypeChoice,
    device: torch.device,
    compile_models: bool = False,
) -> float:
    runners = build_runners(cfg, batch, device, choice.dtype, compile_models)
    for r in runners.values():  # warm-up: allocator, kernel selection, optimizer state (and compilation)
        r.timed(2 if compile_models else 1)
    secs = interleaved({k: (lambda r=r: r.timed(steps)) for k, r in runners.items()}, rounds)
    tokens = batch * cfg.block_size
    flops = flops_per_token(cfg)
    compiled = ", torch.compile" if compile_models else ""
    print(f"{name}: batch {batch} x ctx {cfg.block_size}, {runners['picochat'].model.num_params() / 1e6:.1f}M params, "
          f"{flops / 1e6:.0f} MFLOP/token, {rounds} interleaved rounds x {steps} steps{compiled}")  # fmt: skip
    tok_s = {k: tokens / median(v) for k, v in secs.items()}
    for k, v in secs.items():
        mfu = tok_s[k] * flops / choice.peak
        print(
            f"  {k:<13} {tok_s[k]:>9,.0f} tok/s  MFU {mfu:6.1%}  (s/step median {median(v):.3f}, range {spread(v)})"
        )
    ratio = tok_s["picochat"] / tok_s["transformers"]
    print(f"  {name} ratio picochat/transformers: {ratio:.2f}")
    return ratio


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=4, help="sequences per step for the tiny model")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (medians are reported)")
    ap.add_argument("--steps", type=int, default=1, help="optimizer steps per timed round")
    ap.add_argument("--gpt2", action="store_true", help="also gpt2 124M at ctx 1024")
    ap.add_argument("--gpt2-batch", type=int, default=1)
    ap.add_argument("--no-tiny", action="store_true", help="skip the tiny model (with --gpt2)")
    ap.add_argument(
        "--compile", action="store_true", help="torch.compile both models (minutes of compiling on CPU)"
    )
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    print(machine())
    print(allocator())
    choice = choose_dtype(device)
    print(choice.describe())
    if args.no_tiny and not args.gpt2:
        ap.error("--no-tiny leaves nothing to measure without --gpt2")
    ratios = []
    if not args.no_tiny:
        ratios.append(
            bench("tiny 6L/384d", TINY, args.batch, args.rounds, args.steps, choice, device, args.compile)
        )
    if args.gpt2:
        gpt2 = GPTConfig.from_preset("gpt2")
        gpt2_rounds = max(3, args.rounds // 2)
        ratios.append(bench("gpt2 124M", gpt2, args.gpt2_batch, gpt2_rounds, 1, choice, device, args.compile))
    print(f"ratio: {min(ratios):.2f}")


if __name__ == "__main__":
    main()
