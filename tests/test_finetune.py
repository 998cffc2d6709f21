"""GPT-1 fine-tuning: exact input layouts, the similarity order-sum, the λ auxiliary loss, padding
invariance, resumable batches, and a micro fine-tune that learns an easy task."""

import json
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from picochat.checkpoint import load_checkpoint, save_checkpoint
from picochat.config import FinetuneConfig, load_config
from picochat.model import GPT, GPTConfig, with_head
from picochat.tokenizer import Tokenizer
from picochat.train.finetune import (
    Example,
    ExampleBatches,
    classify_logits,
    collate,
    encode_example,
    extract_states,
    finetune,
    finetune_loss,
    fit_symmetric,
)

WORDS = [
    "the",
    "cat",
    "sat",
    "on",
    "a",
    "mat",
    "while",
    "good",
    "dogs",
    "ran",
    "past",
    "bad",
    "birds",
    "and",
    "happy",
    "people",
    "sang",
    "sad",
    "songs",
]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(300)]
    return Tokenizer.train(texts, vocab_size=320)


def micro(tok: Tokenizer, n_out: int, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    cfg = GPTConfig.from_preset("micro", vocab_size=tok.vocab_size)
    return with_head(GPT(cfg), n_out).eval()


def test_input_transformations_exact_layout(tok: Tokenizer) -> None:
    s, d, e = (tok.special_id(n) for n in ("<|start|>", "<|delim|>", "<|extract|>"))
    a, b, c = tok.encode("the cat"), tok.encode("good dogs"), tok.encode("sad songs")
    assert encode_example(tok, "classification", {"text": "the cat", "label": 0}, 64) == [[s, *a, e]]
    row = {"premise": "the cat", "hypothesis": "good dogs", "label": 2}
    assert encode_example(tok, "entailment", row, 64) == [[s, *a, d, *b, e]]
    row = {"a": "the cat", "b": "good dogs", "label": 1}
    assert encode_example(tok, "similarity", row, 64) == [[s, *a, d, *b, e], [s, *b, d, *a, e]]
    row = {"context": "the cat", "choices": ["good dogs", "sad songs"], "label": 0}
    assert encode_example(tok, "multiple_choice", row, 64) == [[s, *a, d, *b, e], [s, *a, d, *c, e]]


def test_truncation_keeps_the_extract_token_and_the_text_end(tok: Tokenizer) -> None:
    long_text = " ".join(WORDS * 4)
    ids = tok.encode(long_text)
    (seq,) = encode_example(tok, "classification", {"text": long_text, "label": 0}, 16)
    assert len(seq) == 16 and seq[-1] == tok.special_id("<|extract|>") and seq[1:-1] == ids[-14:]
    row = {"context": long_text, "choices": ["good dogs", "sad"], "label": 0}
    for seq in encode_example(tok, "multiple_choice", row, 16):
        assert len(seq) == 16 and seq[-1] == tok.special_id("<|extract|>")
        delim = seq.index(tok.special_id("<|delim|>"))
        assert seq[1:delim] == ids[-(delim - 1) :]  # context cut from the left, answers whole
    with pytest.raises(ValueError, match="unknown task format"):
        encode_example(tok, "ranking", {"label": 0}, 16)


def test_similarity_order_sum_is_symmetric(tok: Tokenizer) -> None:
    model = micro(tok, 2)
    ab = Example(
        tuple(map(tuple, encode_example(tok, "similarity", {"a": "the cat sat", "b": "good dogs"}, 64))), 1
    )
    ba = Example(
        tuple(map(tuple, encode_example(tok, "similarity", {"a": "good dogs", "b": "the cat sat"}, 64))), 1
    )
    with torch.no_grad():
        la = classify_logits(model, collate([ab], "similarity", tok.eot_id))
        lb = classify_logits(model, collate([ba], "similarity", tok.eot_id))
        # by hand: hidden state of each order's extract token, added, then the head
        h = [model.hidden(torch.tensor([q]))[0, -1] for q in ab.seqs]
        manual = model.head_outputs(h[0] + h[1])
    torch.testing.assert_close(la, lb)
    torch.testing.assert_close(la[0], manual)


def manual_lm_nll(model: GPT, seqs: tuple[tuple[int, ...], ...]) -> torch.Tensor:
    """Mean next-token NLL over all real tokens of an example's sequences, one sequence at a time."""
    total, count = torch.zeros(()), 0
    for q in seqs:
        x = torch.tensor([q])
        logits, _ = model(x)
        total = total + F.cross_entropy(logits[0, :-1], x[0, 1:], reduction="sum")
        count += len(q) - 1
    return total / count


@pytest.mark.parametrize("fmt", ["classification", "multiple_choice"])
def test_aux_lm_loss_is_lambda_times_l1(tok: Tokenizer, fmt: str) -> None:
    rows = (
        [{"text": "the cat sat on a mat", "label": 1}, {"text": "sad", "label": 0}]
        if fmt == "classification"
        else [{"context": "the cat sat", "choices": ["on a mat", "good"], "label": 1}]
    )
    model = micro(tok, 2 if fmt == "classification" else 1)
    examples = [Example(tuple(map(tuple, encode_example(tok, fmt, r, 64))), r["label"]) for r in rows]
    batch = collate(examples, fmt, tok.eot_id)
    with torch.no_grad():
        logits = classify_logits(model, batch)
        ce = F.cross_entropy(logits, batch.labels, reduction="sum")
        l1 = sum(manual_lm_nll(model, ex.seqs) for ex in examples)
        pure = finetune_loss(model, batch, aux_lm_weight=0.0)
        mixed = finetune_loss(model, batch, aux_lm_weight=0.7)
    torch.testing.assert_close(pure.loss_sum, ce)
    torch.testing.assert_close(mixed.loss_sum, ce + 0.7 * l1)
    assert pure.n_items == mixed.n_items == len(rows)
    assert "lm_loss" not in pure.metrics and mixed.metrics["lm_loss"] == pytest.approx(float(l1), rel=1e-5)


def test_logits_do_not_depend_on_padding(tok: Tokenizer) -> None:
    model = micro(tok, 3)
    short = Example(tuple(map(tuple, encode_example(tok, "classification", {"text": "sad"}, 64))), 0)
    long_ = Example(
        tuple(map(tuple, encode_example(tok, "classification", {"text": " ".join(WORDS)}, 64))), 1
    )
    with torch.no_grad():
        alone = classify_logits(model, collate([short], "classification", tok.eot_id))
        batched = classify_logits(model, collate([short, long_], "classification", tok.eot_id))
    assert batched.shape == (2, 3)
    torch.testing.assert_close(batched[0], alone[0], atol=1e-5, rtol=1e-5)


def test_extract_states_reads_last_real_token() -> None:
    hidden = torch.arange(2 * 4 * 3, dtype=torch.float).view(2, 4, 3)
    out = extract_states(hidden, torch.tensor([2, 4]))
    torch.testing.assert_close(out, torch.stack([hidden[0, 1], hidden[1, 3]]))


def test_batches_resume_exactly(tok: Tokenizer) -> None:
    examples = [Example(((i,),), i % 2) for i in range(10)]
    src = ExampleBatches(examples, "classification", 4, tok.eot_id, seed=3)
    for _ in range(3):  # crosses an epoch boundary (10 examples, 12 drawn)
        src.next_batch()
    state = json.loads(json.dumps(src.state_dict()))
    want = [src.next_batch().ids.tolist() for _ in range(4)]
    again = ExampleBatches(examples, "classification", 4, tok.eot_id, seed=3)
    again.load_state_dict(state)
    assert [again.next_batch().ids.tolist() for _ in range(4)] == want
    first_epoch = [ExampleBatches(examples, "classification", 5, tok.eot_id, seed=3).next_batch()]
    assert sorted(first_epoch[0].ids[:, 0].tolist()) == sorted(set(first_epoch[0].ids[:, 0].tolist()))


def easy_rows(n: int, seed: int) -> list[dict]:
    """Label 1 iff the text mentions 'good'; otherwise the same random words."""
    rng = random.Random(seed)
    filler = [w for w in WORDS if w not in ("good", "bad")]
    rows = []
    for i in range(n):
        words = [rng.choice(filler) for _ in range(5)]
        words.insert(rng.randrange(6), "good" if i % 2 else "bad")
        rows.append({"text": " ".join(words), "label": i % 2})
    return rows


def test_micro_finetune_learns_an_easy_task(tok: Tokenizer, tmp_path: Path) -> None:
    base = GPT(GPTConfig.from_preset("micro", vocab_size=tok.vocab_size))
    save_checkpoint(tmp_path / "base", base, tok)
    for name, rows in (("train", easy_rows(256, 0)), ("test", easy_rows(64, 1))):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config(
        FinetuneConfig,
        None,
        [
            f"ckpt={tmp_path / 'base'}", f"data={tmp_path / 'train.jsonl'}", f"test_data={tmp_path / 'test.jsonl'}",
            "optim.max_steps=30", "optim.lr=5e-3", "optim.batch_size=16", "run.progress=false", "run.log_every=1",
            "run.device=cpu", "run.dtype=float32",
        ],
    )  # fmt: skip
    summary = finetune(cfg, tmp_path / "run")
    assert summary["format"] == "classification" and summary["chance"] == 0.5
    assert summary["accuracy"] >= 0.9 and summary["train_accuracy"] >= 0.9
    losses = [json.loads(ln)["train/cls_loss"] for ln in (tmp_path / "run/metrics.jsonl").read_text().splitlines()
              if "train/cls_loss" in ln]  # fmt: skip
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
    model, _ = load_checkpoint(tmp_path / "run/ckpt")  # the head travels in the checkpoint
    assert model.config.n_head_outputs == 2 and model.head is not None


def test_similarity_truncation_is_symmetric_and_fits() -> None:
    for la, lb in [(3, 40), (40, 3), (30, 30), (12, 9)]:
        a, b = list(range(la)), list(range(100, 100 + lb))
        fa, fb = fit_symmetric(a, b, 20)
        assert fit_symmetric(b, a, 20) == (fb, fa)
        assert len(fa) + len(fb) <= 20 and fa == a[: len(fa)] and fb == b[: len(fb)]


def test_run_finetune_all_applies_task_overrides_after_the_common_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from picochat.train import finetune as ft

    seen: dict[str, FinetuneConfig] = {}

    def fake_finetune(cfg: FinetuneConfig, out: Path, resume: bool = False) -> dict:
        seen[cfg.task] = cfg
        return {
            "task": cfg.task,
            "format": "x",
            "accuracy": 0.5,
            "chance": 0.5,
            "train_accuracy": 0.5,
            "wall_s": 0,
        }

    monkeypatch.setattr(ft, "finetune", fake_finetune)
    summary = ft.run_finetune_all(
        "base/ckpt", tmp_path, tasks=("sentiment", "nli"), overrides=["optim.max_steps=80", "optim.lr=1e-3"],
        task_overrides={"nli": ["optim.max_steps=600"]},
    )  # fmt: skip
    assert seen["sentiment"].optim.max_steps == 80 and seen["nli"].optim.max_steps == 600
    assert seen["nli"].optim.lr == 1e-3 and seen["nli"].ckpt == "base/ckpt"
    assert [row["task"] for row in summary["table"]] == ["sentiment", "nli"]
