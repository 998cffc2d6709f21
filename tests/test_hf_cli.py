"""`picochat export-hf` and `picochat import-hf` as a user runs them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from picochat.checkpoint import load_checkpoint, save_checkpoint

pytest.importorskip("transformers")


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "picochat.cli", *args], capture_output=True, text=True, timeout=300
    )


def test_export_then_import_round_trips_the_weights(tok, micro_model, tmp_path: Path) -> None:
    ckpt = save_checkpoint(tmp_path / "ckpt", micro_model, tok)
    r = run("export-hf", "--ckpt", str(ckpt), "--out", str(tmp_path / "hf"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "hf" / "model.safetensors").exists() and (tmp_path / "hf" / "tokenizer.json").exists()
    r = run("import-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "back"))
    assert r.returncode == 0, r.stderr
    model, tok2 = load_checkpoint(tmp_path / "back")
    x = torch.randint(0, tok.vocab_size, (2, 12))
    assert torch.allclose(model(x)[0], micro_model(x)[0], atol=1e-5)
    assert tok2.encode("ROMEO: hi") == tok.encode("ROMEO: hi")


def test_import_refuses_pickle_without_the_flag(tmp_path: Path) -> None:
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(
        '{"model_type": "gpt2", "n_layer": 1, "n_head": 1, "n_embd": 8, "vocab_size": 300}'
    )
    (hf / "pytorch_model.bin").write_bytes(b"not really a pickle")
    r = run("import-hf", str(hf), "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "pickle" in r.stderr.lower() and "Traceback" not in r.stderr
