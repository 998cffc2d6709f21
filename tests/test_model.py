from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from picochat.model import (
    GPT,
    IGNORE_INDEX,
    GPTConfig,
    KVCache,
    chunked_lm_nll,
    count_params,
    flops_per_token,
    segment_positions,
    target_positions,
    with_head,
)


@pytest.mark.parametrize(
    ("preset", "expected"),
    [
        ("gpt2", 124_439_808),
        ("gpt2-medium", 354_823_168),
        ("gpt2-large", 774_030_080),
        ("gpt2-xl", 1_557_611_200),
    ],
)
def test_gpt2_parameter_counts_match_published_shapes(preset: str, expected: int) -> None:
    assert count_params(GPTConfig.from_preset(preset)) == expected


def test_gpt1_preset_is_post_ln_and_has_no_final_ln() -> None:
    cfg = GPTConfig.from_preset("gpt1")
    assert cfg.ln_placement == "post" and cfg.block_size == 512
    with torch.device("meta"):
        assert GPT(cfg).ln_f is None


def test_bad_config_raises_naming_the_field() -> None:
    with pytest.raises(ValueError, match="n_embd"):
        GPTConfig(n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="ln_placement"):
        GPTConfig(ln_placement="middle")
    with pytest.raises(ValueError, match="unknown model preset"):
        GPTConfig.from_preset("gpt5")


def test_tied_embeddings_and_residual_init(micro_model: GPT) -> None:
    assert micro_model.lm_head.weight is micro_model.wte.weight
    cfg = GPTConfig.from_preset("tiny")
    torch.manual_seed(0)
    m = GPT(cfg)
    std = m.h[0].attn.c_proj.weight.std().item()
    assert math.isclose(std, 0.02 / math.sqrt(2 * cfg.n_layer), rel_tol=0.05)
    assert math.isclose(m.h[0].attn.c_attn.weight.std().item(), 0.02, rel_tol=0.05)


@pytest.mark.parametrize("ln", ["pre", "post"])
def test_loss_falls_when_overfitting_one_batch(tok, ln: str) -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("micro", vocab_size=tok.vocab_size, ln_placement=ln))
    x = torch.randint(0, tok.vocab_size, (4, 32))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(60):
        _, loss = model(x[:, :-1], x[:, 1:])
        first = first if first is not None else loss.item()
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert first > math.log(tok.vocab_size) - 0.5
    assert loss.item() < 0.3 * first


def test_dropout_acts_only_when_training_with_p_above_zero() -> None:
    torch.manual_seed(0)
    idx = torch.randint(0, 512, (2, 16))
    model = GPT(GPTConfig.from_preset("micro", dropout=0.5)).train()
    assert not torch.equal(model(idx)[0], model(idx)[0])  # two different masks in training
    model.eval()
    assert torch.equal(model(idx)[0], model(idx)[0])
    plain = GPT(GPTConfig.from_preset("micro", dropout=0.0)).train()
    assert torch.equal(plain(idx)[0], plain(idx)[0])


def test_loss_ignores_ignore_index(micro_model: GPT) -> None:
    x = torch.randint(0, 100, (2, 10))
    y = x.clone()
    y[:, :5] = IGNORE_INDEX
    logits, loss = micro_model(x, y)
    ref = F.cross_entropy(logits[:, 5:].reshape(-1, logits.size(-1)), y[:, 5:].reshape(-1))
    assert torch.allclose(loss, ref)


def _grads(model: GPT) -> list[torch.Tensor]:
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad(set_to_none=True)
    return grads


@pytest.mark.parametrize("sft_like", [False, True])
def test_loss_only_forward_equals_the_plain_loss_in_value_and_gradient(
    micro_model: GPT, monkeypatch: pytest.MonkeyPatch, sft_like: bool
) -> None:
    """return_logits=False takes the chunked head + cross-entropy on CPU: same mean loss, same gradients
    (the tied embedding gets both its input and its output share), chunks that do not divide the rows.
    sft_like: no row has a target everywhere, so the last block runs at the target positions only."""
    monkeypatch.setattr("picochat.model.CE_CHUNK_ELEMENTS", micro_model.config.vocab_size * 7)
    torch.manual_seed(0)
    x = torch.randint(0, 100, (3, 20))
    y = torch.randint(0, 100, (3, 20))
    y[0, :8] = IGNORE_INDEX
    if sft_like:
        y[1, 3:11] = y[2, 14:] = IGNORE_INDEX
        assert target_positions(y)[0].shape == (3, 14)  # row 2 has the most targets
    else:
        assert target_positions(y)[0] is None
    logits, ref = micro_model(x, targets=y)
    ref.backward()
    ref_grads = _grads(micro_model)
    none, loss = micro_model(x, targets=y, return_logits=False)
    loss.backward()
    assert none is None and logits is not None
    assert torch.allclose(loss, ref, atol=1e-6)
    for got, want in zip(_grads(micro_model), ref_grads, strict=True):
        assert torch.allclose(got, want, atol=1e-6)
    with torch.no_grad():  # evaluation: the loss only, same value
        assert torch.allclose(micro_model(x, targets=y, return_logits=False)[1], ref, atol=1e-6)


