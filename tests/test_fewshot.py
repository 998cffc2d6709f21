"""Zero-/few-shot evaluation: verbalisers, few-shot prompt layout and context fitting, scoring follows a
hand-built bias; held-out LM evaluation and the bigram baseline."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from picochat.data.gpt1_tasks import TaskSet
from picochat.eval.fewshot import ChoiceItem, build_prompt, fewshot_accuracy, render_item
from picochat.eval.lm import bigram_baseline, evaluate_lm, lm_windows
from picochat.model import GPT, GPTConfig
from picochat.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    texts = ["I love this play. It is good and happy.", "I hate this play. It is bad and sad."] * 50
    return Tokenizer.train(
        texts + ["Sentiment: positive negative True False Maybe Yes No"] * 20, vocab_size=300
    )


def micro(tok: Tokenizer, block_size: int = 64) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig.from_preset("micro", vocab_size=tok.vocab_size, block_size=block_size)).eval()


def sentiment_task(labels: list[int]) -> TaskSet:
    rows = [{"text": f"review number {i}", "label": y} for i, y in enumerate(labels)]
    return TaskSet(
        name="sentiment", format="classification", label_names=["negative", "positive"], train=rows, test=rows
    )


def test_verbalisers() -> None:
    nli = TaskSet(name="nli", format="entailment", label_names=["e", "n", "c"], train=[], test=[])
    item = render_item(nli, {"premise": "Ann has a cat.", "hypothesis": "Ann has a pet.", "label": 0})
    assert item.prompt == "Ann has a cat.\nQuestion: Ann has a pet. True, False or Maybe?\nAnswer:"
    assert item.choices == (" True", " Maybe", " False") and item.solved.endswith("Answer: True")
    para = TaskSet(name="p", format="similarity", label_names=["d", "p"], train=[], test=[])
    item = render_item(para, {"a": "x", "b": "y", "label": 1})
    assert item.choices[item.label] == " Yes" and item.prompt.startswith("x\ny\n")
    assert (
        render_item(sentiment_task([1]), {"text": "fine", "label": 1}).solved == "fine\nSentiment: positive"
    )
    cloze = TaskSet(name="c", format="multiple_choice", label_names=[], train=[], test=[])
    item = render_item(cloze, {"context": "Once", "choices": ["upon", "a"], "label": 0})
    assert item.prompt == "Once" and item.choices == (" upon", " a")


def test_fewshot_prompt_layout_and_context_fitting(tok: Tokenizer) -> None:
    demos = [ChoiceItem("I love it\nSentiment:", (" negative", " positive"), 1),
             ChoiceItem("I hate it\nSentiment:", (" negative", " positive"), 0)]  # fmt: skip
    item = ChoiceItem("It is good\nSentiment:", (" negative", " positive"), 1)
    ids, kept = build_prompt(tok, item, demos, block_size=256)
    want = "I love it\nSentiment: positive\n\nI hate it\nSentiment: negative\n\nIt is good\nSentiment:"
    assert kept == 2 and ids == tok.encode(want)
    longest = max(len(tok.encode(c)) for c in item.choices)
    room = len(tok.encode("I love it\nSentiment: positive\n\nIt is good\nSentiment:")) + longest
    ids, kept = build_prompt(tok, item, demos, block_size=room)  # only one demonstration fits
    assert kept == 1 and ids == tok.encode("I love it\nSentiment: positive\n\nIt is good\nSentiment:")
    ids, kept = build_prompt(tok, item, demos, block_size=room - 1)
    assert kept == 0 and ids == tok.encode("It is good\nSentiment:")


def biased_model(tok: Tokenizer, favourite: list[int]) -> GPT:
    """Every position predicts the same distribution, which puts nearly all mass on `favourite` tokens."""
    model = micro(tok, block_size=160)
    with torch.no_grad():
        direction = torch.randn(model.config.n_embd)
        model.ln_f.weight.zero_()
        model.ln_f.bias.copy_(direction)
        model.wte.weight[favourite] += 5.0 * direction / direction.norm() ** 2 * 4
    return model


def test_zero_shot_follows_a_hand_built_bias(tok: Tokenizer) -> None:
    model = biased_model(tok, tok.encode(" positive"))
    with torch.no_grad():
        logits, _ = model(torch.tensor([tok.encode("review")]))
    assert set(logits[0, -1].topk(len(tok.encode(" positive"))).indices.tolist()) == set(
        tok.encode(" positive")
    )
    pos = fewshot_accuracy(model, tok, sentiment_task([1] * 6), k=0, n=6)
    neg = fewshot_accuracy(model, tok, sentiment_task([0] * 6), k=0, n=6)
    assert pos["accuracy"] == 1.0 and neg["accuracy"] == 0.0 and pos["chance"] == 0.5
    assert pos["accuracy_norm"] == 1.0 and neg["accuracy_norm"] == 0.0
    shots = fewshot_accuracy(model, tok, sentiment_task([1] * 6), k=2, n=6)
    assert shots["accuracy"] == 1.0 and shots["mean_demos"] == 2.0


def test_lm_windows_predict_every_token_once() -> None:
    ids = np.arange(23)
    windows = lm_windows(ids, block_size=5)
    targets = np.concatenate([w[1:] for w in windows])
    assert targets.tolist() == list(range(1, 23))
    assert all(len(w) <= 6 for w in windows)


def test_evaluate_lm_matches_manual_loss_and_bpb(tok: Tokenizer) -> None:
    model = micro(tok, block_size=16)
    ids = np.array(tok.encode("I love this play. It is good and happy. I hate this play. " * 3))
    out = evaluate_lm(model, ids, val_bytes=300, batch_size=2)
    total, count = 0.0, 0
    with torch.no_grad():
        for w in lm_windows(ids, 16):
            x = torch.tensor(w)[None]
            total += float(F.cross_entropy(model(x[:, :-1])[0][0], x[0, 1:], reduction="sum"))
            count += len(w) - 1
    assert out["val/tokens"] == count == len(ids) - 1
    assert out["val/loss"] == pytest.approx(total / count, rel=1e-5)
    assert out["val/bpb"] == pytest.approx(total / count * len(ids) / 300 / math.log(2), rel=1e-5)
    with pytest.raises(ValueError, match="val_bytes"):
        evaluate_lm(model, ids, val_bytes=0)


def test_bigram_baseline_beats_unigram_on_structured_text() -> None:
    rng = np.random.default_rng(0)
    train = np.tile(np.arange(10), 200) + rng.integers(0, 2, 2000) * 10  # next token ~ determined by prev
    val = np.tile(np.arange(10), 20)
    out = bigram_baseline(train, val, vocab_size=20, val_bytes=400)
    assert out["bigram/loss"] < out["unigram/loss"]
    assert out["unigram/bpb"] == pytest.approx(out["unigram/loss"] * len(val) / 400 / math.log(2))
    assert out["k"] > 0
