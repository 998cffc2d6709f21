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
import re
import sys
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, TypeVar

import tomli_w
from pydantic import ConfigDict, TypeAdapter, ValidationError

from picochat.checkpoint import atomic_write_text
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


def is_device_name(name: str) -> bool:
    """auto, cpu, cuda, cuda:N or mps: the device names run.device and every --device take."""
    return name in DEVICES or re.fullmatch(r"cuda:\d+", name) is not None


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
    prefetch: bool = False
    """on a CUDA device: build the next batch while the GPU runs this step, in pinned memory, copied ahead
    (off by default: 2-15% slower for the tiny preset on an H100, whose steps wait on kernel launches)"""

    def __post_init__(self) -> None:
        if not is_device_name(self.device):
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


PPO_KL_ESTIMATORS = ("k1", "k3")
PPO_EOS_PENALTY_MODES = ("replace", "add")


@config_class
class PPOHParams:
    """PPO on the KL-shaped reward (InstructGPT eq. 2; lm-human-preferences / Ziegler et al. 2019)."""

    iterations: int = 30
    """rollout + update iterations"""
    rollout_batch: int = 32
    """episodes (prompt, sampled answer) per iteration"""
    epochs: int = 4
    """PPO epochs over each rollout batch"""
    minibatch: int = 8
    """episodes per optimizer step"""
    micro_batch: int = 0
    """episodes per forward/backward inside a minibatch (gradient accumulation; 0 = the whole minibatch)"""
    pack: bool = True
    """pack episodes into unpadded rows (block-diagonal mask): FLOPs on real tokens; false = padded rows"""
    max_new_tokens: int = 24
    """longest response; responses that hit it without <|end|> get the no-EOS penalty"""
    temperature: float = 1.0
    """sampling temperature; training log-probs use logits / temperature too"""
    beta: float = 0.05
    """initial KL coefficient β of the per-token penalty"""
    adaptive_kl: bool = True
    """adapt β towards target_kl (Ziegler et al. §2.2); false = fixed β"""
    target_kl: float = 2.0
    """target KL(π || π_SFT) per episode in nats (sum over response tokens) for the adaptive controller"""
    horizon: int = 2000
    """adaptive controller horizon in episodes"""
    kl_estimator: str = "k1"
    """KL estimator in the reward penalty: k1 (log π - log π_ref) or k3 (non-negative); both are logged"""
    gamma: float = 1.0
    """GAE discount γ"""
    lam: float = 0.95
    """GAE λ"""
    clip_eps: float = 0.2
    """PPO ratio clip ε"""
    vf_clip: float = 0.2
    """value clip range around the rollout values"""
    vf_coef: float = 0.1
    """value-loss weight when the value head shares the policy trunk"""
    whiten_advantages: bool = True
    """whiten advantages over the rollout batch's response tokens"""
    normalize_reward: bool = True
    """divide the RM score by the std in the RM checkpoint's meta (its bias is already in the head)"""
    whiten_rewards: bool = False
    """rescale scores to unit variance over the batch (mean kept), as lm-human-preferences"""
    reward_clip: float = 0.0
    """clip scores to [-c, c] after normalisation (0 = off)"""
    no_eos_penalty: float = -1.0
    """score given to responses that never produce <|end|> (see eos_penalty_mode)"""
    eos_penalty_mode: str = "replace"
    """replace: the score becomes no_eos_penalty; add: no_eos_penalty is added to the score"""
    n_prompts: int = 2000
    """size of the train-split task prompt pool"""
    families: list[str] | None = None
    """task families to draw prompts from (None = all)"""
    ptx_coef: float = 0.0
    """γ of PPO-ptx (InstructGPT eq. 2): weight of the pre-training LM loss; 0 = plain PPO"""
    ptx_batch: int = 4
    """pre-training windows per optimizer step when ptx_coef > 0"""
    ptx_block: int = 128
    """length of each pre-training window (capped at the model's context)"""
    samples_to_print: int = 2
    """samples printed with their score and KL at each log line"""

    def __post_init__(self) -> None:
        for name in (
            "iterations",
            "rollout_batch",
            "epochs",
            "minibatch",
            "max_new_tokens",
            "horizon",
            "n_prompts",
        ):
            check_range(f"ppo.{name}", getattr(self, name), 1)
        check_range("ppo.micro_batch", self.micro_batch, 0)
        check_range("ppo.temperature", self.temperature, 1e-3)
        check_range("ppo.beta", self.beta, 0.0)
        check_range("ppo.target_kl", self.target_kl, 1e-6)
        check_choice("ppo.kl_estimator", self.kl_estimator, PPO_KL_ESTIMATORS)
        check_range("ppo.gamma", self.gamma, 0.0, 1.0)
        check_range("ppo.lam", self.lam, 0.0, 1.0)
        check_range("ppo.clip_eps", self.clip_eps, 1e-6, 1.0)
        check_range("ppo.vf_clip", self.vf_clip, 1e-6)
        check_range("ppo.vf_coef", self.vf_coef, 0.0)
        check_range("ppo.reward_clip", self.reward_clip, 0.0)
        check_choice("ppo.eos_penalty_mode", self.eos_penalty_mode, PPO_EOS_PENALTY_MODES)
        check_range("ppo.ptx_coef", self.ptx_coef, 0.0)
        check_range("ppo.ptx_batch", self.ptx_batch, 1)
        check_range("ppo.ptx_block", self.ptx_block, 2)
        check_range("ppo.samples_to_print", self.samples_to_print, 0)
        if self.rollout_batch % self.minibatch:
            raise ValueError(
                f"ppo.rollout_batch={self.rollout_batch} is not a multiple of ppo.minibatch={self.minibatch}"
            )
        if self.micro_batch and self.minibatch % self.micro_batch:
            raise ValueError(
                f"ppo.minibatch={self.minibatch} is not a multiple of ppo.micro_batch={self.micro_batch}"
            )


