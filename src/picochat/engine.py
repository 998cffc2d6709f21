"""Batched generation and scoring with a KV cache.

The engine sees token ids; strings are converted at the edges. A batch of prompts of different lengths
is left-padded and decoded in lockstep: the prompt is prefilled once, the cache is copied for
`num_samples` answers per prompt, and rows that finish (stop token, stop string, length) are dropped from
the batch so the remaining ones run faster. Sampling (temperature, top-k, nucleus top-p from Holtzman et
al., arXiv 1904.09751) uses an explicit `torch.Generator`, so a seed gives the same output every time.

`score` returns log p(continuation | prompt) token by token: the zero-shot/few-shot evals (GPT-2/GPT-3
style multiple choice) and RLHF use it.

CPU decoding through prepacked weights (`PackedLinears`): a decode step multiplies a few rows by every
weight matrix, memory-bound work where torch's default fp32 path (MKL sgemm on the (out, in) weight) is
slow on some CPUs; oneDNN with the weight reordered once for a small batch was 1.3-2.6x faster per matrix
(about equal for the MLP's down projection) on the 2-core AMD EPYC of benchmarks/RESULTS.md. The engine times both paths once per model shape and
uses the packed one only where it measured faster (fp32 on CPU without autocast; never for gradients).
Under autocast (bf16 on AMX CPUs and GPUs: PPO rollouts, comparison collection) the same mechanism keeps
bf16 copies of the weights, cast once per generate call, so autocast does not cast every weight again at
every decode step.
"""

from __future__ import annotations

import contextlib
import functools
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from picochat.model import GPT, KVCache
from picochat.tokenizer import Tokenizer

REPLACEMENT_CHAR = "\ufffd"


@dataclass(frozen=True, slots=True, kw_only=True)
class SamplingParams:
    max_new_tokens: int = 64
    temperature: float = 1.0  # 0 = greedy
    top_k: int | None = None
    top_p: float | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1 or None, got {self.top_k}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1] or None, got {self.top_p}")


def sample_next(
    logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None
) -> torch.Tensor:
    """Draw one token per row from logits (B, V) -> (B,)."""
    if params.temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / params.temperature
    if params.top_k is not None and params.top_k < logits.size(-1):
        kth = torch.topk(logits, params.top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p is not None and params.top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) > params.top_p  # keep the smallest set with mass >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return sample_categorical(logits.softmax(dim=-1), generator)


def sample_categorical(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One draw per row of probs (B, V) -> (B,) by inverting the CDF with one uniform number per row.

    Exact like torch.multinomial, whose CPU kernel draws V exponential numbers per row (18 ms for
    32 × 8192 on one core, against 1 ms here). u lies in (0, total], so the first index whose CDF reaches
    it always has probability > 0: masked (top-k/top-p) tokens are never drawn."""
    cdf = probs.cumsum(dim=-1)  # (B, V)
    u = (1.0 - torch.rand(cdf.shape[0], 1, device=cdf.device, generator=generator)) * cdf[:, -1:]  # (B, 1)
    return torch.searchsorted(cdf, u).squeeze(-1).clamp_(max=cdf.shape[-1] - 1)


def left_pad(
    prompts: Sequence[Sequence[int]], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) ids and (B, T) bool mask of real tokens, prompts aligned to the right edge."""
    T = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(prompts), T, dtype=torch.bool)
    for i, p in enumerate(prompts):
        if p:
            ids[i, T - len(p) :] = torch.tensor(p, dtype=torch.long)
            mask[i, T - len(p) :] = True
    return ids.to(device), mask.to(device)


PACK_ROWS_HINT = 8  # oneDNN lays the weight out for this many rows; measured no slower for 1 to 32
PACK_SPEEDUP = 1.1  # the packed path must beat F.linear by this factor to be chosen
PACK_TIMING_ROWS = (1, 8)  # decode batch sizes timed for the choice
_pack_choices: dict[tuple[tuple[int, int], ...], bool] = {}  # linear shapes -> packed path measured faster


@functools.cache
def packed_linear_supported() -> bool:
    """Whether this torch build has the oneDNN ops that prepacked linears need."""
    ops = torch.ops.mkldnn
    return torch.backends.mkldnn.is_available() and all(
        hasattr(ops, name) for name in ("_reorder_linear_weight", "_linear_pointwise")
    )


