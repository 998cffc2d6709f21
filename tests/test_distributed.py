"""Data parallelism on CPU with two gloo processes: DDP and FSDP2 pre-training give the loss curve of one
process with the same global batch, and checkpoints move between 2 ranks and 1 rank in both directions.

The learning rate is held constant after warmup (min_lr_ratio=1), so a run of 3 steps followed by a
resumed run to 6 sees the same schedule as a straight 6-step run.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp

from dist_helpers import free_port
from picochat.cli import dist_from_env
from picochat.config import CorpusConfig, ModelSpec, OptimConfig, RunConfig
from picochat.data.shards import RandomWindows
from picochat.model import GPT
from picochat.train.loop import Dist, Trainer, read_metrics, seed_everything
from picochat.train.pretrain import lm_loss, open_data, prepare_data

GLOBAL_BATCH = 4
STEPS = 6
HALF = 3
REL_TOL = 1e-5


def train(out_dir: Path, data_dir: Path, dist: Dist, parallel: str, steps: int, resume: bool) -> None:
    """What `pretrain` does, minus the final samples: micro GPT, random windows, the shared Trainer."""
    data = open_data(data_dir)
    seed_everything(0)
    model = GPT(ModelSpec(preset="micro").build(data.tok.vocab_size))
    optim = OptimConfig(
        lr=3e-3, warmup_steps=2, min_lr_ratio=1.0, max_steps=steps, batch_size=GLOBAL_BATCH // dist.world_size
    )
    run = RunConfig(
        device="cpu", dtype="float32", log_every=1, save_every=HALF, progress=False, parallel=parallel
    )
    source = RandomWindows(
        data.train_ids, 64, optim.batch_size, seed=0, rank=dist.rank, world_size=dist.world_size
    )
    trainer = Trainer(
        model=model, tok=data.tok, source=source, loss_fn=lm_loss, optim_cfg=optim, run_cfg=run,
        out_dir=out_dir, dist=dist, meta={"stage": "pretrain"},
    )  # fmt: skip
    trainer.run(resume=resume)


Job = tuple[Path, str, int, bool]  # (out_dir, parallel, max_steps, resume)


def worker(rank: int, port: int, data_dir: Path, jobs: list[Job]) -> None:
    """One of two ranks: runs the jobs one after the other in one process group (one spawn for all)."""
    env = {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "WORLD_SIZE": "2",
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
    }
    os.environ.update(env)  # this spawned process stands in for one torchrun rank
    torch.set_num_threads(1)
    dist = dist_from_env(env, "cpu")
    try:
        for out_dir, parallel, steps, resume in jobs:
            train(out_dir, data_dir, dist, parallel, steps, resume)
    finally:
        torch_dist.destroy_process_group()


def two_ranks(data_dir: Path, jobs: list[Job]) -> None:
    mp.spawn(worker, args=(free_port(), data_dir, jobs), nprocs=2, join=True)


def one_rank(out_dir: Path, data_dir: Path, steps: int, resume: bool) -> None:
    train(out_dir, data_dir, Dist(), "ddp", steps, resume)


def losses(out_dir: Path) -> list[float]:
    return [r["train/loss"] for r in read_metrics(out_dir / "metrics.jsonl") if "train/loss" in r]


def assert_same_curve(got: list[float], want: list[float]) -> None:
    assert len(got) == len(want) == STEPS
    for step, (a, b) in enumerate(zip(got, want, strict=True), start=1):
        assert abs(a - b) <= REL_TOL * abs(b), f"step {step}: {a} vs {b} (curves {got} vs {want})"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dist_data")
    text = root / "corpus.txt"
    text.write_text(
        "".join(
            f"Line {i}: the {w} of the play is {i * 7 % 13} acts long.\n"
            for i, w in enumerate(["king", "fool", "queen"] * 200)
        )
    )
    cfg = CorpusConfig(path=str(text), vocab_size=300, val_fraction=0.1)
    prepare_data(cfg, root / "data", log=lambda *a: None)
    return root / "data"


@pytest.fixture(scope="module")
def reference(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[float]:
    """One process, global batch 4, six steps straight."""
    out = tmp_path_factory.mktemp("ref")
    one_rank(out, data_dir, STEPS, resume=False)
    curve = losses(out)
    assert curve[-1] < curve[0]  # it trains
    return curve


@pytest.fixture(scope="module")
def runs(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """For DDP and FSDP: 2 ranks for 3 steps then 1 rank to 6 ("2to1"), and 1 rank then 2 ranks ("1to2")."""
    dirs = {
        f"{p}/{d}": tmp_path_factory.mktemp(f"{p}_{d}") for p in ("ddp", "fsdp") for d in ("2to1", "1to2")
    }
    for p in ("ddp", "fsdp"):
        one_rank(dirs[f"{p}/1to2"], data_dir, HALF, resume=False)
    jobs: list[Job] = []
    for p in ("ddp", "fsdp"):
        jobs += [(dirs[f"{p}/2to1"], p, HALF, False), (dirs[f"{p}/1to2"], p, STEPS, True)]
    two_ranks(data_dir, jobs)
    for p in ("ddp", "fsdp"):
        one_rank(dirs[f"{p}/2to1"], data_dir, STEPS, resume=True)
    return dirs


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_ranks_equal_one_process_with_the_same_global_batch(
    parallel: str, runs: dict[str, Path], reference: list[float]
) -> None:
    curve = losses(runs[f"{parallel}/2to1"])[:HALF]  # steps 1-3 ran on 2 ranks × batch 2
    assert curve == pytest.approx(reference[:HALF], rel=REL_TOL)


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_checkpoint_of_two_ranks_resumes_on_one(
    parallel: str, runs: dict[str, Path], reference: list[float]
) -> None:
    assert_same_curve(losses(runs[f"{parallel}/2to1"]), reference)


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_checkpoint_of_one_rank_resumes_on_two(
    parallel: str, runs: dict[str, Path], reference: list[float]
) -> None:
    assert_same_curve(losses(runs[f"{parallel}/1to2"]), reference)


def test_fsdp_checkpoint_is_consolidated(runs: dict[str, Path]) -> None:
    from picochat.checkpoint import load_checkpoint

    model, _ = load_checkpoint(runs["fsdp/1to2"] / "ckpt")  # last written by 2 FSDP ranks
    assert all(type(p) is torch.nn.Parameter for p in model.parameters())  # full tensors, not shards
    assert model.lm_head.weight is model.wte.weight
    assert model.config.n_layer == 2
