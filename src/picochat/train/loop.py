"""The one training loop every stage shares: AdamW, warmup + cosine, accumulation, clipping, autocast,
non-finite checks, evaluation, JSONL logging, atomic checkpoints and exact resume, DDP and FSDP.

A stage hands the loop a `BatchSource` (next_batch / state_dict / load_state_dict) and a
`loss_fn(model, batch) -> StepOut(loss_sum, n_items, ...)`. The loop backpropagates the *sum* of each
micro-batch's loss and, once all micro-batches of a step are done, divides the gradients by the global
number of items (tokens in the loss) across micro-batches and ranks (as torchtitan and TRL do). So
micro 8 × accum 1 and micro 2 × accum 4, or 1 rank and 2 ranks, give the gradient of one big batch,
even when batches hold different numbers of masked tokens (SFT).

The learning-rate schedule is a pure function of the step (GPT-3 appendix B: linear warmup, cosine decay
to 10% of the peak). Weight decay applies to matrices only (nanoGPT). PPO runs its own outer loop but
updates through `optimizer_step`, so clipping and the non-finite check exist once.

Under torchrun the loss runs inside the wrapper's forward (`self.module(loss_fn, batch)`, see
train/parallel.py), so a stage's loss may use any part of the GPT (hidden states, heads). Under FSDP
the trainer's `model` is replaced by a plain, full copy when `run()` returns (every rank calls the
gather), so the stage can evaluate, generate and save on rank 0 as on one process.

With run.prefetch on a CUDA device the source is read one batch ahead (`Prefetcher`): after a
micro-step's backward is queued, the CPU builds the next batch into pinned memory and starts its copy to
the GPU (non_blocking), so batch assembly and the copy overlap the GPU's work instead of following it.
Off by default: on an H100 it made the tiny preset's steps 2-15% slower (pinning is one more host copy,
and a step bound by kernel launches has no idle GPU time to hide the batch behind); it pays only where
building a batch is slow next to a GPU-bound step.

`run.dtype=auto` is resolved by timing a matmul; the result is stored in the checkpoint meta ("dtype")
and a stage's --resume continues in it (pin_resumed_dtype) rather than measuring again.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import math
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as torch_dist
from torch import nn
from tqdm import tqdm

from picochat.checkpoint import (
    CheckpointError,
    atomic_write_text,
    checkpoint_meta,
    flatten_optimizer,
    load_model_weights,
    load_trainer_state,
    save_checkpoint,
    unflatten_optimizer,
)
from picochat.config import OptimConfig, RunConfig, is_device_name
from picochat.model import GPT
from picochat.tokenizer import Tokenizer

CKPT_DIR = "ckpt"
METRICS_FILE = "metrics.jsonl"


class NonFiniteError(RuntimeError):
    """The loss or gradient norm became NaN/inf and the run was told to stop."""


class BatchSource(Protocol):
    def next_batch(self) -> Any: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def batch_to(batch: Any, device: torch.device, pin: bool) -> Any:
    """A batch (a tensor, or a tuple, list or dataclass holding tensors) with its tensors on `device`.

    With pin=True each tensor goes through page-locked host memory first: only a copy from there is
    asynchronous (non_blocking), a copy from pageable memory waits for the GPU."""
    if isinstance(batch, torch.Tensor):
        return (batch.pin_memory() if pin else batch).to(device, non_blocking=pin)
    if isinstance(batch, (tuple, list)):
        return type(batch)(batch_to(item, device, pin) for item in batch)
    if is_dataclass(batch) and not isinstance(batch, type):
        return replace(
            batch, **{f.name: batch_to(getattr(batch, f.name), device, pin) for f in fields(batch)}
        )
    return batch


class Prefetcher:
    """A BatchSource read one batch ahead, that batch already on (or on its way to) the device.

    The trainer calls `prefetch()` once a micro-step's backward is queued, so the next batch is drawn
    while the GPU computes. `state_dict()` is the source's position *before* the batch held ahead, so a
    checkpoint resumes at the first batch not yet trained on and resume stays exact."""

    def __init__(self, source: BatchSource, device: torch.device, pin: bool) -> None:
        self.source, self.device, self.pin = source, device, pin
        self.ahead: Any = None
        self.ahead_state: dict[str, Any] = {}

    def prefetch(self) -> None:
        if self.ahead is None:
            self.ahead_state = copy.deepcopy(self.source.state_dict())
            self.ahead = batch_to(self.source.next_batch(), self.device, self.pin)

    def next_batch(self) -> Any:
        self.prefetch()
        batch, self.ahead = self.ahead, None
        return batch

    def state_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self.ahead_state) if self.ahead is not None else self.source.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ahead = None
        self.source.load_state_dict(state)


@dataclass
class StepOut:
    """What a stage's loss_fn returns for one micro-batch."""

    loss_sum: torch.Tensor  # scalar, summed over items (the loop normalises)
    n_items: int | torch.Tensor  # items in the sum (e.g. target tokens)
    n_tokens: int = 0  # tokens processed, for throughput (0 = n_items)
    metrics: dict[str, float] = field(default_factory=dict)  # extra sums, averaged per item like the loss


