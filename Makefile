# Two entry points on a fresh clone: `make run` (whole pipeline) and `make test` (test suite).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup run test lint clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

setup: $(BIN)/.installed

run: setup
	PATH="$(abspath $(BIN)):$$PATH" dvc repro

test: setup
	$(BIN)/ruff check .
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/pytest

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf data/processed data/augmented models reports