@config_class
class ValueConfig:
    """The critic."""

    share_trunk: bool = False
    """value head on the policy trunk (with_head) instead of a separate critic initialised from the RM"""
    lr: float = 1e-4
    """learning rate of the separate critic"""


@config_class
class PPOConfig:
    """`picochat ppo`: RLHF with PPO (and PPO-ptx) from an SFT policy and a reward model."""

    policy: str = ""
    """SFT checkpoint: the initial policy (and the frozen reference unless `reference` is set; also --policy)"""
    reference: str = ""
    """frozen reference for the KL penalty and the win-rate baseline (empty = the initial policy);
    iterated rounds start from the last RL policy and keep the SFT model here"""
    rm: str = ""
    """reward-model checkpoint (also --rm)"""
    data_dir: str = ""
    """pre-training shards for PPO-ptx (a `picochat tokenizer` data dir; also --data-dir)"""
    ppo: PPOHParams = field(default_factory=PPOHParams)
    value: ValueConfig = field(default_factory=ValueConfig)
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(
            lr=2e-5, warmup_steps=0, min_lr_ratio=1.0, weight_decay=0.0, max_steps=1
        )
    )
    """policy optimizer (max_steps is derived: iterations × epochs × rollout_batch/minibatch)"""
    run: RunConfig = field(default_factory=lambda: RunConfig(log_every=1, save_every=10, eval_every=1000))
    """seed, device, dtype; log_every and save_every count PPO iterations (save also keeps a snapshot)"""


@config_class
class CollectConfig:
    """`picochat collect`: sample K answers per prompt from a policy and rank them with the gold labeler."""

    policy: str = ""
    """policy checkpoint to sample from (the SFT model); also set with --policy"""
    k: int = 4
    """answers per prompt, 4..9 (InstructGPT section 3.5)"""
    n_prompts: int = 512
    """task prompts to sample for"""
    split: str = "train"
    """task split: train or heldout (held-out templates and values)"""
    seed: int = 0
    """seed for the tasks, the sampling and the labeler noise"""
    temperature: float = 1.0
    """sampling temperature"""
    noise: float = 0.0
    """Bradley-Terry (Gumbel) labeler noise; 0 = perfect gold labeler, 0.4 = about 75% agreement"""
    tie_tolerance: float = 0.05
    """answers adjacent in the ranking whose gold scores differ by at most this are a tie (no pair)"""
    max_new_tokens: int = 48
    """longest answer in tokens"""
    batch_prompts: int = 16
    """prompts per generation batch (each gives k rows)"""
    device: str = "auto"
    """auto, cpu, cuda, cuda:N or mps"""

    def __post_init__(self) -> None:
        check_range("k", self.k, 4, 9)
        check_range("n_prompts", self.n_prompts, 1)
        check_choice("split", self.split, ("train", "heldout"))
        check_range("temperature", self.temperature, 0.0)
        check_range("noise", self.noise, 0.0)
        check_range("tie_tolerance", self.tie_tolerance, 0.0, 1.0)
        check_range("max_new_tokens", self.max_new_tokens, 1)
        check_range("batch_prompts", self.batch_prompts, 1)