@dataclass(frozen=True, slots=True)
class Dist:
    """Rank, world size and device of this process, read once (cli.py reads the torchrun env vars)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @classmethod
    def alone(cls, device_name: str) -> Dist:
        """One process on run.device: what a stage called from Python without a `dist` runs on."""
        return cls(device=resolve_device(device_name))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


@dataclass
class TrainState:
    """Everything besides model and optimizer that a resumed run needs."""

    step: int = 0
    tokens_seen: int = 0
    best_val: float = math.inf
    elapsed_s: float = 0.0
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Plan:
    """Derived numbers, printed at the start of a run (never written back into the config)."""

    params: int
    micro_batch: int
    grad_accum: int
    world_size: int
    items_per_step: str
    loss_averaged_over: str
    max_steps: int
    dtype: str
    device: str


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """auto (cuda:local_rank if there is a GPU, else cpu), cpu, cuda, cuda:N or mps as a torch.device."""
    if not is_device_name(name):
        raise ValueError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device(f"cuda:{local_rank}")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(
            f"device {name!r} (run.device or --device) asked for, but CUDA is not available; use cpu or auto"
        )
    if name == "cuda":
        return torch.device(f"cuda:{local_rank}")
    return torch.device(name)


@functools.lru_cache(maxsize=8)
def bf16_is_fast(device_type: str) -> bool:
    """Time a matmul in fp32 and under bf16 autocast once; bf16 only where it is not slower.

    CPUs differ: with AMX bf16 runs ~2x fp32, with AVX2 alone it is 10-20x slower.
    """
    if device_type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device_type != "cpu":
        return False
    a, b = torch.randn(512, 512), torch.randn(512, 512)

    def timed(dtype: torch.dtype | None) -> float:
        ctx = torch.autocast("cpu", dtype=dtype) if dtype else contextlib.nullcontext()
        with ctx:
            for _ in range(2):
                a @ b
            t = time.perf_counter()
            for _ in range(8):
                a @ b
        return time.perf_counter() - t

    return timed(torch.bfloat16) < 0.9 * timed(None)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32."""
    if name == "float32":
        return None
    if name == "bfloat16":
        return torch.bfloat16
    if name == "float16":
        if device.type != "cuda":
            raise ValueError("run.dtype=float16 needs a CUDA device (use bfloat16 or float32 on CPU)")
        return torch.float16
    return torch.bfloat16 if bf16_is_fast(device.type) else None


def dtype_name(dtype: torch.dtype | None) -> str:
    """The run.dtype spelling of an autocast dtype (None is float32)."""
    return str(dtype or torch.float32).replace("torch.", "")


