"""The whole recipe on the micro preset: every stage runs, every artefact exists, and the report's
headline numbers are the ones the stages logged."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

STAGE_OUTPUTS = {
    "data": ["tokenizer.json", "train.bin", "val.bin"],
    "pretrain": ["ckpt/model.safetensors", "metrics.jsonl", "config.toml", "summary.json"],
    "eval": ["eval.json", "summary.json"],
    "finetune": [
        "sentiment/ckpt/model.safetensors",
        "nli/summary.json",
        "paraphrase/summary.json",
        "cloze/summary.json",
    ],
    "sft": ["ckpt/model.safetensors", "metrics.jsonl", "summary.json"],
    "rm": ["ckpt/model.safetensors", "calibration.json", "summary.json"],
    "ppo": ["ckpt/model.safetensors", "metrics.jsonl", "winrate.json", "summary.json"],
    "ppo_ptx": ["ckpt/model.safetensors", "summary.json"],
    "transcripts": ["summary.json"],
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pipeline") / "micro"
    r = subprocess.run(
        [sys.executable, "-m", "picochat.cli", "pipeline", "--preset", "micro", "--out", str(out)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"outputs in {out}" in r.stdout
    return out


def test_every_stage_wrote_its_artefacts(run_dir: Path) -> None:
    for stage, files in STAGE_OUTPUTS.items():
        for name in files:
            assert (run_dir / stage / name).exists(), f"{stage}/{name}"
    for name in ("report.md", "report.html", "pipeline.json", "plots/pretrain_loss.png"):
        assert (run_dir / name).exists(), name
    record = json.loads((run_dir / "pipeline.json").read_text())
    assert record["headline"]["RM held-out pairwise accuracy"] is not None  # kept after the last stage


def test_report_numbers_are_the_logged_ones(run_dir: Path) -> None:
    report = (run_dir / "report.md").read_text()
    pretrain = json.loads((run_dir / "pretrain" / "summary.json").read_text())
    last_val = [json.loads(x) for x in (run_dir / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    last_val = [r for r in last_val if "val/bpb" in r][-1]
    assert f"| val bits/byte (GPT) | {pretrain['val/bpb']:.3f} |" in report
    assert abs(pretrain["val/bpb"] - last_val["val/bpb"]) < 1e-9
    rm = json.loads((run_dir / "rm" / "summary.json").read_text())
    assert f"| RM held-out pairwise accuracy | {rm['rm/accuracy']:.3f} |" in report
    for family, row in rm["rm/per_family"].items():
        assert f"| {family} | {row['accuracy']:.3f} | {row['n_pairs']:,} |" in report
    ppo = json.loads((run_dir / "ppo" / "summary.json").read_text())
    winrate = json.loads((run_dir / "ppo" / "winrate.json").read_text())
    assert ppo["winrate/win_rate"] == winrate["win_rate"]
    assert f"| ppo win rate over SFT | {winrate['win_rate']:.3f} |" in report
    evals = json.loads((run_dir / "eval" / "summary.json").read_text())
    assert f"| val bits/byte (bigram) | {evals['lm']['bigram/bpb']:.3f} |" in report


def test_rerun_skips_finished_stages(run_dir: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "picochat.cli", "pipeline", "--preset", "micro", "--out", str(run_dir), "--stages", "tokenizer,pretrain,report"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert "tokenizer: done already" in r.stdout and "pretrain: done already" in r.stdout
    assert "report: wrote" in r.stdout


def test_second_rlhf_round_continues_from_the_first(run_dir: Path) -> None:
    """--rounds 2: comparisons from round 1's PPO policy, an RM on both rounds' comparisons, PPO from the
    round-1 policy with the KL reference and win-rate baseline still the SFT model."""
    r = subprocess.run(
        [sys.executable, "-m", "picochat.cli", "pipeline", "--preset", "micro", "--out", str(run_dir), "--rounds", "2", "--stages", "rm_2,ppo_2,report"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    rm1 = json.loads((run_dir / "rm" / "summary.json").read_text())
    rm2 = json.loads((run_dir / "rm_2" / "summary.json").read_text())
    new = (run_dir / "rm_2" / "prefs" / "train.jsonl").read_text().splitlines()
    assert new and rm2["n_train_prompts"] > rm1["n_train_prompts"]  # round 1's comparisons + the new ones
    rm2_cfg = (run_dir / "rm_2" / "config.toml").read_text()
    assert (
        str(run_dir / "ppo" / "ckpt") in rm2_cfg and str(run_dir / "rm" / "prefs" / "train.jsonl") in rm2_cfg
    )
    ppo2_cfg = (run_dir / "ppo_2" / "config.toml").read_text()
    assert f'policy = "{run_dir / "ppo" / "ckpt"}"' in ppo2_cfg
    assert f'reference = "{run_dir / "sft" / "ckpt"}"' in ppo2_cfg
    assert f'rm = "{run_dir / "rm_2" / "ckpt"}"' in ppo2_cfg
    winrate = json.loads((run_dir / "ppo_2" / "winrate.json").read_text())
    report = (run_dir / "report.md").read_text()
    assert f"| ppo_2 win rate over SFT | {winrate['win_rate']:.3f} |" in report