@config_class
class RewardConfig:
    """`picochat rm`: a reward model on K-way rankings, all K-choose-2 pairs per prompt (InstructGPT eq. 1)."""

    sft: str = ""
    """SFT checkpoint the reward model starts from; also set with --ckpt"""
    data: list[str] = field(default_factory=list)
    """training ranking/pairwise JSONL files (gold and human); empty = collect them from the SFT policy"""
    heldout: str = ""
    """held-out ranking JSONL for the accuracy headline; empty = collect on the tasks' heldout split"""
    shift: str = ""
    """ranking JSONL from a different policy (distribution shift); empty = collect one"""
    shift_policy: str = ""
    """policy for the collected shift set (empty = the SFT model at shift_temperature)"""
    collect_policy: str = ""
    """policy to sample the train and held-out comparisons from (empty = the SFT model); iterated
    rounds sample from the last RL policy"""
    extra_data: list[str] = field(default_factory=list)
    """ranking/pairwise files from earlier rounds, trained on together with the new comparisons"""
    shift_temperature: float = 1.5
    """sampling temperature of the collected shift set"""
    n_heldout: int = 128
    """prompts collected for each of the held-out and shift sets"""
    margin: float = 0.0
    """required score gap: loss -log sigmoid(r_w - r_l - margin)"""
    label_smoothing: float = 0.0
    """probability that a ranked pair is flipped (conservative loss for noisy labels), in [0, 0.5)"""
    calibration_bins: int = 10
    """bins of predicted P(w beats l) in the calibration data"""
    score_batch: int = 64
    """sequences per forward pass when scoring for evaluation and normalisation"""
    collect: CollectConfig = field(default_factory=lambda: CollectConfig(n_prompts=1024))
    """sampling settings when the training set is collected (policy = sft)"""
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(lr=3e-4, warmup_steps=20, max_steps=300, batch_size=16)
    )
    """optimizer; batch_size counts prompts (each with its K answers)"""
    run: RunConfig = field(default_factory=lambda: RunConfig(eval_every=100, save_every=100, log_every=20))
    """where and how the run executes"""

    def __post_init__(self) -> None:
        check_range("margin", self.margin, 0.0)
        check_range("label_smoothing", self.label_smoothing, 0.0, 0.499)
        check_range("shift_temperature", self.shift_temperature, 0.0)
        check_range("n_heldout", self.n_heldout, 1)
        check_range("calibration_bins", self.calibration_bins, 2)
        check_range("score_batch", self.score_batch, 1)


TASK_FORMATS = ("classification", "entailment", "similarity", "multiple_choice")


@config_class
class FinetuneConfig:
    """`picochat finetune`: GPT-1 fine-tuning of a base checkpoint with a linear head (GPT-1 eq. 3-5)."""

    ckpt: str = ""
    """base checkpoint directory (also --ckpt)"""
    task: str = "sentiment"
    """built-in task: sentiment, nli, paraphrase, cloze, paraphrase_synth (also --task); ignored with data"""
    task_seed: int = 0
    """seed of the built-in task generator (fixes its train/test split)"""
    level: str = "full"
    """difficulty of the built-in nli and paraphrase_synth sets: full, or easy (fewer people, facts, slots)"""
    data: str = ""
    """your own task JSONL (also --data); rows as in picochat.data.gpt1_tasks"""
    test_data: str = ""
    """held-out JSONL for --data (empty = hold out test_fraction of the rows)"""
    test_fraction: float = 0.2
    """share of --data rows held out when no test_data is given"""
    format: str = ""
    """format of --data: classification, entailment, similarity, multiple_choice (empty = infer)"""
    aux_lm_weight: float = 0.5
    """λ in GPT-1 eq. 5: weight of the auxiliary LM loss on the task sequences (0 = off)"""
    max_len: int = 128
    """longest task sequence in tokens (texts are cut from the left so the extract token survives)"""
    eval_batch_size: int = 64
    """examples per forward pass when evaluating"""
    eval_train_examples: int = 500
    """training examples re-scored at the end for the train accuracy"""
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(
            lr=5e-4, warmup_steps=10, max_steps=150, batch_size=32, weight_decay=0.01
        )
    )
    """optimizer; batch_size counts examples"""
    run: RunConfig = field(default_factory=lambda: RunConfig(log_every=25, eval_every=1000, save_every=1000))
    """where and how the run executes"""

    def __post_init__(self) -> None:
        check_range("aux_lm_weight", self.aux_lm_weight, 0.0)
        check_range("max_len", self.max_len, 4)
        check_range("test_fraction", self.test_fraction, 0.01, 0.9)
        check_range("eval_batch_size", self.eval_batch_size, 1)
        check_range("eval_train_examples", self.eval_train_examples, 0)
        if self.format:
            check_choice("format", self.format, TASK_FORMATS)
        check_choice("level", self.level, ("full", "easy"))