def pin_resumed_dtype(
    run: RunConfig, ckpt_dir: Path, resume: bool, warn: Callable[[str], Any] = print
) -> RunConfig:
    """`run` with the dtype of the checkpoint a --resume continues.

    run.dtype=auto measures which dtype is fast (bf16_is_fast); a resumed run could measure differently
    (another machine, a busy CPU) and go on in another precision than the steps it continues. So with
    auto the dtype recorded in ckpt_dir's meta is used; an explicit run.dtype wins, with a warning when
    it differs from the record. Without resume, or without a readable record, `run` is returned as is.
    """
    if not resume:
        return run
    try:
        stored = checkpoint_meta(ckpt_dir).get("dtype")
    except CheckpointError:  # no checkpoint yet (or a broken one, which the resume itself reports)
        return run
    if stored not in ("float32", "bfloat16", "float16"):
        return run
    if run.dtype == "auto":
        return replace(run, dtype=stored)
    if run.dtype != stored:
        warn(
            f"warning: run.dtype={run.dtype}, but {ckpt_dir} was trained in {stored}; going on in {run.dtype}"
        )
    return run


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def lr_at(step: int, cfg: OptimConfig) -> float:
    """Linear warmup to cfg.lr, then cosine decay to cfg.lr * cfg.min_lr_ratio at cfg.max_steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / (cfg.warmup_steps + 1)
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - floor)


def build_optimizer(model: nn.Module, cfg: OptimConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (2-D+ tensors); fused kernel where torch has one."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    fused = device.type in ("cuda", "cpu")
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=fused)


def all_reduce_sum(values: torch.Tensor, dist: Dist) -> torch.Tensor:
    if dist.enabled:
        torch_dist.all_reduce(values, op=torch_dist.ReduceOp.SUM)
    return values


def optimizer_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    step: int,
    cfg: OptimConfig,
    grad_scale: float = 1.0,
) -> tuple[float, float]:
    """Scale gradients, clip, set the scheduled LR and step. Returns (grad norm before clipping, lr).

    A non-finite gradient norm skips the update (gradients are zeroed) and returns the norm, so the
    caller decides to stop or go on.
    """
    params = [p for p in model.parameters() if p.grad is not None]
    if grad_scale != 1.0:
        for p in params:
            p.grad.mul_(grad_scale)
    max_norm = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
    gnorm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    lr = lr_at(step, cfg)
    if math.isfinite(gnorm):
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return gnorm, lr


def rng_tensors() -> dict[str, torch.Tensor]:
    out = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"rng.cuda.{i}"] = s
    return out


def restore_rng(tensors: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


class MetricsLog:
    """Append-only JSONL of metric records; on resume, records past the resumed step are dropped."""

    def __init__(self, path: Path, enabled: bool, resume_step: int | None) -> None:
        self.path = path
        self.enabled = enabled
        if not enabled:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            atomic_write_text(path, "")
        elif path.exists():  # rewritten whole and atomically: a crash here must not lose the old curve
            keep = [r for r in read_metrics(path) if r.get("step", 0) <= resume_step]
            atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in keep))

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a metrics JSONL file. A torn last line (a write cut short by a crash or a full
    disk) is dropped; a bad line before the last raises ValueError naming the file and line."""
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    records = []
    for no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            if no == len(lines):
                break
            raise ValueError(f"{path}:{no}: not valid JSON ({e.msg}); delete the line to go on") from None
    return records


class GracefulStop:
    """Turns SIGINT/SIGTERM into a flag the loop checks between steps (it then saves and exits)."""

    def __init__(self) -> None:
        self.requested = False
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> GracefulStop:
        with contextlib.suppress(ValueError):  # signals work only in the main thread
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self.handle)
        return self

    def handle(self, signum: int, frame: Any) -> None:
        if self.requested:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


class StopRequested(Exception):
    """Raised after a graceful stop has written its checkpoint."""


def log_line(step: int, max_steps: int, rec: dict[str, Any]) -> str:
    parts = [f"step {step}/{max_steps}"]
    for key, fmt in (("train/loss", "loss {:.4f}"), ("gnorm", "gnorm {:.2f}"), ("lr", "lr {:.1e}")):
        if key in rec:
            parts.append(fmt.format(rec[key]))
    parts.append(f"{rec.get('ms', 0):.0f} ms")
    parts.append(f"{rec.get('tok/s', 0) / 1000:.1f}k tok/s")
    return " | ".join(parts)


