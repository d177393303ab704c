# Two entry points on a fresh clone: `make run` (whole pipeline) and `make test` (test suite).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup run test test-fast lint clean team-server exps lock report

# Every dependency at the version requirements.lock names; a new lock reinstalls.
$(BIN)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]' -c requirements.lock
	touch $@

setup: $(BIN)/.installed

# Rewrite requirements.lock: what pip resolves for '.[dev,bench]' today (the newest versions
# pyproject.toml admits), from nothing: a throwaway venv, not whatever .venv holds. Commit it.
lock:
	tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	$(PYTHON) -m venv "$$tmp/venv" && \
	"$$tmp/venv/bin/python" -m pip install --quiet --dry-run --ignore-installed \
	  --report "$$tmp/report.json" '.[dev,bench]' && \
	"$$tmp/venv/bin/python" -m pipeline.registry.packaging "$$tmp/report.json" > requirements.lock.tmp
	mv requirements.lock.tmp requirements.lock

run: setup
	PATH="$(abspath $(BIN)):$$PATH" dvc repro

test: setup
	$(BIN)/ruff check .
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/pytest

# Edit-run loop: everything but the end-to-end DVC and serving tests and the tests that need
# PostgreSQL (a laptop has none; CI runs them all with `make test`).
test-fast: setup
	$(BIN)/ruff check .
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/pytest -m "not slow and not services"

# `dvc exp show` trimmed to what matters (all ~130 columns: plain `dvc exp show`): test metrics,
# the validation score, key params beside the values train really used (trained.*: tuned ones
# replace params.yaml's), and every param some experiment changed. Params and trained.* have
# dots in their names, the other metrics and the deps' hashes (paths) do not, so the drop
# pattern takes those and the keep pattern (matched from a name's start) brings back the chosen
# ones. More flags: make exps ARGS="-A --csv".
EXPS_KEEP := (Experiment|Created|seed|roc_auc|log_loss|accuracy|f1|best_val_[a-z_]+|data\.source|model\.type|train\.lr|trained\..+)$$
exps:
	PATH="$(abspath $(BIN)):$$PATH" dvc exp show --no-pager --only-changed --precision 4 \
	  --drop '[^.]*$$|.*/' --keep '$(EXPS_KEEP)' $(ARGS)

# Markdown + offline HTML comparing the workspace (or REV=<revision or dvc exp name>) with
# BASE (default HEAD) in reports/compare/ (README "Experiment report").
report: setup
	$(BIN)/python -m pipeline.report --base "$(or $(BASE),HEAD)" $(if $(REV),--rev "$(REV)") $(ARGS)

# The team's MLflow server on PostgreSQL (loopback; see README "Team setup").
team-server: setup
	$(BIN)/python -m pipeline.cli.team

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf data/processed data/augmented models reports