@config_class
class EvalConfig:
    """`picochat eval`: bits per byte vs a bigram baseline, zero-/few-shot accuracy, fine-tuned accuracy."""

    ckpt: str = ""
    """checkpoint to evaluate (also --ckpt)"""
    data_dir: str = ""
    """token shards for bits per byte and the bigram baseline (a `picochat tokenizer` data dir; also --data-dir)"""
    tasks: list[str] = field(default_factory=lambda: ["sentiment", "nli", "paraphrase", "cloze"])
    """zero-/few-shot tasks (also --tasks a,b)"""
    shots: list[int] = field(default_factory=lambda: [0, 1, 4])
    """demonstrations in the prompt, GPT-3 style (also --shots 0,1,4)"""
    n: int = 100
    """test examples per task for zero-/few-shot"""
    max_lm_tokens: int = 0
    """cap on held-out tokens for bits per byte (0 = the whole split)"""
    finetune_dir: str = ""
    """directory of finetune runs (<task>/summary.json) to add to the table (also --finetune-dir)"""
    batch_size: int = 16
    """sequences per forward pass"""
    seed: int = 0
    """seed for choosing test examples and demonstrations"""
    device: str = "auto"
    """auto, cpu, cuda, cuda:N or mps"""

    def __post_init__(self) -> None:
        check_range("n", self.n, 1)
        check_range("max_lm_tokens", self.max_lm_tokens, 0)
        check_range("batch_size", self.batch_size, 1)
        for k in self.shots:
            check_range("shots", k, 0, 64)


SFT_DATA_MODES = ("extend", "replace")


def _sft_optim() -> OptimConfig:
    return OptimConfig(lr=1e-3, warmup_steps=10, max_steps=120, batch_size=16)


def _sft_run() -> RunConfig:
    return RunConfig(log_every=10, eval_every=40, eval_batches=4, save_every=40)


@config_class
class SFTConfig:
    """`picochat sft`: supervised fine-tuning of a base checkpoint on chat demonstrations."""

    ckpt: str = ""
    """base checkpoint directory (e.g. runs/tiny/pretrain/ckpt); also --ckpt"""
    data: str = ""
    """JSONL file, one {"messages": [{"role", "content"}, ...]} per line; also --data"""
    data_mode: str = "extend"
    """'extend': add --data to the embedded mix; 'replace': train on --data alone"""
    n_task_demos: int = 6000
    """demonstrations of the checkable tasks (train split) in the mix"""
    n_chitchat: int = 1500
    """chitchat-dataset conversations in the mix"""
    n_chatterbot: int = 2000
    """chatterbot-corpus Q/A conversations in the mix (at most what the corpus has)"""
    max_turns: int = 4
    """chitchat conversations are cut to their first N turns"""
    ptx_fraction: float = 0.0
    """fraction of rows that are pre-training windows with the LM loss (0 = off)"""
    ptx_data: str = ""
    """pre-training data dir (data.json + train.bin) for ptx rows (default: data/ beside or above --ckpt)"""
    eval_tasks: int = 140
    """held-out checkable tasks answered greedily before and after SFT"""
    eval_max_new_tokens: int = 48
    """token limit for those answers"""
    optim: OptimConfig = field(default_factory=_sft_optim)
    run: RunConfig = field(default_factory=_sft_run)

    def __post_init__(self) -> None:
        check_choice("data_mode", self.data_mode, SFT_DATA_MODES)
        for name in ("n_task_demos", "n_chitchat", "n_chatterbot"):
            check_range(name, getattr(self, name), 0)
        check_range("max_turns", self.max_turns, 2)
        check_range("ptx_fraction", self.ptx_fraction, 0.0, 0.9)
        check_range("eval_tasks", self.eval_tasks, 1)
        check_range("eval_max_new_tokens", self.eval_max_new_tokens, 1)


