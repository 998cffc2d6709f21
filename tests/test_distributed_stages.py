"""Every stage after pre-training under two gloo processes, as `torchrun --nproc_per_node 2` runs it.

- finetune (a similarity task: two sequences per example), sft and rm: 2 ranks with batch 2 each give
  the loss curve of 1 process with batch 4 (the sources deal each step's global batch out by rank),
  under DDP; finetune also under FSDP2, whose
  consolidated checkpoint loads on 1 process and matches the 1-process weights.
- ppo: 2 ranks complete their iterations, rank 0 writes one metrics log, both ranks end with the same
  policy weights (gradients are synced), and the checkpoint resumes on 1 process.
- the global whitening of PPO gives what one process gets on the two ranks' data put together.
- the finetune and rm batch sources deal each global batch out by rank (no processes needed).

The learning rate is constant after warmup (min_lr_ratio=1) and every model is a random micro GPT.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from dist_helpers import free_port
from picochat.checkpoint import load_checkpoint, save_checkpoint
from picochat.cli import dist_from_env
from picochat.config import FinetuneConfig, PPOConfig, RewardConfig, SFTConfig, load_config
from picochat.data.preferences import PreferenceRecord, write_preferences
from picochat.model import GPT, GPTConfig, with_head
from picochat.tokenizer import Tokenizer
from picochat.train import rl_math
from picochat.train.finetune import Example, ExampleBatches, finetune
from picochat.train.loop import Dist, read_metrics
from picochat.train.parallel import global_masked_whiten, mean_over_ranks
from picochat.train.ppo import ppo
from picochat.train.reward import RankingSource, train_reward
from picochat.train.sft import sft

REL_TOL = 1e-5
STEPS = 4
RUN = [
    "run.device=cpu", "run.dtype=float32", "run.progress=false", "run.log_every=1",
    f"optim.max_steps={STEPS}", "optim.warmup_steps=1", "optim.min_lr_ratio=1.0",
]  # fmt: skip
PPO_ITERATIONS = 2

Job = tuple[str, list[str], Path]  # (stage, config overrides, out_dir)


# -- what each rank runs ---------------------------------------------------------------------------------


def quiet(*args: object) -> None:
    pass


def run_finetune(overrides: list[str], out: Path, dist: Dist) -> None:
    finetune(load_config(FinetuneConfig, None, overrides), out, dist=dist)


def run_sft(overrides: list[str], out: Path, dist: Dist) -> None:
    sft(load_config(SFTConfig, None, overrides), out, dist=dist)


def run_rm(overrides: list[str], out: Path, dist: Dist) -> None:
    train_reward(load_config(RewardConfig, None, overrides), out, dist=dist, log=quiet)


def run_ppo(overrides: list[str], out: Path, dist: Dist) -> None:
    policy, _ = ppo(load_config(PPOConfig, None, overrides), out, dist=dist)
    # every rank's final policy, to compare with rank 0's checkpoint
    save_file({k: v.clone() for k, v in policy.state_dict().items() if k != "lm_head.weight"},
              out / f"policy_rank{dist.rank}.safetensors")  # fmt: skip


def whiten_data(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank `rank`'s values (B, T) and right-padded response mask; the ranks differ in size and mean."""
    gen = torch.Generator().manual_seed(100 + rank)
    x = torch.randn(3 + rank, 5, generator=gen) * (1 + rank) + 3 * rank
    lengths = torch.randint(1, 6, (3 + rank,), generator=gen)
    mask = (torch.arange(5)[None, :] < lengths[:, None]).float()
    return x, mask


def run_whiten(overrides: list[str], out: Path, dist: Dist) -> None:
    x, mask = whiten_data(dist.rank)
    tensors = {
        "white": global_masked_whiten(x, mask, dist),
        "scaled": global_masked_whiten(x, mask, dist, shift_mean=False),
    }
    save_file(tensors, out / f"whiten_rank{dist.rank}.safetensors")
    record = mean_over_ranks({"a": float(dist.rank), "b": 10.0 * (dist.rank + 1)}, dist)
    (out / f"mean_rank{dist.rank}.json").write_text(json.dumps(record))


STAGES: dict[str, Callable[[list[str], Path, Dist], None]] = {
    "finetune": run_finetune, "sft": run_sft, "rm": run_rm, "ppo": run_ppo, "whiten": run_whiten,
}  # fmt: skip


def worker(rank: int, port: int, jobs: list[Job]) -> None:
    """One of two ranks, standing in for a torchrun process: runs the jobs in one process group."""
    env = {
        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2", "RANK": str(rank),
        "LOCAL_RANK": str(rank),
    }  # fmt: skip
    os.environ.update(env)
    torch.set_num_threads(1)
    dist = dist_from_env(env, "cpu")
    try:
        for stage, overrides, out in jobs:
            STAGES[stage](overrides, out, dist)
    finally:
        torch_dist.destroy_process_group()


def two_ranks(jobs: list[Job]) -> None:
    mp.spawn(worker, args=(free_port(), jobs), nprocs=2, join=True)


def losses(out_dir: Path) -> list[float]:
    return [r["train/loss"] for r in read_metrics(out_dir / "metrics.jsonl") if "train/loss" in r]


def assert_same_curve(got: list[float], want: list[float]) -> None:
    assert len(got) == len(want) == STEPS
    assert got == pytest.approx(want, rel=REL_TOL), f"2 ranks {got} vs 1 process {want}"
    assert got != want or len(set(got)) > 1  # a real curve, not a constant


# -- shared inputs -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory, sample_text: str) -> dict[str, Path]:
    """A random micro base (also the SFT policy), a reward model on it, and ranked preferences."""
    root = tmp_path_factory.mktemp("stage_assets")
    tok = Tokenizer.train([sample_text], vocab_size=320)
    torch.manual_seed(0)
    base = GPT(GPTConfig.from_preset("micro", vocab_size=tok.vocab_size))
    save_checkpoint(root / "base", base, tok, meta={"stage": "pretrain"})
    save_checkpoint(root / "rm", with_head(base, 1), tok, meta={"kind": "reward", "std": 1.0})
    words = sample_text.split()
    gen = torch.Generator().manual_seed(1)

    def records(n: int) -> list[PreferenceRecord]:
        out = []
        for i in range(n):
            picks = torch.randint(len(words), (4, 3), generator=gen).tolist()
            out.append(PreferenceRecord(
                prompt=f"Say something about {words[i % len(words)]}.",
                completions=[" ".join(words[j] for j in row) + f" {k}" for k, row in enumerate(picks)],
                ranking=torch.randperm(4, generator=gen).tolist(),
            ))  # fmt: skip
        return out

    for name, n in (("train", 16), ("heldout", 4), ("shift", 4)):
        write_preferences(root / f"{name}.jsonl", records(n))

    def phrase(i: int) -> str:
        return " ".join(words[(i * 7 + j * 3) % len(words)] for j in range(2 + i % 4))

    pairs = [{"a": phrase(i), "b": phrase(i + i % 2), "label": i % 2} for i in range(64)]  # similarity
    (root / "task_train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs[:48]))
    (root / "task_test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs[48:]))
    chats = [
        {
            "messages": [
                {"role": "user", "content": phrase(i)},
                {"role": "assistant", "content": phrase(i + 1)},
            ]
        }
        for i in range(40)
    ]
    (root / "chats.jsonl").write_text("".join(json.dumps(c) + "\n" for c in chats))
    return {"root": root, "base": root / "base", "rm": root / "rm"}


def finetune_overrides(assets: dict[str, Path], batch: int) -> list[str]:
    root = assets["root"]
    return [f"ckpt={assets['base']}", f"data={root / 'task_train.jsonl'}", f"test_data={root / 'task_test.jsonl'}",
            "eval_train_examples=8", f"optim.batch_size={batch}", *RUN]  # fmt: skip


def sft_overrides(assets: dict[str, Path], batch: int) -> list[str]:
    return [f"ckpt={assets['base']}", f"data={assets['root'] / 'chats.jsonl'}", "data_mode=replace", "eval_tasks=2",
            "eval_max_new_tokens=4", "run.eval_every=100", "run.eval_batches=1", f"optim.batch_size={batch}",
            *RUN]  # fmt: skip


def rm_overrides(assets: dict[str, Path], batch: int) -> list[str]:
    root = assets["root"]
    return [f"sft={assets['base']}", f"data=['{root / 'train.jsonl'}']", f"heldout={root / 'heldout.jsonl'}",
            f"shift={root / 'shift.jsonl'}", f"optim.batch_size={batch}", *RUN]  # fmt: skip


def ppo_overrides(assets: dict[str, Path], iterations: int) -> list[str]:
    return [f"policy={assets['base']}", f"rm={assets['rm']}", f"ppo.iterations={iterations}",
            "ppo.rollout_batch=4", "ppo.minibatch=2", "ppo.epochs=1", "ppo.max_new_tokens=6",
            "ppo.n_prompts=16", "ppo.whiten_rewards=true", "ppo.samples_to_print=0", "run.device=cpu",
            "run.dtype=float32", "run.progress=false"]  # fmt: skip


# -- finetune: DDP and FSDP ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finetune_runs(assets: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    dirs = {name: tmp_path_factory.mktemp(f"finetune_{name}") for name in ("one", "ddp", "fsdp")}
    run_finetune(finetune_overrides(assets, 4), dirs["one"], Dist())
    two_ranks([
        ("finetune", finetune_overrides(assets, 2), dirs["ddp"]),
        ("finetune", [*finetune_overrides(assets, 2), "run.parallel=fsdp"], dirs["fsdp"]),
    ])  # fmt: skip
    return dirs


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_finetune_on_two_ranks_follows_one_process_with_the_global_batch(
    parallel: str, finetune_runs: dict[str, Path]
) -> None:
    assert_same_curve(losses(finetune_runs[parallel]), losses(finetune_runs["one"]))
    summary = json.loads((finetune_runs[parallel] / "summary.json").read_text())  # written by rank 0
    assert summary["steps"] == STEPS and 0.0 <= summary["accuracy"] <= 1.0


def test_finetune_fsdp_checkpoint_is_consolidated_and_loads_on_one_process(
    finetune_runs: dict[str, Path],
) -> None:
    sharded_run, _ = load_checkpoint(finetune_runs["fsdp"] / "ckpt")
    single_run, _ = load_checkpoint(finetune_runs["one"] / "ckpt")
    assert sharded_run.config.n_head_outputs == single_run.config.n_head_outputs == 2
    for (name, p), q in zip(sharded_run.named_parameters(), single_run.parameters(), strict=True):
        assert type(p) is torch.nn.Parameter
        assert torch.allclose(p, q, atol=1e-4), name  # Adam's first steps amplify fp noise a little


# -- sft and rm: DDP --------------------------------------------------------------------------------------


def test_sft_on_two_ranks_follows_one_process_with_the_global_batch(
    assets: dict[str, Path], tmp_path: Path
) -> None:
    run_sft(sft_overrides(assets, 4), tmp_path / "one", Dist())
    two_ranks([("sft", sft_overrides(assets, 2), tmp_path / "ddp")])
    assert_same_curve(losses(tmp_path / "ddp"), losses(tmp_path / "one"))
    assert (tmp_path / "ddp" / "summary.json").is_file()
    load_checkpoint(tmp_path / "ddp" / "ckpt")


def test_rm_on_two_ranks_follows_one_process_with_the_global_batch(
    assets: dict[str, Path], tmp_path: Path
) -> None:
    run_rm(rm_overrides(assets, 4), tmp_path / "one", Dist())
    two_ranks([("rm", rm_overrides(assets, 2), tmp_path / "ddp")])
    assert_same_curve(losses(tmp_path / "ddp"), losses(tmp_path / "one"))
    one = json.loads((tmp_path / "one" / "summary.json").read_text())
    two = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert two["rm/accuracy"] == pytest.approx(one["rm/accuracy"])
    model, _ = load_checkpoint(tmp_path / "ddp" / "ckpt")
    assert model.config.n_head_outputs == 1


# -- ppo and the global statistics --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ppo_run(assets: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ppo_ddp")
    two_ranks([("ppo", ppo_overrides(assets, PPO_ITERATIONS), out), ("whiten", [], out)])
    return out


def test_ppo_on_two_ranks_writes_one_log_and_keeps_the_ranks_in_sync(ppo_run: Path) -> None:
    records = read_metrics(ppo_run / "metrics.jsonl")
    assert [r["iteration"] for r in records] == list(range(1, PPO_ITERATIONS + 1))
    assert all(r["episodes"] == 4 * r["iteration"] for r in records)  # per-rank episodes
    assert all(torch.isfinite(torch.tensor(r["ppo/kl_k1"])) for r in records)
    ranks = [load_file(ppo_run / f"policy_rank{r}.safetensors") for r in (0, 1)]
    saved, _ = load_checkpoint(ppo_run / "ckpt")
    state = saved.state_dict()
    for name, value in ranks[0].items():
        assert torch.equal(value, ranks[1][name]), name  # same gradients, same steps on both ranks
        assert torch.equal(value, state[name]), name  # rank 0 wrote the final policy


def test_ppo_checkpoint_of_two_ranks_resumes_on_one_process(
    ppo_run: Path, assets: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "resumed"
    for name in ("ckpt", "value", "metrics.jsonl"):
        src = ppo_run / name
        if src.is_dir():
            (out / name).mkdir(parents=True)
            for f in src.iterdir():
                (out / name / f.name).write_bytes(f.read_bytes())
        else:
            (out / name).write_bytes(src.read_bytes())
    ppo(
        load_config(PPOConfig, None, ppo_overrides(assets, PPO_ITERATIONS + 1)), out, dist=Dist(), resume=True
    )
    records = read_metrics(out / "metrics.jsonl")
    assert [r["iteration"] for r in records] == list(range(1, PPO_ITERATIONS + 2))


def test_whitening_uses_the_statistics_of_every_rank(ppo_run: Path) -> None:
    data = [whiten_data(r) for r in (0, 1)]
    x = torch.cat([d[0] for d in data])
    mask = torch.cat([d[1] for d in data])
    want = {
        "white": rl_math.masked_whiten(x, mask),
        "scaled": rl_math.masked_whiten(x, mask, shift_mean=False),
    }
    got = [load_file(ppo_run / f"whiten_rank{r}.safetensors") for r in (0, 1)]
    for key, expected in want.items():
        both = torch.cat([got[0][key], got[1][key]])
        assert torch.allclose(both, expected, atol=1e-5), key
    local = rl_math.masked_whiten(data[0][0], data[0][1])
    assert not torch.allclose(got[0]["white"], local, atol=1e-3)  # not each rank on its own
    for r in (0, 1):
        assert json.loads((ppo_run / f"mean_rank{r}.json").read_text()) == {"a": 0.5, "b": 15.0}


def test_sources_deal_each_global_batch_out_by_rank() -> None:
    """ExampleBatches (finetune) and RankingSource (rm): rank r of 2 with batch 2 gets the r-th half of
    what one process with batch 4 gets, step after step, across epoch boundaries."""
    examples = [Example(seqs=((1, i + 2, 3),), label=i % 2) for i in range(7)]
    one = ExampleBatches(examples, "classification", 4, pad_id=0, seed=3)
    ranks = [
        ExampleBatches(examples, "classification", 2, pad_id=0, seed=3, rank=r, world_size=2) for r in (0, 1)
    ]
    for _ in range(5):
        want = one.next_batch().ids
        assert torch.equal(torch.cat([s.next_batch().ids for s in ranks]), want)
    items = [([[1, i + 2], [1, i + 3, 4]], [0, 1]) for i in range(5)]
    one_rm = RankingSource(items, 4, pad_id=0, seed=3)
    ranks_rm = [RankingSource(items, 2, pad_id=0, seed=3, rank=r, world_size=2) for r in (0, 1)]
    for _ in range(5):
        want_rm = one_rm.next_batch()
        got = [s.next_batch() for s in ranks_rm]
        assert torch.equal(torch.cat([g.levels for g in got]), want_rm.levels)
        real = [[row[:n].tolist() for row, n in zip(b.ids, b.lengths, strict=True)] for b in (*got, want_rm)]
        assert real[0] + real[1] == real[2]
