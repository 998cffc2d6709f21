"""The GPT model: one decoder-only Transformer for every stage of picochat.

Papers and the choices taken from each:
- GPT-1 (Radford et al. 2018): post-LN blocks (LayerNorm after each residual add), learned positions,
  GELU MLP 4x, tied input/output embeddings. `ln_placement="post"`.
- GPT-2 (Radford et al. 2019): pre-LN blocks plus a final LayerNorm, residual projections initialised with
  std 0.02/sqrt(2·n_layer), context 1024, vocab 50,257. `ln_placement="pre"` (the default).
- GPT-3 (arXiv 2005.14165, §2.1): "alternating dense and locally banded sparse attention patterns".
  `attention="alternating"` makes every odd layer banded: a token attends to itself and the previous
  `window - 1` tokens only. The band is a boolean mask passed to SDPA; it saves no FLOPs on CPU (SDPA still
  computes the full T×T scores and the masked kernel is slower than the fused causal one), it only
  changes which tokens are seen. A block-sparse kernel would be needed to save compute.

Attention is `torch.nn.functional.scaled_dot_product_attention` (flash/fused kernels where available).
On a GPU, calls with a mask or a KV cache leave out cuDNN's attention (`attention_backends`): cuDNN builds
an execution graph for every new input shape, and decoding (the key length grows each step) and PPO's
packed rows (a new width each minibatch) bring a new shape almost every call. One H100, bf16, the tiny
PPO policy: 32 rollouts of 32 tokens took 0.5-1.0 s with it and 0.13-0.23 s without (fp32, where SDPA
never picks cuDNN: 0.08-0.12 s). Unmasked training calls (pre-training: one shape) keep the default choice.
The KV cache is a small explicit object created per generation call and passed into `forward`; the model
holds parameters only. An optional linear head on the final hidden states (`n_head_outputs > 0`) serves
as the GPT-1 classifier, the reward model's scalar head and the PPO value head, so every stage shares one
class and one checkpoint format.

Packed rows: `hidden(idx, segments=...)` runs several documents laid end to end in one row with no padding
between them. `segments` (B, T) numbers the documents of each row (1, 2, ...; 0 = padding at the row's
end); attention is then block-diagonal causal (a token sees the earlier tokens of its own document only)
and position ids restart at 0 at each document, so every document gets the hidden states it would get
alone. PPO's update uses it to spend its matmul FLOPs on real tokens only, where a left-padded batch (what
TRL's trainer runs) pays for every pad column; the attention scores stay T×T per row, cheap next to the
linear layers at these lengths.

Reading a few states: no layer after the last needs the other positions' outputs, so `hidden(keep=...)`
runs the last block's queries, output projection and MLP only at the positions the caller reads (its
keys and values still cover every position). A reward or classifier head reads one token per sequence,
PPO the answer tokens, the engine's prefill the last prompt token, few-shot scoring the continuation
and the CPU loss the positions with a target; on the tiny model (4 layers) the last block is a quarter
of the trunk, and the LM head stops running on positions nobody reads (benchmarks/RESULTS.md, session 11).

The training loss on CPU (`chunked_lm_nll`, used when `forward` is asked for the loss only): the LM head,
softmax and cross-entropy of a few hundred rows at a time, with the gradient of the logits, softmax(z) −
onehot(y), taken in the same pass. A chunk's logits stay in the CPU cache, so the (B·T, V) logits are
never written to memory, read back by the log-softmax, written again and read again by its backward; the
matmul FLOPs are the same. Rows without a target (IGNORE_INDEX: prompts, padding) skip the head entirely.
Tiny preset (vocab 8192, width 128, 8 × 256 tokens), 2 AVX2 cores: head + loss forward and backward 245 ->
175 ms per step. GPUs keep the plain path (cuBLAS + fused kernels, or the whole loss inside torch.compile).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

IGNORE_INDEX = -100

LN_PLACEMENTS = ("pre", "post")
ATTENTION_PATTERNS = ("dense", "alternating")


@dataclass(frozen=True, slots=True, kw_only=True)
class GPTConfig:
    """Shape and architecture of a GPT. Presets: `GPTConfig.from_preset(name, **overrides)`."""

    n_layer: int = 6
    """number of Transformer blocks"""
    n_head: int = 6
    """attention heads per block"""
    n_embd: int = 384
    """model width C"""
    block_size: int = 256
    """context length in tokens"""
    vocab_size: int = 8192
    """embedding rows; must be >= the tokenizer's vocab size"""
    dropout: float = 0.0
    """dropout on embeddings, attention output and MLP output (0 for tiny CPU models)"""
    bias: bool = True
    """biases in Linear and LayerNorm layers (GPT-2 has them)"""
    ln_placement: str = "pre"
    """'pre' (GPT-2: LN before each sublayer + final LN) or 'post' (GPT-1: LN after each residual add)"""
    attention: str = "dense"
    """'dense' or 'alternating' (GPT-3: odd layers use locally banded attention)"""
    window: int = 128
    """band width of the sparse layers: each token sees itself and window-1 previous tokens"""
    n_head_outputs: int = 0
    """width of the optional linear head on the final hidden states (classes, or 1 for reward/value)"""

    def __post_init__(self) -> None:
        for name in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size", "window"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise ValueError(
                f"model.n_embd ({self.n_embd}) must be divisible by model.n_head ({self.n_head})"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.ln_placement not in LN_PLACEMENTS:
            raise ValueError(f"model.ln_placement must be one of {LN_PLACEMENTS}, got {self.ln_placement!r}")
        if self.attention not in ATTENTION_PATTERNS:
            raise ValueError(f"model.attention must be one of {ATTENTION_PATTERNS}, got {self.attention!r}")
        if self.n_head_outputs < 0:
            raise ValueError(f"model.n_head_outputs must be >= 0, got {self.n_head_outputs}")

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> GPTConfig:
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
        return replace(PRESETS[name], **overrides)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def is_sparse_layer(self, layer: int) -> bool:
        return self.attention == "alternating" and layer % 2 == 1