@config_class
class ScalingConfig:
    """`picochat scaling`: fit L(C) = a·C^(−b) + c on a sweep of small models, predict a bigger one, check it."""

    widths: list[int] = field(default_factory=lambda: [4, 8, 12, 16, 20, 24])
    """model widths n_embd of the sweep members (multiples of head_dim; at least 3)"""
    head_dim: int = 4
    """attention head size, the same for every member (n_head = n_embd / head_dim)"""
    aspect: int = 32
    """width per layer: n_layer = max(1, round(n_embd / aspect))"""
    block_size: int = 16
    """context length of every member (short: a 100x bigger model cannot exploit context the sweep cannot see)"""
    tokens_per_param: float = 20.0
    """training tokens per matmul parameter N (Chinchilla: about 20)"""
    min_steps: int = 20
    """fewest optimizer steps of any member"""
    seeds_per_member: int = 8
    """training runs per sweep member (seeds run.seed, run.seed+1, ...); the fit takes each size's mean, weighted by its spread"""
    lr: float = 1e-2
    """peak learning rate of a member of width lr_ref_width"""
    lr_ref_width: int = 32
    """width at which the peak learning rate is `lr`"""
    lr_width_exponent: float = 0.5
    """peak lr = lr · (lr_ref_width / n_embd) ** lr_width_exponent"""
    warmup_fraction: float = 0.05
    """linear warmup as a fraction of each member's steps"""
    batch_ref_tokens: int = 100_000
    """token budget D at which a member's batch is optim.batch_size sequences"""
    batch_exponent: float = 0.25
    """sequences per step = optim.batch_size · (D / batch_ref_tokens) ** batch_exponent"""
    eval_tokens: int = 262144
    """held-out tokens each member is scored on, at most the whole split (the same windows for every member)"""
    ratio: float = 0.0
    """target compute / largest member's compute (also --ratio); 0 = 100 on CPU, 1000 on GPU"""
    fit_irreducible: bool = False
    """fit the irreducible term c (GPT-4's form); false holds c = 0 (Kaplan et al.'s pure power law in C)"""
    band_level: float = 0.9
    """coverage of the confidence band of the prediction"""
    train_target: bool = True
    """train the target to measure the prediction's error (false = predict only)"""
    data: CorpusConfig = field(default_factory=lambda: CorpusConfig(vocab_size=264))
    """corpus and tokenizer (default: byte-level, the 256 bytes plus the special tokens)"""
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(batch_size=16, min_lr_ratio=0.1))
    """shared recipe; lr, warmup_steps, max_steps and batch_size are set per member by the rules above"""
    run: RunConfig = field(default_factory=lambda: RunConfig(log_every=1000))
    """seed, device, dtype; eval/save/log intervals are set per member"""

    def __post_init__(self) -> None:
        check_range("head_dim", self.head_dim, 1)
        check_range("aspect", self.aspect, 1)
        check_range("block_size", self.block_size, 2)
        if len(set(self.widths)) < 3:
            raise ValueError(
                f"widths needs at least 3 different sizes to fit 3 parameters, got {self.widths}"
            )
        for w in self.widths:
            if w < 1 or w % self.head_dim:
                raise ValueError(f"widths: {w} is not a positive multiple of head_dim={self.head_dim}")
        check_range("tokens_per_param", self.tokens_per_param, 1e-3)
        check_range("min_steps", self.min_steps, 1)
        check_range("seeds_per_member", self.seeds_per_member, 1)
        check_range("lr", self.lr, 0.0)
        check_range("lr_ref_width", self.lr_ref_width, 1)
        check_range("warmup_fraction", self.warmup_fraction, 0.0, 0.5)
        check_range("batch_ref_tokens", self.batch_ref_tokens, 1)
        check_range("batch_exponent", self.batch_exponent, 0.0, 1.0)
        check_range("eval_tokens", self.eval_tokens, 1)
        check_range("ratio", self.ratio, 0.0)
        check_range("band_level", self.band_level, 0.01, 0.999)


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
    """Write the resolved config as TOML (None values are the defaults and are left out), atomically so
    that a crash mid-write never leaves a torn config.toml for --resume to trip over."""
    assert is_dataclass(cfg)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(
        path,
        f"# resolved {type(cfg).__name__}; rerun with --config {path.name}\n"
        + tomli_w.dumps(drop_none(to_tree(cfg))),
    )


def field_help(cls: type, prefix: str = "", default: Any = None) -> list[tuple[str, str, str]]:
    """(dotted key, default, help) for every leaf field, read from the field docstrings.

    Nested sections show the stage's own defaults (e.g. SFT's optim.lr), not the section class's."""
    docs = attribute_docs(cls)
    rows: list[tuple[str, str, str]] = []
    default = cls() if default is None else default
    for f in fields(cls):
        value = getattr(default, f.name)
        if is_dataclass(value):
            rows += field_help(type(value), f"{prefix}{f.name}.", value)
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
