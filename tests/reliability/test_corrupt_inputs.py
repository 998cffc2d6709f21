"""Corrupt and malformed inputs, one table: each case damages one input the user hands to `picochat`
(checkpoint files, a run directory to resume, token shards, a corpus, SFT or preference JSONL, a config)
and the command must fail with exit code 2 and ONE line on stderr that names the file (and the line or
the key where there is one), never a traceback.

The table runs through `picochat.cli.main` in-process (fast); a sample of it, and with --runslow all of
it, runs as real subprocesses. Cases covered elsewhere and not repeated here:
tests/test_cli.py (empty and binary corpus file, unknown/badly typed override, missing data path, missing
checkpoint directory, missing --config file), tests/test_checkpoint.py (the same checkpoint damage through
the Python API, failed write keeps the previous checkpoint), tests/test_chat_data.py and
tests/test_preferences.py (the JSONL readers' messages in detail).
"""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from picochat.checkpoint import load_checkpoint, save_checkpoint
from picochat.cli import main
from picochat.model import GPT
from picochat.tokenizer import Tokenizer

MICRO = (
    "model.preset=micro", "model.block_size=32", "data.vocab_size=300", "optim.batch_size=4",
    "run.progress=false", "run.eval_batches=1", "run.dtype=float32",
)  # fmt: skip
SFT_SMALL = ("n_task_demos=4", "n_chitchat=0", "n_chatterbot=0", "eval_tasks=1", "run.progress=false")
GOOD_CHAT = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
GOOD_RANKING = {"prompt": "2 + 2?", "completions": ["4", "5"], "ranking": [0, 1], "source": "gold"}


@dataclass(frozen=True)
class Env:
    """What a case may start from: a finished run (resumable checkpoint), its shards and corpus."""

    run: Path
    data: Path
    corpus: Path


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, data_dir: Path, corpus: Path) -> Env:
    run = tmp_path_factory.mktemp("good") / "run"
    args = ["pretrain", "--out", str(run), "--data-dir", str(data_dir), f"data.path={corpus}", *MICRO]
    assert main([*args, "optim.max_steps=3", "run.save_every=1", "run.log_every=1"]) == 0
    return Env(run, data_dir, corpus)


# -- damage helpers --------------------------------------------------------------------------------------


def ckpt_copy(env: Env, tmp: Path) -> Path:
    out = tmp / "ckpt"
    shutil.copytree(env.run / "ckpt", out)
    return out


def run_copy(env: Env, tmp: Path) -> Path:
    out = tmp / "run"
    shutil.copytree(env.run, out, ignore=shutil.ignore_patterns("data"))
    return out


def flip(path: Path, offset: int, mask: int = 0x40) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= mask
    path.write_bytes(bytes(data))


def data_offset(path: Path) -> int:
    """Where a safetensors file's tensor bytes begin (after the 8-byte length and the JSON header)."""
    return 8 + struct.unpack("<Q", path.read_bytes()[:8])[0]


def edit_json(path: Path, change: Callable[[dict], None]) -> None:
    obj = json.loads(path.read_text())
    change(obj)
    path.write_text(json.dumps(obj))


def sample(ckpt: Path) -> list[str]:
    return ["sample", "--ckpt", str(ckpt), "--prompt", "hi", "max_new_tokens=2"]


def resume(env: Env, run: Path, *extra: str) -> list[str]:
    return ["pretrain", "--out", str(run), "--resume", "--data-dir", str(env.data), f"data.path={env.corpus}",
            *MICRO, "optim.max_steps=5", *extra]  # fmt: skip


# -- the cases: each returns (argv, strings the one-line error must contain) ------------------------------

Case = tuple[list[str], list[str]]


def weights_truncated(env: Env, tmp: Path) -> Case:
    ck = ckpt_copy(env, tmp)
    w = ck / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    return sample(ck), [str(w), "truncated"]


def weights_header_bitflip(env: Env, tmp: Path) -> Case:
    ck = ckpt_copy(env, tmp)
    flip(ck / "model.safetensors", 12)
    return sample(ck), [str(ck / "model.safetensors")]


def weights_data_bitflip(env: Env, tmp: Path) -> Case:
    ck = ckpt_copy(env, tmp)
    flip(ck / "model.safetensors", data_offset(ck / "model.safetensors") + 3)  # an exponent bit
    return sample(ck), [str(ck / "model.safetensors"), "sha256"]


def weights_nan(env: Env, tmp: Path) -> Case:
    model, tok = load_checkpoint(env.run / "ckpt")
    with torch.no_grad():
        model.wte.weight[0, 0] = float("nan")
    ck = save_checkpoint(tmp / "ckpt", model, tok)
    return sample(ck), [str(ck / "model.safetensors"), "wte.weight", "NaN"]


