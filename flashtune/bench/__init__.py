"""Benchmarks: attention speed and memory, the fine-tuning comparison, reports and plots."""

# Attention benchmark timing: compiled calls per pass before timing, and timed calls (median
# kept). Here, not in bench/attention.py, so the CLI can show them without importing MLX.
ATTENTION_WARMUP = 5
ATTENTION_REPEAT = 30
