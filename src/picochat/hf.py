"""Hugging Face `transformers` interop: picochat GPT <-> GPT2LMHeadModel / GPT2ForSequenceClassification.

GPT-2 (Radford et al. 2019) as released by OpenAI and as implemented in `transformers` is the pre-LN
variant of our `GPT`, so the weights map one to one:

    picochat (ours)                  transformers                                   change
    wte.weight, wpe.weight           transformer.wte.weight, transformer.wpe.weight     -
    h.{i}.ln_1 / ln_2 (w, b)         transformer.h.{i}.ln_1 / ln_2                      -
    h.{i}.attn.c_attn.weight (3C,C)  transformer.h.{i}.attn.c_attn.weight (C,3C)        transpose
    h.{i}.attn.c_proj.weight (C,C)   transformer.h.{i}.attn.c_proj.weight (C,C)         transpose
    h.{i}.mlp.c_fc.weight (4C,C)     transformer.h.{i}.mlp.c_fc.weight (C,4C)           transpose
    h.{i}.mlp.c_proj.weight (C,4C)   transformer.h.{i}.mlp.c_proj.weight (4C,C)         transpose
    *.bias of those layers           same names                                         -
    ln_f (w, b)                      transformer.ln_f                                   -
    lm_head.weight (tied to wte)     lm_head.weight (tied to wte)                       not stored
    head.weight (n, C)               score.weight (n, C), GPT2ForSequenceClassification -
    head.bias (n,)                   (none: `score` has no bias)                        see below

The transposes: transformers' GPT-2 uses `Conv1D`, a linear layer that stores its weight as (in, out),
while `nn.Linear` stores (out, in); the four matmul weights per block are transposed by name. Every key
and every shape is checked in both directions and a mismatch raises `ValueError` naming the tensors.

Config mapping: n_layer, n_head, n_embd map by name; block_size = n_positions; vocab_size = the model's
embedding rows; our single `dropout` = resid_pdrop = embd_pdrop = attn_pdrop; activation "gelu_new" (the
tanh GELU of GPT-2; "gelu_pytorch_tanh" is the same function and is accepted on import);
layer_norm_epsilon 1e-5 (torch's LayerNorm default, which we use); tie_word_embeddings True.

What does not map (refused with ValueError, never silently converted):
- post-LN (GPT-1) blocks and GPT-3's alternating banded attention: GPT2's modules have neither.
- bias=False: every GPT2 Linear/LayerNorm has a bias. Zero biases would compute the same function, but
  the exported model would then train differently from ours, so we refuse rather than pretend.
- on import: another activation, `scale_attn_by_inverse_layer_idx`, `reorder_and_upcast_attn`, unscaled
  attention (`scale_attn_weights=False`), cross-attention, `n_inner != 4 * n_embd`, another LayerNorm
  epsilon, or an untied LM head: each changes the math.
- a head with more than one output and a nonzero bias (a GPT-1 classifier): per-class offsets change
  the argmax, and `score` cannot hold them.

The reward-model head (one output) and its bias: HF's `score` has no bias and the bias cannot be folded
into the weight (the final LayerNorm output has no constant component to carry it). We export anyway,
because a constant shift changes no ranking, no pairwise preference probability and no advantage: the
exported model's scores are ours minus `head.bias`. The bias is written to config.json as
`picochat_head_bias`, and `from_hf` adds it back, so a round trip is exact. GPT2ForSequenceClassification
reads the logits of the rightmost token that is not `pad_token_id`; `export_hf` sets pad to <|endoftext|>,
which our chat template uses only as the first token, so the score is read where picochat reads it
(the last token) as long as an input does not end in <|endoftext|>.

A policy checkpoint that also carries a value head exports as a causal LM (`task="causal-lm"`), which
drops the head; `task="auto"` exports a checkpoint with a head as a sequence classifier.

Tokenizer: exported as a `PreTrainedTokenizerFast` built from our tokenizer.json (same ids), with
eos = bos = pad = <|endoftext|>, the chat specials as additional special tokens and a Jinja chat
template that renders our chat layout. One difference remains: HF treats special-token strings typed
inside text as special, picochat's `encode` does not (see tokenizer.py).

`transformers` is an optional dependency (`pip install 'picochat[hf]'`); it is imported only when a
function here is called.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from picochat.checkpoint import atomic_dir_write, load_checkpoint, save_checkpoint
from picochat.model import GPT, GPTConfig
from picochat.tokenizer import GPT2_N_VOCAB, SPECIAL_TOKENS, Tokenizer

if TYPE_CHECKING:
    from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel, PreTrainedModel

HF_PREFIX = "transformer."
TIED_KEY = "lm_head.weight"
CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh")
LN_EPS = 1e-5
HEAD_BIAS_KEY = "picochat_head_bias"
VOCAB_MULTIPLE = 64
TASKS = ("auto", "causal-lm", "classifier")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
PICKLE_WEIGHTS = "pytorch_model.bin"
PICKLE_INDEX = "pytorch_model.bin.index.json"
CHAT_TEMPLATE = (
    "{{ '<|endoftext|>' }}{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def _transformers() -> Any:
    """The `transformers` module, or an ImportError that says how to install it."""
    try:
        import transformers
    except ImportError as e:
        raise ImportError(
            "Hugging Face interop needs the optional `transformers` package: pip install 'picochat[hf]'"
        ) from e
    return transformers


# ---- pure state-dict mappings -------------------------------------------------------------------------


def is_conv1d_weight(key: str) -> bool:
    """True for the four per-block matmul weights that transformers stores as Conv1D (in, out)."""
    return key.endswith(CONV1D_WEIGHTS)


def trunk_to_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our trunk tensors (no lm_head, no head) renamed to transformers keys, Conv1D weights transposed."""
    out = {}
    for key, value in state.items():
        if key == TIED_KEY or key.startswith("head."):
            continue
        value = value.t() if is_conv1d_weight(key) else value  # (out, in) -> (in, out)
        out[HF_PREFIX + key] = value.detach().contiguous()
    return out