@dataclass
class Trainer:
    """Runs `optim.max_steps` optimizer steps of a stage and keeps `out_dir/ckpt` resumable."""

    model: GPT
    tok: Tokenizer
    source: BatchSource
    loss_fn: Callable[[nn.Module, Any], StepOut]
    optim_cfg: OptimConfig
    run_cfg: RunConfig
    out_dir: Path
    dist: Dist = field(default_factory=Dist)
    eval_fn: Callable[[nn.Module], dict[str, float]] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    items_name: str = "tokens"  # what loss_fn's n_items counts; printed in the plan

    def __post_init__(self) -> None:
        self.device = self.dist.device
        self.dtype = resolve_dtype(self.run_cfg.dtype, self.device)
        self.model.to(self.device)
        if self.device.type == "cuda" and self.run_cfg.prefetch:
            self.source = Prefetcher(self.source, self.device, pin=True)
        self.module = self.wrap(self.model)
        self.sharded = self.dist.enabled and self.run_cfg.parallel == "fsdp"
        self.optimizer = build_optimizer(self.model, self.optim_cfg, self.device)
        self.state = TrainState()

    def wrap(self, model: GPT) -> nn.Module:
        """The module called as `module(fn, *args)` -> fn(model, *args): DDP/FSDP under torchrun."""
        from picochat.train.parallel import wrap_model

        return wrap_model(model, self.dist, self.run_cfg, self.dtype)

    @property
    def ckpt_dir(self) -> Path:
        return self.out_dir / CKPT_DIR

    def plan(self) -> Plan:
        return Plan(
            params=self.model.num_params(),
            micro_batch=self.optim_cfg.batch_size,
            grad_accum=self.optim_cfg.grad_accum,
            world_size=self.dist.world_size,
            items_per_step=f"{self.optim_cfg.batch_size * self.optim_cfg.grad_accum * self.dist.world_size} sequences",
            loss_averaged_over=self.items_name,
            max_steps=self.optim_cfg.max_steps,
            dtype=dtype_name(self.dtype),
            device=str(self.device),
        )

    def print(self, msg: str) -> None:
        if self.dist.is_main:
            tqdm.write(msg)

    # -- checkpointing -------------------------------------------------------------------------------
    def save(self) -> None:
        model, opt_state = self.model, None
        if self.sharded:  # FSDP: every rank takes part in gathering the full tensors, rank 0 writes them
            from picochat.train.parallel import gather_full

            model, opt_state = gather_full(self.model, self.optimizer)
        if not self.dist.is_main:
            return
        tensors, opt_rest = flatten_optimizer(opt_state or self.optimizer.state_dict())
        tensors.update(rng_tensors())
        self.state.data = self.source.state_dict()
        trainer_json = {"state": asdict(self.state), "optimizer": opt_rest}
        meta = {
            **self.meta, "step": self.state.step, "tokens_seen": self.state.tokens_seen,
            "dtype": dtype_name(self.dtype),  # what a --resume with run.dtype=auto goes on in
        }  # fmt: skip
        save_checkpoint(
            self.ckpt_dir, model, self.tok, meta=meta, trainer_tensors=tensors, trainer_json=trainer_json
        )

    def resume(self) -> bool:
        """Load model, optimizer, RNG, data position and TrainState from out_dir/ckpt if it is resumable."""
        loaded = load_trainer_state(self.ckpt_dir)
        if loaded is None:
            return False
        tensors, rest = loaded
        optim_state = unflatten_optimizer(tensors, rest["optimizer"])
        if self.sharded:  # FSDP: each rank keeps its shard of the consolidated tensors
            from picochat.train.parallel import load_full

            load_full(self.model, self.optimizer, self.ckpt_dir / "model.safetensors", optim_state)
        else:
            load_model_weights(self.model, self.ckpt_dir / "model.safetensors")
            self.optimizer.load_state_dict(optim_state)
        restore_rng(tensors)
        self.state = TrainState(**rest["state"])
        self.source.load_state_dict(self.state.data)
        return True

    # -- the loop --------------------------------------------------------------------------------------
    def micro_step(self, batch: Any, sync: bool) -> tuple[torch.Tensor, torch.Tensor, int, dict[str, float]]:
        no_sync = getattr(self.module, "no_sync", None)
        ctx = no_sync() if (no_sync is not None and not sync) else contextlib.nullcontext()
        with ctx:
            with autocast(self.device, self.dtype):
                out = self.module(self.loss_fn, batch)
            out.loss_sum.backward()
        if isinstance(self.source, Prefetcher):
            self.source.prefetch()  # the backward is queued: build the next batch while the GPU runs it
        n = torch.as_tensor(out.n_items, dtype=torch.float64)
        return out.loss_sum.detach().double().cpu(), n, out.n_tokens or int(n), out.metrics

    def train_step(self) -> dict[str, Any]:
        """One optimizer step over grad_accum micro-batches. Returns the step's metric record."""
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), dtype=torch.float64)
        n_items = torch.zeros((), dtype=torch.float64)
        n_tokens = 0
        extra: dict[str, float] = {}
        accum = self.optim_cfg.grad_accum
        for micro in range(accum):
            batch = self.source.next_batch()
            l_sum, n, tokens, metrics = self.micro_step(batch, sync=micro == accum - 1)
            loss_sum += l_sum
            n_items += n
            n_tokens += tokens
            for k, v in metrics.items():
                extra[k] = extra.get(k, 0.0) + float(v)
        totals = all_reduce_sum(
            torch.stack([loss_sum, n_items, torch.tensor(float(n_tokens), dtype=torch.float64)]), self.dist
        )
        global_items = max(float(totals[1]), 1.0)
        # DDP averaged the gradients over ranks; turn that into the sum over all items / global items
        scale = self.dist.world_size / global_items
        loss = float(totals[0]) / global_items
        if not math.isfinite(loss):
            self.optimizer.zero_grad(set_to_none=True)
            gnorm, lr = math.nan, lr_at(self.state.step, self.optim_cfg)
        else:
            gnorm, lr = optimizer_step(self.model, self.optimizer, self.state.step, self.optim_cfg, scale)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        rec = {
            "step": self.state.step + 1, "train/loss": loss, "gnorm": gnorm, "lr": lr,
            "ms": dt * 1000, "tok/s": float(totals[2]) / dt,
        }  # fmt: skip
        rec.update({f"train/{k}": v / max(float(n_items), 1.0) for k, v in extra.items()})
        self.state.tokens_seen += int(totals[2])
        self.state.elapsed_s += dt
        return rec

    def evaluate(self) -> dict[str, float]:
        if self.eval_fn is None:
            return {}
        self.model.eval()
        with torch.no_grad(), autocast(self.device, self.dtype):
            # FSDP: through the sharded root (every rank evaluates); else on the plain model
            out = self.module(self.eval_fn) if self.sharded else self.eval_fn(self.model)
        if self.sharded:
            self.module.reshard()  # the root stays gathered after a forward without a backward
        self.model.train()
        return out

    def consolidate(self) -> None:
        """FSDP: make `self.model` a plain GPT with full tensors on every rank (collective)."""
        if not self.sharded:
            return
        from picochat.train.parallel import StageForward, gather_model

        self.model = gather_model(self.model).to(self.device)
        self.module, self.sharded = StageForward(self.model), False

    def check_finite(self, rec: dict[str, Any]) -> bool:
        if math.isfinite(rec["train/loss"]) and math.isfinite(rec["gnorm"]):
            return True
        what = "loss" if not math.isfinite(rec["train/loss"]) else "gradient norm"
        msg = f"non-finite {what} at step {rec['step']}"
        if self.run_cfg.on_nonfinite == "stop":
            raise NonFiniteError(
                f"{msg}; stopped without updating. The last good checkpoint is {self.ckpt_dir} "
                f"(step {self.state.step}). Lower optim.lr or set run.on_nonfinite=skip."
            )
        self.print(f"warning: {msg}; step skipped (run.on_nonfinite=skip)")
        return False

    def run(self, resume: bool = False) -> TrainState:
        resumed = self.resume() if resume else False
        log = MetricsLog(self.out_dir / METRICS_FILE, self.dist.is_main, self.state.step if resumed else None)
        plan = self.plan()
        self.print("plan: " + ", ".join(f"{k}={v}" for k, v in asdict(plan).items()))
        if resumed:
            self.print(f"resumed from {self.ckpt_dir} at step {self.state.step}")
        self.model.train()
        cfg, max_steps = self.run_cfg, self.optim_cfg.max_steps
        bar = tqdm(
            total=max_steps, initial=self.state.step, disable=not (cfg.progress and self.dist.is_main),
            desc=self.meta.get("stage", "train"), dynamic_ncols=True, leave=False,
        )  # fmt: skip
        with GracefulStop() as stop, bar:
            while self.state.step < max_steps:
                rec = self.train_step()
                ok = self.check_finite(rec)
                self.state.step += 1
                bar.update(1)
                if ok:
                    bar.set_postfix(loss=f"{rec['train/loss']:.3f}", toks=f"{rec['tok/s']:.0f}/s")
                last = self.state.step == max_steps
                if self.state.step % cfg.log_every == 0 or last or self.state.step == 1:
                    log.write(rec)
                    self.print(log_line(self.state.step, max_steps, rec))
                if self.state.step % cfg.eval_every == 0 or last:
                    val = self.evaluate()
                    if val:
                        val_loss = val.get("val/loss", math.inf)
                        self.state.best_val = min(self.state.best_val, val_loss)
                        log.write({"step": self.state.step, **val})
                        self.print(
                            f"eval step {self.state.step}: "
                            + " | ".join(f"{k} {v:.4f}" for k, v in val.items())
                        )
                if self.state.step % cfg.save_every == 0 or last or stop.requested:
                    self.save()
                if stop.requested:
                    self.print(f"stopped by signal at step {self.state.step}; checkpoint in {self.ckpt_dir}")
                    raise StopRequested(str(self.ckpt_dir))
        self.consolidate()
        return self.state


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
