"""transformers interop: to_hf / from_hf logits and greedy decoding, export_hf / import_hf directories,
the reward head's documented bias shift, and the refusals (pickle weights, post-LN, banded attention)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from picochat.checkpoint import load_checkpoint, read_config, save_checkpoint  # noqa: E402
from picochat.hf import (  # noqa: E402
    config_from_hf,
    export_hf,
    from_hf,
    import_hf,
    to_hf,
    to_hf_classifier,
)
from picochat.model import GPT, GPTConfig  # noqa: E402
from picochat.tokenizer import Tokenizer  # noqa: E402

WORDS = [
    "the",
    "king",
    "and",
    "queen",
    "walk",
    "through",
    "a",
    "green",
    "garden",
    "while",
    "rain",
    "falls",
    "on",
    "old",
    "stone",
    "walls",
    "and",
    "the",
    "young",
    "prince",
    "reads",
    "letters",
    "from",
    "far",
    "cities",
    "about",
    "ships",
    "gold",
    "bread",
    "music",
    "winter",
    "summer",
    "light",
]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(40)) + "." for _ in range(100)]  # ~25 KB
    return Tokenizer.train(texts, vocab_size=300)


def random_gpt(tok: Tokenizer, seed: int = 0, **overrides: object) -> GPT:
    """A GPT whose every parameter (biases and LayerNorms too) is perturbed, so a mis-mapped tensor shows."""
    torch.manual_seed(seed)
    cfg = dict(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=tok.vocab_size) | overrides
    model = GPT(GPTConfig(**cfg))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def greedy(model: GPT, ids: list[int], n: int, stop: tuple[int, ...] = ()) -> list[int]:
    """Plain greedy decoding over full forwards (no cache): the reference for HF's generate."""
    out = list(ids)
    with torch.no_grad():
        for _ in range(n):
            logits, _ = model(torch.tensor([out]))
            out.append(int(logits[0, -1].argmax()))
            if out[-1] in stop:
                break
    return out


SHAPES = [
    dict(n_layer=2, n_head=2, n_embd=32),
    dict(n_layer=1, n_head=3, n_embd=48),  # n_head not a power of 2
    dict(n_layer=3, n_head=5, n_embd=40, block_size=48),
]


@pytest.mark.parametrize("shape", SHAPES)
def test_to_hf_logits_and_greedy_match(tok: Tokenizer, shape: dict) -> None:
    model = random_gpt(tok, **shape)
    hf = to_hf(model)
    assert isinstance(hf, transformers.GPT2LMHeadModel)
    assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()  # tied
    idx = torch.randint(0, tok.vocab_size, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, _ = model(idx)
        theirs = hf(idx).logits
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=0)
    prompt = idx[0, :5].tolist()
    with torch.no_grad():
        hf_ids = hf.generate(torch.tensor([prompt]), max_new_tokens=20, do_sample=False, pad_token_id=0)
    assert hf_ids[0].tolist() == greedy(model, prompt, 20)


@pytest.mark.parametrize("shape", SHAPES[:2])
def test_from_hf_logits_match_and_round_trip_is_exact(tok: Tokenizer, shape: dict) -> None:
    torch.manual_seed(3)
    hc = transformers.GPT2Config(
        vocab_size=tok.vocab_size, n_positions=64, **shape, bos_token_id=None, eos_token_id=None
    )
    hf = transformers.GPT2LMHeadModel(hc).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model = from_hf(hf)
    assert model.config.n_head == shape["n_head"] and model.config.block_size == 64
    idx = torch.randint(0, tok.vocab_size, (2, 30), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(model(idx)[0], hf(idx).logits, atol=1e-4, rtol=0)
    back = to_hf(model).state_dict()
    for key, value in hf.state_dict().items():
        assert torch.equal(back[key], value), key


def test_export_import_round_trip_with_auto_classes(tok: Tokenizer, tmp_path: Path) -> None:
    model = random_gpt(tok, seed=4, n_head=4)
    save_checkpoint(tmp_path / "ckpt", model, tok)
    out = export_hf(tmp_path / "ckpt", tmp_path / "hf")
    assert {"model.safetensors", "config.json", "tokenizer.json", "README.md"} <= {
        p.name for p in out.iterdir()
    }
    assert "picochat" in (out / "README.md").read_text()

    hf = transformers.AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(out, local_files_only=True)
    text = "the queen reads letters"
    ids = hf_tok(text)["input_ids"]
    assert ids == tok.encode(text)
    stop = (tok.eot_id, tok.special_id("<|end|>"))
    assert hf_tok.eos_token_id == tok.eot_id and set(hf.generation_config.eos_token_id) == set(stop)
    with torch.no_grad():
        hf_out = hf.generate(torch.tensor([ids]), max_new_tokens=20, do_sample=False)[0].tolist()
    ours = greedy(model, ids, 20, stop=stop)
    assert hf_out == ours
    assert hf_tok.decode(hf_out) == tok.decode(ours)
    messages = [{"role": "user", "content": "where is the king"}]
    rendered = hf_tok.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    assert list(rendered) == tok.render_prompt(messages)

    import_hf(out, tmp_path / "back")
    model2, tok2 = load_checkpoint(tmp_path / "back")
    assert tok2.identity() == tok.identity() and model2.config == model.config
    for key, value in model.state_dict().items():
        assert torch.equal(model2.state_dict()[key], value), key


def test_reward_head_exports_with_documented_bias_shift(tok: Tokenizer, tmp_path: Path) -> None:
    model = random_gpt(tok, seed=5, n_head_outputs=1)
    with torch.no_grad():
        model.head.bias.fill_(0.7)
    eot = tok.eot_id
    seqs = [[eot, 20, 31, 42, 53, 64], [eot, 70, 81, 92]]
    hf = to_hf_classifier(model, pad_token_id=eot)
    assert isinstance(hf, transformers.GPT2ForSequenceClassification)
    padded = torch.tensor([s + [eot] * (6 - len(s)) for s in seqs])  # right padding with the pad id
    with torch.no_grad():
        theirs = hf(padded).logits[:, 0]  # (B,)
        ours = torch.stack([model.head_outputs(model.hidden(torch.tensor([s])))[0, -1, 0] for s in seqs])
    torch.testing.assert_close(theirs, ours - 0.7, atol=1e-4, rtol=0)  # exported scores = ours - bias
    back = from_hf(hf)
    assert back.config.n_head_outputs == 1
    torch.testing.assert_close(back.head.bias, torch.tensor([0.7]))

    save_checkpoint(tmp_path / "rm", model, tok)
    out = export_hf(tmp_path / "rm", tmp_path / "rm_hf")  # auto: head -> sequence classifier
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["GPT2ForSequenceClassification"] and config["pad_token_id"] == eot
    loaded = transformers.AutoModelForSequenceClassification.from_pretrained(out, local_files_only=True)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(padded).logits[:, 0], theirs, atol=1e-5, rtol=0)
    import_hf(out, tmp_path / "rm_back")
    model2, _ = load_checkpoint(tmp_path / "rm_back")
    for key, value in model.state_dict().items():
        assert torch.equal(model2.state_dict()[key], value), key