def pack_weight(weight: torch.Tensor) -> torch.Tensor:
    """The (out, in) fp32 weight reordered for oneDNN's small-batch matmul."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), PACK_ROWS_HINT)


def packed_linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """F.linear(x, weight, bias) through the packed weight (inference only: no gradient)."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


def _best_seconds(step: Callable[[], object], reps: int = 3) -> float:
    """Best wall time of `step()` over `reps` calls, after one warm-up call (oneDNN builds its kernels
    on the first)."""
    step()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - t)
    return best


@torch.inference_mode()
def packed_is_faster(linears: Sequence[nn.Linear]) -> bool:
    """Time one decode step's matmuls (every linear once, at each of PACK_TIMING_ROWS rows) through
    F.linear and through packed weights; cached per set of shapes, so each model shape is timed once."""
    shapes = tuple(sorted({tuple(m.weight.shape) for m in linears}))
    if shapes not in _pack_choices:
        weights = [m.weight.detach() for m in linears]
        biases = [m.bias for m in linears]
        packed = [pack_weight(w) for w in weights]
        plain_s = packed_s = 0.0
        gen = torch.Generator().manual_seed(0)  # a local generator: timing must not move the global RNG
        for rows in PACK_TIMING_ROWS:
            xs = [torch.randn(rows, 1, w.shape[1], generator=gen) for w in weights]
            plain_args = list(zip(xs, weights, biases, strict=True))
            packed_args = list(zip(xs, packed, biases, strict=True))
            plain_s += _best_seconds(lambda a=plain_args: [F.linear(*args) for args in a])
            packed_s += _best_seconds(lambda a=packed_args: [packed_linear(*args) for args in a])
        _pack_choices[shapes] = plain_s > PACK_SPEEDUP * packed_s
    return _pack_choices[shapes]


class PackedLinears:
    """Prepacked copies of a model's nn.Linear weights, used by its forward inside `active()`.

    Two kinds of copy: with dtype=None the fp32 weight reordered for oneDNN (`packed_linear`, CPU); with a
    dtype (bf16 under autocast) the weight and bias cast to it once. Autocast would otherwise cast every
    fp32 weight again at every decode step, reading 4 bytes and writing 2 per parameter before the matmul
    reads the 2 again; its cast of a tensor already in its dtype is free, so the outputs are bit for bit
    the autocast ones. Inside the context each linear's forward is pointed at its copy; on exit the
    module's own forward is back. The parameters are never touched. `refresh()` (once per generate call)
    makes a new copy of every weight that changed since, found by a fingerprint: the weight times a fixed
    random vector. A version counter would not do: the fused AdamW kernel that the training loop uses
    updates parameters in place without bumping it (PPO steps the policy between rollouts)."""

    def __init__(self, model: nn.Module, dtype: torch.dtype | None = None) -> None:
        self.dtype = dtype
        self.linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        # id(module) -> (fingerprint, the forward through its packed weight)
        self._packed: dict[int, tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]] = {}
        self._probes: dict[int, torch.Tensor] = {}  # in_features -> fixed random vector

    def _fingerprint(self, weight: torch.Tensor) -> torch.Tensor:
        width = weight.shape[1]
        if width not in self._probes:
            gen = torch.Generator().manual_seed(width)  # local: must not move the global RNG
            probe = torch.randn(width, generator=gen, dtype=weight.dtype)
            self._probes[width] = probe.to(weight.device)
        return torch.mv(weight.detach(), self._probes[width])

    def _copy(self, m: nn.Linear) -> Callable[[torch.Tensor], torch.Tensor]:
        """The forward through a new copy of m's weight."""
        if self.dtype is None:
            packed, bias = pack_weight(m.weight), m.bias
            return lambda x, p=packed, b=bias: packed_linear(x, p, b)
        weight = m.weight.detach().to(self.dtype)
        bias = m.bias.detach().to(self.dtype) if m.bias is not None else None
        return lambda x, w=weight, b=bias: F.linear(x, w, b)

    @torch.inference_mode()
    def refresh(self) -> None:
        """Copy the weights that are new or changed (one matrix-vector product per weight to check)."""
        for m in self.linears:
            fingerprint, hit = self._fingerprint(m.weight), self._packed.get(id(m))
            if hit is None or not torch.equal(hit[0], fingerprint):
                self._packed[id(m)] = (fingerprint, self._copy(m))

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        for m in self.linears:
            m.__dict__["forward"] = self._packed[id(m)][1]  # an instance attribute; skips Module.__setattr__
        try:
            yield
        finally:
            for m in self.linears:
                m.__dict__.pop("forward", None)


