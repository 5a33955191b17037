#!/usr/bin/env bash
# flashtune's GPU measurements besides the fine-tuning comparison, one stage per argument,
# results under $OUT (default results/gpu).
#   bash scripts/gpu_suite.sh prepare                    # here: model folders + timing data in $CACHE
#   bash scripts/gpu_suite.sh profile anchor attention blocks graphs host   # on the GPU machine
#   REPEATS=3 bash scripts/gpu_suite.sh compare          # demo vs mlx_lm.lora only (IMPLS=...), repeated
# prepare writes $CACHE (default .device/bench-cache, git-ignored; the same folder that
# scripts/reproduce_finetune.py --cache-dir reads), so the GPU machine needs neither the embedded
# wheel nor a model hub. The anchor stage runs ../shared/anchors/lora_probe.py, copied into
# $CACHE/anchor-probes by prepare, so the plain-MLX anchor is measured in the same call.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-results/gpu}
PY=${PYTHON:-python3}
FT="$PY -m flashtune"
CACHE=${CACHE:-.device/bench-cache}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1

for stage in "$@"; do
  case "$stage" in
    prepare)
      $PY scripts/make_timing_data.py --cache "$CACHE"
      mkdir -p "$CACHE/anchor-probes"
      cp ../shared/anchors/lora_probe.py ../shared/anchors/attn_probe.py "$CACHE/anchor-probes/"
      du -sh "$CACHE"
      ;;
    profile)
      # Where a LoRA step's time goes (B 4 x 1024, bf16, demo): parts, host dispatch, pipelining,
      # new-shape cost, LoRA precision, fused projections (timing-only rows).
      for m in TinyLlama-1.1B:tinyllama-1.1b Qwen2.5-1.5B:qwen2.5-1.5b; do
        $PY scripts/profile_step.py --model "${m%%:*}" --attn demo --tokenizer "$CACHE/models/${m#*:}-random" \
          --out "$OUT/profile-${m#*:}-demo.json" | tee "$OUT/profile-${m#*:}-demo.txt"
      done
      ;;
    compare)
      # The headline comparison alone (TinyLlama-1.1B, IMPLS (default demo vs mlx_lm.lora), 100
      # iterations, each after a warm-up run as long), REPEATS times in a row; packed, because the
      # device tool does not bring back folders nested as deep as the results tree.
      for rep in $(seq 1 "${REPEATS:-1}"); do
        $PY scripts/reproduce_finetune.py --device gpu --suites main --models TinyLlama-1.1B --impls "${IMPLS:-demo,mlx_lm.lora}" \
          --cache-dir "$CACHE" --export-dir /tmp/flashtune-exports --results "/tmp/flashtune-compare/rep$rep" --no-report | tail -3
      done
      tar czf "$OUT/compare.tgz" -C /tmp flashtune-compare
      ;;
    anchor)
      # The plain-MLX LoRA step (mlx-lm's layers, fused vs naive attention) on this machine, now.
      OUT="$OUT" RUNS=tinyllama:4:1024 ITERS=20 $PY "$CACHE/anchor-probes/lora_probe.py" mlx | tee "$OUT/anchor-lora-step.jsonl"
      # The plain-MLX fused/naive attention (and torch SDPA), same shapes as the attention stage.
      OUT="$OUT" $PY "$CACHE/anchor-probes/attn_probe.py" | tee "$OUT/anchor-attention.txt"
      ;;
    attention)
      $FT env | tee "$OUT/env.txt"
      $FT bench attention --sets training --out "$OUT/attention.jsonl" | tee "$OUT/attention.md"
      ;;
    blocks)
      # practical's tile size on this GPU (its default is measured by the attention stage).
      for block in 256 1024; do
        FLASHTUNE_PRACTICAL_BLOCK=$block $FT bench attention --sets training --impl practical \
          --out "$OUT/attention-practical-block$block.jsonl" | tee "$OUT/attention-practical-block$block.md"
      done
      ;;
    graphs)
      # MLX's CUDA backend captures kernels into CUDA graphs of MLX_MAX_OPS_PER_BUFFER nodes
      # (default 100 on sm_90, 20 elsewhere: mlx/backend/cuda/device.cpp get_graph_limits);
      # MLX_USE_CUDA_GRAPHS=0 launches kernels one by one. The variable-length TinyLlama step is
      # bound by host dispatch (48 ms at 4x384 vs 59 ms at 4x1024 on the H100), so the graph size
      # may matter: time the main 100-iteration demo run per setting, each after a 5-iteration
      # warm-up of its own.
      mkdir -p "$OUT/graphs"
      for setting in ops100 ops400 ops1000 nographs; do
        case "$setting" in
          nographs) vars="MLX_USE_CUDA_GRAPHS=0" ;;
          ops*) vars="MLX_MAX_OPS_PER_BUFFER=${setting#ops} MLX_MAX_MB_PER_BUFFER=4000" ;;
        esac
        for iters in 5 100; do
          env $vars $FT train --config recipes/finetune-tinyllama-1.1b.yaml --attn demo \
            --model "$CACHE/models/tinyllama-1.1b-random" --init random --iters $iters \
            --data "$CACHE/data/tinyllama-1.1b/random-init-variable-300-1020" --no-sample --overwrite \
            --out "/tmp/flashtune-graphs-$setting" --records "$OUT/graphs/$setting-iters$iters.jsonl" > /dev/null
        done
        $PY -c "import sys; from flashtune.train import records as r; print(sys.argv[2], r.format_summary(r.summarize(r.read(sys.argv[1]))))" \
          "$OUT/graphs/$setting-iters100.jsonl" "$vars:" | tee -a "$OUT/graphs/summary.txt"
      done
      ;;
    host)
      # Where the host's time goes (scripts/host_profile.py): a process's first steps, the
      # dispatch cost per kind of op, the step graph's primitives, and, where py-spy is installed
      # (a carried wheel), a native profile of pipelined steps summarized per MLX primitive.
      TOKENIZER="$CACHE/models/tinyllama-1.1b-random"
      $PY scripts/host_profile.py first-step --tokenizer "$TOKENIZER" > "$OUT/host-first-step.json"
      $PY scripts/host_profile.py op-costs --out "$OUT/host-op-costs.json" | tee "$OUT/host-op-costs.txt"
      $PY scripts/host_profile.py graph --tokenizer "$TOKENIZER" > "$OUT/host-step-graph.txt"
      if command -v py-spy > /dev/null; then
        py-spy record --native -r 500 -f raw -o /tmp/flashtune-steady.txt -- $PY scripts/host_profile.py steady --tokenizer "$TOKENIZER"
        $PY scripts/host_profile.py summarize /tmp/flashtune-steady.txt | tee "$OUT/host-pyspy-steady-summary.txt"
      fi
      ;;
    *) echo "unknown stage $stage (prepare, profile, compare, anchor, attention, blocks, graphs, host)" >&2; exit 2 ;;
  esac
done
