"""Tests for the SFT stage: truncation and targets, packing, the masked loss, batch invariance through the
shared Trainer, resumable batches, an end-to-end micro run, and the CLI's error for a bad JSONL line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from picochat.checkpoint import load_checkpoint, save_checkpoint
from picochat.cli import main
from picochat.config import SFTConfig, load_config
from picochat.data.sft_mix import build_sft_mix
from picochat.engine import Engine, SamplingParams
from picochat.model import GPT, IGNORE_INDEX, GPTConfig
from picochat.tokenizer import Tokenizer
from picochat.train.loop import Trainer, read_metrics
from picochat.train.sft import (
    PackedSFTBatches,
    is_ptx_row,
    materialize_row,
    pack_rows,
    sft,
    sft_loss,
    shift_targets,
    truncate_conversation,
)

CONV = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is two plus two?"},
    {"role": "assistant", "content": "four"},
    {"role": "user", "content": "And three plus three?"},
    {"role": "assistant", "content": "six, of course"},
]
TRAINED = [
    [{"role": "user", "content": "What light breaks?"}, {"role": "assistant", "content": "yonder window"}],
    [{"role": "user", "content": "Who jumps?"}, {"role": "assistant", "content": "the quick brown fox"}],
    [{"role": "user", "content": "Wherefore art thou?"}, {"role": "assistant", "content": "Romeo"}],
]


def target_text(tok: Tokenizer, targets: list[int]) -> str:
    return tok.decode([t for t in targets if t != IGNORE_INDEX])


def test_targets_cover_exactly_the_assistant_answers_and_their_end(tok: Tokenizer) -> None:
    ids, mask = tok.render_conversation(CONV)
    x, y = shift_targets(ids, mask)
    assert x == ids[:-1] and len(y) == len(x)
    assert target_text(tok, y) == "four<|end|>six, of course<|end|>"
    for t, (target, m) in enumerate(zip(y, mask[1:], strict=True)):
        assert target == (ids[t + 1] if m else IGNORE_INDEX)


def test_truncation_keeps_whole_turns_then_cuts_a_lone_answer(tok: Tokenizer) -> None:
    ids, mask = tok.render_conversation(CONV)
    first_end = ids.index(tok.special_id("<|end|>"), ids.index(tok.special_id("<|assistant|>")))
    assert truncate_conversation(ids, mask, len(ids)) == (ids, mask)
    # the second answer does not fit: everything after the first answer's <|end|> goes
    kept = truncate_conversation(ids, mask, len(ids) - 1)
    assert kept == (ids[: first_end + 1], mask[: first_end + 1])
    assert target_text(tok, shift_targets(*kept)[1]) == "four<|end|>"
    # the first answer does not fit either: cut inside it, its kept tokens still train, no <|end|>
    answer_start = ids.index(tok.special_id("<|assistant|>")) + 1
    cut_ids, cut_mask = truncate_conversation(ids, mask, answer_start + 1)
    assert cut_ids == ids[: answer_start + 1] and cut_mask == mask[: answer_start + 1]
    assert tok.special_id("<|end|>") not in [
        t for t in shift_targets(cut_ids, cut_mask)[1] if t != IGNORE_INDEX
    ]
    assert sum(cut_mask) == 1
    # not a single answer token inside the window: nothing to learn
    assert truncate_conversation(ids, mask, answer_start) is None


def test_pack_rows_places_every_item_once_within_capacity() -> None:
    lengths = [5, 9, 3, 10, 1, 7, 7, 2]
    rows = pack_rows(lengths, 10, list(range(len(lengths))), lookahead=3)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 10 for row in rows)
    assert len(rows) == 5  # 44 tokens need at least 5 rows of 10
    with pytest.raises(ValueError, match="more than the row capacity 10"):
        pack_rows([11], 10, [0])


def test_packed_row_pads_with_masked_endoftext(tok: Tokenizer) -> None:
    examples = [tok.render_conversation(c) for c in TRAINED[:2]]
    n = sum(len(ids) for ids, _ in examples)
    x, y = materialize_row(examples, [0, 1], n + 4, tok.eot_id)
    assert x.shape == y.shape == (n + 4,)
    assert x[n:].tolist() == [tok.eot_id] * 4 and (y[n - 1 :] == IGNORE_INDEX).all()
    assert target_text(tok, y.tolist()) == "yonder window<|end|>the quick brown fox<|end|>"


def test_sft_loss_is_the_hand_computed_masked_nll(tok: Tokenizer, micro_model: GPT) -> None:
    examples = [tok.render_conversation(c) for c in TRAINED]
    pairs = [materialize_row(examples, [i], 40, tok.eot_id) for i in range(3)]
    x, y = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
    out = sft_loss(micro_model, (x, y))
    with torch.no_grad():
        logp = F.log_softmax(micro_model(x)[0].float(), dim=-1)
    total, count = 0.0, 0
    for b in range(3):
        for t in range(40):
            if y[b, t] != IGNORE_INDEX:
                total -= float(logp[b, t, y[b, t]])
                count += 1
    assert count == int(out.n_items) == sum(sum(m[1:]) for _, m in examples)
    assert float(out.loss_sum) == pytest.approx(total, rel=1e-5)


def make_source(tok: Tokenizer, batch_size: int, block: int = 64, **kw: object) -> PackedSFTBatches:
    examples = [tok.render_conversation(c) for c in TRAINED * 4]
    return PackedSFTBatches(examples, block, batch_size, seed=3, pad_id=tok.eot_id, **kw)


def test_batches_resume_exactly_and_deal_rows_by_rank(tok: Tokenizer) -> None:
    src = make_source(tok, 2)
    for _ in range(3):
        src.next_batch()
    state = json.loads(json.dumps(src.state_dict()))
    expected = [src.next_batch() for _ in range(4)]
    again = make_source(tok, 2)
    again.load_state_dict(state)
    for want in expected:
        got = again.next_batch()
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    whole = make_source(tok, 4).next_batch()[0]
    ranks = [make_source(tok, 2, rank=r, world_size=2).next_batch()[0] for r in range(2)]
    assert torch.equal(torch.cat(ranks), whole)


def test_ptx_rows_are_spread_evenly_and_fully_supervised(tok: Tokenizer) -> None:
    assert [g for g in range(8) if is_ptx_row(g, 0.25)] == [3, 7]
    ptx = torch.arange(500).numpy() % 200
    src = make_source(tok, 4, ptx_ids=ptx, ptx_fraction=0.25)
    x, y = src.next_batch()
    assert (y[3] != IGNORE_INDEX).all() and torch.equal(x[3, 1:], y[3, :-1])
    assert (y[:3] == IGNORE_INDEX).any()


def run_trainer(tok: Tokenizer, cfg: GPTConfig, out: Path, batch: int, accum: int) -> list[float]:
    sft_cfg = load_config(
        SFTConfig, None,
        [f"optim.batch_size={batch}", f"optim.grad_accum={accum}", "optim.max_steps=3", "optim.warmup_steps=1",
         "run.dtype=float32", "run.progress=false", "run.log_every=1", "run.save_every=100", "run.eval_every=100"],
    )  # fmt: skip
    torch.manual_seed(0)
    model = GPT(cfg)
    trainer = Trainer(
        model=model, tok=tok, source=make_source(tok, batch), loss_fn=sft_loss,
        optim_cfg=sft_cfg.optim, run_cfg=sft_cfg.run, out_dir=out,
    )  # fmt: skip
    trainer.run()
    return [r["train/loss"] for r in read_metrics(out / "metrics.jsonl") if "train/loss" in r]


def test_micro_batch_times_accumulation_does_not_change_the_losses(
    tok: Tokenizer, micro_config: GPTConfig, tmp_path: Path
) -> None:
    one = run_trainer(tok, micro_config, tmp_path / "a", batch=4, accum=1)
    two = run_trainer(tok, micro_config, tmp_path / "b", batch=2, accum=2)
    assert len(one) == 3
    assert one == pytest.approx(two, rel=1e-5)
    assert one[-1] < one[0]


@pytest.fixture
def micro_ckpt(tok: Tokenizer, micro_config: GPTConfig, tmp_path: Path) -> Path:
    torch.manual_seed(0)
    return save_checkpoint(tmp_path / "base", GPT(micro_config), tok)


def test_micro_sft_learns_to_answer_and_stop(micro_ckpt: Path, tmp_path: Path) -> None:
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps({"messages": c}) + "\n" for c in TRAINED * 8))
    cfg = load_config(
        SFTConfig, None,
        [f"ckpt={micro_ckpt}", f"data={data}", "data_mode=replace", "eval_tasks=7", "eval_max_new_tokens=6",
         "optim.max_steps=50", "optim.lr=2e-2", "optim.batch_size=4", "optim.warmup_steps=5",
         "run.progress=false", "run.dtype=float32", "run.eval_every=50", "run.save_every=50", "run.eval_batches=1"],
    )  # fmt: skip
    summary = sft(cfg, tmp_path / "out")
    assert summary["steps"] == 50 and summary["train_mix"] == {"user": 23}
    losses = [r["train/loss"] for r in read_metrics(tmp_path / "out" / "metrics.jsonl") if "train/loss" in r]
    assert losses[-1] < 0.1 * losses[0]
    assert summary["val/chat_loss"] < 0.5  # the held-out conversation repeats a trained one
    assert summary["val/task_loss"] > summary["val/chat_loss"]  # held-out task demos: never trained on
    assert set(summary["before"]) >= {"task_score", "task_accuracy", "end_rate"}
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["steps"] == 50
    model, tok = load_checkpoint(tmp_path / "out" / "ckpt")
    engine = Engine(model, tok)
    prompts = [tok.render_prompt(c[:1]) for c in TRAINED]
    outs = engine.generate_ids(prompts, SamplingParams(max_new_tokens=12, temperature=0.0))
    for conv, ids in zip(TRAINED, outs, strict=True):
        assert ids[-1] == tok.special_id("<|end|>")
        assert tok.decode(ids[:-1]) == conv[1]["content"]


def test_bad_jsonl_line_is_one_error_line_with_exit_code_2(
    micro_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps({"messages": TRAINED[0]}) + "\n" + '{"messages": [{"role": "bot"}]}\n')
    code = main(
        [
            "sft",
            "--ckpt",
            str(micro_ckpt),
            "--data",
            str(data),
            "--out",
            str(tmp_path / "o"),
            "data_mode=replace",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1
    assert f"{data}:2:" in err and "role" in err


def test_mix_holds_out_task_templates_and_replace_needs_data() -> None:
    train, held = build_sft_mix(0, n_task_demos=70, n_chitchat=0, n_chatterbot=0, n_heldout_tasks=14)
    assert len(train) == 70 and len(held) == 14
    assert all(s.startswith("task:") for s, _ in train + held)
    assert {c[-2]["content"] for _, c in train}.isdisjoint({c[-2]["content"] for _, c in held})
    with pytest.raises(ValueError, match="needs a JSONL file"):
        build_sft_mix(0, data_mode="replace")
