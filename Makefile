# The README's two commands are `make demo` and `make test`; both create .venv on first use.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch (from a local file on the dev/CI machines). On a GPU machine install a CUDA
# torch first (see README) and this pin is skipped because torch is already importable.
TORCH ?= torch==2.13.0

.PHONY: install demo test lint

$(BIN)/pfkit: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

install: $(BIN)/pfkit

demo: install
	$(BIN)/pfkit demo pfppo

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .
