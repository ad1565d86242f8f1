# Two commands on a fresh clone, each doing its own set-up in a project-local virtual environment:
#
#     make demo     # set up .venv (nlptl and torch only) and run `nlptl demo`
#     make test     # set up .venv with the dev extras and run the test suite (what .ci/run calls)
#
# A second run skips the set-up: it is redone only when pyproject.toml or the torch choice changes.
# Choose another torch build with TORCH_INDEX (a CUDA one, say: make demo TORCH_INDEX=URL) or
# TORCH_SPEC (another version); either change redoes the set-up.

# bash runs the recipes, as it ran the tests under .ci/run before: the completion tests' `nlptl
# --show-completion` detects the shell from its parent processes, and Debian's /bin/sh (dash) has none.
SHELL := /bin/bash

PYTHON ?= python3
VENV ?= .venv
# Pinned here, not in pyproject.toml (there only a floor, so that `pip install nlptl` keeps whatever
# build a user has): a bare or open-ended torch requirement may pull a CUDA build of several GB.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
PYTEST_ARGS ?=

PIP := $(VENV)/bin/python -m pip
export PIP_DISABLE_PIP_VERSION_CHECK := 1

# The stamps' names carry a checksum of what the set-up installs, so an edited pyproject.toml or
# another torch choice finds no stamp and installs again; cksum is POSIX (Linux and macOS alike).
KEY := $(shell { cat pyproject.toml; echo '$(TORCH_SPEC) $(TORCH_INDEX)'; } | cksum | cut -d' ' -f1)
DEMO_STAMP := $(VENV)/.nlptl-setup-demo-$(KEY)
TEST_STAMP := $(VENV)/.nlptl-setup-test-$(KEY)

.DEFAULT_GOAL := help
.PHONY: help demo test lint

help:
	@echo "make demo    set up .venv and run nlptl demo (the whole chain on built-in data)"
	@echo "make test    set up .venv with the dev extras and run the test suite (PYTEST_ARGS='-k x')"
	@echo "make lint    ruff check, in the same .venv (what .ci/run runs before the tests)"
	@echo "options      TORCH_INDEX=URL (e.g. a CUDA build), TORCH_SPEC='torch==X', PYTHON=python3.X"

demo: $(DEMO_STAMP)
	$(VENV)/bin/nlptl demo

# The venv's bin/ goes first on PATH: tests that start `nlptl` by name must get this checkout's.
# pytest exits 5 when it collected no test: a broken suite, so say so (make fails on any non-zero).
# Two processes on two cores (pytest-xdist; --dist loadfile keeps a file's module fixtures in one
# process): the suite took 12 min in one process and 8 min 53 s in two on the 2-core box (2026-12-07).
# PYTEST_ARGS="-p no:xdist" runs it in one process.
test: $(TEST_STAMP)
	@PATH="$(abspath $(VENV))/bin:$$PATH" $(VENV)/bin/python -m pytest -q -n auto --dist loadfile $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; fi; exit $$rc

lint: $(TEST_STAMP)
	$(VENV)/bin/ruff check nlptl tests bench

# Without the trackers (mlflow, tensorboard) and the other dev extras: the demo needs none of them.
$(DEMO_STAMP):
	$(call setup,.)
	touch $@

# The dev extras are a superset of the demo's needs, so this stamps both.
$(TEST_STAMP):
	$(call setup,.[dev])
	touch $@ $(DEMO_STAMP)

# torch first, from TORCH_INDEX when given; then the project with the same torch requirement, so
# that pip fails rather than swap the build for another one. A venv of its own (not the system
# site-packages): only Python is needed, and nothing installed outside it changes what runs.
# `python -m venv` over an existing .venv is harmless and repairs an interrupted one.
define setup
	@echo "make: setting up $(VENV) (only when pyproject.toml or the torch choice changed)"
	$(PYTHON) -m venv $(VENV)
	rm -f $(VENV)/.nlptl-setup-*
	$(PIP) install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_SPEC)"
	$(PIP) install -q "$(TORCH_SPEC)" -e "$(1)"
	@$(VENV)/bin/python -c "import torch; print('torch', torch.__version__, '(CUDA', (torch.version.cuda or 'none') + ')')"
endef
