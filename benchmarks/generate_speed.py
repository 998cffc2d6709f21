"""Generation throughput: picochat `Engine` vs Hugging Face transformers `generate`, same weights, interleaved.

The model is a random-init 6L/6H/384d, ctx 256, vocab 8192 GPT, converted with picochat.hf.to_hf so both
sides hold identical weights. Each case generates exactly 128 new tokens per row after a 32-token prompt
(no stop token on either side: picochat gets `stop_ids=()`, transformers `eos_token_id=None`), with a
KV cache on both: greedy and sampling (temperature 1, top-k 50), batch 1 and batch 8. picochat runs
`Engine.generate_ids` (what `Engine.generate` calls, minus decoding to text); transformers runs
`GPT2LMHeadModel.generate` with SDPA attention. Rounds alternate A, B; medians are reported.
Final line: `ratio: X.XX`, the smallest per-case ratio picochat tok/s ÷ transformers tok/s.

    python benchmarks/generate_speed.py     # ~1-2 min on 2 CPU cores
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import allocator, interleaved, machine, median, spread, sync  # noqa: E402
from picochat.engine import Engine, SamplingParams  # noqa: E402
from picochat.hf import to_hf  # noqa: E402
from picochat.model import GPT, GPTConfig  # noqa: E402
from picochat.tokenizer import Tokenizer  # noqa: E402

MODEL = GPTConfig(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=8192, dropout=0.0)
PROMPT_LEN = 32
NEW_TOKENS = 128
TOP_K = 50


def small_tokenizer() -> Tokenizer:
    """A byte-level BPE trained in-process (the engine needs one for its special ids; prompts are ids)."""
    text = "the quick brown fox jumps over the lazy dog; to be or not to be, that is the question.\n" * 50
    return Tokenizer.train([text], vocab_size=300)


def run_picochat(engine: Engine, prompts: list[list[int]], sample: bool) -> float:
    params = SamplingParams(
        max_new_tokens=NEW_TOKENS, temperature=1.0 if sample else 0.0, top_k=TOP_K if sample else None
    )
    t = time.perf_counter()
    out = engine.generate_ids(prompts, params, stop_ids=(), seed=0)
    sync(engine.device)
    dt = time.perf_counter() - t
    assert all(len(o) == NEW_TOKENS for o in out)
    return dt


@torch.inference_mode()
def run_transformers(hf: torch.nn.Module, prompts: list[list[int]], sample: bool) -> float:
    device = next(hf.parameters()).device
    ids = torch.tensor(prompts, device=device)  # equal lengths: no padding needed
    t = time.perf_counter()
    torch.manual_seed(0)
    out = hf.generate(
        input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS, do_sample=sample,
        top_k=TOP_K if sample else None, temperature=1.0 if sample else None, top_p=None, use_cache=True,
        eos_token_id=None, pad_token_id=0,
    )  # fmt: skip
    sync(device)
    dt = time.perf_counter() - t
    assert out.shape[1] == PROMPT_LEN + NEW_TOKENS
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--rounds", type=int, default=5, help="interleaved rounds per case (medians are reported)"
    )
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    print(machine())
    print(allocator())
    torch.manual_seed(0)
    model = GPT(MODEL).eval()
    hf = to_hf(model)
    hf.set_attn_implementation("sdpa")
    model.to(device)
    hf.to(device)
    engine = Engine(model, small_tokenizer())
    gen = torch.Generator().manual_seed(1)
    ratios = []
    for batch in (1, 8):
        prompts = torch.randint(0, 300, (batch, PROMPT_LEN), generator=gen).tolist()
        for sample in (False, True):
            runs = {
                "picochat": lambda p=prompts, s=sample: run_picochat(engine, p, s),
                "transformers": lambda p=prompts, s=sample: run_transformers(hf, p, s),
            }
            if not ratios:  # warm-up once: thread pool, allocator, kernel selection
                for fn in runs.values():
                    fn()
            secs = interleaved(runs, args.rounds)
            tok_s = {k: batch * NEW_TOKENS / median(v) for k, v in secs.items()}
            ratio = tok_s["picochat"] / tok_s["transformers"]
            ratios.append(ratio)
            name = f"batch {batch} {'sampling (T=1, top-k 50)' if sample else 'greedy'}"
            detail = ", ".join(f"{k} {tok_s[k]:,.0f} tok/s (s {spread(v)})" for k, v in secs.items())
            print(f"{name:<34} {detail} -> ratio {ratio:.2f}")
    print(f"ratio: {min(ratios):.2f}")


if __name__ == "__main__":
    main()
