PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8000

.PHONY: serve test test-ray install dev clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

# corpora that training jobs (POST /v1/jobs) may read, unless set already
serve: export RNNLM_DATA_ROOTS ?= $(abspath ../shared/data)
serve: export RNNLM_DATASETS_DIR ?= $(abspath datasets)
# one API process with a torch thread per core (RNNLM_THREADS overrides): the fastest layout on two cores
# (README, Performance)
serve: install
	$(BIN)/rnnlm serve --host $(HOST) --port $(PORT) --checkpoints checkpoints --with-worker

test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

# rnnlm serve --ray on a local one-node Ray cluster with two replicas (about two minutes)
test-ray: install
	$(BIN)/pip install --quiet -e '.[ray]'
	RNNLM_RAY_TESTS=1 $(BIN)/python -m pytest tests/integration/test_ray.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
