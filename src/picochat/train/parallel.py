"""Data parallelism for the shared loop: DDP (replicate) or FSDP2 (shard), applied to an already-built GPT.

- DDP (Li et al., "PyTorch Distributed", arXiv 2006.15704): every rank holds the whole model; gradients
  are averaged across ranks in buckets during backward. The default (`run.parallel=ddp`).
- FSDP (Zhao et al., "PyTorch FSDP", arXiv 2304.11277), here FSDP2 `fully_shard`: every rank holds
  1/world of each parameter and of the optimizer state; a block's weights are all-gathered just before
  use and its gradients reduce-scattered (averaged) after. Each Transformer block is one unit; the
  embeddings, final LayerNorm, tied LM head and optional head form the root unit. With a bf16/fp16
  compute dtype the gathered weights are cast to it (`MixedPrecisionPolicy`) and gradients are reduced
  in fp32. `run.parallel=fsdp`.

The model file contains no parallelism: `wrap_model` takes a plain `GPT` (torchtitan's rule). Both
modes average gradients over ranks, which the loop turns into a sum over the global items.

Checkpoints are always consolidated: `gather_full` collects full, unsharded tensors of the model and
of the optimizer state (in torch's own integer-keyed layout) so rank 0 writes the very same files as a
single process would; `load_full` scatters such files back into a sharded model. Hence a checkpoint
written by N ranks resumes on 1 and vice versa, under DDP or FSDP.

Every stage trains through the same wrapper. DDP syncs the gradients of the parameters used inside its
own forward, and FSDP2 gathers the root's parameters (embeddings, final LN, heads) in its own forward
hook, so a loss that calls `gpt.hidden`, `gpt.lm_head` or `gpt.head_outputs` on the bare GPT would
bypass both.
`StageForward` makes any function of the GPT the forward of one module: `module(fn, *args)` runs
`fn(gpt, *args)` inside DDP's or FSDP's forward, so the stages' loss functions (GPT-1 heads, reward,
PPO policy/value) need no special forward of their own. Every parameter of the GPT must take part in
each synced forward (DDP without `find_unused_parameters`): the tied LM head is the embedding, so a
stage only has to use its head, which all the head losses do.

Cross-rank statistics: `mean_over_ranks` (metric records) and `global_masked_whiten` (PPO advantages
and rewards whitened with the mean and variance of every rank's tokens, two all-reduces).

Deviation: FSDP2 has no `no_sync`, so under gradient accumulation FSDP reduce-scatters on every
micro-step (same result, more communication); DDP syncs only on the last micro-step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as torch_dist
from torch import nn

from picochat.checkpoint import load_model_weights
from picochat.model import GPT
from picochat.train import rl_math

if TYPE_CHECKING:
    from picochat.config import RunConfig
    from picochat.train.loop import Dist


class StageForward(nn.Module):
    """The module that DDP/FSDP wrap: `module(fn, *args)` returns `fn(gpt, *args)`, computed inside the
    wrapper's forward so every use of the GPT's parameters is seen (gradient sync, FSDP gathering)."""

    def __init__(self, gpt: nn.Module) -> None:
        super().__init__()
        self.gpt = gpt

    def forward(self, fn: Callable[..., Any], *args: Any) -> Any:
        return fn(self.gpt, *args)


def wrap_model(model: GPT, dist: Dist, run_cfg: RunConfig, dtype: torch.dtype | None) -> nn.Module:
    """The module a stage runs forward/backward through, called as `module(fn, *args)` (StageForward):
    one process: StageForward(model); DDP: DDP(StageForward(model)); FSDP: StageForward(model) sharded
    in place. run.compile compiles the GPT inside (FSDP runs uncompiled).

    Under torchrun the process group must already be initialised (cli.dist_from_env does it: gloo on
    CPU, nccl on GPU).
    """
    model.to(dist.device)
    if not dist.enabled:
        return StageForward(torch.compile(model) if run_cfg.compile else model)
    if not torch_dist.is_initialized():
        raise ValueError(
            f"world_size={dist.world_size} but torch.distributed is not initialised; "
            "start with `torchrun --nproc_per_node N -m picochat.cli ...`"
        )
    if run_cfg.parallel == "fsdp":
        return shard_model(model, dist, dtype)
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [dist.device.index] if dist.device.type == "cuda" else None
    inner = StageForward(torch.compile(model) if run_cfg.compile else model)
    return DistributedDataParallel(inner, device_ids=device_ids)


def shard_model(model: GPT, dist: Dist, dtype: torch.dtype | None) -> nn.Module:
    """FSDP2: shard each block, then the root StageForward (embeddings, final LN, heads). The GPT's
    parameters become DTensor shards in place; the returned root is what runs forward."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(dist.device.type, (dist.world_size,))
    mp = (
        MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
        if dtype
        else MixedPrecisionPolicy()
    )
    for block in model.h:
        fully_shard(block, mesh=mesh, mp_policy=mp)
    # the root's inputs are whole batches (ids, lengths, float targets): leave their dtypes alone
    return fully_shard(StageForward(model), mesh=mesh, mp_policy=replace(mp, cast_forward_inputs=False))