def test_chunked_lm_nll_row_weights_and_bf16_autocast() -> None:
    """Per-row weights (the GPT-1 per-example mean) match the weighted reference; under bf16 autocast the
    value and gradients match autocast's own bf16 head within bf16 rounding."""
    torch.manual_seed(0)
    h = torch.randn(37, 16, requires_grad=True)
    w = torch.randn(50, 16, requires_grad=True)
    y = torch.randint(0, 50, (37,))
    row_w = torch.rand(37)
    (row_w * F.cross_entropy(h @ w.t(), y, reduction="none")).sum().backward()
    ref = [h.grad.clone(), w.grad.clone()]
    h.grad = w.grad = None
    chunked_lm_nll(h, w, y, row_w).backward()
    assert torch.allclose(h.grad, ref[0], atol=1e-5) and torch.allclose(w.grad, ref[1], atol=1e-5)
    h.grad = w.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = F.cross_entropy((h @ w.t()).float(), y)
        chunked = chunked_lm_nll(h, w, y, torch.full((37,), 1 / 37))
    plain.backward()
    ref = [h.grad.clone(), w.grad.clone()]
    h.grad = w.grad = None
    chunked.backward()
    assert abs(float(chunked) - float(plain)) < 1e-3 * float(plain)
    for got, want in zip((h.grad, w.grad), ref, strict=True):
        assert float((got - want).abs().max()) < 0.02 * float(want.abs().max())


def test_loss_only_forward_without_targets_is_a_connected_zero(micro_model: GPT) -> None:
    x = torch.randint(0, 100, (2, 6))
    _, loss = micro_model(x, targets=torch.full_like(x, IGNORE_INDEX), return_logits=False)
    loss.backward()
    assert float(loss.detach()) == 0.0 and micro_model.wte.weight.grad is not None


@pytest.mark.parametrize("attention", ["dense", "alternating"])
@pytest.mark.parametrize("ln", ["pre", "post"])
def test_cached_decoding_equals_full_forward(tok, attention: str, ln: str) -> None:
    torch.manual_seed(1)
    cfg = GPTConfig.from_preset(
        "micro", vocab_size=tok.vocab_size, attention=attention, window=5, ln_placement=ln
    )
    model = GPT(cfg).eval()
    x = torch.randint(0, tok.vocab_size, (3, 20))
    full, _ = model(x)
    cache = KVCache.empty(cfg, 3, 20, x.device, torch.float32)
    pieces = [model(x[:, :7], cache=cache)[0], model(x[:, 7:11], cache=cache)[0]]  # prompt, then a chunk
    for t in range(11, 20):
        pieces.append(model(x[:, t : t + 1], cache=cache)[0])
    assert torch.allclose(torch.cat(pieces, 1), full, atol=1e-5)


def test_cache_notes_padding_once_and_decodes_the_same_either_way(micro_model: GPT) -> None:
    """A decode step skips the attention mask only when no slot is padding; a pad_mask without padding
    (prompts of one length) counts as none. Both give the full forward's logits."""
    cfg = micro_model.config
    x = torch.randint(0, 100, (2, 10))
    full, _ = micro_model(x)
    for pad_mask, padded in ((torch.ones(2, 6, dtype=torch.bool), False), (None, False)):
        cache = KVCache.empty(cfg, 2, 10, x.device, torch.float32)
        pieces = [micro_model(x[:, :6], pad_mask=pad_mask, cache=cache)[0]]
        pieces += [micro_model(x[:, t : t + 1], cache=cache)[0] for t in range(6, 10)]
        assert cache.padded is padded
        torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-5, rtol=0)
    # row 1 left-padded by 3: its real tokens decode as if alone
    padded_x = torch.cat([torch.zeros(1, 3, dtype=torch.long), x[1:, :4]], 1)
    mask = torch.arange(7)[None] >= 3
    cache = KVCache.empty(cfg, 1, 10, x.device, torch.float32)
    micro_model(padded_x, pad_mask=mask, cache=cache)
    step = micro_model(x[1:, 4:5], cache=cache)[0]
    assert cache.padded and cache.select_rows(torch.tensor([0])).padded
    torch.testing.assert_close(step[0, -1], full[1, 4], atol=1e-5, rtol=0)


