from __future__ import annotations

import pytest
import torch

from picochat.engine import (
    Engine,
    PackedLinears,
    SamplingParams,
    TextStreamer,
    packed_linear_supported,
    sample_next,
)
from picochat.model import GPT, GPTConfig


def greedy_reference(model: GPT, prompt: list[int], n: int) -> list[int]:
    ids = list(prompt)
    for _ in range(n):
        logits, _ = model(torch.tensor([ids]))
        ids.append(int(logits[0, -1].argmax()))
    return ids[len(prompt) :]


@pytest.mark.parametrize("attention", ["dense", "alternating"])
def test_greedy_with_cache_equals_without_and_batched_equals_single(tok, attention: str) -> None:
    torch.manual_seed(0)
    model = GPT(
        GPTConfig.from_preset("micro", vocab_size=tok.vocab_size, attention=attention, window=6)
    ).eval()
    engine = Engine(model, tok, packed_decode=False)  # the same kernels as the reference forward
    prompts = [tok.encode("ROMEO: But soft"), tok.encode("O"), tok.encode("The quick brown fox jumps over")]
    params = SamplingParams(max_new_tokens=16, temperature=0)
    batched = engine.generate_ids(prompts, params, stop_ids=[])
    single = [engine.generate_ids([p], params, stop_ids=[])[0] for p in prompts]
    reference = [greedy_reference(model, p, 16) for p in prompts]
    assert batched == single == reference


def test_same_seed_same_samples_and_num_samples(tok, micro_model) -> None:
    engine = Engine(micro_model, tok)
    a = engine.generate(["ROMEO:"], max_new_tokens=12, seed=3, num_samples=3)
    b = engine.generate(["ROMEO:"], max_new_tokens=12, seed=3, num_samples=3)
    c = engine.generate(["ROMEO:"], max_new_tokens=12, seed=4, num_samples=3)
    assert a == b and len(a) == 3 and a != c


def test_stop_token_ends_row_and_is_reported(tok, micro_model) -> None:
    engine = Engine(micro_model, tok)
    params = SamplingParams(max_new_tokens=20, temperature=0)
    free = engine.generate_ids([tok.encode("hi")], params, stop_ids=[])[0]
    stop = free[3]
    stopped = engine.generate_ids([tok.encode("hi")], params, stop_ids=[stop])[0]
    assert stopped == free[: free.index(stop) + 1]


def test_max_new_tokens_respected_and_prompt_longer_than_context_is_truncated(tok, micro_model) -> None:
    engine = Engine(micro_model, tok)
    long_prompt = tok.encode("ROMEO: But soft, what light " * 30)
    assert len(long_prompt) > micro_model.config.block_size
    with pytest.warns(UserWarning, match="keeping its last"):
        out = engine.generate_ids(
            [long_prompt], SamplingParams(max_new_tokens=10, temperature=0), stop_ids=[]
        )
    assert len(out[0]) == 10


def test_stop_string_cuts_text(tok, micro_model) -> None:
    engine = Engine(micro_model, tok)
    full = engine.generate(["ROMEO:"], max_new_tokens=30, temperature=0)[0]
    if len(full) > 4:
        stop = full[2:4]
        cut = engine.generate(["ROMEO:"], max_new_tokens=30, temperature=0, stop=stop)[0]
        assert cut == full[: full.find(stop)]


def test_stream_concatenates_to_generate(tok, micro_model) -> None:
    engine = Engine(micro_model, tok)
    text = engine.generate(["JULIET:"], max_new_tokens=20, seed=7)[0]
    assert "".join(engine.stream("JULIET:", max_new_tokens=20, seed=7)) == text


def test_score_matches_manual_log_softmax(tok, micro_model) -> None:
    engine = Engine(micro_model, tok)
    p, c = tok.encode("ROMEO:"), tok.encode(" But soft")
    total, per_token = engine.score(p, c)
    logits, _ = micro_model(torch.tensor([p + c]))
    logp = torch.log_softmax(logits[0], -1)
    manual = [logp[len(p) - 1 + i, t].item() for i, t in enumerate(c)]
    assert per_token == pytest.approx(manual, abs=1e-5)
    assert total == pytest.approx(sum(manual), abs=1e-4)


def test_score_ids_batched_equals_one_pair_at_a_time(tok, micro_model) -> None:
    """Pairs of different prompt and continuation lengths in one batch (right padding, the shorter
    continuations' unused prediction slots) score as each pair alone."""
    engine = Engine(micro_model, tok)
    pairs = [
        (tok.encode("ROMEO:"), tok.encode(" But soft, what light")),
        (tok.encode("JULIET: O Romeo, Romeo! wherefore art thou"), tok.encode(" Romeo?")),
        ([], tok.encode("To be")),
    ]
    batched = engine.score_ids(pairs)
    assert [len(x) for x in batched] == [len(c) for _, c in pairs]
    for got, pair in zip(batched, pairs, strict=True):
        assert got == pytest.approx(engine.score_ids([pair])[0], abs=1e-5)


def test_top_k_and_top_p_restrict_support() -> None:
    logits = torch.tensor([[5.0, 4.0, 0.0, -1.0]])
    g = torch.Generator().manual_seed(0)
    draws = {int(sample_next(logits, SamplingParams(top_k=2), g)) for _ in range(200)}
    assert draws <= {0, 1}
    draws = {int(sample_next(logits, SamplingParams(top_p=0.5), g)) for _ in range(200)}
    assert draws == {0}


def test_bad_sampling_params_raise() -> None:
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=1.5)
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=-1)


def test_text_streamer_holds_back_stop_string_prefix(tok) -> None:
    ids = tok.encode("hello END world")
    streamer = TextStreamer(tok, stop_strings=["END"])
    pieces = [streamer.push(i) for i in ids]
    assert "".join(pieces) == "hello "
    assert streamer.finished


