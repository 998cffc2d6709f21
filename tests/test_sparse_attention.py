"""GPT-3 alternating dense / locally banded attention: one layer and the whole model against a naive
explicit-softmax reference, and KV-cached generation equal to full-forward greedy decoding."""

import math

import pytest
import torch

from picochat.engine import Engine, SamplingParams
from picochat.model import GPT, GPTConfig, attention_masks
from picochat.tokenizer import Tokenizer

WINDOW = 5


def naive_attention(attn: torch.nn.Module, x: torch.Tensor, window: int | None) -> torch.Tensor:
    """Explicit softmax(QK^T/sqrt(hs) + mask) V with a causal (window None) or banded mask, then c_proj."""
    B, T, C = x.shape
    nh = attn.n_head
    q, k, v = (t.view(B, T, nh, C // nh).transpose(1, 2) for t in attn.c_attn(x).split(C, dim=2))
    scores = q @ k.transpose(-1, -2) / math.sqrt(C // nh)  # (B, nh, T, T)
    i = torch.arange(T)[:, None]
    j = torch.arange(T)[None, :]
    allowed = (j <= i) if window is None else (j <= i) & (j > i - window)
    scores = scores.masked_fill(~allowed, float("-inf"))
    y = scores.softmax(-1) @ v  # (B, nh, T, hs)
    return attn.c_proj(y.transpose(1, 2).reshape(B, T, C))


def naive_gpt_logits(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    """The whole pre-LN model by hand, banded attention on odd layers."""
    cfg = model.config
    T = idx.shape[1]
    x = model.wte(idx) + model.wpe(torch.arange(T))[None]
    for layer, blk in enumerate(model.h):
        window = cfg.window if cfg.is_sparse_layer(layer) else None
        x = x + naive_attention(blk.attn, blk.ln_1(x), window)
        x = x + blk.mlp(blk.ln_2(x))
    return model.ln_f(x) @ model.wte.weight.T


def sparse_model(vocab: int = 97, n_layer: int = 4) -> GPT:
    torch.manual_seed(0)
    cfg = GPTConfig(
        n_layer=n_layer,
        n_head=2,
        n_embd=32,
        block_size=64,
        vocab_size=vocab,
        attention="alternating",
        window=WINDOW,
    )
    return GPT(cfg).eval()


def test_banded_layer_matches_naive_reference() -> None:
    model = sparse_model()
    x = torch.randn(2, 20, 32)
    dense_mask, band_mask = attention_masks(model.config, 20, x.device)
    assert dense_mask is None and band_mask is not None
    assert band_mask.sum(-1).tolist() == [
        min(i + 1, WINDOW) for i in range(20)
    ]  # each row sees <= window keys
    attn = model.h[1].attn
    with torch.no_grad():
        torch.testing.assert_close(attn(x, band_mask), naive_attention(attn, x, WINDOW), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(attn(x, None), naive_attention(attn, x, None), atol=1e-5, rtol=1e-5)
        # the band really changes the output once T exceeds the window
        assert not torch.allclose(attn(x, band_mask), attn(x, None), atol=1e-4)


def test_alternating_model_matches_manual_reference() -> None:
    model = sparse_model()
    assert [model.config.is_sparse_layer(i) for i in range(4)] == [False, True, False, True]
    idx = torch.randint(0, 97, (2, 24))
    with torch.no_grad():
        logits, _ = model(idx)
        torch.testing.assert_close(logits, naive_gpt_logits(model, idx), atol=1e-4, rtol=1e-4)
        dense = GPT(GPTConfig(**{**model.config.to_dict(), "attention": "dense"})).eval()
        dense.load_state_dict(model.state_dict())
        assert not torch.allclose(dense(idx)[0], logits, atol=1e-3)


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train(["the quick brown fox jumps over the lazy dog " * 20] * 20, vocab_size=300)


def greedy_full_forward(model: GPT, prompt: list[int], n: int) -> list[int]:
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            logits, _ = model(torch.tensor([ids]))
            ids.append(int(logits[0, -1].argmax()))
    return ids[len(prompt) :]


def test_cached_generation_equals_full_forward_with_band(tok: Tokenizer) -> None:
    model = sparse_model(vocab=tok.vocab_size)
    prompts = [tok.encode("the quick brown fox jumps")[:7], tok.encode("lazy dog")[:2]]
    n_new = 20  # generated far past the window of 5
    engine = Engine(model, tok)
    got = engine.generate_ids(
        prompts, SamplingParams(max_new_tokens=n_new, temperature=0.0), stop_ids=[], seed=0
    )
    for prompt, out in zip(prompts, got, strict=True):  # the batch is left-padded: rows of different length
        assert len(prompt) + n_new > WINDOW
        assert out == greedy_full_forward(model, prompt, n_new)


def test_cached_logits_equal_full_forward_logits() -> None:
    """Prefill then one token at a time through the cache gives the full forward's logits at every step."""
    from picochat.model import KVCache

    model = sparse_model()
    idx = torch.randint(0, 97, (1, 18))
    with torch.no_grad():
        full, _ = model(idx)
        cache = KVCache.empty(model.config, 1, 18, idx.device, torch.float32)
        steps = [model(idx[:, :4], cache=cache)[0]]
        steps += [model(idx[:, t : t + 1], cache=cache)[0] for t in range(4, 18)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)
