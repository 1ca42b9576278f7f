# Set-up is part of every target: a fresh clone needs only `make quickstart` or `make test`.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: quickstart test bench
quickstart: $(VENV)/.installed
	$(BIN)/instaseg quickstart --out runs/quickstart --overwrite

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@
