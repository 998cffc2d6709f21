"""Typed configuration for every stage: frozen dataclasses, TOML files and `key=value` overrides.

Each stage has one dataclass nested as model / optim / data / run. A field's docstring is its CLI help.
Values come from, in order: the dataclass defaults, a TOML file (`--config file.toml`), then `a.b=value`
overrides from the command line. Pydantic validates the merged tree against the dataclass types (so
"3" becomes 3 for an int field and "abc" is an error), unknown keys are errors, and each dataclass's
`__post_init__` checks the rules that span fields. Derived numbers (accumulation steps, tokens per step)
go into a separate plan object in `train/loop.py`, never back into the config.
"""

from __future__ import annotations

import ast
import dataclasses
import sys
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, TypeVar

import tomli_w
from pydantic import ConfigDict, TypeAdapter, ValidationError

from picochat.model import PRESETS, GPTConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

STRICT = ConfigDict(extra="forbid")
T = TypeVar("T")

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "float32", "bfloat16", "float16")
NONFINITE_POLICIES = ("stop", "skip")
PARALLEL = ("ddp", "fsdp")


class ConfigError(ValueError):
    """A config file or override that does not fit the schema."""


def config_class(cls: type[T]) -> type[T]:
    """Frozen, slotted, keyword-only dataclass that pydantic validates with unknown keys forbidden."""
    cls.__pydantic_config__ = STRICT  # type: ignore[attr-defined]
    return dataclass(frozen=True, slots=True, kw_only=True)(cls)


def check_range(name: str, value: float, low: float | None = None, high: float | None = None) -> None:
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"[{'-inf' if low is None else low}, {'inf' if high is None else high}]"
        raise ValueError(f"{name} must be in {bounds}, got {value}")


def check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")