class Engine:
    """Generation and scoring for one model + tokenizer. Stateless between calls (except the cached
    packed weights of `PackedLinears`, which follow the model's weights)."""

    def __init__(
        self,
        model: GPT,
        tok: Tokenizer,
        autocast_dtype: torch.dtype | None = None,
        packed_decode: bool | None = None,
    ) -> None:
        """packed_decode: decode steps through prepacked oneDNN weights (True), through the model's own
        weights (False), or None: under autocast through weights cast once per call, else packed where
        possible (CPU, fp32, the ops exist) and measured faster."""
        if tok.vocab_size > model.config.vocab_size:
            raise ValueError(
                f"tokenizer has {tok.vocab_size} ids but the model only {model.config.vocab_size} embeddings"
            )
        self.model = model
        self.tok = tok
        self.autocast_dtype = autocast_dtype
        self.default_stop_ids = (tok.special_id("<|end|>"), tok.eot_id)
        self.packed_decode = packed_decode
        self._packed_faster: bool | None = None  # the timed choice, made at the first decode step
        self._packed: PackedLinears | None = None  # oneDNN-packed, or cast to autocast_dtype when set
        if packed_decode:
            self._packing_possible()  # fail at construction, not at the first decode step

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _packing_possible(self) -> bool:
        """Packed decoding needs fp32 weights on a CPU with oneDNN and no autocast; raises when forced on
        without them."""
        possible = (
            self.device.type == "cpu"
            and self.autocast_dtype is None
            and next(self.model.parameters()).dtype == torch.float32
            and packed_linear_supported()
        )
        if self.packed_decode is True and not possible:
            raise ValueError("packed_decode=True needs fp32 weights on a CPU with oneDNN and no autocast")
        return possible

    def _decode_packing(self) -> PackedLinears | None:
        """The weight copies this generate call decodes with (refreshed), or None for the model's own:
        bf16 copies under autocast, oneDNN-packed ones where possible and measured faster."""
        cast = self.autocast_dtype is not None
        if self.packed_decode is False or not (cast or self._packing_possible()):
            return None
        if self._packed is None:  # lists the linears; copies nothing yet
            self._packed = PackedLinears(self.model, dtype=self.autocast_dtype)
        if cast:
            self._packed.refresh()
            return self._packed
        if self._packed_faster is None:  # auto, or forced on (then not timed)
            self._packed_faster = self.packed_decode is True or packed_is_faster(self._packed.linears)
        if not self._packed_faster:
            return None
        self._packed.refresh()
        return self._packed

    def fit_to_context(self, prompts: list[list[int]], max_new_tokens: int) -> tuple[list[list[int]], int]:
        """Left-truncate prompts (with a warning) so prompt + answer fits the context window."""
        block = self.model.config.block_size
        if max_new_tokens >= block:
            warnings.warn(
                f"max_new_tokens={max_new_tokens} >= context {block}; using {block - 1}", stacklevel=3
            )
            max_new_tokens = block - 1
        room = block - max_new_tokens
        if any(len(p) > room for p in prompts):
            warnings.warn(
                f"prompt longer than the {room} tokens left in the {block}-token context for "
                f"{max_new_tokens} new tokens; keeping its last {room} tokens",
                stacklevel=3,
            )
            prompts = [p[-room:] for p in prompts]
        return [list(p) if p else [self.tok.eot_id] for p in prompts], max_new_tokens

    @torch.inference_mode()
    def generate_tokens(
        self,
        prompts: Sequence[Sequence[int]],
        params: SamplingParams,
        *,
        num_samples: int = 1,
        stop_ids: Sequence[int] | None = None,
        seed: int | None = None,
    ) -> Iterator[list[tuple[int, int]]]:
        """Yield, at every decoding step, the (row, token) pairs produced by still-running rows.

        Row r = prompt r // num_samples, sample r % num_samples. A row stops after emitting a stop id
        (which is yielded, so callers see why it stopped) or after max_new_tokens tokens. Callers may stop
        iterating at any time (cancellation).
        """
        self.model.eval()
        stop = set(self.default_stop_ids if stop_ids is None else stop_ids)
        prompt_lists, max_new = self.fit_to_context([list(p) for p in prompts], params.max_new_tokens)
        params = SamplingParams(
            max_new_tokens=max_new, temperature=params.temperature, top_k=params.top_k, top_p=params.top_p
        )
        generator = torch.Generator(device=self.device)
        generator.manual_seed(seed if seed is not None else int(torch.randint(0, 2**62, ()).item()))
        ids, pad_mask = left_pad(prompt_lists, self.tok.eot_id, self.device)
        n_ids = self.tok.vocab_size  # embedding rows past the tokenizer (padding to 64) are never sampled
        cache = KVCache.empty(
            self.model.config, len(prompt_lists), ids.shape[1] + max_new, self.device,
            self.autocast_dtype or next(self.model.parameters()).dtype,
        )  # fmt: skip
        last = torch.full((len(prompt_lists), 1), ids.shape[1] - 1, device=self.device)  # left padding
        with self._autocast():  # prefill: every prompt token into the cache, logits for the last one only
            logits = self.model(ids, pad_mask=pad_mask, cache=cache, keep=last)[0][:, -1, :n_ids]  # (B, V)
        if num_samples > 1:
            cache = cache.repeat_rows(num_samples)
            logits = logits.repeat_interleave(num_samples, dim=0)
        rows = torch.arange(logits.shape[0], device=self.device)  # original row id of each batch slot
        packed = self._decode_packing() if max_new > 1 else None
        for step in range(max_new):
            token = sample_next(logits, params, generator)  # (B,)
            out = list(zip(rows.tolist(), token.tolist(), strict=True))
            yield out
            alive = [t not in stop for _, t in out]
            if step == max_new - 1 or not any(alive):
                return
            if not all(alive):  # a tensor only when some row stopped: three fewer ops per decode step
                keep = torch.tensor(alive, device=self.device)
                rows, token, cache = rows[keep], token[keep], cache.select_rows(keep)
            with self._autocast(), packed.active() if packed is not None else contextlib.nullcontext():
                logits = self.model(token[:, None], cache=cache)[0][:, -1, :n_ids]

    def generate_ids(
        self,
        prompts: Sequence[Sequence[int]],
        params: SamplingParams,
        *,
        num_samples: int = 1,
        stop_ids: Sequence[int] | None = None,
        seed: int | None = None,
    ) -> list[list[int]]:
        """Completions as token ids (stop token included when one was produced), num_samples per prompt."""
        outputs: list[list[int]] = [[] for _ in range(len(prompts) * num_samples)]
        for step in self.generate_tokens(
            prompts, params, num_samples=num_samples, stop_ids=stop_ids, seed=seed
        ):
            for row, token in step:
                outputs[row].append(token)
        return outputs

    def _encode_prompts(self, prompts: Sequence[str] | Sequence[Sequence[int]]) -> list[list[int]]:
        if isinstance(prompts, str):
            raise TypeError("prompts must be a list of strings or of token-id lists, not a single string")
        return [self.tok.encode(p) if isinstance(p, str) else list(p) for p in prompts]

    def decode_completion(self, ids: list[int], stop_strings: Sequence[str] = ()) -> str:
        """Text of a completion: cut at the first stop token, then at the first stop string."""
        stop = set(self.default_stop_ids)
        cut = next((i for i, t in enumerate(ids) if t in stop), len(ids))
        text = self.tok.decode(ids[:cut])
        for s in stop_strings:
            pos = text.find(s)
            if pos >= 0:
                text = text[:pos]
        return text

    def generate(
        self,
        prompts: Sequence[str] | Sequence[Sequence[int]],
        max_new_tokens: int = 64,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        stop: str | Sequence[str] | None = None,
        seed: int | None = None,
        num_samples: int = 1,
    ) -> list[str]:
        """Generate text for each prompt (num_samples per prompt, in prompt order)."""
        params = SamplingParams(
            max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p
        )
        stop_strings = [stop] if isinstance(stop, str) else list(stop or [])
        ids = self._encode_prompts(prompts)
        if not stop_strings:
            completions = self.generate_ids(ids, params, num_samples=num_samples, seed=seed)
            return [self.decode_completion(c) for c in completions]
        # with stop strings, rows must stop as soon as their text contains one: stream them
        outputs: list[list[int]] = [[] for _ in range(len(ids) * num_samples)]
        done: set[int] = set()
        for step in self.generate_tokens(ids, params, num_samples=num_samples, seed=seed):
            for row, token in step:
                if row not in done:
                    outputs[row].append(token)
                    if any(s in self.tok.decode(outputs[row]) for s in stop_strings):
                        done.add(row)
            if len(done) == len(outputs):
                break
        return [self.decode_completion(c, stop_strings) for c in outputs]

    def stream(
        self,
        prompt: str | Sequence[int],
        max_new_tokens: int = 64,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        stop: str | Sequence[str] | None = None,
        seed: int | None = None,
    ) -> Iterator[str]:
        """Yield the completion's text piece by piece as it is generated (whole characters only)."""
        params = SamplingParams(
            max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p
        )
        stop_strings = [stop] if isinstance(stop, str) else list(stop or [])
        streamer = TextStreamer(self.tok, stop_strings, self.default_stop_ids)
        for step in self.generate_tokens(self._encode_prompts([prompt]), params, seed=seed):
            piece = streamer.push(step[0][1])
            if piece:
                yield piece
            if streamer.finished:
                return
        tail = streamer.flush()
        if tail:
            yield tail

    @torch.inference_mode()
    def score_ids(
        self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]], batch_size: int = 16
    ) -> list[list[float]]:
        """Per-token log p(continuation | prompt) for each (prompt_ids, continuation_ids) pair."""
        block = self.model.config.block_size
        results: list[list[float]] = []
        self.model.eval()
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start : start + batch_size]
            seqs, n_cont = [], []
            for prompt, cont in chunk:
                if not cont:
                    raise ValueError("score: the continuation is empty")
                if len(cont) >= block:
                    raise ValueError(
                        f"score: continuation of {len(cont)} tokens does not fit the {block}-token context"
                    )
                seq = (list(prompt) or [self.tok.eot_id]) + list(cont)
                seqs.append(seq[-block:])
                n_cont.append(len(cont))
            T = max(len(s) for s in seqs)
            ids = torch.full((len(seqs), T), self.tok.eot_id, dtype=torch.long)
            for i, s in enumerate(seqs):
                ids[i, : len(s)] = torch.tensor(s)
            ids = ids.to(self.device)
            # the positions predicting each continuation token (a shorter one repeats its last): the model
            # runs its last block and LM head there only
            K = max(n_cont)
            keep = torch.tensor(
                [
                    [len(s) - 1 - n + min(t, n - 1) for t in range(K)]
                    for s, n in zip(seqs, n_cont, strict=True)
                ],
                device=self.device,
            )  # (B, K)
            with self._autocast():
                logits = self.model(ids, keep=keep)[0].float()  # (B, K, V); right padding is harmless
            logprobs = F.log_softmax(logits, dim=-1).gather(-1, ids.gather(1, keep + 1)[..., None])[..., 0]
            results.extend(row[:n].tolist() for row, n in zip(logprobs, n_cont, strict=True))
        return results

    def score(
        self, prompt: str | Sequence[int], continuation: str | Sequence[int]
    ) -> tuple[float, list[float]]:
        """(sum of log-probs, per-token log-probs) of continuation given prompt."""
        p = self.tok.encode(prompt) if isinstance(prompt, str) else list(prompt)
        c = self.tok.encode(continuation) if isinstance(continuation, str) else list(continuation)
        token_logprobs = self.score_ids([(p, c)])[0]
        return sum(token_logprobs), token_logprobs


