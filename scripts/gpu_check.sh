#!/usr/bin/env bash
# GPU check (issue 16): the native engine on one CUDA GPU, a Llama-3-8B-shaped random model built in GPU
# memory (hidden 4096, 32 layers, GQA 8 KV heads, vocab 128256), 64 rank-16 adapters on q/k/v/o, batch 64,
# bf16: base-only HF generate, PEFT mixed batch, native base / distinct / top-2 blend, eager and compiled.
# Needs torch, transformers, PEFT (no Ray, no vLLM); under 10 minutes on one H200. Never part of CI.
#     bash scripts/gpu_check.sh [OUT_DIR]      # writes OUT_DIR/gpu_check.json (default: $OUT or /tmp)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-/tmp}}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)" | tee -a "$out/gpu.txt"
# the project as a package without installing anything: loraplex.<folder> -> the checkout's folders
export PYTHONPATH="$out/pkg:${PYTHONPATH:-}"
mkdir -p "$out/pkg"
ln -sfn "$(pwd)" "$out/pkg/loraplex"
timeout 540 python scripts/bench_engine.py --json "$out/gpu_check.json" --in-memory --device cuda --dtype bfloat16 \
    --hidden 4096 --layers 32 --heads 32 --kv-heads 8 --intermediate 14336 --vocab 128256 \
    --adapters 64 --rank 16 --batch 64 --prompt-tokens 128 --new-tokens 64 --repeats 3
