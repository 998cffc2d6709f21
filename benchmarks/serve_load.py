"""Load benchmark for `picochat serve`: concurrent streaming clients against one-at-a-time requests.

Starts the real app (scheduler + uvicorn) on 127.0.0.1 in this process and drives it with asyncio httpx
clients that stream `/v1/completions` (server-sent events, usage in the last chunk). For each setting it
prints generated tokens per second over the wall time, p50/p99 request latency, p50 time to first token,
and the throughput ratio against the sequential baseline. The issue's target: >= 3x sequential
throughput at 16 clients (dynamic batching, serve/scheduler.py).

    python benchmarks/serve_load.py [--ckpt runs/x/ckpt] [--clients 16,50] [--max-tokens 64]

Without --ckpt it uses runs/tiny/sft/ckpt (the pipeline's SFT model) when present, else a random-init `tiny` preset (4 layers, 256
wide, context 256) with a small BPE trained on the spot: throughput does not depend on the weights.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import torch

from picochat.engine import Engine
from picochat.model import GPT, GPTConfig
from picochat.serve.app import ServeOptions, ServerThread, create_app
from picochat.tokenizer import Tokenizer

PROMPTS = [
    "ROMEO: But soft, what light",
    "The quick brown fox",
    "Once upon a time there was",
    "To be, or not to be",
    "My brother was half my age when",
    "JULIET: O Romeo, Romeo",
    "In the beginning",
    "Friends, Romans, countrymen",
]


@dataclass(frozen=True, slots=True)
class Result:
    latency_s: float
    ttft_s: float
    tokens: int


def build_engine(ckpt: str | None) -> Engine:
    from picochat.checkpoint import load_checkpoint

    path = Path(ckpt) if ckpt else Path("runs/tiny/sft/ckpt")
    if path.is_dir():
        model, tok = load_checkpoint(path)
        print(f"model: {path}")
        return Engine(model, tok)
    if ckpt:
        raise FileNotFoundError(f"checkpoint {ckpt} does not exist")
    tok = Tokenizer.train([" ".join(PROMPTS) * 50 + "abcdefghijklmnopqrstuvwxyz" * 20], vocab_size=1024)
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("tiny", vocab_size=tok.vocab_size)).eval()
    print(f"model: random-init tiny preset (4L/256d, ctx 256), vocab {tok.vocab_size}")
    return Engine(model, tok)


async def one_request(client: httpx.AsyncClient, model: str, prompt: str, max_tokens: int) -> Result:
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    start = time.perf_counter()
    ttft, tokens = None, 0
    async with client.stream("POST", "/v1/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk["choices"] and ttft is None:
                ttft = time.perf_counter() - start
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    end = time.perf_counter()
    return Result(end - start, (ttft if ttft is not None else end - start), tokens)


async def run_clients(
    url: str, model: str, clients: int, per_client: int, max_tokens: int
) -> tuple[list[Result], float]:
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:

        async def worker(c: int) -> list[Result]:
            return [
                await one_request(client, model, PROMPTS[(c + r) % len(PROMPTS)], max_tokens)
                for r in range(per_client)
            ]

        start = time.perf_counter()
        results = await asyncio.gather(*(worker(c) for c in range(clients)))
        wall = time.perf_counter() - start
    return [r for rs in results for r in rs], wall


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def report(name: str, results: list[Result], wall: float, baseline: float | None) -> float:
    tokens = sum(r.tokens for r in results)
    tps = tokens / wall
    lat = [r.latency_s for r in results]
    ratio = f"{tps / baseline:5.2f}x" if baseline else "  1.00x"
    print(
        f"{name:<14} | {len(results):4d} req | {tokens:6d} tok | {wall:7.2f} s | {tps:8.1f} tok/s | "
        f"p50 {statistics.median(lat):6.2f} s | p99 {percentile(lat, 0.99):6.2f} s | "
        f"ttft p50 {statistics.median(r.ttft_s for r in results):5.2f} s | {ratio}"
    )
    return tps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--ckpt", default=None, help="checkpoint to serve (default runs/tiny/sft/ckpt or random tiny)"
    )
    parser.add_argument("--clients", default="16,50", help="comma-separated concurrent client counts")
    parser.add_argument(
        "--requests-per-client", type=int, default=2, help="requests each client sends in turn"
    )
    parser.add_argument("--sequential", type=int, default=16, help="requests in the one-at-a-time baseline")
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens per answer")
    parser.add_argument("--max-batch", type=int, default=64, help="scheduler's batch limit (rows)")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a shared CPU)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    engine = build_engine(args.ckpt)
    options = ServeOptions(model_name="bench", max_batch=args.max_batch)
    print(
        f"torch threads {torch.get_num_threads()}, max_tokens {args.max_tokens}, max_batch {args.max_batch}"
    )
    with ServerThread(create_app(engine, options)) as server:
        asyncio.run(run_clients(server.url, "bench", 2, 1, 8))  # warm-up
        results, wall = asyncio.run(run_clients(server.url, "bench", 1, args.sequential, args.max_tokens))
        baseline = report("sequential", results, wall, None)
        for clients in [int(c) for c in args.clients.split(",")]:
            results, wall = asyncio.run(
                run_clients(server.url, "bench", clients, args.requests_per_client, args.max_tokens)
            )
            report(f"{clients} clients", results, wall, baseline)
        stats = server.server.config.app.state.scheduler.stats
        print(
            f"scheduler: {stats['batches']} batches, {stats['rows']} rows, largest batch {stats['max_rows']} rows"
        )


if __name__ == "__main__":
    main()
