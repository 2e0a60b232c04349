# cvahash: `make demo` runs the main job, `make test` runs the test suite.
# Both create or refresh .venv at the repo root and install everything they need,
# Debian packages included, on a fresh Debian/Ubuntu machine with Python 3.11.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Debian packages the tests use: PortAudio + PulseAudio for real audio capture,
# an aarch64 cross compiler and qemu to check the NEON kernel, headless Chromium for
# the web page, mosquitto as a real MQTT broker.
APT_PACKAGES := libportaudio2 pulseaudio pulseaudio-utils libasound2-plugins \
                gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user \
                chromium chromium-driver mosquitto
# Every source the editable install compiles: a change rebuilds the C extension.
C_SOURCES := $(wildcard csrc/*.c csrc/*.h csrc/*.py)

.PHONY: demo test test-fast bench system-deps venv clean lint

# `make demo ARGS=--retrain` trains and exports the tiny bundle here instead of using
# the shipped one (tests/data/demo-bundle; the stand-in recipe, about 25 min at 1 thread;
# `ARGS="--retrain --quick"` checks that path in minutes); `ARGS="--minutes 30"` for a
# shorter run; `ARGS="--seed 11 --background stream --heldout-queries"` for a recording
# and query words the bundle's training never saw.
demo: $(VENV)/.installed
	$(PY) -m cvahash.export.demo $(ARGS)

test: system-deps $(VENV)/.installed
	$(VENV)/bin/ruff check runtime export tests bench
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q
	bash csrc/test_aarch64.sh
	bash csrc/test_sanitizers.sh

# Without the slow tests (crash loops, daemon soak); for the edit-test loop.
test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -m "not slow"

# The habits `make test` enforces: ruff with zero findings and the import layers.
lint: $(VENV)/.installed
	$(VENV)/bin/ruff check runtime export tests bench
	$(VENV)/bin/lint-imports

venv: $(VENV)/.installed

system-deps:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(VENV)/.installed: pyproject.toml setup.py $(C_SOURCES)
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel cffi
	$(PIP) install -q -e '.[capture,export,plots,web,archive,dev]'
	touch $@

bench: $(VENV)/.installed
	@echo "benchmarks (each prints a table; results and commands in docs/benchmarks/):"
	@ls bench/*.py

clean:
	rm -rf build *.egg-info runtime/*.so runtime/kernel/*.so runtime/kernel/_hamming_cffi.* $(VENV)
