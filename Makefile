# The two commands of the README. Both work on a fresh machine: they create .venv, install the
# package, and make sure the default dataset (Fashion-MNIST from Debian's package) is present.
PY        ?= python3
VENV      ?= .venv
BIN       := $(VENV)/bin
FMNIST    := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
# torch/torchvision pinned to the builds that carry a working torchvision on this platform.
TORCH     ?= torch==2.14.1 torchvision==0.29.1
SPEC      ?= search_spaces/quickstart.yaml
RESULTS   ?= results

.PHONY: run test setup data lint bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# The example plugin (examples/plugin) is installed too: the suite runs its conformance tests and a
# spec that puts its defence beside PGD-AT, DeMem and DP-SGD.
$(VENV)/.installed: $(BIN)/python pyproject.toml examples/plugin/pyproject.toml
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q -e examples/plugin
	touch $@

setup: $(VENV)/.installed

# The embedded default dataset. Needs root (as on CI) or an existing install; DEMEM_DATA overrides.
data:
	@if [ -n "$$DEMEM_DATA" ] || [ -f $(FMNIST) ]; then true; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -q && apt-get install -y -q dataset-fashion-mnist; \
	else echo "Fashion-MNIST missing: run 'sudo apt-get install -y dataset-fashion-mnist' or set DEMEM_DATA"; exit 1; fi

# The main job: the quickstart experiment on local Ray, then its summary and report. A second
# `make run` resumes it.
run: setup data
	@name=$$(basename $(SPEC) .yaml); \
	if [ -f $(RESULTS)/$$name/spec.yaml ]; then $(BIN)/demem resume $(RESULTS)/$$name; \
	else $(BIN)/demem run $(SPEC) --storage $(RESULTS); fi && \
	$(BIN)/demem summarize $(RESULTS)/$$name

test: setup data
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: setup data
	$(BIN)/python benchmarks/bench_train.py

clean:
	rm -rf runs .pytest_cache
