# The one way to set up, run, check and test gradecast; the README and CI call these targets.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: install services dev test lint format bench

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

install: $(INSTALLED)

services:
	@bash scripts/ensure-services.sh

dev: install services
	$(BIN)/gradecast dev

test: install services
	@bash scripts/ensure-browser.sh
	$(BIN)/python -m pytest

bench: install services
	$(BIN)/python bench/run.py $(SCENARIOS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .
