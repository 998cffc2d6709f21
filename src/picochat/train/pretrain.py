"""Pre-training: causal language modelling, the unsupervised stage of GPT-1 (§3.1, eq. 1)
L1(U) = Σ_i log P(u_i | u_{i-k}, ..., u_{i-1}; Θ), on token shards of the embedded corpus or user text.

What this stage adds to the shared loop: the data preparation (tokenizer, shards, byte counts), random
windows as batches, and an evaluation that reports validation loss in nats/token and bits per byte
(nats/token × tokens/byte ÷ ln 2), which compares models with different tokenizers fairly.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from picochat.checkpoint import atomic_write_text, write_json
from picochat.config import CorpusConfig, PretrainConfig, save_config
from picochat.data.corpus import corpus_hash, default_corpus, read_text_path, split_documents
from picochat.data.shards import RandomWindows, eval_windows, read_shard, write_shard
from picochat.engine import Engine
from picochat.model import GPT, IGNORE_INDEX
from picochat.tokenizer import Tokenizer
from picochat.train.loop import CKPT_DIR, Dist, StepOut, Trainer, pin_resumed_dtype, seed_everything

DATA_META = "data.json"


@dataclass(frozen=True, slots=True)
class PreparedData:
    """Token shards plus what is needed to turn losses into bits per byte."""

    dir: Path
    tok: Tokenizer
    train_ids: np.ndarray
    val_ids: np.ndarray
    val_bytes: int
    meta: dict[str, Any]

    @property
    def val_tokens_per_byte(self) -> float:
        return len(self.val_ids) / self.val_bytes


def load_documents(cfg: CorpusConfig) -> list[str]:
    return read_text_path(cfg.path) if cfg.path else default_corpus(cfg.corpus)


def build_tokenizer(cfg: CorpusConfig, train_docs: list[str]) -> Tokenizer:
    if cfg.tokenizer == "train":
        return Tokenizer.train(train_docs, vocab_size=cfg.vocab_size)
    if cfg.tokenizer == "gpt2":
        return Tokenizer.gpt2()
    return Tokenizer.load(cfg.tokenizer)


def encode_documents(tok: Tokenizer, docs: list[str]) -> np.ndarray:
    """All documents as one id stream, each followed by <|endoftext|> (GPT-2's document separator)."""
    ids: list[int] = []
    for doc_ids in tok.encode_batch(docs):
        ids.extend(doc_ids)
        ids.append(tok.eot_id)
    return np.asarray(ids, dtype=np.int64)


def prepare_data(cfg: CorpusConfig, data_dir: Path, log: Any = print) -> PreparedData:
    """Tokenizer + train/val shards in data_dir, rebuilt only when the corpus or tokenizer setting changed."""
    docs = load_documents(cfg)
    key = {
        "corpus": corpus_hash(docs), "tokenizer": cfg.tokenizer, "vocab_size": cfg.vocab_size,
        "val_fraction": cfg.val_fraction,
    }  # fmt: skip
    meta_path = data_dir / DATA_META
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("key") == key:
            return open_data(data_dir)
    train_docs, val_docs = split_documents(docs, val_fraction=cfg.val_fraction)
    log(f"data: {len(docs)} documents, {sum(map(len, docs)):,} chars; building tokenizer ({cfg.tokenizer})")
    tok = build_tokenizer(cfg, train_docs)
    train_ids = encode_documents(tok, [d for d in train_docs if d])
    val_ids = encode_documents(tok, [d for d in val_docs if d])
    data_dir.mkdir(parents=True, exist_ok=True)
    tok.save(data_dir / "tokenizer.json")
    write_shard(data_dir / "train.bin", train_ids, tok.vocab_size)
    write_shard(data_dir / "val.bin", val_ids, tok.vocab_size)
    meta = {
        "key": key,
        "tokenizer_identity": tok.identity(),
        "vocab_size": tok.vocab_size,
        "train_tokens": int(len(train_ids)),
        "val_tokens": int(len(val_ids)),
        "train_bytes": sum(len(d.encode()) for d in train_docs),
        "val_bytes": sum(len(d.encode()) for d in val_docs),
    }
    write_json(meta_path, meta, sort_keys=False)
    log(
        f"data: wrote {data_dir} ({meta['train_tokens']:,} train / {meta['val_tokens']:,} val tokens, "
        f"{meta['train_bytes'] / max(meta['train_tokens'], 1):.2f} bytes/token)"
    )
    return open_data(data_dir)


def open_data(data_dir: Path) -> PreparedData:
    meta_path = Path(data_dir) / DATA_META
    if not meta_path.is_file():
        raise FileNotFoundError(
            f"{meta_path} is missing; run `picochat tokenizer --out {Path(data_dir).parent}`"
        )
    meta = json.loads(meta_path.read_text())
    tok = Tokenizer.load(Path(data_dir) / "tokenizer.json")
    if tok.identity() != meta["tokenizer_identity"]:
        raise ValueError(
            f"{data_dir}/tokenizer.json does not match the shards in {data_dir}; rerun `picochat tokenizer`"
        )
    return PreparedData(
        dir=Path(data_dir),
        tok=tok,
        train_ids=read_shard(Path(data_dir) / "train.bin"),
        val_ids=read_shard(Path(data_dir) / "val.bin"),
        val_bytes=int(meta["val_bytes"]),
        meta=meta,
    )


def lm_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> StepOut:
    """Summed next-token cross-entropy over the batch's target tokens.

    The loss is taken inside the model's forward (`GPT.forward(x, targets)`), so under run.compile the
    fp32 upcast and the log-softmax fuse into the compiled graph instead of materialising (B, T, V) fp32
    logits (GPT-2 124M, batch 16 x 1024, one H100: 314k -> 383k tok/s; benchmarks/RESULTS.md)."""
    x, y = batch
    device = next(model.parameters()).device
    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    logits, mean_loss = model(x, targets=y, return_logits=False)  # logits None on CPU: see GPT.forward
    n = int((y != IGNORE_INDEX).sum())  # after the forward is queued: on a GPU this sync overlaps it
    # no targets: a zero that keeps the graph (the plain path's mean is NaN then)
    loss_sum = mean_loss * n if n else (logits if logits is not None else mean_loss).sum() * 0.0
    return StepOut(loss_sum=loss_sum, n_items=n, n_tokens=x.numel())


def make_eval_fn(data: PreparedData, block_size: int, batch_size: int, n_batches: int) -> Any:
    windows = eval_windows(data.val_ids, block_size, batch_size, n_batches)

    def evaluate(model: nn.Module) -> dict[str, float]:
        total, count = 0.0, 0
        for batch in windows:
            out = lm_loss(model, batch)
            total += float(out.loss_sum)
            count += int(out.n_items)
        nats = total / count
        return {"val/loss": nats, "val/bpb": nats * data.val_tokens_per_byte / math.log(2)}

    return evaluate


def write_samples(model: GPT, tok: Tokenizer, prompt: str, out_dir: Path, seed: int, n: int = 2) -> list[str]:
    engine = Engine(model, tok)
    texts = engine.generate([prompt] * n, max_new_tokens=160, temperature=0.8, top_k=50, seed=seed)
    samples = [prompt + t for t in texts]
    atomic_write_text(out_dir / "samples.txt", "\n\n---\n\n".join(samples) + "\n")
    return samples


def pretrain(
    cfg: PretrainConfig,
    out_dir: Path,
    dist: Dist | None = None,
    resume: bool = False,
    data_dir: Path | None = None,
) -> tuple[GPT, Tokenizer, dict[str, Any]]:
    """Train a GPT from scratch; writes out_dir/{ckpt, metrics.jsonl, config.toml, samples.txt}."""
    dist = dist or Dist.alone(cfg.run.device)
    out_dir = Path(out_dir)
    log = print if dist.is_main else (lambda *a, **k: None)
    if dist.is_main:
        save_config(cfg, out_dir / "config.toml")
    cfg = replace(cfg, run=pin_resumed_dtype(cfg.run, out_dir / CKPT_DIR, resume, log))
    data = prepare_data(cfg.data, data_dir or out_dir / "data", log) if dist.is_main else None
    if dist.enabled:
        import torch.distributed as torch_dist

        torch_dist.barrier()
    data = data or open_data(data_dir or out_dir / "data")
    seed_everything(cfg.run.seed)
    model_cfg = cfg.model.build(data.tok.vocab_size)
    model = GPT(model_cfg)
    source = RandomWindows(
        data.train_ids, model_cfg.block_size, cfg.optim.batch_size, seed=cfg.run.seed,
        rank=dist.rank, world_size=dist.world_size,
    )  # fmt: skip
    eval_fn = make_eval_fn(data, model_cfg.block_size, cfg.optim.batch_size, cfg.run.eval_batches)
    trainer = Trainer(
        model=model, tok=data.tok, source=source, loss_fn=lm_loss, optim_cfg=cfg.optim, run_cfg=cfg.run,
        out_dir=out_dir, dist=dist, eval_fn=eval_fn,
        meta={"stage": "pretrain", "val_tokens_per_byte": data.val_tokens_per_byte},
    )  # fmt: skip
    state = trainer.run(resume=resume)
    summary: dict[str, Any] = {
        "steps": state.step,
        "tokens_seen": state.tokens_seen,
        "elapsed_s": state.elapsed_s,
    }
    model = trainer.model  # under FSDP: the gathered full model
    if dist.is_main:
        final = trainer.evaluate()
        summary.update(final)
        summary["tok/s"] = state.tokens_seen / max(state.elapsed_s, 1e-9)
        samples = write_samples(model, data.tok, cfg.sample_prompt, out_dir, cfg.run.seed)
        write_json(out_dir / "summary.json", summary, sort_keys=False)
        log(f"pretrain: val loss {final['val/loss']:.4f} nats/token, {final['val/bpb']:.4f} bits/byte")
        log("sample:\n" + samples[0])
        log(f"pretrain: wrote {out_dir / 'ckpt'}, {out_dir / 'metrics.jsonl'}, {out_dir / 'samples.txt'}")
    return model, data.tok, summary
