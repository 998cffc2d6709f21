"""Checkpoints: a directory of safetensors tensors and JSON, written atomically, never pickled.

Layout of `NAME/` (DESIGN.md):
    model.safetensors   model weights (the tied LM head is stored once, as wte.weight)
    config.json         {"model": GPTConfig fields, "tokenizer": identity hash, "meta": {...}}
    tokenizer.json      Hugging Face tokenizers file
    trainer.safetensors optimizer tensors + RNG states          (only for resumable training checkpoints)
    trainer.json        optimizer hyper-parameters, TrainState (step, data position, ...)

A checkpoint is written into `NAME.tmp/` and renamed into place, so a crash or a failed write never
leaves a half-written `NAME/` and never destroys the previous good one. config.json, written last,
records the sha256 of each safetensors file; loading checks it, so a flipped bit or a partial copy is an
error instead of silently different weights (checkpoints written before this check have no digests).

Single files that are replaced whole (summary.json, config.toml, calibration.json, ...) go through
atomic_write_text / write_json here: a temporary file, fsync, then os.replace, never a truncated file.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from picochat.model import GPT, GPTConfig
from picochat.tokenizer import Tokenizer

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
TRAINER_TENSORS = "trainer.safetensors"
TRAINER_JSON = "trainer.json"
FORMAT_VERSION = 1
TIED_KEY = "lm_head.weight"
DIGESTS = "sha256"  # config.json key: {file name: sha256 hex digest}


class CheckpointError(ValueError):
    """A checkpoint directory that is missing, incomplete, corrupt or does not fit the model."""


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Replace the file `path` with `data` in one step, so a reader never sees a half-written file.

    A plain write_text truncates the old file first: a crash or a full disk midway leaves it empty or
    torn. Here the bytes go to a temporary file in the same folder (same file system, so the rename is
    atomic), which is flushed and fsync'ed before os.replace puts it in place. On any exception the old
    file is left byte for byte and the temporary file is removed. The parent folder must exist.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as f:  # "x": never clobber; permissions follow the umask like write_text
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Replace the text file `path` atomically (UTF-8); see atomic_write_bytes."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any, *, sort_keys: bool = True) -> Path:
    """Write `obj` as indented JSON (keys sorted unless sort_keys=False keeps the insertion order that
    summaries are read in), atomically (atomic_write_text)."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=sort_keys) + "\n")


def atomic_dir_write(path: Path, write: Any) -> None:
    """Call write(tmp_dir), then move tmp_dir to `path`, replacing an existing directory only after the
    new one is complete. On any exception the old directory is left untouched and tmp is removed."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    old = path.with_name(path.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(path)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_digest(file: Path) -> None:
    """Compare `file` with the sha256 its checkpoint's config.json recorded (if any)."""
    config_path = file.parent / CONFIG_FILE
    if not config_path.is_file():
        return
    expected = read_config(file.parent).get(DIGESTS, {}).get(file.name)
    if expected and file_sha256(file) != expected:
        raise CheckpointError(
            f"{file} does not match the sha256 recorded in {config_path} (a flipped bit or a partial copy); "
            "restore it or use an older checkpoint"
        )


def recover_interrupted(path: Path) -> None:
    """If a previous write died between its two renames, put the old checkpoint back."""
    old = path.with_name(path.name + ".old")
    if not path.exists() and old.exists():
        old.rename(path)


def model_state(model: GPT) -> dict[str, torch.Tensor]:
    state = model.state_dict()
    return {k: v.detach().contiguous().cpu() for k, v in state.items() if k != TIED_KEY}