PRESETS: dict[str, GPTConfig] = {
    # test-sized and CPU-sized models (vocab is set from the tokenizer when a run is built)
    "micro": GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=512),
    "tiny": GPTConfig(n_layer=4, n_head=4, n_embd=256, block_size=256, vocab_size=8192),
    "small-cpu": GPTConfig(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=8192),
    # the published shapes
    "gpt1": GPTConfig(
        n_layer=12, n_head=12, n_embd=768, block_size=512, vocab_size=40478, ln_placement="post"
    ),
    "gpt2": GPTConfig(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50257),
    "gpt2-medium": GPTConfig(n_layer=24, n_head=16, n_embd=1024, block_size=1024, vocab_size=50257),
    "gpt2-large": GPTConfig(n_layer=36, n_head=20, n_embd=1280, block_size=1024, vocab_size=50257),
    "gpt2-xl": GPTConfig(n_layer=48, n_head=25, n_embd=1600, block_size=1024, vocab_size=50257),
}


@dataclass(slots=True)
class KVCache:
    """Keys and values of every layer for a batch being generated, preallocated to `max_len` slots.

    Rows may be left-padded: `key_mask` marks which slots hold real tokens and `next_pos` is each row's
    next position id, so a batch of prompts of different lengths decodes in lockstep.
    """

    k: torch.Tensor  # (L, B, nh, max_len, hs)
    v: torch.Tensor  # (L, B, nh, max_len, hs)
    key_mask: torch.Tensor  # (B, max_len) bool, True = real token in that slot
    next_pos: torch.Tensor  # (B,) long
    length: int = 0  # slots filled so far (same for every row)
    padded: bool = False  # some slot holds padding (key_mask has a False below `length`)

    @classmethod
    def empty(
        cls, config: GPTConfig, batch: int, max_len: int, device: torch.device, dtype: torch.dtype
    ) -> KVCache:
        hs = config.n_embd // config.n_head
        shape = (config.n_layer, batch, config.n_head, max_len, hs)
        return cls(
            k=torch.zeros(shape, device=device, dtype=dtype),
            v=torch.zeros(shape, device=device, dtype=dtype),
            key_mask=torch.zeros(batch, max_len, dtype=torch.bool, device=device),
            next_pos=torch.zeros(batch, dtype=torch.long, device=device),
        )

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    def repeat_rows(self, n: int) -> KVCache:
        """Each row copied n times (row i -> rows i*n .. i*n+n-1): prefill a prompt once, sample n answers."""
        return KVCache(
            k=self.k.repeat_interleave(n, dim=1),
            v=self.v.repeat_interleave(n, dim=1),
            key_mask=self.key_mask.repeat_interleave(n, dim=0),
            next_pos=self.next_pos.repeat_interleave(n, dim=0),
            length=self.length,
            padded=self.padded,
        )

    def select_rows(self, rows: torch.Tensor) -> KVCache:
        return KVCache(
            k=self.k[:, rows], v=self.v[:, rows], key_mask=self.key_mask[rows],
            next_pos=self.next_pos[rows], length=self.length, padded=self.padded,
        )  # fmt: skip


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """F.dropout, skipped outright when it is the identity (p = 0 or eval mode): a decode step would
    otherwise make 2·n_layer + 1 calls that do nothing."""
    return F.dropout(x, p, training=True) if training and p > 0 else x


