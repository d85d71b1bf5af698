# The two commands: `make run` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
ARGS ?=

.PHONY: run test lint compile bench soak clean

$(BIN)/cem: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[compile]'
	touch $@

$(VENV)/.test-extras: $(BIN)/cem
	$(BIN)/pip install -q -e '.[test]'
	touch $@

run: compile
	$(BIN)/cem run $(ARGS)

test: lint compile  # lint and types first (seconds), then the suite, doctests included
	$(BIN)/python -m pytest -q $(ARGS)

compile: $(BIN)/cem  # the hot path as C extensions (deploy/compile.py): ~1 min the first time, then only what changed
	$(BIN)/python deploy/compile.py

lint: $(VENV)/.test-extras
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: compile
	$(BIN)/cem bench $(ARGS)

soak: $(VENV)/.test-extras compile  # 150k touchpoints through 10 SIGKILLs: lost, doubled, recovery times
	$(BIN)/python benchmarks/soak.py $(ARGS)

clean:
	rm -rf $(VENV) .cem .pytest_cache build