def test_left_padding_does_not_change_real_token_outputs(micro_model: GPT) -> None:
    x = torch.randint(0, 100, (1, 12))
    ref, _ = micro_model(x)
    padded = torch.cat([torch.zeros(1, 5, dtype=torch.long), x], 1)
    mask = torch.cat([torch.zeros(1, 5, dtype=torch.bool), torch.ones(1, 12, dtype=torch.bool)], 1)
    out, _ = micro_model(padded, pad_mask=mask)
    assert torch.allclose(out[:, 5:], ref, atol=1e-5)


@pytest.mark.parametrize("attention", ["dense", "alternating"])
@pytest.mark.parametrize("ln", ["pre", "post"])
def test_packed_rows_equal_each_sequence_alone(attention: str, ln: str) -> None:
    """Row 0 holds 3 sequences (lengths 5, 9, 7) then 3 pad slots, row 1 one sequence then padding: every
    sequence's hidden states equal its own forward (block-diagonal causal mask, positions from 0)."""
    torch.manual_seed(2)
    cfg = GPTConfig(
        n_layer=4, n_head=2, n_embd=32, block_size=32, vocab_size=50, attention=attention, window=4,
        ln_placement=ln,
    )  # fmt: skip
    model = GPT(cfg).eval()
    seqs = [torch.randint(0, 50, (n,)) for n in (5, 9, 7, 11)]
    idx = torch.zeros(2, 24, dtype=torch.long)
    segments = torch.zeros(2, 24, dtype=torch.long)
    places = [(0, 0), (0, 5), (0, 14), (1, 0)]  # (row, offset) of each sequence
    for k, (seq, (row, at)) in enumerate(zip(seqs, places, strict=True)):
        idx[row, at : at + len(seq)] = seq
        segments[row, at : at + len(seq)] = k + 1 if row == 0 else 1
    with torch.no_grad():
        packed = model.hidden(idx, segments=segments)
        assert torch.isfinite(packed).all()  # the pad slots too
        for seq, (row, at) in zip(seqs, places, strict=True):
            alone = model.hidden(seq[None])[0]
            torch.testing.assert_close(packed[row, at : at + len(seq)], alone, atol=1e-5, rtol=0)
        logits, _ = model(idx, segments=segments)
        torch.testing.assert_close(logits[0, 5:14], model(seqs[1][None])[0][0], atol=1e-5, rtol=0)


def test_segment_positions_restart_at_every_segment() -> None:
    segments = torch.tensor([[1, 1, 1, 2, 2, 3, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1]])
    assert segment_positions(segments).tolist() == [[0, 1, 2, 0, 1, 0, 0, 1], list(range(8))]


def test_segments_refuse_a_cache_or_a_pad_mask(micro_model: GPT) -> None:
    x = torch.randint(0, 100, (1, 6))
    seg = torch.ones(1, 6, dtype=torch.long)
    cache = KVCache.empty(micro_model.config, 1, 8, x.device, torch.float32)
    with pytest.raises(ValueError, match="KV cache"):
        micro_model.hidden(x, segments=seg, cache=cache)
    with pytest.raises(ValueError, match="pad_mask"):
        micro_model.hidden(x, segments=seg, pad_mask=seg.bool())
    with pytest.raises(ValueError, match="shape"):
        micro_model.hidden(x, segments=seg[:, :5])


