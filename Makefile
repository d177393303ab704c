# Two entry points on a fresh clone: `make run` (whole pipeline) and `make test` (test suite).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup run test test-fast lint clean

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

# Edit-run loop: everything but the end-to-end DVC and serving tests (CI runs `make test`).
test-fast: setup
	$(BIN)/ruff check .
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/pytest -m "not slow"

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf data/processed data/augmented models reports
