# flashtune: every command people run, in one place. Results land in results/<date>-<device>/.
VENV ?= .venv
PY := $(VENV)/bin/python
FT := $(VENV)/bin/flashtune
RESULTS ?= results/$(shell date +%Y-%m-%d)-$(shell $(PY) -c "import flashtune.env as e; print(e.short_device_tag())" 2>/dev/null || echo unknown)

.PHONY: install test test-all bench bench-memory train clean

install:
	bash scripts/install.sh

test:
	$(PY) -m pytest -q -m "not slow"

test-all:
	$(PY) -m pytest -q

bench:
	mkdir -p $(RESULTS)
	$(FT) bench attention --sets seed,training --out $(RESULTS)/attention.jsonl | tee $(RESULTS)/attention.md

bench-memory:
	mkdir -p $(RESULTS)
	$(FT) bench attention --memory --out $(RESULTS)/attention-memory.jsonl | tee $(RESULTS)/attention-memory.md

train:
	$(FT) train

clean:
	rm -rf runs .pytest_cache

# --- fine-tuning comparison (issue 7): make reproduce-finetune [ARGS="--models ... --skip-existing"], make report
BENCH_PY := $(if $(wildcard $(PY)),$(PY),python3)
BENCH_RESULTS ?= results/$(shell date +%Y-%m-%d)-$(shell $(BENCH_PY) -c "import flashtune.env as e; print(e.short_device_tag())" 2>/dev/null || echo unknown)

.PHONY: reproduce-finetune report

reproduce-finetune:
	$(BENCH_PY) scripts/reproduce_finetune.py --results $(BENCH_RESULTS) $(ARGS)

report:
	$(BENCH_PY) -m flashtune.cli report $(BENCH_RESULTS)