def trunk_from_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers trunk tensors (keys under `transformer.`) renamed to ours, Conv1D weights transposed."""
    out = {}
    for key, value in state.items():
        if not key.startswith(HF_PREFIX):
            continue
        key = key[len(HF_PREFIX) :]
        value = value.t() if is_conv1d_weight(key) else value  # (in, out) -> (out, in)
        out[key] = value.detach().contiguous()
    return out


def load_checked(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Copy `state` into `module`, raising ValueError unless keys and shapes match exactly (tied head aside)."""
    expected = {k: v.shape for k, v in module.state_dict().items() if k != TIED_KEY}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{what}: {len(state)} tensors given, {len(expected)} expected; "
            f"missing {missing[:6]}, unexpected {unexpected[:6]}"
        )
    bad = [f"{k} {tuple(state[k].shape)} != {tuple(s)}" for k, s in expected.items() if state[k].shape != s]
    if bad:
        raise ValueError(f"{what}: shape mismatch (given != expected): {'; '.join(bad[:6])}")
    with torch.no_grad():
        for key, param in module.state_dict(keep_vars=True).items():
            if key != TIED_KEY:
                param.copy_(state[key])


# ---- configs ------------------------------------------------------------------------------------------


def check_exportable(cfg: GPTConfig) -> None:
    """Raise ValueError if `cfg` describes a model that GPT2's modules cannot express."""
    if cfg.ln_placement != "pre":
        raise ValueError(
            f"model.ln_placement={cfg.ln_placement!r} (GPT-1 post-LN) cannot be exported: transformers' GPT2 "
            "only has pre-LN blocks with a final LayerNorm; export a pre-LN ('pre') model"
        )
    if cfg.attention != "dense":
        raise ValueError(
            f"model.attention={cfg.attention!r} cannot be exported: transformers' GPT2 has no locally banded "
            "sparse layers, every layer would silently become dense; export an attention='dense' model"
        )
    if not cfg.bias:
        raise ValueError(
            "model.bias=False cannot be exported: every Linear and LayerNorm in transformers' GPT2 has a bias; "
            "export a model trained with bias=True"
        )