@config_class
class ModelSpec:
    """A preset plus optional per-field overrides (None = the preset's value)."""

    preset: str = "tiny"
    """model preset: micro, tiny, small-cpu, gpt1, gpt2, gpt2-medium, gpt2-large, gpt2-xl"""
    n_layer: int | None = None
    """override the preset's number of layers"""
    n_head: int | None = None
    """override the preset's number of heads"""
    n_embd: int | None = None
    """override the preset's width"""
    block_size: int | None = None
    """override the preset's context length"""
    dropout: float | None = None
    """override dropout (presets use 0)"""
    bias: bool | None = None
    """override biases in Linear/LayerNorm"""
    ln_placement: str | None = None
    """'pre' (GPT-2) or 'post' (GPT-1)"""
    attention: str | None = None
    """'dense' or 'alternating' (GPT-3 banded sparse layers)"""
    window: int | None = None
    """band width of sparse layers"""

    def __post_init__(self) -> None:
        check_choice("model.preset", self.preset, tuple(PRESETS))

    def build(self, vocab_size: int) -> GPTConfig:
        """The GPTConfig for a tokenizer of `vocab_size` ids (rounded up to a multiple of 64 for speed,
        except when the preset's own vocab already fits, e.g. gpt2's 50,257)."""
        overrides = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "preset"}
        overrides = {k: v for k, v in overrides.items() if v is not None}
        preset_vocab = PRESETS[self.preset].vocab_size
        if self.preset.startswith("gpt") and vocab_size <= preset_vocab:
            vocab = preset_vocab  # the published shape
        else:
            vocab = -(-vocab_size // 64) * 64  # multiple of 64: faster matmuls
        try:
            return GPTConfig.from_preset(self.preset, vocab_size=vocab, **overrides)
        except ValueError as e:
            raise ValueError(str(e)) from None


@config_class
class RunConfig:
    """Where and how a run executes."""

    out: str = ""
    """output directory (default runs/<stage>); also set with --out"""
    seed: int = 1337
    """random seed for init, data order and sampling"""
    device: str = "auto"
    """auto, cpu, cuda, cuda:N or mps"""
    dtype: str = "auto"
    """compute dtype: auto (bf16 where measured fast, else fp32), float32, bfloat16, float16"""
    compile: bool = False
    """torch.compile the model"""
    log_every: int = 10
    """print and log metrics every N optimizer steps"""
    eval_every: int = 50
    """evaluate on held-out data every N steps (and at the end)"""
    eval_batches: int = 8
    """micro-batches per evaluation"""
    save_every: int = 100
    """write a resumable checkpoint every N steps (and at the end)"""
    on_nonfinite: str = "stop"
    """what to do when the loss or gradient norm is NaN/inf: stop (keep last good checkpoint) or skip the step"""
    progress: bool = True
    """show a progress bar"""
    parallel: str = "ddp"
    """under torchrun: ddp (replicate) or fsdp (shard parameters)"""

    def __post_init__(self) -> None:
        if not (self.device in DEVICES or self.device.startswith("cuda:")):
            raise ValueError(f"run.device must be one of {list(DEVICES)} or cuda:N, got {self.device!r}")
        check_choice("run.dtype", self.dtype, DTYPES)
        check_choice("run.on_nonfinite", self.on_nonfinite, NONFINITE_POLICIES)
        check_choice("run.parallel", self.parallel, PARALLEL)
        for name in ("log_every", "eval_every", "eval_batches", "save_every"):
            check_range(f"run.{name}", getattr(self, name), 1)


@config_class
class OptimConfig:
    """AdamW with linear warmup and cosine decay (GPT-2/3 recipe)."""

    lr: float = 3e-3
    """peak learning rate"""
    min_lr_ratio: float = 0.1
    """final learning rate as a fraction of the peak (cosine decay floor)"""
    warmup_steps: int = 20
    """linear warmup steps"""
    max_steps: int = 300
    """optimizer steps in the run"""
    weight_decay: float = 0.1
    """AdamW weight decay, applied to matrices only (not biases, LayerNorm or embeddings' positions)"""
    beta1: float = 0.9
    """AdamW beta1"""
    beta2: float = 0.95
    """AdamW beta2"""
    eps: float = 1e-8
    """AdamW epsilon"""
    grad_clip: float = 1.0
    """clip the global gradient norm to this (0 = off)"""
    batch_size: int = 16
    """sequences per micro-batch on each process"""
    grad_accum: int = 1
    """micro-batches accumulated per optimizer step"""

    def __post_init__(self) -> None:
        check_range("optim.lr", self.lr, 0.0)
        check_range("optim.min_lr_ratio", self.min_lr_ratio, 0.0, 1.0)
        check_range("optim.warmup_steps", self.warmup_steps, 0)
        check_range("optim.max_steps", self.max_steps, 1)
        check_range("optim.weight_decay", self.weight_decay, 0.0)
        check_range("optim.beta1", self.beta1, 0.0, 0.999999)
        check_range("optim.beta2", self.beta2, 0.0, 0.999999)
        check_range("optim.grad_clip", self.grad_clip, 0.0)
        check_range("optim.batch_size", self.batch_size, 1)
        check_range("optim.grad_accum", self.grad_accum, 1)


@config_class
class CorpusConfig:
    """Pre-training text and tokenizer."""

    path: str = ""
    """text file or directory to train on (default: the embedded corpus)"""
    corpus: str = "shakespeare"
    """embedded corpus used when no path is given"""
    val_fraction: float = 0.05
    """fraction of each document (its tail) held out for validation"""
    tokenizer: str = "train"
    """'train' (byte-level BPE on the corpus), 'gpt2' (the real GPT-2 BPE) or a tokenizer.json path"""
    vocab_size: int = 8192
    """vocabulary size when training a tokenizer"""

    def __post_init__(self) -> None:
        check_range("data.val_fraction", self.val_fraction, 0.0001, 0.5)
        check_range("data.vocab_size", self.vocab_size, 264, 65536)


@config_class
class TokenizerStageConfig:
    """`picochat tokenizer`: train (or pick) the tokenizer and write token shards."""

    data: CorpusConfig = field(default_factory=CorpusConfig)
    run: RunConfig = field(default_factory=RunConfig)


@config_class
class PretrainConfig:
    """`picochat pretrain`: causal language modelling on token shards."""

    model: ModelSpec = field(default_factory=ModelSpec)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: CorpusConfig = field(default_factory=CorpusConfig)
    run: RunConfig = field(default_factory=RunConfig)
    sample_prompt: str = "ROMEO:\n"
    """prompt for the samples printed at the end"""


@config_class
class SampleConfig:
    """`picochat sample`: one-shot generation from a checkpoint."""

    ckpt: str = ""
    """checkpoint directory"""
    prompt: str = "ROMEO:\n"
    """text to continue"""
    num_samples: int = 1
    """completions to draw"""
    max_new_tokens: int = 200
    """tokens to generate per completion"""
    temperature: float = 0.8
    """sampling temperature (0 = greedy)"""
    top_k: int | None = 50
    """keep the k most likely tokens (None = all)"""
    top_p: float | None = None
    """nucleus sampling mass (None = off)"""
    seed: int | None = None
    """sampling seed (None = random)"""
    device: str = "auto"
    """auto, cpu, cuda, cuda:N or mps"""

    def __post_init__(self) -> None:
        check_range("num_samples", self.num_samples, 1, 1024)
        check_range("max_new_tokens", self.max_new_tokens, 1)
        check_range("temperature", self.temperature, 0.0)


# ---------------------------------------------------------------------------------------------------
# loading, overriding, saving


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key=value (e.g. optim.lr=1e-3)")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part.isidentifier() for part in key.split(".")):
        raise ConfigError(f"override {item!r}: {key!r} is not a dotted key like optim.lr")
    value: Any = raw
    if raw.lower() in ("none", "null"):
        value = None
    elif raw.startswith("["):
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            raise ConfigError(f"override {item!r}: {raw!r} is not a valid list") from None
    return key.split("."), value


def set_nested(tree: dict[str, Any], path: list[str], value: Any, source: str) -> None:
    node = tree
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{source}: {'.'.join(path)}: {part} is a value, not a section")
        node = child
    node[path[-1]] = value


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in update.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def to_tree(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def format_validation_error(err: ValidationError, cls: type) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or cls.__name__
        msg = e["msg"]
        if e["type"] == "unexpected_keyword_argument":
            msg = "unknown key"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        given = e.get("input")
        extra = f" (got {given!r})" if e["type"] not in ("unexpected_keyword_argument", "value_error") else ""
        lines.append(f"{key}: {msg}{extra}")
    return "; ".join(lines)


def load_config(
    cls: type[T],
    config_file: str | Path | None = None,
    overrides: list[str] | None = None,
    base: dict[str, Any] | None = None,
) -> T:
    """Defaults <- `base` (e.g. a preset) <- TOML file <- key=value overrides, validated into `cls`."""
    tree: dict[str, Any] = merge(to_tree(cls()), base or {})
    if config_file:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            file_tree = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from None
        tree = merge(tree, file_tree)
    for item in overrides or []:
        key, value = parse_override(item)
        set_nested(tree, key, value, "command line")
    try:
        return TypeAdapter(cls).validate_python(tree)
    except ValidationError as e:
        source = f"{config_file} + overrides" if config_file else "config"
        raise ConfigError(f"bad {source}: {format_validation_error(e, cls)}") from None


def drop_none(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: drop_none(v) for k, v in tree.items() if v is not None}
    return tree


def save_config(cfg: Any, path: str | Path) -> Path:
    """Write the resolved config as TOML (None values are the defaults and are left out)."""
    assert is_dataclass(cfg)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# resolved {type(cfg).__name__}; rerun with --config {path.name}\n" + tomli_w.dumps(drop_none(to_tree(cfg))))
    return path


def field_help(cls: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, default, help) for every leaf field, read from the field docstrings."""
    docs = attribute_docs(cls)
    rows: list[tuple[str, str, str]] = []
    default = cls()
    for f in fields(cls):
        value = getattr(default, f.name)
        if is_dataclass(value):
            rows += field_help(type(value), f"{prefix}{f.name}.")
        else:
            rows.append((f"{prefix}{f.name}", repr(value), docs.get(f.name, "")))
    return rows


def attribute_docs(cls: type) -> dict[str, str]:
    """Docstrings written under dataclass fields (the string literal after `name: type = value`)."""
    import inspect

    try:
        tree = ast.parse(inspect.getsource(cls))
    except (OSError, TypeError, SyntaxError):
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs: dict[str, str] = {}
    for prev, node in zip(body, body[1:], strict=False):
        if (
            isinstance(prev, ast.AnnAssign)
            and isinstance(prev.target, ast.Name)
            and isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            docs[prev.target.id] = node.value.value.strip()
    return docs
