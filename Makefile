# Set-up is part of every target: a fresh clone needs only `make quickstart` or `make test`.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: quickstart test lint bench
quickstart: $(VENV)/.installed
	$(BIN)/instaseg quickstart --out runs/quickstart --overwrite

test: lint
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

# Lint, format, types and the import direction between the pipeline's folders (pyproject.toml).
lint: $(VENV)/.installed
	$(BIN)/ruff check instaseg tests bench
	$(BIN)/ruff format --check instaseg tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@