def hf_config(cfg: GPTConfig, **extra: Any) -> GPT2Config:
    """The GPT2Config of a picochat model config (checked by `check_exportable`). bos/eos/pad default to
    None because the ids depend on the tokenizer (`export_hf` sets them)."""
    check_exportable(cfg)
    ids = {"bos_token_id": None, "eos_token_id": None, "pad_token_id": None}
    return _transformers().GPT2Config(
        vocab_size=cfg.vocab_size,
        n_positions=cfg.block_size,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        n_inner=None,  # 4 * n_embd
        activation_function="gelu_new",
        resid_pdrop=cfg.dropout,
        embd_pdrop=cfg.dropout,
        attn_pdrop=cfg.dropout,
        layer_norm_epsilon=LN_EPS,
        scale_attn_weights=True,
        scale_attn_by_inverse_layer_idx=False,
        reorder_and_upcast_attn=False,
        tie_word_embeddings=True,
        **{**ids, **extra},
    )


def config_from_hf(hc: GPT2Config) -> GPTConfig:
    """The GPTConfig of a transformers GPT2Config; ValueError for any setting that changes the math."""
    fix = "only GPT-2-architecture checkpoints (gpt2 .. gpt2-xl and models trained like them) can be imported"
    model_type = getattr(hc, "model_type", None)
    if model_type != "gpt2":
        raise ValueError(f"config model_type is {model_type!r}, expected 'gpt2'; {fix}")
    if hc.activation_function not in TANH_GELUS:
        raise ValueError(
            f"activation_function={hc.activation_function!r}; picochat's MLP uses the tanh GELU, one of "
            f"{TANH_GELUS}; {fix}"
        )
    changed = {
        "scale_attn_by_inverse_layer_idx": (getattr(hc, "scale_attn_by_inverse_layer_idx", False), False),
        "reorder_and_upcast_attn": (getattr(hc, "reorder_and_upcast_attn", False), False),
        "scale_attn_weights": (getattr(hc, "scale_attn_weights", True), True),
        "add_cross_attention": (getattr(hc, "add_cross_attention", False), False),
        "tie_word_embeddings": (getattr(hc, "tie_word_embeddings", True), True),
    }
    for name, (given, wanted) in changed.items():
        if bool(given) != wanted:
            raise ValueError(f"{name}={given} changes the model's math (picochat needs {wanted}); {fix}")
    if hc.n_inner not in (None, 4 * hc.n_embd):
        raise ValueError(f"n_inner={hc.n_inner}; picochat's MLP is 4 * n_embd = {4 * hc.n_embd} wide; {fix}")
    if not math.isclose(hc.layer_norm_epsilon, LN_EPS):
        raise ValueError(
            f"layer_norm_epsilon={hc.layer_norm_epsilon}; picochat's LayerNorm uses {LN_EPS}; {fix}"
        )
    # one dropout for all three sites; GPT-2 uses the same value everywhere (dropout only affects training)
    return GPTConfig(
        n_layer=hc.n_layer,
        n_head=hc.n_head,
        n_embd=hc.n_embd,
        block_size=hc.n_positions,
        vocab_size=hc.vocab_size,
        dropout=float(hc.resid_pdrop),
        bias=True,
        ln_placement="pre",
        attention="dense",
    )


# ---- model conversion ---------------------------------------------------------------------------------


def to_hf(model: GPT) -> GPT2LMHeadModel:
    """A transformers GPT2LMHeadModel (eval mode, CPU, float32) computing the same logits as `model`.

    The optional scalar/classifier head is not part of a causal LM and is left out; use
    `to_hf_classifier` to export it. Raises ValueError for post-LN, alternating attention or bias=False.
    """
    raw = getattr(model, "module", model)  # unwrap DDP
    hf_model = _transformers().GPT2LMHeadModel(hf_config(raw.config))
    load_checked(hf_model, trunk_to_hf(raw.state_dict()), "to_hf")
    hf_model.tie_weights()
    return hf_model.eval()


