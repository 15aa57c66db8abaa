# Two entry points: `make demo` and `make test`; each creates its own virtualenv.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.demo: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e '.[demo]'
	touch $@

$(VENV)/.test: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e '.[demo,test,lambda,dashboard]'
	touch $@ $(VENV)/.demo

demo: $(VENV)/.demo
	$(BIN)/dask-serverless demo

test: $(VENV)/.test
	$(BIN)/ruff check dask_serverless tests benchmarks
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

BENCH_ARGS ?= --quick
bench: $(VENV)/.test
	$(BIN)/dask-serverless bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
