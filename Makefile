# fedkd: `make run` runs the main job, `make test` runs the tests, `make test-e2e` the deployment
# tests (marker e2e: real SuperLink + SuperNodes, left out of `make test`). All set everything up
# first (virtualenv with pinned dependencies, Debian's Fashion-MNIST package), reused next time.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
# This machine's pip config names local package folders that may be absent; hide that noise.
QUIET_PIP := 2>&1 | { grep -v "is neither a file nor a directory" || true; }
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.fedkd-installed
FMNIST_DIR := /usr/share/datasets/fashion-mnist
PYTEST_ARGS ?=

.PHONY: run test test-e2e setup data

run: setup data
	$(PY) -m simulations.run --preset main --against-fedavg

test: setup data
	$(PY) -m pytest $(PYTEST_ARGS)

# `-m e2e` on the command line replaces the `-m 'not e2e'` of pyproject's addopts.
test-e2e: setup data
	$(PY) -m pytest -m e2e $(PYTEST_ARGS)

setup: $(STAMP)

# torch==2.13.0 resolves to the CPU wheel on this machine's disk; install it before anything
# else can pull a CUDA build. The stamp is rewritten when the pins change.
$(STAMP): requirements.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check torch==2.13.0 $(QUIET_PIP)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock $(QUIET_PIP)
	@touch $(STAMP)

data:
	@if [ ! -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz ]; then \
	  echo "Fashion-MNIST not found in $(FMNIST_DIR): installing Debian's dataset-fashion-mnist"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO="sudo -n"; fi; \
	  $$SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null \
	    || { $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null; } \
	    || { echo "could not install dataset-fashion-mnist: run 'apt-get install -y dataset-fashion-mnist' as root"; exit 1; }; \
	fi
