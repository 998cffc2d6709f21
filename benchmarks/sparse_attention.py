"""Cost of GPT-3's locally banded attention (a boolean band mask through SDPA) against dense causal SDPA
(`is_causal=True`, the fused kernel), for one attention call and for a whole forward pass.

    python benchmarks/sparse_attention.py [--device cpu|cuda] [--lengths 256,1024] [--repeats 5]

Prints time per call and the ratio banded / dense. Memory: on CUDA the peak allocated bytes are measured;
on CPU the extra memory is reported analytically (the (T, T) bool mask plus, for the masked kernel, the
(B, nh, T, T) float score matrix the fused causal path never materialises). The band saves no FLOPs here:
SDPA still computes every score and masks afterwards; only a block-sparse kernel would save compute.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from picochat.model import GPT, GPTConfig, attention_masks


def timed(fn, repeats: int, device: torch.device) -> float:
    """Median seconds of `fn()` over `repeats` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def peak_bytes(fn, device: torch.device) -> int | None:
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated(device) - base


def bench_sdpa(T: int, window: int, B: int, nh: int, hs: int, device: torch.device, repeats: int) -> dict:
    q, k, v = (torch.randn(B, nh, T, hs, device=device) for _ in range(3))
    i = torch.arange(T, device=device)[:, None]
    j = torch.arange(T, device=device)[None, :]
    band = (j <= i) & (j > i - window)  # (T, T) bool

    def dense() -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    def banded() -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=band)

    with torch.no_grad():
        row = {"what": "sdpa", "T": T, "dense_ms": 1e3 * timed(dense, repeats, device)}
        row["banded_ms"] = 1e3 * timed(banded, repeats, device)
        row["dense_peak_MB"], row["banded_peak_MB"] = (
            (b / 2**20 if b is not None else None)
            for b in (peak_bytes(dense, device), peak_bytes(banded, device))
        )
    row["mask_MB"] = T * T / 2**20
    row["scores_MB_if_materialised"] = B * nh * T * T * 4 / 2**20
    return row


def bench_model(T: int, window: int, device: torch.device, repeats: int) -> dict:
    cfg = GPTConfig.from_preset("tiny", block_size=T, window=window)
    dense = GPT(cfg).to(device).eval()
    sparse = GPT(GPTConfig(**{**cfg.to_dict(), "attention": "alternating"})).to(device).eval()
    sparse.load_state_dict(dense.state_dict())
    idx = torch.randint(0, cfg.vocab_size, (4, T), device=device)
    assert attention_masks(sparse.config, T, device)[1] is not None
    with torch.no_grad():
        row = {"what": "tiny forward", "T": T, "dense_ms": 1e3 * timed(lambda: dense(idx), repeats, device)}
        row["banded_ms"] = 1e3 * timed(lambda: sparse(idx), repeats, device)
        row["dense_peak_MB"], row["banded_peak_MB"] = (
            (b / 2**20 if b is not None else None)
            for b in (peak_bytes(lambda: dense(idx), device), peak_bytes(lambda: sparse(idx), device))
        )
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--lengths", default="256,1024")
    p.add_argument("--window", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    for T in (int(t) for t in args.lengths.split(",")):
        for row in (
            bench_sdpa(T, args.window, 4, 4, 64, device, args.repeats),
            bench_model(T, args.window, device, args.repeats),
        ):
            ratio = row["banded_ms"] / row["dense_ms"]
            mem = ""
            if row.get("dense_peak_MB") is not None:
                mem = f" | peak MB dense {row['dense_peak_MB']:.1f} banded {row['banded_peak_MB']:.1f}"
            elif "mask_MB" in row:
                mem = f" | mask {row['mask_MB']:.2f} MB, scores if materialised {row['scores_MB_if_materialised']:.1f} MB"
            print(
                f"{row['what']:<12} T={T:<5} dense {row['dense_ms']:8.2f} ms | banded {row['banded_ms']:8.2f} ms"
                f" | banded/dense {ratio:5.2f}x{mem}"
            )


if __name__ == "__main__":
    main()