def to_hf_classifier(model: GPT, pad_token_id: int | None = None) -> GPT2ForSequenceClassification:
    """A GPT2ForSequenceClassification (num_labels = n_head_outputs) whose `score` is our head.

    With one output (reward model / value head) a nonzero head bias is not carried by `score`: the HF
    scores are ours minus the bias (rankings unchanged); the bias is stored in the config as
    `picochat_head_bias` so `from_hf` restores it. With more outputs a nonzero bias raises ValueError.
    `pad_token_id` is the id HF skips when it looks for the last token (needed for batches > 1).
    """
    raw = getattr(model, "module", model)
    if raw.head is None:
        raise ValueError(
            "to_hf_classifier needs a model with a head (n_head_outputs > 0); use to_hf for an LM"
        )
    bias = raw.head.bias.detach().float().cpu()
    if raw.config.n_head_outputs > 1 and bias.abs().max() > 0:
        raise ValueError(
            f"the {raw.config.n_head_outputs}-way head has a nonzero bias, which GPT2ForSequenceClassification's "
            "bias-free `score` cannot hold and which changes the argmax; retrain the head with its bias at 0"
        )
    hc = hf_config(
        raw.config,
        num_labels=raw.config.n_head_outputs,
        pad_token_id=pad_token_id,
        **{HEAD_BIAS_KEY: bias.tolist()},
    )
    hf_model = _transformers().GPT2ForSequenceClassification(hc)
    state = trunk_to_hf(raw.state_dict())
    state["score.weight"] = raw.head.weight.detach().contiguous()  # (n, C), nn.Linear in both
    load_checked(hf_model, state, "to_hf_classifier")
    return hf_model.eval()


def from_hf(hf_model: PreTrainedModel) -> GPT:
    """Our GPT (eval mode, CPU, float32) from a GPT2LMHeadModel or GPT2ForSequenceClassification.

    A sequence classifier gives a GPT with a head of `num_labels` outputs; its bias is
    `picochat_head_bias` from the config when present (a picochat export), else 0.
    """
    cfg = config_from_hf(hf_model.config)
    state = {k: v.detach().cpu().float() for k, v in hf_model.state_dict().items()}
    ours = trunk_from_hf(state)
    is_classifier = "score.weight" in state
    if is_classifier:
        n = state["score.weight"].shape[0]
        cfg = replace(cfg, n_head_outputs=n)
        ours["head.weight"] = state["score.weight"]
        bias = getattr(hf_model.config, HEAD_BIAS_KEY, None)
        ours["head.bias"] = torch.tensor(bias if bias is not None else [0.0] * n, dtype=torch.float32)
    elif TIED_KEY in state and not torch.equal(state[TIED_KEY], state[HF_PREFIX + "wte.weight"]):
        raise ValueError("lm_head.weight differs from transformer.wte.weight: picochat needs tied embeddings")
    known = {TIED_KEY, "score.weight"}
    extra = sorted(k for k in state if not k.startswith(HF_PREFIX) and k not in known)
    if extra:
        raise ValueError(f"from_hf: tensors outside the GPT-2 layout: {extra[:6]}")
    model = GPT(cfg)
    load_checked(model, ours, f"from_hf({type(hf_model).__name__})")
    return model.eval()


def resize_vocab(model: GPT, n_ids: int, seed: int = 0) -> GPT:
    """A copy of `model` with at least `n_ids` embedding rows, rounded up to a multiple of 64; new rows are
    drawn from N(0, 0.02) (the GPT-2 init) with a seeded generator. `model` is unchanged."""
    new_size = math.ceil(n_ids / VOCAB_MULTIPLE) * VOCAB_MULTIPLE
    old = model.config.vocab_size
    if new_size <= old:
        raise ValueError(f"resize_vocab to {n_ids} ids: the model already has {old} rows")
    new = GPT(replace(model.config, vocab_size=new_size)).eval()
    state = dict(model.state_dict())
    rows = torch.empty(new_size - old, model.config.n_embd)
    rows.normal_(0.0, 0.02, generator=torch.Generator().manual_seed(seed))
    state["wte.weight"] = torch.cat([state["wte.weight"].detach().cpu(), rows])  # (new_size, C)
    load_checked(new, {k: v for k, v in state.items() if k != TIED_KEY}, "resize_vocab")
    return new