def at_positions(x: torch.Tensor, keep: torch.Tensor, dim: int) -> torch.Tensor:
    """x with only the positions keep[b] left along `dim`, row by row: keep (B, K) long; x (B, ..., T, ...)
    with T at `dim` -> (B, ..., K, ...)."""
    view = [1] * x.dim()
    view[0], view[dim] = keep.shape
    shape = list(x.shape)
    shape[dim] = keep.shape[1]
    return x.gather(dim, keep.view(view).expand(shape))


def target_positions(targets: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(keep (B, K), their targets (B, K)) for the positions of targets (B, T) that are not IGNORE_INDEX,
    in order, K = the most in one row (shorter rows end in IGNORE_INDEX); (None, targets) when some row
    has a target everywhere (pre-training: keeping every position would only add the gathers) or none
    has any."""
    has_target = targets != IGNORE_INDEX
    counts = has_target.sum(1)  # (B,)
    K = int(counts.max())
    if K in (0, targets.shape[1]):
        return None, targets
    # target positions first, in order; a shorter row's list goes on with positions without a target
    keep = torch.argsort(~has_target, dim=1, stable=True)[:, :K]
    return keep, targets.gather(1, keep)


def kept_query_mask(mask: torch.Tensor | None, keep: torch.Tensor, T: int, start: int) -> torch.Tensor:
    """The attention mask (B, 1, K, Tk) of the queries at `keep` (B, K) from a layer's mask for all T
    queries: (B|1, 1, T, Tk), (T, Tk), or None (causal; one query on a cache sees every slot). `start`
    = slots already cached before these T tokens."""
    B, K = keep.shape
    if mask is None:
        k_idx = torch.arange(start + T, device=keep.device)
        return (k_idx[None, None, :] <= start + keep[:, :, None])[:, None]  # (B, 1, K, Tk)
    if mask.dim() == 2:
        mask = mask[None, None]
    return at_positions(mask.expand(B, 1, T, mask.shape[-1]), keep, dim=2)


SHAPE_CHANGING_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def attention_backends(device: torch.device, masked_or_cached: bool) -> contextlib.AbstractContextManager:
    """The SDPA kernels a forward may use: all but cuDNN on a GPU when the call has a mask or a KV cache
    (shapes that change from call to call; see the module docstring), else torch's default choice."""
    if device.type == "cuda" and masked_or_cached:
        return sdpa_kernel(SHAPE_CHANGING_BACKENDS)
    return contextlib.nullcontext()


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = config.dropout

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        cache: KVCache | None = None,
        layer: int = 0,
        keep: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, T, C) -> (B, T, C); with `keep` (B, K), queries at those positions only: (B, K, C)."""
        B, T, C = x.shape
        # one view, one permute: three times fewer ops than a split and a view + transpose per tensor
        qkv = self.c_attn(x).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, nh, T, hs)
        if keep is not None:
            q = at_positions(q, keep, dim=2)  # (B, nh, K, hs); keys and values stay at every position
        if cache is not None:
            start = cache.length
            cache.k[layer, :, :, start : start + T] = k
            cache.v[layer, :, :, start : start + T] = v
            k = cache.k[layer, :, :, : start + T]  # (B, nh, Tk, hs)
            v = cache.v[layer, :, :, : start + T]
        y = F.scaled_dot_product_attention(
            q, k, v,
            attn_mask=mask,
            is_causal=mask is None and T > 1,  # one query with no mask sees every key (a decode step)
            dropout_p=self.dropout if self.training else 0.0,
        )  # fmt: skip
        y = y.transpose(1, 2).contiguous().view(B, q.shape[2], C)  # (B, T or K, C)
        return dropout(self.c_proj(y), self.dropout, self.training)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = config.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # GPT-2's GELU is the tanh approximation ("gelu_new" in transformers)
        return dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")), self.dropout, self.training)


class Block(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.pre_ln = config.ln_placement == "pre"
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        cache: KVCache | None,
        layer: int,
        keep: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, T, C) -> (B, T, C); with `keep` (B, K) only those positions come out: (B, K, C)."""
        residual = x if keep is None else at_positions(x, keep, dim=1)
        if self.pre_ln:  # GPT-2
            x = residual + self.attn(self.ln_1(x), mask, cache, layer, keep)
            return x + self.mlp(self.ln_2(x))
        x = self.ln_1(residual + self.attn(x, mask, cache, layer, keep))  # GPT-1
        return self.ln_2(x + self.mlp(x))


