# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# torch is pinned: 2.13.0 is the CPU build on this project's machines; any other request
# would download a multi-GB CUDA build.
TORCH  := torch==2.13.0
# timm is a test-only reference implementation. Its torchvision requirement would replace
# the pinned torch, so it is installed without dependencies (tests/reference_impls.py).
TIMM   := timm==1.0.31

.PHONY: setup test test-fast demo lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[test,trt-rtx,serve]" $(TORCH)
	$(BIN)/python -m pip install -q --no-deps $(TIMM)
	touch $(STAMP)

lint: setup
	$(BIN)/ruff check rgtp tests benchmarks

# The whole suite, slow checks included (they run in cheap forms; see pyproject markers).
test: setup lint
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

demo: setup
	$(BIN)/rgtp demo --out out/demo
	$(BIN)/rgtp demo --model vivit-small --out out/demo-vivit

clean:
	rm -rf out build .pytest_cache .ruff_cache
