#!/usr/bin/env bash
# The GPU recipe (issue 13, item 5): GPT-2 124M pre-training throughput and MFU on one CUDA GPU.
#
#   bash benchmarks/gpu_recipe.sh [OUT_DIR]        # ~4 minutes on one H100 + the tiny pipeline; logs under OUT_DIR
#
# 1. train_speed.py --gpt2: picochat vs transformers on the same weights and batch, bf16 autocast (chosen
#    by the measured matmul peak), eager; MFU over the measured peak.
# 2. The real `picochat pretrain` path (embedded corpus, real GPT-2 BPE, data loader, AdamW, LR schedule,
#    checkpointing) at the gpt2 shapes with run.compile=true; tok/s is the median of its logged steps
#    after warm-up, MFU = tok/s x flops_per_token / the bf16 peak measured in step 1.
# 3. train_speed.py --gpt2 again with both sides torch.compile'd.
# 4. generate_speed.py: Engine.generate vs transformers generate, KV cache on both.
# 5. The micro pipeline end to end on the GPU (every stage's CUDA path, bf16 autocast).
# 6. The tiny pipeline (the default preset, one RLHF round) on the GPU: its report card and stage times
#    (PIPELINE_TIMEOUT, default 420 s; it has not yet run to the end on a GPU).
# Each step has its own time limit (STEP_TIMEOUT, default 240 s) so one failure does not hide the rest.
set -uo pipefail
out=${1:-runs/gpu_recipe}
py=${PYTHON:-python}
model=${MODEL:-gpt2}    # model preset of the pretrain step
steps=${STEPS:-80}
if ! "$py" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_recipe.sh: no CUDA device visible to $py (GPT-2 124M on a CPU would take hours); see benchmarks/train_speed.py for CPU runs" >&2
    exit 2
fi
mkdir -p "$out"
step() {
    local name=$1
    shift
    echo "== $name: $*"
    timeout "${STEP_TIMEOUT:-240}" "$@" 2>&1 | tee "$out/$name.log"
    echo "== $name exit ${PIPESTATUS[0]}"
}

step train_speed "$py" benchmarks/train_speed.py --gpt2 --gpt2-batch 16 --rounds 4 --steps 3
step pretrain "$py" -m picochat.cli pretrain --out "$out/pretrain" model.preset="$model" data.tokenizer=gpt2 \
    optim.max_steps="$steps" optim.batch_size=16 optim.warmup_steps=10 run.compile=true run.log_every=5 \
    run.eval_every=1000 run.save_every=1000 run.progress=false
"$py" - "$out" <<'EOF' 2>&1 | tee "$out/pretrain_mfu.log"
"""MFU of the pretrain run: median logged tok/s after the first 20 steps over the bf16 peak of step 1."""
import json, re, statistics, sys
from pathlib import Path

from picochat.checkpoint import config_from_dict, read_config
from picochat.model import flops_per_token

out = Path(sys.argv[1])
cfg = config_from_dict(read_config(out / "pretrain" / "ckpt")["model"], "pretrain checkpoint")
recs = [json.loads(line) for line in (out / "pretrain" / "metrics.jsonl").read_text().splitlines() if line]
tok_s = statistics.median(r["tok/s"] for r in recs if "tok/s" in r and r["step"] > 20)
peak = re.search(r"bf16 autocast ([\d.]+) GFLOP/s", (out / "train_speed.log").read_text())
flops = flops_per_token(cfg)
shape = f"{cfg.n_layer}L/{cfg.n_embd}d ctx {cfg.block_size} vocab {cfg.vocab_size}"
print(f"picochat pretrain {shape} (compiled): {tok_s:,.0f} tok/s, {tok_s * flops / 1e12:.2f} TFLOP/s")
if peak:
    print(f"MFU {tok_s * flops / (float(peak.group(1)) * 1e9):.1%} of the measured bf16 peak {peak.group(1)} GFLOP/s")
EOF
step train_speed_compile "$py" benchmarks/train_speed.py --gpt2 --gpt2-batch 16 --rounds 6 --no-tiny --compile
step generate_speed "$py" benchmarks/generate_speed.py
step pipeline_micro "$py" -m picochat.cli pipeline --preset micro --out "$out/pipeline_micro"
STEP_TIMEOUT=${PIPELINE_TIMEOUT:-420} step pipeline_tiny "$py" -m picochat.cli pipeline --out "$out/pipeline_tiny" --rounds 1
echo "outputs: $out"