def flatten_optimizer(opt_state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split torch's optimizer state dict into tensors (for safetensors) and the JSON-able rest."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, pstate in opt_state["state"].items():
        for key, value in pstate.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{pid}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": opt_state["param_groups"], "scalars": scalars}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, pid, key = name.split(".", 2)
            state.setdefault(int(pid), {})[key] = value
    for pid, scalars in rest["scalars"].items():
        state.setdefault(int(pid), {}).update(scalars)
    return {"state": state, "param_groups": rest["param_groups"]}


def save_checkpoint(
    path: str | Path,
    model: GPT,
    tok: Tokenizer,
    *,
    meta: dict[str, Any] | None = None,
    trainer_tensors: dict[str, torch.Tensor] | None = None,
    trainer_json: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint directory atomically. trainer_* (optimizer, RNG, TrainState) make it resumable."""
    path = Path(path)
    raw = getattr(model, "module", model)  # unwrap DDP
    if tok.vocab_size > raw.config.vocab_size:
        raise CheckpointError(
            f"tokenizer has {tok.vocab_size} ids but the model only {raw.config.vocab_size} embeddings"
        )
    config = {
        "format_version": FORMAT_VERSION,
        "model": raw.config.to_dict(),
        "tokenizer": tok.identity(),
        "meta": meta or {},
    }
    tensors = model_state(raw)

    def write(tmp: Path) -> None:
        save_file(tensors, str(tmp / MODEL_FILE))
        tok.save(tmp / TOKENIZER_FILE)
        written = [MODEL_FILE]
        if trainer_json is not None:
            save_file(trainer_tensors or {}, str(tmp / TRAINER_TENSORS))
            write_json(tmp / TRAINER_JSON, trainer_json)
            written.append(TRAINER_TENSORS)
        write_json(
            tmp / CONFIG_FILE, {**config, DIGESTS: {name: file_sha256(tmp / name) for name in written}}
        )

    atomic_dir_write(path, write)
    return path


def read_config(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    recover_interrupted(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist (expected a directory with {CONFIG_FILE})")
    cfg_path = path / CONFIG_FILE
    if not cfg_path.is_file():
        raise CheckpointError(f"{cfg_path} is missing: {path} is not a complete picochat checkpoint")
    try:
        config = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{cfg_path} is not valid JSON: {e}") from None
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise CheckpointError(f"{cfg_path} has no 'model' section")
    return config


def config_from_dict(d: dict[str, Any], source: str) -> GPTConfig:
    known = {f.name for f in fields(GPTConfig)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise CheckpointError(f"{source}: unknown model config keys {unknown}")
    try:
        return GPTConfig(**d)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: bad model config: {e}") from None


def load_tensors(file: Path) -> dict[str, torch.Tensor]:
    if not file.is_file():
        raise CheckpointError(f"{file} is missing")
    try:
        return load_file(str(file))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(
            f"{file} is corrupt or truncated ({e}); restore it or use an older checkpoint"
        ) from None


def load_model_weights(model: GPT, file: Path) -> None:
    """Load model.safetensors into `model`, checking every key and shape (tied head excepted)."""
    tensors = load_tensors(file)
    expected = {k: v.shape for k, v in model.state_dict().items() if k != TIED_KEY}
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{file}: missing tensors {missing[:5]}, unexpected tensors {unexpected[:5]}")
    for k, shape in expected.items():
        if tensors[k].shape != shape:
            raise CheckpointError(
                f"{file}: tensor {k} has shape {tuple(tensors[k].shape)}, the config expects {tuple(shape)}"
            )
        if not torch.isfinite(tensors[k]).all():
            raise CheckpointError(f"{file}: tensor {k} contains NaN or inf")
    check_digest(file)
    model.load_state_dict(tensors, strict=False)


def load_checkpoint(
    path: str | Path, device: str | torch.device = "cpu", config_overrides: dict[str, Any] | None = None
) -> tuple[GPT, Tokenizer]:
    """Load (model, tokenizer) from a checkpoint directory. The model is in eval mode on `device`."""
    path = Path(path)
    config = read_config(path)
    model_cfg = config_from_dict(config["model"], str(path / CONFIG_FILE))
    if config_overrides:
        model_cfg = config_from_dict({**model_cfg.to_dict(), **config_overrides}, "config overrides")
    tok = Tokenizer.load(path / TOKENIZER_FILE)
    if tok.vocab_size > model_cfg.vocab_size:
        raise CheckpointError(
            f"{path / TOKENIZER_FILE} has {tok.vocab_size} ids but the model has only "
            f"{model_cfg.vocab_size} embeddings: the tokenizer does not belong to this model"
        )
    if config.get("tokenizer") and config["tokenizer"] != tok.identity():
        raise CheckpointError(
            f"{path / TOKENIZER_FILE} is not the tokenizer this model was trained with "
            f"(identity {tok.identity()} != {config['tokenizer']} in {CONFIG_FILE})"
        )
    model = GPT(model_cfg)
    load_model_weights(model, path / MODEL_FILE)
    return model.to(device).eval(), tok


def load_trainer_state(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """The trainer tensors and JSON of a resumable checkpoint, or None if it has none."""
    path = Path(path)
    recover_interrupted(path)  # a run killed between the two renames of a save left it at NAME.old
    if not (path / TRAINER_JSON).is_file():
        return None
    try:
        rest = json.loads((path / TRAINER_JSON).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path / TRAINER_JSON} is not valid JSON: {e}") from None
    tensors = load_tensors(path / TRAINER_TENSORS)
    check_digest(path / TRAINER_TENSORS)
    return tensors, rest


def checkpoint_meta(path: str | Path) -> dict[str, Any]:
    return read_config(path).get("meta", {})
