# flashtune: every command people run, in one place.
# Benchmarks write to results/<date>-<device>/ (git-ignored scratch); what the docs cite is
# copied into benchmarks/<device>/<benchmark>/ with a README (see benchmarks/README.md).
VENV ?= .venv
PY := $(if $(wildcard $(VENV)/bin/python),$(VENV)/bin/python,python3)
RESULTS ?= results/$(shell date +%Y-%m-%d)-$(shell $(PY) -c "import flashtune.env as e; print(e.short_device_tag())" 2>/dev/null || echo unknown)

.PHONY: install test test-all lint format train bench bench-memory reproduce-finetune report clean

install:
	bash scripts/install.sh

# What CI runs: the linter, then every test that is not marked slow.
test: lint
	$(PY) -m pytest -q -m "not slow"

test-all: lint
	$(PY) -m pytest -q

lint:
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format:
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

train:
	$(PY) -m flashtune train

bench:
	mkdir -p $(RESULTS)
	$(PY) -m flashtune bench attention --sets seed,training --out $(RESULTS)/attention.jsonl | tee $(RESULTS)/attention.md

bench-memory:
	mkdir -p $(RESULTS)
	$(PY) -m flashtune bench attention --memory --out $(RESULTS)/attention-memory.jsonl | tee $(RESULTS)/attention-memory.md

# The fine-tuning comparison: make reproduce-finetune [ARGS="--models ... --skip-existing"], then make report.
reproduce-finetune:
	$(PY) scripts/reproduce_finetune.py --results $(RESULTS) $(ARGS)

report:
	$(PY) -m flashtune report $(RESULTS)

clean:
	rm -rf runs .pytest_cache .ruff_cache
