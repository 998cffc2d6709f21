from __future__ import annotations

from pathlib import Path

import pytest
import torch

from picochat.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from picochat.model import GPT, GPTConfig
from picochat.tokenizer import Tokenizer


def test_round_trip_is_exact_and_has_the_documented_layout(tok, micro_model, tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "ck", micro_model, tok, meta={"stage": "test"})
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    model, tok2 = load_checkpoint(path)
    for (k, a), b in zip(micro_model.state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert model.lm_head.weight is model.wte.weight
    assert tok2.identity() == tok.identity()


def test_failed_write_keeps_previous_checkpoint(tok, micro_model, tmp_path: Path, monkeypatch) -> None:
    path = save_checkpoint(tmp_path / "ck", micro_model, tok)
    before = (path / "model.safetensors").read_bytes()
    other = GPT(micro_model.config)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("picochat.checkpoint.save_file", disk_full)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(path, other, tok)
    assert (path / "model.safetensors").read_bytes() == before
    assert not (tmp_path / "ck.tmp").exists()
    load_checkpoint(path)


@pytest.mark.parametrize("damage", ["truncate", "bitflip_header", "delete_config", "bad_json"])
def test_corrupt_checkpoint_gives_clear_error(tok, micro_model, tmp_path: Path, damage: str) -> None:
    path = save_checkpoint(tmp_path / "ck", micro_model, tok)
    weights = path / "model.safetensors"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "bitflip_header":
        data = bytearray(weights.read_bytes())
        data[10] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif damage == "delete_config":
        (path / "config.json").unlink()
    else:
        (path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=str(path)):
        load_checkpoint(path)


def test_shape_mismatch_names_the_tensor(tok, micro_model, tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "ck", micro_model, tok)
    bigger = GPT(GPTConfig.from_preset("micro", vocab_size=tok.vocab_size, n_embd=64))
    save_checkpoint(tmp_path / "big", bigger, tok)
    (path / "model.safetensors").write_bytes((tmp_path / "big" / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="shape"):
        load_checkpoint(path)


def test_foreign_tokenizer_is_rejected(tok, micro_model, tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "ck", micro_model, tok)
    Tokenizer.train(["completely different text " * 50], vocab_size=300).save(path / "tokenizer.json")
    with pytest.raises(CheckpointError, match="not the tokenizer"):
        load_checkpoint(path)


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")


def test_no_pickle_in_the_package() -> None:
    src = Path(__file__).resolve().parents[1] / "src" / "picochat"
    for file in src.rglob("*.py"):
        text = file.read_text()
        assert "import pickle" not in text and "pickle.load" not in text, file
        for line in text.splitlines():
            if "torch.load(" in line:
                assert "weights_only=True" in line, f"{file}: {line.strip()}"