class TextStreamer:
    """Turns a stream of token ids into text pieces, holding back incomplete UTF-8 and stop strings."""

    def __init__(
        self, tok: Tokenizer, stop_strings: Sequence[str] = (), stop_ids: Sequence[int] = ()
    ) -> None:
        self.tok = tok
        self.stop_strings = list(stop_strings)
        self.stop_ids = set(stop_ids)
        self.ids: list[int] = []
        self.emitted = 0  # characters already yielded
        self.finished = False

    def push(self, token: int) -> str:
        if self.finished:
            return ""
        if token in self.stop_ids:
            self.finished = True
            return self.flush()
        self.ids.append(token)
        text = self.tok.decode(self.ids)
        for s in self.stop_strings:
            pos = text.find(s)
            if pos >= 0:
                self.finished = True
                piece = text[self.emitted : pos]
                self.emitted = pos
                return piece
        safe = len(text)
        if text.endswith(REPLACEMENT_CHAR):  # an unfinished multi-byte character
            safe = len(text.rstrip(REPLACEMENT_CHAR))
        for s in self.stop_strings:  # hold back a possible beginning of a stop string
            for k in range(min(len(s) - 1, safe - self.emitted), 0, -1):
                if text[:safe].endswith(s[:k]):
                    safe -= k
                    break
        piece = text[self.emitted : safe]
        self.emitted = max(self.emitted, safe)
        return piece

    def flush(self) -> str:
        text = self.tok.decode(self.ids)
        piece = text[self.emitted :]
        self.emitted = len(text)
        return piece
