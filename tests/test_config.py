from __future__ import annotations

from pathlib import Path

import pytest

from picochat.config import ConfigError, PretrainConfig, load_config, save_config


def test_overrides_are_parsed_by_field_type() -> None:
    cfg = load_config(
        PretrainConfig,
        overrides=["optim.lr=1e-3", "model.n_layer=3", "run.progress=false", "model.dropout=none"],
    )
    assert (
        cfg.optim.lr == 1e-3
        and cfg.model.n_layer == 3
        and cfg.run.progress is False
        and cfg.model.dropout is None
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lrr=1", "optim.lrr: unknown key"),
        ("optim.lr=abc", "optim.lr"),
        ("optim.max_steps=0", "optim.max_steps must be"),
        ("run.dtype=fp8", "run.dtype must be one of"),
        ("model.preset=gpt9", "model.preset must be one of"),
        ("noequals", "key=value"),
    ],
)
def test_bad_overrides_raise_naming_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_config(PretrainConfig, overrides=[override])


def test_toml_round_trip_and_precedence(tmp_path: Path) -> None:
    cfg = load_config(PretrainConfig, overrides=["optim.lr=0.01", "model.preset=micro"])
    path = save_config(cfg, tmp_path / "config.toml")
    again = load_config(PretrainConfig, path)
    assert again == cfg
    assert load_config(PretrainConfig, path, ["optim.lr=0.5"]).optim.lr == 0.5


def test_bad_toml_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[optim\nlr = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(PretrainConfig, bad)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("[optim]\nlearning_rate = 1\n")
    with pytest.raises(ConfigError, match="optim.learning_rate: unknown key"):
        load_config(PretrainConfig, unknown)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(PretrainConfig, tmp_path / "missing.toml")


def test_model_spec_builds_vocab_multiple_of_64() -> None:
    cfg = load_config(PretrainConfig, overrides=["model.preset=micro"])
    assert cfg.model.build(300).vocab_size == 320
    gpt2 = load_config(PretrainConfig, overrides=["model.preset=gpt2"])
    assert gpt2.model.build(50257).vocab_size == 50257
    assert gpt2.model.build(50264).vocab_size == 50304