# ---- directories --------------------------------------------------------------------------------------


def _resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}; expected one of {sorted(DTYPES)} or None (keep float32)")
    return DTYPES[dtype]


def hf_tokenizer(tok: Tokenizer, block_size: int) -> Any:
    """Our tokenizer as a transformers PreTrainedTokenizerFast (same ids), with the chat template."""
    from tokenizers import Tokenizer as RawTokenizer

    eot = SPECIAL_TOKENS[0]
    return _transformers().PreTrainedTokenizerFast(
        tokenizer_object=RawTokenizer.from_str(tok.to_json()),
        bos_token=eot,
        eos_token=eot,
        pad_token=eot,
        additional_special_tokens=SPECIAL_TOKENS[1:],
        model_max_length=block_size,
        chat_template=CHAT_TEMPLATE,
    )


def _readme(ckpt_dir: Path, cfg: GPTConfig, kind: str, bias: list[float] | None) -> str:
    auto = "AutoModelForCausalLM" if kind == "GPT2LMHeadModel" else "AutoModelForSequenceClassification"
    lines = [
        "# picochat model exported to transformers",
        "",
        f"Exported by `picochat export-hf` from the picochat checkpoint `{ckpt_dir.name}` as `{kind}`.",
        f"Shape: {cfg.n_layer} layers, {cfg.n_head} heads, width {cfg.n_embd}, context {cfg.block_size}, "
        f"vocab {cfg.vocab_size}.",
        "",
        "```python",
        f"from transformers import {auto}, AutoTokenizer",
        "tok = AutoTokenizer.from_pretrained(PATH)",
        f"model = {auto}.from_pretrained(PATH)",
        "```",
        "",
        "Chat layout: `<|endoftext|><|user|>...<|end|><|assistant|>` (use `tok.apply_chat_template`); "
        "generation stops at `<|end|>` or `<|endoftext|>`.",
    ]
    if bias is not None:
        lines += [
            "",
            f"Reward/score head: transformers' `score` has no bias, so scores here equal picochat's minus "
            f"the head bias {bias} (stored as `{HEAD_BIAS_KEY}` in config.json). Rankings are unchanged.",
        ]
    return "\n".join(lines) + "\n"


def export_hf(
    ckpt_dir: str | Path,
    out_dir: str | Path,
    dtype: str | torch.dtype | None = None,
    task: str = "auto",
) -> Path:
    """Write a picochat checkpoint as a transformers model directory; returns `out_dir`.

    ckpt_dir: a picochat checkpoint directory (load_checkpoint). out_dir: written atomically, replaced if
    present; it holds model.safetensors + config.json + generation_config.json (save_pretrained with
    safetensors), tokenizer.json + tokenizer_config.json (AutoTokenizer loads them offline) and README.md.
    dtype: None keeps float32, or "float16"/"bfloat16". task: "causal-lm" (GPT2LMHeadModel, any head
    dropped), "classifier" (GPT2ForSequenceClassification from the head), or "auto" (classifier iff the
    checkpoint has a head).
    """
    if task not in TASKS:
        raise ValueError(f"task={task!r}; expected one of {TASKS}")
    torch_dtype = _resolve_dtype(dtype)
    ckpt_dir, out_dir = Path(ckpt_dir), Path(out_dir)
    model, tok = load_checkpoint(ckpt_dir)
    classifier = task == "classifier" or (task == "auto" and model.head is not None)
    eot, end = tok.eot_id, tok.special_id("<|end|>")
    if classifier:
        hf_model = to_hf_classifier(model, pad_token_id=eot)
        bias = model.head.bias.tolist() if model.config.n_head_outputs == 1 else None
    else:
        hf_model, bias = to_hf(model), None
    hf_model.config.bos_token_id = hf_model.config.eos_token_id = hf_model.config.pad_token_id = eot
    if not classifier:
        hf_model.generation_config.bos_token_id = eot
        hf_model.generation_config.eos_token_id = [eot, end]  # stop at <|end|> (chat) or <|endoftext|>
        hf_model.generation_config.pad_token_id = eot
    if torch_dtype is not None:
        hf_model = hf_model.to(torch_dtype)
    kind = type(hf_model).__name__

    def write(tmp: Path) -> None:
        hf_model.save_pretrained(tmp, safe_serialization=True)
        hf_tokenizer(tok, model.config.block_size).save_pretrained(tmp)
        (tmp / "README.md").write_text(_readme(ckpt_dir, model.config, kind, bias))

    atomic_dir_write(out_dir, write)
    return out_dir