def config_missing(env: Env, tmp: Path) -> Case:
    ck = ckpt_copy(env, tmp)
    (ck / "config.json").unlink()
    return sample(ck), [str(ck / "config.json"), "missing"]


def config_not_json(env: Env, tmp: Path) -> Case:
    ck = ckpt_copy(env, tmp)
    (ck / "config.json").write_text('{"model": {"n_layer": 2,')
    return sample(ck), [str(ck / "config.json"), "not valid JSON"]


def config_unknown_model_key(env: Env, tmp: Path) -> Case:
    ck = ckpt_copy(env, tmp)
    edit_json(ck / "config.json", lambda c: c["model"].update(n_experts=8))
    return sample(ck), [str(ck / "config.json"), "n_experts"]


def checkpoint_other_shape(env: Env, tmp: Path) -> Case:
    ck = ckpt_copy(env, tmp)
    model, tok = load_checkpoint(ck)
    wider = save_checkpoint(
        tmp / "wide", GPT(model.config.__class__(**{**model.config.to_dict(), "n_embd": 48})), tok
    )
    (ck / "model.safetensors").write_bytes((wider / "model.safetensors").read_bytes())
    return sample(ck), [str(ck / "model.safetensors"), "shape"]


def tokenizer_of_another_model(env: Env, tmp: Path) -> Case:
    ck = ckpt_copy(env, tmp)
    Tokenizer.train(["some other text entirely, " * 40], vocab_size=280).save(ck / "tokenizer.json")
    return sample(ck), [str(ck / "tokenizer.json"), "not the tokenizer"]


def tokenizer_larger_than_vocab(env: Env, tmp: Path) -> Case:
    """An older checkpoint (no tokenizer identity recorded) with a tokenizer the embeddings cannot hold."""
    ck = ckpt_copy(env, tmp)
    edit_json(ck / "config.json", lambda c: c.pop("tokenizer"))
    text = "".join(chr(c) for c in range(0x4E00, 0x4E00 + 600))  # 600 distinct characters
    Tokenizer.train([text * 3], vocab_size=2000).save(ck / "tokenizer.json")
    return sample(ck), [str(ck / "tokenizer.json"), "embeddings"]


def tokenizer_not_a_tokenizer(env: Env, tmp: Path) -> Case:
    ck = ckpt_copy(env, tmp)
    (ck / "tokenizer.json").write_text('{"version": "1.0"}')
    return sample(ck), [str(ck / "tokenizer.json")]


def resume_other_shape(env: Env, tmp: Path) -> Case:
    run = run_copy(env, tmp)
    return resume(env, run, "model.n_embd=48"), [str(run / "ckpt" / "model.safetensors"), "shape"]


def resume_trainer_json_broken(env: Env, tmp: Path) -> Case:
    run = run_copy(env, tmp)
    (run / "ckpt" / "trainer.json").write_text('{"state": ')
    return resume(env, run), [str(run / "ckpt" / "trainer.json"), "not valid JSON"]


def resume_trainer_tensors_truncated(env: Env, tmp: Path) -> Case:
    run = run_copy(env, tmp)
    t = run / "ckpt" / "trainer.safetensors"
    t.write_bytes(t.read_bytes()[:100])
    return resume(env, run), [str(t), "truncated"]


def resume_trainer_tensors_bitflip(env: Env, tmp: Path) -> Case:
    run = run_copy(env, tmp)
    t = run / "ckpt" / "trainer.safetensors"
    flip(t, data_offset(t) + 5, 0x01)
    return resume(env, run), [str(t), "sha256"]


def resume_metrics_bad_line(env: Env, tmp: Path) -> Case:
    run = run_copy(env, tmp)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join([lines[0], "{oops", *lines[1:]]) + "\n")
    return resume(env, run), [f"{run / 'metrics.jsonl'}:2"]


def shard_bad_magic(env: Env, tmp: Path) -> Case:
    data = tmp / "data"
    shutil.copytree(env.data, data)
    flip(data / "train.bin", 0, 0xFF)
    return ["pretrain", "--out", str(tmp / "o"), "--data-dir", str(data), f"data.path={env.corpus}", *MICRO], [
        str(data / "train.bin"), "magic",
    ]  # fmt: skip


def shard_truncated(env: Env, tmp: Path) -> Case:
    data = tmp / "data"
    shutil.copytree(env.data, data)
    shard = data / "val.bin"
    shard.write_bytes(shard.read_bytes()[:-7])
    return ["pretrain", "--out", str(tmp / "o"), "--data-dir", str(data), f"data.path={env.corpus}", *MICRO], [
        str(shard), "truncated",
    ]  # fmt: skip