@contextlib.contextmanager
def no_sync(modules: list[nn.Module], skip: bool) -> Iterator[None]:
    """DDP's `no_sync` on each module when `skip` (accumulate locally; the last backward syncs all)."""
    with contextlib.ExitStack() as stack:
        for module in modules:
            method = getattr(module, "no_sync", None)
            if skip and method is not None:
                stack.enter_context(method())
        yield


def all_reduce_(values: torch.Tensor, dist: Dist) -> torch.Tensor:
    """Sum `values` over the ranks in place (a no-op on one process); returns it."""
    if dist.enabled:
        torch_dist.all_reduce(values, op=torch_dist.ReduceOp.SUM)
    return values


def mean_over_ranks(record: dict[str, float], dist: Dist) -> dict[str, float]:
    """Every value of a metric record averaged over the ranks, in one all-reduce (unchanged on one
    process). Each rank must pass the same keys in the same order."""
    if not dist.enabled:
        return record
    values = all_reduce_(torch.tensor([float(v) for v in record.values()], dtype=torch.float64), dist)
    return {k: float(v) / dist.world_size for k, v in zip(record, values.tolist(), strict=True)}


def global_masked_whiten(
    x: torch.Tensor, mask: torch.Tensor, dist: Dist, shift_mean: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """`rl_math.masked_whiten` with the mean and (Bessel-corrected) variance of the masked elements of
    ALL ranks: two passes, each one all-reduce of (sum, count) then of the squared deviations.
    On one process it is `rl_math.masked_whiten` itself."""
    if not dist.enabled:
        return rl_math.masked_whiten(x, mask, shift_mean=shift_mean, eps=eps)
    device = x.device
    first = all_reduce_(torch.stack([rl_math.masked_sum(x, mask), mask.sum()]).double().to(device), dist)
    n = first[1].clamp(min=1)
    mean = first[0] / n
    sq = all_reduce_(rl_math.masked_sum((x.double() - mean) ** 2, mask).reshape(1).to(device), dist)[0]
    var = sq / n
    if float(first[1]) > 1:
        var = var * n / (n - 1)
    out = (x - mean.to(x.dtype)) * torch.rsqrt(var + eps).to(x.dtype)
    if not shift_mean:
        out = out + mean.to(x.dtype)
    return out * mask


def is_sharded(model: nn.Module) -> bool:
    """True when the model's parameters are DTensor shards (FSDP2)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def full_tensor(value: Any) -> Any:
    """A DTensor gathered into a plain CPU tensor (collective: every rank must call); others unchanged."""
    from torch.distributed.tensor import DTensor

    if isinstance(value, DTensor):
        return value.full_tensor().detach().cpu()
    return value


def gather_model(model: GPT) -> GPT:
    """A plain CPU copy of a sharded GPT with full tensors (collective: every rank must call it, and
    every rank gets the copy)."""
    state = {k: full_tensor(v) for k, v in model.state_dict().items()}
    with torch.device("meta"):
        plain = GPT(replace(model.config))
    plain.to_empty(device="cpu")
    plain.lm_head.weight = plain.wte.weight  # re-tie after to_empty
    plain.load_state_dict(state)
    return plain


def gather_full(model: GPT, optimizer: torch.optim.Optimizer) -> tuple[GPT, dict[str, Any]]:
    """A plain CPU copy of a sharded model and the optimizer state with full tensors.

    Collective: every rank must call it, in step. Every rank gets the full result (rank 0 writes it).
    The optimizer state keeps torch's layout (integer parameter ids), so it is the same as a single
    process's `optimizer.state_dict()` and loads there unchanged.
    """
    plain = gather_model(model)
    opt = optimizer.state_dict()
    opt_state = {pid: {k: full_tensor(v) for k, v in s.items()} for pid, s in opt["state"].items()}
    return plain, {"state": opt_state, "param_groups": opt["param_groups"]}


def load_full(
    model: GPT, optimizer: torch.optim.Optimizer, weights_file: Path, optim_state: dict[str, Any]
) -> None:
    """Load a consolidated checkpoint (model.safetensors + full optimizer state) into a sharded model.

    Every rank reads the same files and keeps its own shard, so no communication is needed.
    """
    with torch.device("meta"):
        plain = GPT(replace(model.config))
    plain.to_empty(device="cpu")
    plain.lm_head.weight = plain.wte.weight
    load_model_weights(plain, weights_file)  # checks every key, shape and value
    full = plain.state_dict()
    with torch.no_grad():
        for name, param in model.state_dict().items():
            param.copy_(shard_like(full[name], param))
    params = [p for group in optimizer.param_groups for p in group["params"]]
    sharded = {
        pid: {k: shard_like(v, params[int(pid)]) if k != "step" else v for k, v in s.items()}
        for pid, s in optim_state["state"].items()
    }
    optimizer.load_state_dict({"state": sharded, "param_groups": optim_state["param_groups"]})


def shard_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`full` cut the way `like` (a DTensor shard) is cut; a plain `like` gets `full` unchanged."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if not isinstance(like, DTensor):
        return full.to(like.device)
    local = full.to(device=like.device, dtype=like.dtype)
    return distribute_tensor(local, like.device_mesh, like.placements, src_data_rank=None)