def _hf_model_class(config: dict[str, Any], config_path: Path) -> Any:
    if config.get("model_type") != "gpt2":
        raise ValueError(
            f"{config_path}: model_type is {config.get('model_type')!r}, expected 'gpt2'; picochat imports "
            "GPT-2-architecture models only"
        )
    t = _transformers()
    archs = config.get("architectures") or ["GPT2LMHeadModel"]
    if "GPT2ForSequenceClassification" in archs:
        return t.GPT2ForSequenceClassification
    if any(a in ("GPT2LMHeadModel", "GPT2Model") for a in archs):
        return t.GPT2LMHeadModel
    raise ValueError(
        f"{config_path}: architectures {archs}; expected GPT2LMHeadModel or GPT2ForSequenceClassification"
    )


def _pickle_state(hf_dir: Path) -> dict[str, torch.Tensor]:
    """Tensors of pytorch_model.bin (or its shards) read with torch.load(weights_only=True), keys
    normalised to the GPT2LMHeadModel layout (old checkpoints lack the `transformer.` prefix)."""
    index = hf_dir / PICKLE_INDEX
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = [PICKLE_WEIGHTS]
    state: dict[str, torch.Tensor] = {}
    for name in files:
        state.update(torch.load(hf_dir / name, map_location="cpu", weights_only=True))
    out = {}
    head = state.pop(TIED_KEY, None)
    wte = state.get(HF_PREFIX + "wte.weight", state.get("wte.weight"))
    if head is not None and (wte is None or not torch.equal(head, wte)):
        raise ValueError(f"{hf_dir}: lm_head.weight differs from wte.weight; picochat needs tied embeddings")
    for key, value in state.items():
        if key.endswith((".attn.bias", ".attn.masked_bias")) and value.dtype in (torch.bool, torch.uint8):
            continue  # causal-mask buffers of old transformers versions, not weights
        if not key.startswith((HF_PREFIX, "lm_head.", "score.")):
            key = HF_PREFIX + key
        out[key] = value
    return out


def load_hf_dir(hf_dir: str | Path, allow_pickle: bool = False) -> PreTrainedModel:
    """A GPT-2 transformers model from a local directory (no network). Safetensors weights are required;
    a directory with only pytorch_model.bin is refused unless allow_pickle=True (then torch.load with
    weights_only=True, which unpickles tensors only)."""
    hf_dir = Path(hf_dir)
    config_path = hf_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} does not exist; expected a transformers model directory")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{config_path} is not valid JSON: {e}") from None
    cls = _hf_model_class(config, config_path)
    if (hf_dir / SAFE_WEIGHTS).is_file() or (hf_dir / SAFE_INDEX).is_file():
        return cls.from_pretrained(hf_dir, local_files_only=True, use_safetensors=True).float().eval()
    has_pickle = (hf_dir / PICKLE_WEIGHTS).is_file() or (hf_dir / PICKLE_INDEX).is_file()
    if not has_pickle:
        raise FileNotFoundError(
            f"{hf_dir} has no {SAFE_WEIGHTS}, {SAFE_INDEX} or {PICKLE_WEIGHTS}; expected a transformers "
            "model directory written by save_pretrained"
        )
    if not allow_pickle:
        raise ValueError(
            f"{hf_dir} holds only {PICKLE_WEIGHTS} (a pickle file, which can run code when loaded); picochat "
            "reads safetensors only. Convert it with transformers (model.save_pretrained(dir, "
            "safe_serialization=True)), or pass allow_pickle=True (--allow-pickle) if you trust the file"
        )
    hf_model = cls(_transformers().GPT2Config.from_pretrained(hf_dir, local_files_only=True))
    state = _pickle_state(hf_dir)
    load_checked(hf_model, state, str(hf_dir / PICKLE_WEIGHTS))
    hf_model.tie_weights()
    return hf_model.float().eval()


