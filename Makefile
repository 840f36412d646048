# Two commands do all the set-up on a fresh clone:
#   make demo   set up .venv and run the main job (capture -> rewrite -> emit -> reload)
#   make test   set up .venv and run the test suite
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test test-fast lint

setup: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PY) -m venv $(VENV)
	# the pinned CPU torch first, so nothing pulls a CUDA build
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q --no-deps torchvision==0.28.0
	$(BIN)/pip install -q -e '.[test]'
	touch $@

demo: setup
	$(BIN)/python -m torchgraft demo

test: setup
	$(BIN)/python -m pytest -n 2 -q

test-fast: setup
	$(BIN)/python -m pytest -n 2 -q -m "not slow"

lint: setup
	$(BIN)/ruff check torchgraft tests
	$(BIN)/mypy torchgraft
	$(BIN)/lint-imports setup.cfg
