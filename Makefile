# protolib — the two commands: `make test` (set up and run the test suite) and `make run`
# (the default pipeline). Both create the virtual environment when it is missing.

PYTHON ?= python3
VENV ?= .venv
# PyTorch is installed first and pinned; override for another platform or CUDA build,
# e.g. `make test TORCH="torch torchvision"`, or TORCH= to keep what the venv has.
TORCH ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=
# pytest-xdist workers: one per core and one more, which works while another waits on the
# processes its test started (the SLURM cluster, a pipeline, a server); 3 rather than 2 on
# 2 cores: 330 s against 377 s. A module's tests stay on one worker (module fixtures such
# as the pipeline and cluster runs are built once); modules start in the order
# tests/conftest.py gives, longest first. PYTEST_PARALLEL= runs serially.
PYTEST_WORKERS ?= $(shell $(PYTHON) -c 'import os; print((os.cpu_count() or 1) + 1)')
PYTEST_PARALLEL ?= -n $(PYTEST_WORKERS) --dist loadscope --no-loadscope-reorder

BIN := $(VENV)/bin
STAMP := $(VENV)/.protolib-installed

.PHONY: env test lint run bench clean-env

env: $(STAMP)

# pip compiles nothing (--no-compile): workflow/scripts/compile_imports.py then compiles
# what protolib and its tests import (on 2 cores: 112 s of pip and 15 s of it, against
# 174 s of pip compiling every module).
# pip is upgraded first: with the pip that Python 3.11.7's venv bundles (23.2.1) the two
# installs took 54 s and 77 s, with pip 26.3 34 s and 33 s (measured on 2 cores).
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(if $(strip $(TORCH)),$(BIN)/python -m pip install --quiet --no-compile $(TORCH))
	$(BIN)/python -m pip install --quiet --no-compile -e '.[dev]'
	$(BIN)/python workflow/scripts/compile_imports.py
	@touch $@

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# PYTHONDONTWRITEBYTECODE is cleared for the suite: its few hundred processes then read
# protolib's compiled modules, and pytest its rewritten test modules, instead of compiling
# them again in each (the caches are __pycache__ folders, which git ignores).
test: lint
	PYTHONDONTWRITEBYTECODE= $(BIN)/python -m pytest $(PYTEST_PARALLEL) $(PYTEST_ARGS)

# `snakemake --cores all all`, through a launcher that first clears the stale lock a killed
# run leaves (and refuses while a snakemake is still working in this directory).
run: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python workflow/scripts/launch.py $(BIN)/snakemake --cores all all

bench: $(STAMP)
	$(BIN)/python benchmarks/supcon_prototypes.py

clean-env:
	rm -rf $(VENV)