def corpus_dir_all_binary(env: Env, tmp: Path) -> Case:
    d = tmp / "texts"
    d.mkdir()
    (d / "a.bin").write_bytes(bytes(range(256)) * 8)
    (d / "b.dat").write_bytes(b"\x00\xff" * 100)
    return ["pretrain", "--out", str(tmp / "o"), f"data.path={d}", *MICRO], [str(d)]


def sft_args(env: Env, tmp: Path, data: Path) -> list[str]:
    return ["sft", "--ckpt", str(env.run / "ckpt"), "--out", str(tmp / "o"), "--data", str(data), *SFT_SMALL]


def sft_jsonl(lines: list[bytes]) -> Callable[[Env, Path], Case]:
    def case(env: Env, tmp: Path) -> Case:
        path = tmp / "chats.jsonl"
        path.write_bytes(b"\n".join(lines) + b"\n")
        return sft_args(env, tmp, path), []

    return case


def sft_bad_json(env: Env, tmp: Path) -> Case:
    argv, _ = sft_jsonl([json.dumps(GOOD_CHAT).encode(), b'{"messages": [}'])(env, tmp)
    return argv, [f"{tmp / 'chats.jsonl'}:2", "not valid JSON"]


def sft_bad_role(env: Env, tmp: Path) -> Case:
    bad = {"messages": [{"role": "robot", "content": "beep"}, {"role": "assistant", "content": "x"}]}
    argv, _ = sft_jsonl([json.dumps(GOOD_CHAT).encode()] * 2 + [json.dumps(bad).encode()])(env, tmp)
    return argv, [f"{tmp / 'chats.jsonl'}:3", "robot"]


def sft_not_utf8(env: Env, tmp: Path) -> Case:
    argv, _ = sft_jsonl([json.dumps(GOOD_CHAT).encode(), b'{"messages": "\xff\xfe"}'])(env, tmp)
    return argv, [f"{tmp / 'chats.jsonl'}:2", "UTF-8"]


def sft_no_assistant(env: Env, tmp: Path) -> Case:
    argv, _ = sft_jsonl([json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode()])(env, tmp)
    return argv, [f"{tmp / 'chats.jsonl'}:1", "assistant"]


def sft_empty_file(env: Env, tmp: Path) -> Case:
    argv, _ = sft_jsonl([b"", b"  "])(env, tmp)
    return argv, [str(tmp / "chats.jsonl"), "no conversations"]


def prefs(env: Env, tmp: Path, lines: list[bytes], line_no: int | None, *words: str) -> Case:
    path = tmp / "prefs.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    argv = [
        "rm",
        "--ckpt",
        str(env.run / "ckpt"),
        "--out",
        str(tmp / "o"),
        "--data",
        str(path),
        "run.progress=false",
    ]
    return argv, [f"{path}:{line_no}" if line_no else str(path), *words]


def prefs_bad_json(env: Env, tmp: Path) -> Case:
    return prefs(env, tmp, [json.dumps(GOOD_RANKING).encode(), b"not json"], 2, "not valid JSON")


def prefs_one_completion(env: Env, tmp: Path) -> Case:
    bad = {**GOOD_RANKING, "completions": ["4"], "ranking": [0]}
    return prefs(env, tmp, [json.dumps(GOOD_RANKING).encode(), json.dumps(bad).encode()], 2, "K >= 2")


def prefs_bad_ranking(env: Env, tmp: Path) -> Case:
    bad = {**GOOD_RANKING, "ranking": [0, 2]}
    return prefs(env, tmp, [json.dumps(bad).encode()], 1, "permutation")


def prefs_missing_key(env: Env, tmp: Path) -> Case:
    bad = {k: v for k, v in GOOD_RANKING.items() if k != "source"}
    return prefs(env, tmp, [json.dumps(GOOD_RANKING).encode(), json.dumps(bad).encode()], 2, "source")


def prefs_pairwise_not_strings(env: Env, tmp: Path) -> Case:
    good = {"prompt": "hi", "chosen": "hello", "rejected": "go away"}
    bad = {"prompt": "hi", "chosen": 3, "rejected": "x"}
    return prefs(env, tmp, [json.dumps(good).encode(), json.dumps(bad).encode()], 2, "strings")


def prefs_not_utf8(env: Env, tmp: Path) -> Case:
    bad = json.dumps(GOOD_RANKING).encode().replace(b"2 + 2?", b"2 \xff 2?")
    return prefs(env, tmp, [json.dumps(GOOD_RANKING).encode(), bad], 2, "UTF-8")


