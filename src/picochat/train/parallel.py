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

Deviation: FSDP2 has no `no_sync`, so under gradient accumulation FSDP reduce-scatters on every
micro-step (same result, more communication); DDP syncs only on the last micro-step.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor

from picochat.checkpoint import load_model_weights
from picochat.model import GPT

if TYPE_CHECKING:
    from picochat.config import RunConfig
    from picochat.train.loop import Dist


def wrap_model(model: GPT, dist: Dist, run_cfg: RunConfig, dtype: torch.dtype | None) -> nn.Module:
    """The module the loop runs forward/backward through: DDP, or `model` itself sharded in place (FSDP).

    The process group must already be initialised (cli.dist_from_env does it: gloo on CPU, nccl on GPU).
    """
    if not torch.distributed.is_initialized():
        raise ValueError(
            f"world_size={dist.world_size} but torch.distributed is not initialised; "
            "start with `torchrun --nproc_per_node N -m picochat.cli ...`"
        )
    model.to(dist.device)
    if run_cfg.parallel == "fsdp":
        return shard_model(model, dist, dtype)
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [dist.device.index] if dist.device.type == "cuda" else None
    module: nn.Module = DistributedDataParallel(model, device_ids=device_ids)
    return torch.compile(module) if run_cfg.compile else module


def shard_model(model: GPT, dist: Dist, dtype: torch.dtype | None) -> nn.Module:
    """FSDP2: shard each block, then the root (embeddings, final LN, heads). Modifies `model` in place."""
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
    fully_shard(model, mesh=mesh, mp_policy=mp)
    return model


def is_sharded(model: nn.Module) -> bool:
    """True when the model's parameters are DTensor shards (FSDP2)."""
    return any(isinstance(p, DTensor) for p in model.parameters())


def full_tensor(value: Any) -> Any:
    """A DTensor gathered into a plain CPU tensor (collective: every rank must call); others unchanged."""
    if isinstance(value, DTensor):
        return value.full_tensor().detach().cpu()
    return value


def gather_full(model: GPT, optimizer: torch.optim.Optimizer) -> tuple[GPT, dict[str, Any]]:
    """A plain CPU copy of a sharded model and the optimizer state with full tensors.

    Collective: every rank must call it, in step. Every rank gets the full result (rank 0 writes it).
    The optimizer state keeps torch's layout (integer parameter ids), so it is the same as a single
    process's `optimizer.state_dict()` and loads there unchanged.
    """
    state = {k: full_tensor(v) for k, v in model.state_dict().items()}
    with torch.device("meta"):
        plain = GPT(replace(model.config))
    plain.to_empty(device="cpu")
    plain.lm_head.weight = plain.wte.weight  # re-tie after to_empty
    plain.load_state_dict(state)
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
    if not isinstance(like, DTensor):
        return full.to(like.device)
    local = full.to(device=like.device, dtype=like.dtype)
    return distribute_tensor(local, like.device_mesh, like.placements, src_data_rank=None)
