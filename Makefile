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
# The development environment holds every extra but `ort-gpu`, `tensorrt` and `serve`
# (docs/install.md): ONNX Runtime's CPU flavour, TensorRT-RTX, and numpy 2.
DEV_EXTRAS := test,ort,video,export,eval,viz,train,trt,client,openvino
# The Triton server's own environment (docs/serving.md): nvidia-pytriton's tritonserver and
# its Python backend stub, built against numpy 1, with rgtp installed editable from here.
# The main environment stays on numpy 2.
SERVE_VENV  := .venv-serve
SERVE_STAMP := $(SERVE_VENV)/.installed-stamp
# `make test` runs the suite in pytest-xdist workers, a test module each at a time: most of
# its time is single-threaded tracing, server start-ups and waits, so three workers on two
# cores finish in about half of one process's time (docs/testing.md).
TEST_WORKERS ?= 3

.PHONY: setup serve-env test test-fast demo lint clean

setup: $(STAMP)

# An environment an older `make setup` built holds nvidia-pytriton and numpy 1: the server
# moved to $(SERVE_VENV), and numpy>=2 upgrades what pip would otherwise keep.
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip uninstall -q -y nvidia-pytriton
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[$(DEV_EXTRAS)]" $(TORCH) "numpy>=2"
	$(BIN)/python -m pip install -q --no-deps $(TIMM)
	touch $(STAMP)

serve-env: $(SERVE_STAMP)

$(SERVE_STAMP): pyproject.toml Makefile
	test -x $(SERVE_VENV)/bin/python || $(PYTHON) -m venv $(SERVE_VENV)
	$(SERVE_VENV)/bin/python -m pip install -q --upgrade pip
	$(SERVE_VENV)/bin/python -m pip install -q $(TORCH)
	$(SERVE_VENV)/bin/python -m pip install -q -e ".[serve]" $(TORCH)
	touch $(SERVE_STAMP)

lint: setup
	$(BIN)/ruff check rgtp tests benchmarks
	$(BIN)/ruff format --check rgtp tests benchmarks

# The whole suite, slow checks included (they run in cheap forms; see pyproject markers);
# the real-server tests run tritonserver from the serve environment.
test: setup serve-env lint
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

demo: setup
	$(BIN)/rgtp demo --out out/demo
	$(BIN)/rgtp demo --model vivit-small --out out/demo-vivit

clean:
	rm -rf out build .pytest_cache .ruff_cache