def toml_file(tmp: Path, text: str) -> Path:
    path = tmp / "cfg.toml"
    path.write_text(text)
    return path


def toml_unknown_key(env: Env, tmp: Path) -> Case:
    path = toml_file(tmp, "[optim]\nlr = 1e-3\nlrr = 1\n")
    return ["pretrain", "--config", str(path)], [str(path), "optim.lrr", "unknown key"]


def toml_unknown_section(env: Env, tmp: Path) -> Case:
    path = toml_file(tmp, "[optimizer]\nlr = 1e-3\n")
    return ["pretrain", "--config", str(path)], [str(path), "optimizer", "unknown key"]


def toml_bad_type(env: Env, tmp: Path) -> Case:
    path = toml_file(tmp, '[optim]\nlr = "fast"\n')
    return ["pretrain", "--config", str(path)], [str(path), "optim.lr"]


def toml_out_of_range(env: Env, tmp: Path) -> Case:
    path = toml_file(tmp, "[run]\nsave_every = 0\n")
    return ["pretrain", "--config", str(path)], [str(path), "run.save_every"]


def toml_syntax(env: Env, tmp: Path) -> Case:
    path = toml_file(tmp, "[optim]\nlr = = 3\n")
    return ["pretrain", "--config", str(path)], [str(path), "line 2"]


def pipeline_stage_override_unknown(env: Env, tmp: Path) -> Case:
    return ["pipeline", "--preset", "micro", "--out", str(tmp / "p"), "sft.optim.lrr=1"], ["optim.lrr"]


CASES: dict[str, Callable[[Env, Path], Case]] = {
    f.__name__: f
    for f in (
        weights_truncated, weights_header_bitflip, weights_data_bitflip, weights_nan, config_missing,
        config_not_json, config_unknown_model_key, checkpoint_other_shape, tokenizer_of_another_model,
        tokenizer_larger_than_vocab, tokenizer_not_a_tokenizer, resume_other_shape, resume_trainer_json_broken,
        resume_trainer_tensors_truncated, resume_trainer_tensors_bitflip, resume_metrics_bad_line,
        shard_bad_magic, shard_truncated, corpus_dir_all_binary, sft_bad_json, sft_bad_role, sft_not_utf8,
        sft_no_assistant, sft_empty_file, prefs_bad_json, prefs_one_completion, prefs_bad_ranking,
        prefs_missing_key, prefs_pairwise_not_strings, prefs_not_utf8, toml_unknown_key, toml_unknown_section,
        toml_bad_type, toml_out_of_range, toml_syntax, pipeline_stage_override_unknown,
    )
}  # fmt: skip
SUBPROCESS_SAMPLE = ("weights_data_bitflip", "prefs_not_utf8", "toml_unknown_key")
AT_ONCE = 3  # processes started together


def assert_one_line_error(code: int, stderr: str, expected: list[str], case: str = "") -> None:
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    assert code == 2, (case, stderr[-2000:])
    assert len(lines) == 1, (case, stderr[-2000:])
    assert lines[0].startswith("picochat: error: ") and "Traceback" not in stderr, case
    for word in expected:
        assert word in lines[0], f"{case}: {word!r} not in {lines[0]!r}"


@pytest.mark.parametrize("name", list(CASES))
def test_corrupt_input_is_one_line_error(name: str, env: Env, tmp_path: Path, capsys) -> None:
    argv, expected = CASES[name](env, tmp_path)
    capsys.readouterr()
    code = main(argv)
    assert_one_line_error(code, capsys.readouterr().err, expected)
    if name == "pipeline_stage_override_unknown":
        assert not (tmp_path / "p").exists()  # rejected before any stage ran


def run_as_subprocesses(cli, env: Env, tmp_path: Path, names: list[str]) -> None:
    for start in range(0, len(names), AT_ONCE):
        batch = {}
        for name in names[start : start + AT_ONCE]:
            (tmp_path / name).mkdir()
            argv, expected = CASES[name](env, tmp_path / name)
            batch[name] = (cli.start(*argv), expected)
        for name, (proc, expected) in batch.items():
            code, _, err = cli.finish(proc, timeout=120)
            assert_one_line_error(code, err, expected, name)


def test_a_sample_of_the_table_through_real_processes(cli, env: Env, tmp_path: Path) -> None:
    run_as_subprocesses(cli, env, tmp_path, list(SUBPROCESS_SAMPLE))


@pytest.mark.slow
def test_the_whole_table_through_real_processes(cli, env: Env, tmp_path: Path) -> None:
    run_as_subprocesses(cli, env, tmp_path, list(CASES))
