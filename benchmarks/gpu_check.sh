#!/bin/bash
# The prepared GPU check: one H100/H200, under 8 minutes, writes everything under $OUT.
#   device run:  bash benchmarks/gpu_check.sh            (the device tool sets OUT; here: runs/gpu-check)
# 1. the paired benchmark on a 1B-shaped random Llama: LoRA with and without vectors, full fine-tuning with and
#    without them, generation; bf16 weights; tokens/s, peak CUDA memory and the vectors' cost (about 4 min);
# 2. one attacker-search trial with generation through the harness on the same shape (about 1 min).
# Record what it prints in benchmarks/RESULTS.md with the GPU's name (gpu.txt).
set -uo pipefail
OUT=${OUT:-runs/gpu-check}
mkdir -p "$OUT"
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'cuda', torch.version.cuda)"
} 2>&1 | tee "$OUT/gpu.txt"
timeout 330 python benchmarks/run.py --arch llama-1b --device cuda --arms paired,lora,vectors_lora,full,vectors_full,generate \
    --steps 10 --warmup 3 --repeats 2 --batch-size 8 --seq-len 512 --gen-prompts 64 --gen-batch-size 32 \
    --out "$OUT/bench-llama-1b.json" 2>&1 | tee "$OUT/bench.log" | tail -30
timeout 150 python benchmarks/gpu_search_trial.py --arch llama-1b --device cuda --steps 16 \
    --out "$OUT/search-trial.json" 2>&1 | tee "$OUT/search.log" | tail -5
