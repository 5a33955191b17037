#!/usr/bin/env bash
# flashtune's GPU measurements, one stage per argument; results under $OUT (default results/gpu).
#   bash scripts/gpu_suite.sh prepare                 # where the embedded wheel is installed: model folders + timing data in $CACHE
#   bash scripts/gpu_suite.sh cuda-tests attention    # on the GPU: poc's CUDA suite, the attention benchmark
#   REPEATS=3 bash scripts/gpu_suite.sh compare       # the headline pair (IMPLS, default demo,mlx_lm.lora), repeated
#   bash scripts/gpu_suite.sh finetune packing context dora profile host blocks graphs
# prepare writes $CACHE (default bench-cache, git-ignored; what scripts/reproduce_finetune.py
# --cache-dir reads), so a GPU machine needs neither the embedded wheel nor a model hub. Runs
# that do not finish in BUDGET seconds (default 540) are left for the same command again.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-results/gpu}
PY=${PYTHON:-python3}
FT="$PY -m flashtune"
CACHE=${CACHE:-bench-cache}
BUDGET=${BUDGET:-540}
BENCH="$PY scripts/reproduce_finetune.py --device gpu --cache-dir $CACHE --export-dir /tmp/flashtune-exports --skip-existing --budget-s $BUDGET"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1

for stage in "$@"; do
  case "$stage" in
    prepare)
      $PY scripts/make_timing_data.py --cache "$CACHE"
      du -sh "$CACHE"
      ;;
    cuda-tests)
      # poc's CUDA kernels against float64 (skipped without MLX's CUDA backend).
      $PY -m pytest -q tests/attention/test_poc_cuda.py 2>&1 | tee "$OUT/poc-cuda-tests.log"
      ;;
    attention)
      $FT env | tee "$OUT/env.txt"
      $FT bench attention --sets training,seed --out "$OUT/attention.jsonl" | tee "$OUT/attention.md"
      ;;
    packed-attention)
      # poc, practical and demo on packed rows (chat-like documents) beside the same documents unpacked.
      $FT bench packed-attention --out "$OUT/packed-attention.jsonl" | tee "$OUT/packed-attention.md"
      ;;
    compare)
      # The headline comparison alone: TinyLlama-1.1B, 100 iterations, each tool after a warm-up run as long.
      $BENCH --suites main --models TinyLlama-1.1B --impls "${IMPLS:-demo,mlx_lm.lora}" --repeats "${REPEATS:-1}" \
        --results /tmp/flashtune-compare --archive "$OUT/compare.tgz" | tail -5
      ;;
    finetune)
      # Every implementation, mlx_lm lora and hf-peft (where torch with CUDA is), both models, and the length sweep.
      $BENCH --results /tmp/flashtune-finetune --archive "$OUT/finetune.tgz" | tail -20
      ;;
    packing)
      $BENCH --suites packing --results /tmp/flashtune-packing --archive "$OUT/packing.tgz" | tail -20
      ;;
    dora)
      $BENCH --suites main --models TinyLlama-1.1B --impls demo,poc,mlx_lm.lora --fine-tune-type dora \
        --results /tmp/flashtune-dora --archive "$OUT/dora.tgz" | tail -10
      ;;
    context)
      # One sequence of growing length, every implementation and mlx_lm lora, to each model's context.
      for m in Qwen2.5-1.5B TinyLlama-1.1B; do
        $FT bench context --model "$m" --cache-dir "$CACHE" --results "/tmp/flashtune-context-$m" | tail -20
        tar czf "$OUT/context-$m.tgz" -C /tmp "flashtune-context-$m"
      done
      ;;
    profile)
      # Where a LoRA step's time goes (B 4 x 1024, bf16, demo): parts, host dispatch, pipelining, new shapes.
      for m in TinyLlama-1.1B:tinyllama-1.1b Qwen2.5-1.5B:qwen2.5-1.5b; do
        $PY scripts/profile_step.py --model "${m%%:*}" --attn demo --tokenizer "$CACHE/models/${m#*:}-random" \
          --out "$OUT/profile-${m#*:}-demo.json" | tee "$OUT/profile-${m#*:}-demo.txt"
      done
      ;;
    host)
      # A process's first steps, the dispatch cost per kind of op, the step graph's primitives, and,
      # where py-spy is installed, a native profile of pipelined steps summarized per MLX primitive.
      TOKENIZER="$CACHE/models/tinyllama-1.1b-random"
      $PY scripts/host_profile.py first-step --tokenizer "$TOKENIZER" > "$OUT/host-first-step.json"
      $PY scripts/host_profile.py op-costs --out "$OUT/host-op-costs.json" | tee "$OUT/host-op-costs.txt"
      $PY scripts/host_profile.py graph --tokenizer "$TOKENIZER" > "$OUT/host-step-graph.txt"
      if command -v py-spy > /dev/null; then
        py-spy record --native -r 500 -f raw -o /tmp/flashtune-steady.txt -- $PY scripts/host_profile.py steady --tokenizer "$TOKENIZER"
        $PY scripts/host_profile.py summarize /tmp/flashtune-steady.txt | tee "$OUT/host-pyspy-steady-summary.txt"
      fi
      ;;
    blocks)
      # practical's tile size on this GPU (its default is measured by the attention stage).
      for block in 256 1024; do
        FLASHTUNE_PRACTICAL_BLOCK=$block $FT bench attention --sets training --impl practical \
          --out "$OUT/attention-practical-block$block.jsonl" | tee "$OUT/attention-practical-block$block.md"
      done
      ;;
    graphs)
      # MLX's CUDA backend captures kernels into CUDA graphs of MLX_MAX_OPS_PER_BUFFER nodes; time the
      # 100-iteration demo run per setting, each after a 5-iteration warm-up of its own.
      mkdir -p "$OUT/graphs"
      for setting in ops100 ops400 ops1000 nographs; do
        case "$setting" in
          nographs) vars="MLX_USE_CUDA_GRAPHS=0" ;;
          ops*) vars="MLX_MAX_OPS_PER_BUFFER=${setting#ops} MLX_MAX_MB_PER_BUFFER=4000" ;;
        esac
        for iters in 5 100; do
          env $vars $FT train --config finetune-tinyllama-1.1b --attn demo \
            --model "$CACHE/models/tinyllama-1.1b-random" --init random --iters $iters \
            --data "$CACHE/data/tinyllama-1.1b/random-init-variable-300-1020" --no-sample --overwrite \
            --out "/tmp/flashtune-graphs-$setting" --records "$OUT/graphs/$setting-iters$iters.jsonl" > /dev/null
        done
        $PY -c "import sys; from flashtune.train import records as r; print(sys.argv[2], r.format_summary(r.summarize(r.read(sys.argv[1]))))" \
          "$OUT/graphs/$setting-iters100.jsonl" "$vars:" | tee -a "$OUT/graphs/summary.txt"
      done
      ;;
    *) echo "unknown stage $stage (prepare, cuda-tests, attention, packed-attention, compare, finetune, packing, dora, context, profile, host, blocks, graphs)" >&2; exit 2 ;;
  esac
done