def gathered(states: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    return states.gather(1, keep[..., None].expand(-1, -1, states.shape[-1]))


@pytest.mark.parametrize("n_layer", [2, 3])  # the last block banded (2) or dense (3) under "alternating"
@pytest.mark.parametrize("attention", ["dense", "alternating"])
@pytest.mark.parametrize("ln", ["pre", "post"])
def test_keep_equals_the_kept_positions_of_a_full_forward(n_layer: int, attention: str, ln: str) -> None:
    """hidden(keep=K) runs the last block at K only; its states and every parameter's gradient equal the
    full forward's read at K: causal, left-padded, packed rows, and on a KV cache (prefill, a later chunk,
    one decode step)."""
    torch.manual_seed(3)
    cfg = GPTConfig(
        n_layer=n_layer, n_head=2, n_embd=32, block_size=32, vocab_size=50, attention=attention, window=4,
        ln_placement=ln,
    )  # fmt: skip
    model = GPT(cfg).double()
    idx = torch.randint(0, 50, (3, 12))
    keep = torch.tensor([[0, 5, 11, 5], [3, 3, 4, 10], [11, 7, 8, 9]])  # repeats allowed
    pad_mask = torch.ones(3, 12, dtype=torch.bool)
    pad_mask[0, :3] = pad_mask[2, :5] = False  # row 0 keeps padding slot 0: its state is never compared
    segments = torch.tensor([[1] * 5 + [2] * 7, [1] * 12, [1] * 3 + [2] * 3 + [3] * 4 + [0] * 2])
    for inputs in ({}, {"pad_mask": pad_mask}, {"segments": segments}):
        full = gathered(model.hidden(idx, **inputs), keep)
        kept = model.hidden(idx, keep=keep, **inputs)
        real = torch.ones_like(keep, dtype=torch.bool)
        real[0, 0] = "pad_mask" not in inputs
        torch.testing.assert_close(kept[real], full[real], atol=1e-12, rtol=0)
        weights = torch.randn_like(full) * real[..., None]
        grads = [torch.autograd.grad((out * weights).sum(), list(model.parameters())) for out in (full, kept)]
        for g_full, g_kept in zip(*grads, strict=True):
            torch.testing.assert_close(g_kept, g_full, atol=1e-12, rtol=0)
    chunks = ((slice(0, 7), [[6], [6], [6]]), (slice(7, 11), [[3], [0], [2]]), (slice(11, 12), [[0]] * 3))
    with torch.no_grad():
        for pads in (pad_mask, torch.ones_like(pad_mask)):  # padded cache (masks), unpadded (causal, None)
            caches = [KVCache.empty(cfg, 3, 16, idx.device, torch.float64) for _ in range(2)]
            for chunk, rows_keep in chunks:
                at = torch.tensor(rows_keep)
                full = gathered(model.hidden(idx[:, chunk], pad_mask=pads[:, chunk], cache=caches[0]), at)
                kept = model.hidden(idx[:, chunk], pad_mask=pads[:, chunk], cache=caches[1], keep=at)
                torch.testing.assert_close(kept, full, atol=1e-12, rtol=0)
            torch.testing.assert_close(caches[1].k, caches[0].k, atol=0, rtol=0)  # every position cached
        lengths = torch.tensor([12, 7, 9])
        torch.testing.assert_close(
            model.final_states(idx, lengths),
            model.hidden(idx)[torch.arange(3), lengths - 1],
            atol=1e-12,
            rtol=0,
        )


def test_keep_must_be_a_long_matrix_per_row(micro_model: GPT) -> None:
    x = torch.randint(0, 100, (2, 6))
    for bad in (torch.tensor([1, 2]), torch.ones(3, 1, dtype=torch.long), torch.ones(2, 1)):
        with pytest.raises(ValueError, match="keep must be"):
            micro_model.hidden(x, keep=bad)


def test_sequence_longer_than_block_size_raises(micro_model: GPT) -> None:
    x = torch.zeros(1, micro_model.config.block_size + 1, dtype=torch.long)
    with pytest.raises(ValueError, match="exceeds"):
        micro_model(x)


def test_with_head_copies_trunk_and_adds_head(micro_model: GPT) -> None:
    rm = with_head(micro_model, 1)
    x = torch.randint(0, 100, (2, 8))
    assert torch.allclose(rm.hidden(x), micro_model.hidden(x))
    assert rm.head_outputs(rm.hidden(x)).shape == (2, 8, 1)
    assert micro_model.head is None  # original untouched
    with pytest.raises(ValueError, match="no head"):
        micro_model.head_outputs(micro_model.hidden(x))


def test_flops_per_token_hand_count() -> None:
    cfg = GPTConfig(n_layer=2, n_head=2, n_embd=8, block_size=4, vocab_size=10)
    # per block: qkv 8*24 + proj 8*8 + fc 8*32 + proj 32*8 = 768 = 12*C^2; LM head 10*8
    assert flops_per_token(cfg) == 6 * (2 * 768 + 80) + 12 * 2 * 8 * 4