def _import_tokenizer(hf_dir: Path, model_vocab: int) -> Tokenizer:
    """tokenizer.json from the directory (byte-level BPE; missing picochat specials appended after its
    ids), or GPT-2's BPE when there is none and the model has GPT-2's 50,257 rows."""
    from tokenizers import Tokenizer as RawTokenizer

    path = hf_dir / "tokenizer.json"
    if not path.is_file():
        if model_vocab == GPT2_N_VOCAB:
            return Tokenizer.gpt2()
        raise FileNotFoundError(
            f"{path} does not exist and the model's vocab ({model_vocab}) is not GPT-2's ({GPT2_N_VOCAB}); "
            "write one with AutoTokenizer.from_pretrained(dir).save_pretrained(dir)"
        )
    try:
        raw = RawTokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception for malformed files
        raise ValueError(f"{path}: not a valid tokenizer.json ({e})") from e
    spec = json.loads(raw.to_str())
    if (spec.get("model") or {}).get("type") != "BPE" or (spec.get("pre_tokenizer") or {}).get(
        "type"
    ) != "ByteLevel":
        raise ValueError(f"{path}: picochat needs a byte-level BPE tokenizer (GPT-2 style); this one is not")
    raw.add_special_tokens(SPECIAL_TOKENS)  # already present ones keep their ids
    spec = json.loads(raw.to_str())
    spec["post_processor"] = None  # transformers' template processor; picochat adds no tokens on encode
    return Tokenizer.from_json(json.dumps(spec), source=str(path))


def import_hf(hf_dir: str | Path, out_ckpt: str | Path, allow_pickle: bool = False) -> Path:
    """Convert a local transformers GPT-2 directory into a picochat checkpoint; returns `out_ckpt`.

    Weights: model.safetensors (or a sharded safetensors index) via from_pretrained(local_files_only=True);
    pytorch_model.bin only with allow_pickle=True. Tokenizer: the directory's tokenizer.json, or GPT-2's
    BPE when absent and vocab == 50,257. If the tokenizer (with picochat's chat specials) has more ids
    than the model has rows (gpt2: 50,264 > 50,257), the embedding grows to the next multiple of 64 with
    new rows from N(0, 0.02); checkpoint meta records it under "resized_vocab".
    """
    hf_dir = Path(hf_dir)
    hf_model = load_hf_dir(hf_dir, allow_pickle=allow_pickle)
    model = from_hf(hf_model)
    tok = _import_tokenizer(hf_dir, model.config.vocab_size)
    meta: dict[str, Any] = {"imported_from": str(hf_dir), "hf_class": type(hf_model).__name__}
    if tok.vocab_size > model.config.vocab_size:
        old = model.config.vocab_size
        model = resize_vocab(model, tok.vocab_size)
        meta["resized_vocab"] = {"from": old, "to": model.config.vocab_size, "new_rows_init": "N(0, 0.02)"}
    return save_checkpoint(out_ckpt, model, tok, meta=meta)


__all__ = [
    "config_from_hf",
    "export_hf",
    "from_hf",
    "hf_config",
    "hf_tokenizer",
    "import_hf",
    "load_hf_dir",
    "resize_vocab",
    "to_hf",
    "to_hf_classifier",
]