needs_onednn = pytest.mark.skipif(
    not packed_linear_supported(), reason="this torch build has no oneDNN linear ops"
)


@needs_onednn
def test_packed_linears_match_f_linear_and_follow_weight_updates(tok) -> None:
    """Packed forward == F.linear forward; after a fused AdamW step (which updates the weights in place
    without bumping their version counters) refresh() repacks, so the packed forward follows."""
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("micro", vocab_size=tok.vocab_size)).eval()
    ids = torch.randint(0, tok.vocab_size, (3, 5))
    packed = PackedLinears(model)

    def both() -> tuple[torch.Tensor, torch.Tensor]:
        packed.refresh()
        with torch.inference_mode():
            plain = model(ids)[0]
            with packed.active():
                return plain, model(ids)[0]

    plain, fast = both()
    torch.testing.assert_close(fast, plain, atol=1e-5, rtol=1e-5)
    assert all("forward" not in m.__dict__ for m in packed.linears)  # the modules' own forward again
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, fused=True)
    model(ids, ids)[1].backward()
    optimizer.step()
    after, fast = both()
    assert not torch.allclose(after, plain)
    torch.testing.assert_close(fast, after, atol=1e-5, rtol=1e-5)


@needs_onednn
def test_packed_decode_generates_like_plain_decode(tok) -> None:
    """Forced on, the packed path runs every decode step; its sampled tokens equal the plain path's
    (the logits differ only in float rounding)."""
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("micro", vocab_size=tok.vocab_size)).eval()
    prompts = [tok.encode("ROMEO: But soft"), tok.encode("The quick")]
    params = SamplingParams(max_new_tokens=12, temperature=1.0)
    fast = Engine(model, tok, packed_decode=True)
    out = fast.generate_ids(prompts, params, stop_ids=[], seed=1)
    assert fast._packed is not None and len(fast._packed._packed) == len(fast._packed.linears)
    assert out == Engine(model, tok, packed_decode=False).generate_ids(prompts, params, stop_ids=[], seed=1)


def test_cast_copies_equal_autocast_bit_for_bit_and_follow_weight_updates(tok) -> None:
    """Under bf16 autocast the linears' bf16 copies give exactly autocast's outputs (its cast of a bf16
    tensor is a no-op), and refresh() re-casts after a fused AdamW step changed the weights in place."""
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("micro", vocab_size=tok.vocab_size)).eval()
    ids = torch.randint(0, tok.vocab_size, (3, 5))
    cast = PackedLinears(model, dtype=torch.bfloat16)

    def both() -> tuple[torch.Tensor, torch.Tensor]:
        cast.refresh()
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            plain = model(ids)[0]
            with cast.active():
                return plain, model(ids)[0]

    plain, fast = both()
    assert torch.equal(fast, plain)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, fused=True)
    model(ids, ids)[1].backward()
    optimizer.step()
    after, fast = both()
    assert not torch.equal(after, plain) and torch.equal(fast, after)


def test_autocast_decode_casts_weights_once_per_call_and_samples_the_same(tok) -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("micro", vocab_size=tok.vocab_size)).eval()
    prompts = [tok.encode("ROMEO: But soft"), tok.encode("The quick")]
    params = SamplingParams(max_new_tokens=12, temperature=1.0)
    engine = Engine(model, tok, autocast_dtype=torch.bfloat16)
    out = engine.generate_ids(prompts, params, stop_ids=[], seed=1)
    assert engine._packed is not None and len(engine._packed._packed) == len(engine._packed.linears)
    plain = Engine(model, tok, autocast_dtype=torch.bfloat16, packed_decode=False)
    assert out == plain.generate_ids(prompts, params, stop_ids=[], seed=1)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        engine.generate_ids(prompts, SamplingParams(max_new_tokens=12, temperature=0), stop_ids=[])
    casts = sum(e.count for e in prof.key_averages() if e.key == "aten::_to_copy")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        plain.generate_ids(prompts, SamplingParams(max_new_tokens=12, temperature=0), stop_ids=[])
    plain_casts = sum(e.count for e in prof.key_averages() if e.key == "aten::_to_copy")
    assert casts < plain_casts / 2  # autocast re-cast every weight at each of the 11 decode steps


@needs_onednn
def test_packed_decode_refuses_what_it_cannot_run(tok) -> None:
    model = GPT(GPTConfig.from_preset("micro", vocab_size=tok.vocab_size)).to(torch.bfloat16).eval()
    with pytest.raises(ValueError, match="packed_decode=True needs fp32"):
        Engine(model, tok, packed_decode=True)
    forced = Engine(model.float(), tok, packed_decode=True)
    model.to(torch.bfloat16)  # weights changed dtype after construction: refused at the decode step
    with pytest.raises(ValueError, match="packed_decode=True needs fp32"):
        forced.generate_ids([[1, 2]], SamplingParams(max_new_tokens=2), stop_ids=[])
    assert (
        len(Engine(model, tok).generate_ids([[1, 2]], SamplingParams(max_new_tokens=2), stop_ids=[])[0]) == 2
    )


def test_choosing_the_decode_path_leaves_the_global_rng_alone(tok, micro_model, monkeypatch) -> None:
    """The one-time timing runs inside a training process (samples during pre-training, PPO rollouts):
    drawing its inputs from the global RNG would change the run and break exact resume."""
    import picochat.engine as engine_module

    monkeypatch.setattr(engine_module, "_pack_choices", {})  # force the timing to run
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    Engine(micro_model, tok).generate_ids([[1, 2, 3]], SamplingParams(max_new_tokens=3), seed=0)
    assert torch.equal(torch.rand(3), expected)