def attention_masks(
    config: GPTConfig,
    T: int,
    device: torch.device,
    pad_mask: torch.Tensor | None = None,
    cache: KVCache | None = None,
    segments: torch.Tensor | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Boolean SDPA masks (True = may attend) for dense and banded layers; None means no mask: causal
    for several queries, all keys for a single one.

    Queries are the T new tokens; keys are the cached slots plus the new tokens. Without padding the dense
    mask is None where that is exact, so SDPA skips building and applying one: T new tokens on an empty
    cache (its fused causal kernel) and a decode step (one token that may see every slot). With `segments`
    (B, T) (packed documents, see `GPT.hidden`) both masks are block-diagonal causal, (B, 1, T, T).
    """
    if segments is not None:
        return segment_masks(config, segments)
    start = cache.length if cache is not None else 0
    need_band = config.attention == "alternating"
    padded = pad_mask is not None or (cache is not None and cache.padded)
    if not padded and not need_band and (start == 0 or T == 1):
        return None, None
    q_idx = torch.arange(start, start + T, device=device)[:, None]  # (T, 1) slot index of each query
    k_idx = torch.arange(start + T, device=device)[None, :]  # (1, Tk)
    causal = k_idx <= q_idx  # (T, Tk)
    band = causal & (k_idx > q_idx - config.window) if need_band else None
    if cache is None and pad_mask is None:
        return None, band
    keys = cache.key_mask[:, : start + T] if cache is not None else pad_mask
    keys = keys[:, None, None, :]  # (B, 1, 1, Tk)
    dense = causal[None, None] & keys
    band = band[None, None] & keys if band is not None else None
    # a left-pad query row that sees no key would give NaN: let it see itself (its output is never used)
    diag = (k_idx == q_idx)[None, None]
    dense = dense | (diag & ~dense.any(-1, keepdim=True))
    if band is not None:
        band = band | (diag & ~band.any(-1, keepdim=True))
    return dense, band


def segment_masks(config: GPTConfig, segments: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Block-diagonal causal masks (B, 1, T, T) for packed rows: a query sees the keys at or before it
    that belong to its own segment (id > 0). A padding query (id 0) sees only itself, which keeps its
    softmax finite; its output is never used. Banded layers also drop keys `window` or more slots back
    (within one segment the slot distance is the position distance, so the band is the same as alone)."""
    T = segments.shape[1]
    q_idx = torch.arange(T, device=segments.device)[:, None]  # (T, 1)
    k_idx = torch.arange(T, device=segments.device)[None, :]  # (1, T)
    same = (segments[:, :, None] == segments[:, None, :]) & (segments > 0)[:, None, :]  # (B, T, T)
    dense = (same & (k_idx <= q_idx)) | (k_idx == q_idx)  # (B, T, T)
    band = dense & (k_idx > q_idx - config.window) if config.attention == "alternating" else None
    return dense[:, None], band[:, None] if band is not None else None


def segment_positions(segments: torch.Tensor) -> torch.Tensor:
    """Position ids (B, T) that restart at 0 wherever the segment id changes (each segment is one
    contiguous run of its row): the slot index minus the slot where the current run began."""
    T = segments.shape[1]
    slot = torch.arange(T, device=segments.device).expand_as(segments)  # (B, T)
    starts = torch.ones_like(segments, dtype=torch.bool)
    starts[:, 1:] = segments[:, 1:] != segments[:, :-1]
    first = torch.where(starts, slot, 0).cummax(1).values  # (B, T) slot where the current run began
    return slot - first


CE_CHUNK_ELEMENTS = 1 << 21  # logits per chunk: 8 MiB in fp32, about what a CPU cache holds


def _chunk_nll_and_grad(
    logits: torch.Tensor, targets: torch.Tensor, row_weights: torch.Tensor, want_grad: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Σ_t w_t·(logsumexp(z_t) − z_t[y_t]) over a chunk of fp32 logits (m, V), and if asked the gradient
    w_t·(softmax(z_t) − onehot(y_t)), computed in place in `logits` (which it overwrites)."""
    target_logit = logits.gather(1, targets[:, None]).squeeze(1)
    peak = logits.amax(1, keepdim=True)
    probs = logits.sub_(peak).exp_()  # unnormalised, in place: the chunk is never copied
    norm = probs.sum(1, keepdim=True)
    nll = (peak + norm.log()).squeeze(1) - target_logit
    total = (row_weights * nll).sum()
    if not want_grad:
        return total, None
    probs.div_(norm)
    probs[torch.arange(len(targets), device=probs.device), targets] -= 1.0
    return total, probs.mul_(row_weights[:, None])


def _compute_dtype(h: torch.Tensor) -> torch.dtype:
    """The dtype autocast would run the head's matmul in, else the hidden states' own."""
    kind = h.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else h.dtype


def _chunked_pass(
    h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, row_weights: torch.Tensor, want_grad: bool
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(Σ_t w_t·NLL_t, dL/dh, dL/dW) over h chunk by chunk; the gradients are None unless asked for."""
    dtype = _compute_dtype(h)
    with torch.autocast(h.device.type, enabled=False):
        w = weight.to(dtype)
        grad_h = torch.empty_like(h) if want_grad else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_grad else None
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        chunk = max(1, CE_CHUNK_ELEMENTS // weight.shape[0])
        for s in range(0, h.shape[0], chunk):
            hc = h[s : s + chunk].to(dtype)
            part, g = _chunk_nll_and_grad(
                (hc @ w.t()).float(), targets[s : s + chunk], row_weights[s : s + chunk], want_grad
            )
            total += part
            if g is not None:
                g = g.to(dtype)
                grad_h[s : s + chunk] = g @ w  # type: ignore[index]
                grad_w += g.t() @ hc if dtype == torch.float32 else (g.t() @ hc).float()  # type: ignore[operator]
    return total, grad_h, grad_w


class _ChunkedLMNLL(torch.autograd.Function):
    """Σ_t w_t·NLL_t of the tied LM head; forward also computes both gradients, backward scales them."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, row_weights: torch.Tensor
    ) -> torch.Tensor:
        total, grad_h, grad_w = _chunked_pass(h, weight, targets, row_weights, want_grad=True)
        ctx.save_for_backward(grad_h, grad_w.to(weight.dtype))  # type: ignore[union-attr]
        return total

    @staticmethod
    def backward(ctx: Any, grad_total: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        grad_h, grad_w = ctx.saved_tensors
        return grad_h * grad_total.to(grad_h.dtype), grad_w * grad_total.to(grad_w.dtype), None, None


def chunked_lm_nll(
    h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, row_weights: torch.Tensor
) -> torch.Tensor:
    """Σ_t w_t · −log softmax(h_t Wᵀ)[y_t] for hidden rows h (M, C), head weight W (V, C), targets (M,)
    and row weights (M,) (1/M gives the mean), a few hundred rows at a time (module docstring). Equal to
    `(row_weights * F.cross_entropy(h @ W.T, targets, reduction="none")).sum()` in value and gradient."""
    if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
        return _ChunkedLMNLL.apply(h, weight, targets, row_weights)
    return _chunked_pass(h, weight, targets, row_weights, want_grad=False)[0]


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.h = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias) if config.ln_placement == "pre" else None
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied input/output embeddings (GPT-1, GPT-2)
        self.head = nn.Linear(config.n_embd, config.n_head_outputs) if config.n_head_outputs else None
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        """All weight init in one place.

        | tensor                         | init                                   | source            |
        |--------------------------------|----------------------------------------|-------------------|
        | Linear weights, wte, wpe       | N(0, 0.02)                             | GPT-1 §4.1, GPT-2 |
        | attn.c_proj, mlp.c_proj weight | N(0, 0.02 / sqrt(2 · n_layer))         | GPT-2 §2.3        |
        | head weight (scalar/classes)   | N(0, 1 / sqrt(n_embd + 1))             | lm-human-prefs    |
        | biases                         | 0                                      |                   |
        | LayerNorm                      | weight 1, bias 0                       |                   |
        """
        if isinstance(module, nn.Linear):
            std = 0.02
            if module is self.head:
                std = 1.0 / math.sqrt(self.config.n_embd + 1)
            elif any(module is blk.attn.c_proj or module is blk.mlp.c_proj for blk in self.h):
                std = 0.02 / math.sqrt(2 * self.config.n_layer)
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, include_embeddings: bool = True) -> int:
        """Parameters counted once (tied weights once). Without embeddings: the N of scaling laws."""
        n = sum(p.numel() for p in self.parameters())
        if not include_embeddings:
            n -= self.wte.weight.numel() + self.wpe.weight.numel()
        return n

    def positions(
        self,
        B: int,
        T: int,
        device: torch.device,
        pad_mask: torch.Tensor | None,
        cache: KVCache | None,
        segments: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Position ids (B, T): counted over real tokens only, so left padding does not shift them; with
        packed `segments`, restarting at 0 at every segment."""
        if segments is not None:
            return segment_positions(segments)
        if cache is not None and pad_mask is None:
            return cache.next_pos[:, None] + torch.arange(T, device=device)  # next_pos >= 0: no clamp
        if cache is not None:
            return (cache.next_pos[:, None] + pad_mask.long().cumsum(1) - 1).clamp(min=0)
        if pad_mask is not None:
            return (pad_mask.long().cumsum(1) - 1).clamp(min=0)
        return torch.arange(T, device=device)[None, :].expand(B, T)

    def hidden(
        self,
        idx: torch.Tensor,
        *,
        pad_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        segments: torch.Tensor | None = None,
        keep: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Final hidden states (B, T, C). pad_mask (B, T): True on real tokens (padding on the left).

        segments (B, T) int: packed rows instead, several documents per row, each one contiguous run of
        ids 1, 2, ... (0 = padding, usually at the row's end). Attention stays within a document and
        positions restart at each document, so each document's states equal running it alone. Not
        combinable with pad_mask or a KV cache.

        keep (B, K) long: the only positions whose states the caller reads (a reward model's last token,
        PPO's answer positions, the last prompt token before decoding); the result is then (B, K, C),
        equal to hidden(...)[b, keep[b]]. The last block computes its attention queries, output
        projection and MLP at those positions only: no later layer needs the others, and the keys and
        values it attends to still come from every position. Repeats are allowed."""
        B, T = idx.shape
        if keep is not None and (keep.dim() != 2 or keep.shape[0] != B or keep.dtype != torch.long):
            raise ValueError(f"keep must be a (B={B}, K) long tensor, got {keep.dtype} {tuple(keep.shape)}")
        if segments is not None and (cache is not None or pad_mask is not None):
            raise ValueError(
                "segments (packed rows) cannot be combined with "
                f"{'a KV cache' if cache is not None else 'pad_mask'}: pass segments alone "
                "(padding is segment id 0)"
            )
        if segments is not None and segments.shape != idx.shape:
            raise ValueError(f"segments has shape {tuple(segments.shape)}, expected idx's shape {(B, T)}")
        end = T + (cache.length if cache is not None else 0)
        limit = min(cache.max_len, self.config.block_size) if cache is not None else self.config.block_size
        if end > limit:
            raise ValueError(f"sequence of {end} tokens exceeds the limit of {limit} (block_size/cache)")
        if cache is not None:
            if pad_mask is not None and bool(pad_mask.all()):  # prompts of one length: no padding after all
                pad_mask = None
            cache.padded = cache.padded or pad_mask is not None
            cache.key_mask[:, cache.length : cache.length + T] = pad_mask if pad_mask is not None else True
        # positions never exceed the slot index (< end <= block_size), so no device sync is needed to check them
        pos = self.positions(B, T, idx.device, pad_mask, cache, segments)
        x = dropout(self.wte(idx) + self.wpe(pos), self.config.dropout, self.training)  # (B, T, C)
        dense_mask, band_mask = attention_masks(self.config, T, idx.device, pad_mask, cache, segments)
        varying = cache is not None or dense_mask is not None or band_mask is not None or keep is not None
        start = cache.length if cache is not None else 0
        with attention_backends(idx.device, varying):
            for layer, block in enumerate(self.h):
                mask = band_mask if self.config.is_sparse_layer(layer) else dense_mask
                if keep is not None and layer == len(self.h) - 1:
                    x = block(x, kept_query_mask(mask, keep, T, start), cache, layer, keep)
                else:
                    x = block(x, mask, cache, layer)
        if cache is not None:
            cache.next_pos = pos[:, -1] + 1
            cache.length += T
        return self.ln_f(x) if self.ln_f is not None else x

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        pad_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        segments: torch.Tensor | None = None,
        keep: torch.Tensor | None = None,
        return_logits: bool = True,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Next-token logits (B, T, V) and, given targets (B, T), the mean cross-entropy over targets
        that are not IGNORE_INDEX. pad_mask, cache, segments and keep as in `hidden` (with keep, logits
        and targets are (B, K, ...): the positions kept).

        return_logits=False (with targets): the loss is all the caller needs, so on CPU it is taken by
        `chunked_lm_nll` and the logits come back as None (elsewhere they are computed as usual)."""
        if targets is not None and not return_logits and self._chunked_loss_applies(idx):
            if keep is None:  # the loss reads only the states that have a target (SFT: assistant tokens)
                keep, targets = target_positions(targets)
            hidden = self.hidden(idx, pad_mask=pad_mask, cache=cache, segments=segments, keep=keep)
            has_target = (targets != IGNORE_INDEX).flatten()
            rows, kept_targets = hidden.flatten(0, 1)[has_target], targets.flatten()[has_target]
            if len(kept_targets) == 0:
                return None, hidden.sum() * 0.0  # no targets: a zero that keeps the graph
            weights = torch.full_like(kept_targets, 1.0 / len(kept_targets), dtype=torch.float32)
            return None, self.weighted_lm_nll(rows, kept_targets, weights)
        hidden = self.hidden(idx, pad_mask=pad_mask, cache=cache, segments=segments, keep=keep)
        logits = self.lm_head(hidden)  # (B, T, V)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(
            logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE_INDEX
        )
        return logits, loss

    def weighted_lm_nll(
        self, rows: torch.Tensor, targets: torch.Tensor, row_weights: torch.Tensor
    ) -> torch.Tensor:
        """Σ_t w_t · −log p(y_t) for hidden rows (M, C), targets (M,), weights (M,): `chunked_lm_nll` on CPU,
        the plain head and cross-entropy elsewhere."""
        if self._chunked_loss_applies(rows):
            return chunked_lm_nll(rows, self.lm_head.weight, targets, row_weights)
        nll = F.cross_entropy(self.lm_head(rows).float(), targets, reduction="none")
        return (row_weights * nll).sum()

    @staticmethod
    def _chunked_loss_applies(x: torch.Tensor) -> bool:
        """The chunked loss is measured faster on CPU only, and torch.compile fuses the plain one itself."""
        return x.device.type == "cpu" and not torch.compiler.is_compiling()

    def final_states(self, idx: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, C): the state on each right-padded row's last real token (position lengths − 1), the one a
        classifier or reward head reads; the last block runs at that position only (`keep`)."""
        return self.hidden(idx, keep=(lengths - 1)[:, None])[:, 0]

    def head_outputs(self, hidden: torch.Tensor) -> torch.Tensor:
        """The linear head on hidden states: (..., C) -> (..., n_head_outputs)."""
        if self.head is None:
            raise ValueError("this model has no head: build it with n_head_outputs > 0 (see with_head)")
        return self.head(hidden)


def with_head(model: GPT, n_outputs: int) -> GPT:
    """A copy of `model` whose linear head has `n_outputs` outputs (new head freshly initialised;
    an existing head of the same width is kept). The trunk weights are copied, `model` is unchanged."""
    new = GPT(replace(model.config, n_head_outputs=n_outputs)).to(next(model.parameters()).device)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}
    if model.head is not None and model.config.n_head_outputs == n_outputs:
        state.update({f"head.{k}": v for k, v in model.head.state_dict().items()})
    missing, unexpected = new.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith("head.") for k in missing), (missing, unexpected)
    return new


def count_params(config: GPTConfig, include_embeddings: bool = True) -> int:
    """Parameter count without allocating memory (built on the meta device)."""
    with torch.device("meta"):
        return GPT(config).num_params(include_embeddings)


def flops_per_token(config: GPTConfig, seq_len: int | None = None) -> float:
    """Training FLOPs per token, PaLM (arXiv 2204.02311) appendix B: 6·N + 12·L·C·T, where N counts the
    matmul weights (blocks plus the tied LM head) and 12·L·C·T is the attention scores and values."""
    T = seq_len or config.block_size
    C, L, V = config.n_embd, config.n_layer, config.vocab_size
    n_matmul = 12 * L * C * C + V * C  # per-block qkv/proj/mlp weights + the (tied) LM head
    return 6 * n_matmul + 12 * L * C * T


__all__ = [
    "GPT",
    "GPTConfig",
    "IGNORE_INDEX",
    "KVCache",
    "PRESETS",
    "chunked_lm_nll",
    "count_params",
    "flops_per_token",
    "with_head",
]