def test_classifier_head_with_bias_is_refused(tok: Tokenizer) -> None:
    model = random_gpt(tok, n_head_outputs=3)
    with pytest.raises(ValueError, match="argmax"):
        to_hf_classifier(model)
    with torch.no_grad():
        model.head.bias.zero_()
    assert to_hf_classifier(model).config.num_labels == 3


def test_pickle_weights_refused_unless_allowed(tok: Tokenizer, tmp_path: Path) -> None:
    model = random_gpt(tok, seed=6)
    hf = to_hf(model)
    hf.config.save_pretrained(tmp_path)
    torch.save(
        {k: v for k, v in hf.state_dict().items() if k != "lm_head.weight"}, tmp_path / "pytorch_model.bin"
    )
    tok.save(tmp_path / "tokenizer.json")
    with pytest.raises(ValueError, match="pytorch_model.bin.*allow_pickle"):
        import_hf(tmp_path, tmp_path / "ckpt")
    assert not (tmp_path / "ckpt").exists()
    import_hf(tmp_path, tmp_path / "ckpt", allow_pickle=True)
    model2, _ = load_checkpoint(tmp_path / "ckpt")
    for key, value in model.state_dict().items():
        assert torch.equal(model2.state_dict()[key], value), key


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (dict(ln_placement="post"), "post-LN"),
        (dict(attention="alternating", window=8), "banded"),
        (dict(bias=False), "bias=False"),
    ],
)
def test_unmappable_models_refused(tok: Tokenizer, overrides: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        to_hf(random_gpt(tok, **overrides))


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (dict(activation_function="relu"), "activation_function"),
        (dict(scale_attn_by_inverse_layer_idx=True), "scale_attn_by_inverse_layer_idx"),
        (dict(reorder_and_upcast_attn=True), "reorder_and_upcast_attn"),
        (dict(n_inner=100), "n_inner"),
    ],
)
def test_hf_configs_that_change_the_math_refused(overrides: dict, match: str) -> None:
    hc = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, **overrides)
    with pytest.raises(ValueError, match=match):
        config_from_hf(hc)
    assert config_from_hf(transformers.GPT2Config(activation_function="gelu_pytorch_tanh")).n_layer == 12


def test_import_gpt2_vocab_without_tokenizer_resizes_for_chat_specials(tmp_path: Path) -> None:
    torch.manual_seed(7)
    hc = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=32)  # vocab 50,257
    hf = transformers.GPT2LMHeadModel(hc).eval()
    hf.save_pretrained(tmp_path / "hf", safe_serialization=True)
    import_hf(tmp_path / "hf", tmp_path / "ckpt")
    model, tok = load_checkpoint(tmp_path / "ckpt")
    assert tok.identity() == Tokenizer.gpt2().identity() and tok.vocab_size == 50264
    assert model.config.vocab_size == 50304  # next multiple of 64
    assert read_config(tmp_path / "ckpt")["meta"]["resized_vocab"] == {
        "from": 50257,
        "to": 50304,
        "new_rows_init": "N(0, 0.02)",
    }
    idx = torch.tensor([tok.encode("Hello world, how are you?")])
    with torch.no_grad():
        torch.testing.assert_close(model(idx)[0][..., :50257], hf(idx).logits, atol=1e-4, rtol=0)
    new_rows = model.wte.weight[50257:]
    assert 0.01 < new_rows.std().item() < 0.03
