#!/usr/bin/env bash
# flashtune's GPU measurements, one stage per argument, results under $OUT (default results/gpu).
#   bash scripts/gpu_suite.sh prepare          # here, where the embedded model is installed: tokenizers + timing data
#   bash scripts/gpu_suite.sh attention train  # on the GPU machine (PYTHONPATH=repo, MLX CUDA installed)
# prepare writes .device/ (git-ignored) so the GPU machine needs neither the embedded wheel nor a hub.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-results/gpu}
PY=${PYTHON:-python3}
FT="$PY -m flashtune"
ASSETS=${ASSETS:-.device/assets}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1

tinyllama() {  # common settings of the TinyLlama-1.1B timing runs (anchors/README.md)
  $FT train --model TinyLlama-1.1B --init random --tokenizer "$ASSETS/tok-tinyllama" \
    --batch-size 4 --lora-layers 16 --lora-rank 8 --lora-scale 20 --max-seq-length 1025 \
    --no-sample --steps-per-eval 0 --val-batches 2 --steps-per-save 0 --overwrite "$@"
}

for stage in "$@"; do
  case "$stage" in
    prepare)
      mkdir -p "$ASSETS"
      $PY scripts/export_tokenizer.py TinyLlama-1.1B "$ASSETS/tok-tinyllama"
      $PY scripts/export_tokenizer.py Qwen2.5-1.5B "$ASSETS/tok-qwen2.5-1.5b"
      $PY -m flashtune.bench.synthetic --tokenizer "$ASSETS/tok-tinyllama" --out "$ASSETS/tinyllama-300-1020" --min 300 --max 1020
      $PY -m flashtune.bench.synthetic --tokenizer "$ASSETS/tok-tinyllama" --out "$ASSETS/tinyllama-1024" --min 1024 --max 1024 --n-train 64
      du -sh "$ASSETS"/*
      ;;
    attention)
      $FT env | tee "$OUT/env.txt"
      $FT bench attention --sets seed,training --out "$OUT/attention.jsonl" | tee "$OUT/attention.md"
      ;;
    train)
      # Fixed 1024-token batches: one compiled shape, steady-state tokens/s and peak memory.
      for attn in demo baseline; do
        tinyllama --attn "$attn" --data "$ASSETS/tinyllama-1024" --fixed-length 1024 --iters 30 \
          --out "$OUT/runs/fixed1024-$attn" --records "$OUT/train-fixed1024-$attn.jsonl" 2>&1 | tail -3
      done
      # Variable-length text (300-1020 tokens), 100 iterations, compile included.
      for attn in demo poc; do
        tinyllama --attn "$attn" --data "$ASSETS/tinyllama-300-1020" --iters 100 \
          --out "$OUT/runs/var-$attn" --records "$OUT/train-var-$attn.jsonl" 2>&1 | tail -3
      done
      ;;
    *) echo "unknown stage $stage (prepare, attention, train)" >&2; exit 2 ;;
  esac
done
