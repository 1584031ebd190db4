# MobileViT export toolkit. Every target sets up .venv itself (see `setup`).
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PYTHON := $(BIN)/python
STAMP := $(VENV)/.installed
export PATH := $(abspath $(BIN)):$(PATH)

VARIANT ?=
WEIGHTS ?=
PRECISION ?=
PATCHES ?=
OUT ?= artifacts
TASK ?=
EXPORT_ARGS = $(if $(VARIANT),--variant $(VARIANT)) --out $(OUT) $(if $(WEIGHTS),--weights $(WEIGHTS)) $(if $(TASK),--task $(TASK)) \
	$(if $(PRECISION),--precision $(PRECISION)) $(if $(PATCHES),--patches $(PATCHES)) $(if $(FORCE),--force)

.PHONY: setup test test-fast lint export-coreml export-onnx export-tflite export-executorch export-all bench bench-full readme strategies int8search profile \
	finetune bench-accuracy bench-accuracy-memory bench-scaling quant bench-int8 bench-segmentation margins clean

setup: $(STAMP)

# Rebuilt whenever a lock file changes. torch goes first, alone and pinned (a local CPU build);
# onnx2tf goes last without its own (older) pins.
$(STAMP): requirements-torch.lock requirements.lock constraints.txt requirements-nodeps.lock
	test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip
	$(PYTHON) -m pip install -q -r requirements-torch.lock
	$(PYTHON) -m pip install -q -r requirements.lock -c constraints.txt
	$(PYTHON) -m pip install -q --no-deps -r requirements-nodeps.lock
	$(PYTHON) -m export.envcheck
	touch $(STAMP)

# the suite on TEST_WORKERS processes (pytest-xdist); a module's tests, and every Ray test, stay on one worker
# (tests/conftest.py)
TEST_WORKERS ?= 2
test: setup
	$(PYTHON) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=60 tests

# the development loop: everything but conversions and training (README gives its time); make test runs all
test-fast: setup
	$(PYTHON) -m pytest -q -m "not slow" tests

lint: setup
	$(BIN)/ruff check mobilevit data training export benchmarks tests

export-coreml: setup
	$(PYTHON) -m export coreml $(EXPORT_ARGS)

export-onnx: setup
	$(PYTHON) -m export onnx $(EXPORT_ARGS)

export-tflite: setup
	$(PYTHON) -m export tflite $(EXPORT_ARGS)

export-executorch: setup
	$(PYTHON) -m export executorch $(EXPORT_ARGS)

export-all: setup
	$(PYTHON) -m export all $(EXPORT_ARGS)

bench: setup
	$(PYTHON) -m benchmarks --quick

bench-full: setup
	$(PYTHON) -m benchmarks --full

finetune: setup
	$(PYTHON) -m training

# without WEIGHTS/IMAGES: the digits demo (README table); with them: your checkpoint on your labelled folder
IMAGES ?=
LABELS ?=
ACCURACY_ARGS = $(if $(WEIGHTS),--weights $(WEIGHTS)) $(if $(IMAGES),--images $(IMAGES)) \
	$(if $(LABELS),--labels $(LABELS)) $(if $(TARGETS),--targets $(TARGETS)) \
	$(if $(PRECISIONS),--precisions $(PRECISIONS)) $(if $(LIMIT),--limit $(LIMIT))
bench-accuracy: setup
	$(PYTHON) -m benchmarks.accuracy $(ACCURACY_ARGS)

# peak RSS of an accuracy run over 100 and 400 images: streaming keeps it flat (README "accuracy")
bench-accuracy-memory: setup
	$(PYTHON) -m benchmarks.memory

# images/s of an accuracy job in one process and on a local Ray cluster (README "On a Ray cluster")
bench-scaling: setup
	$(PYTHON) -m benchmarks.scaling

clean:
	rm -rf artifacts .pytest_cache

# int8 against fp32 (and fp16) of the same runtime, xx_small and small in one run, 1 thread (README "int8")
bench-int8: setup
	$(PYTHON) -m benchmarks --variants xx_small,small --targets onnx,tflite,executorch \
		--precisions fp32,fp16,int8,int8_dynamic --threads 1 --no-baseline --stem int8

# int8 sensitivity: each layer kind quantized alone, per target (README "int8")
quant: setup
	$(PYTHON) -m benchmarks.quant

# the int8 layer set searched for a checkpoint next to the fixed recipe (README "Chosen for your checkpoint")
int8search: setup
	$(PYTHON) -m benchmarks.int8search

# per-op-type time from each runtime's profiler, fp32 and int8, xx_small and small (README "Where the time goes")
profile: setup
	for v in xx_small small; do for t in onnx executorch; do \
		$(PYTHON) -m export $$t --variant $$v --precision fp32,int8 --out artifacts/profile --force || exit 1; done; done
	$(PYTHON) -m benchmarks.profile artifacts/profile/*/*.onnx artifacts/profile/*/*.pte

# DeepLabV3-MobileViT xx_small at 512x512 on every runtime, 1 thread, and the masks figure (README "Segmentation")
bench-segmentation: setup
	$(PYTHON) -m benchmarks.segmentation

# every validation limit against the worst drift seen over 5 photo seeds, 30+ min (README "Tolerances and their margins")
margins: setup
	$(PYTHON) -m benchmarks.margins

readme: setup
	$(PYTHON) -m benchmarks.readme

strategies: setup
	$(PYTHON) -m benchmarks.strategies
