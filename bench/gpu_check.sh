#!/usr/bin/env bash
# Everything only a GPU can measure, in one call on a lent GPU machine:
# QLoRA on a Llama-3-8B-shaped model (random weights, nothing downloaded) at the mission's settings
# (sequence_len 1024, micro batch 1, accumulation 8, r 32 on all linear layers, 8-bit AdamW),
# then micro batch 2: peak VRAM (allocated, reserved) and tokens/s, as JSON lines, then the memory
# plan's prediction against each measurement (the bar: within 10%).
# Wheels the machine lacks travel in .whl/ (see the device tool's README) and go to /tmp/site.
set -euo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD/src" PYTHONUNBUFFERED=1
out="${OUT:-/tmp/gpu_check}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
: > "$out/qlora.jsonl"
for mb in 1 2; do
  python3 bench/gpu_qlora.py --micro-batch "$mb" | tee -a "$out/qlora.jsonl"
done
python3 bench/gpu_qlora.py --compare "$out/qlora.jsonl" | tee "$out/plan_vs_measured.txt"
