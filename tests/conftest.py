"""Test-session set-up shared by every test module, and the tiny-run factory."""

import copy
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

# `make test` runs the suite on one pytest-xdist worker per core: one intra-op thread per
# worker (and for the processes the tests start), or the workers' thread pools fight over
# the cores and CPU-bound tests slow down several-fold.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")


# -- the tiny runs the suite trains ------------------------------------------------------
# One factory for every tiny run and pipeline grid: digits, an MLP, a few iterations. A
# test passes only what matters to it (more iterations to be caught mid-run, a wider MLP
# for a prototype geometry, …).

TINY_RUN = {
    "dataset": "digits",
    "model": "mlp",
    "model_options": {"widths": [16], "out_dim": 8},
    "iterations": 4,
    "eval_every": 2,
    "batch_size": 32,
    "probe_iterations": 0,
}


def tiny_run(**overrides) -> dict:
    """A run config of a second or less: :data:`TINY_RUN` with ``overrides``."""
    return {**copy.deepcopy(TINY_RUN), **copy.deepcopy(overrides)}


def tiny_grid(
    losses: dict | None = None,
    grid: dict | None = None,
    *,
    experiment: str = "tiny",
    base: dict | None = None,
    **config,
) -> dict:
    """A pipeline config with one experiment of tiny runs: ``base`` over :data:`TINY_RUN`,
    ``losses`` (default: ce), ``grid`` (default: none), and top-level ``config`` keys."""
    spec = {"base": tiny_run(**(base or {})), "losses": losses or {"ce": {"loss": "ce"}}}
    if grid:
        spec["grid"] = copy.deepcopy(grid)
    return {**copy.deepcopy(config), "experiments": {experiment: spec}}


@pytest.fixture
def tiny():
    """The factories: ``tiny.run(**overrides)`` and ``tiny.grid(losses, grid, ...)``."""
    return SimpleNamespace(run=tiny_run, grid=tiny_grid)


# -- order: the longest modules first -----------------------------------------------------
# pytest-xdist hands each worker whole modules in collection order; a long module that
# comes last runs alone at the end while the other workers idle. These modules start real
# pipelines, clusters or servers (tens of seconds each, measured): they go first, the
# longest first, so that the short modules fill in around them.
SLOW_MODULES = (
    "tests/slurm/test_cluster.py",
    "tests/test_docs.py",
    "tests/workflow/test_pipeline.py",
    "tests/workflow/test_kill_anywhere.py",
    "tests/workflow/test_recovery.py",
    "tests/train/test_run.py",
    "tests/workflow/test_fuzz_pipeline_config.py",
    "tests/theory/test_ufm.py",
    "tests/workflow/test_batches.py",
    "tests/test_cli_commands.py",
    "tests/train/test_batch.py",
    "tests/test_extensions.py",
)


def pytest_collection_modifyitems(items):
    root = Path(__file__).resolve().parents[1]
    missing = [m for m in SLOW_MODULES if not (root / m).is_file()]
    if missing:  # a renamed module would silently lose its place
        raise pytest.UsageError(f"tests/conftest.py SLOW_MODULES names missing files: {missing}")

    def rank(item) -> int:
        path = item.nodeid.split("::")[0]
        return SLOW_MODULES.index(path) if path in SLOW_MODULES else len(SLOW_MODULES)

    items.sort(key=rank)  # stable: the order inside a module and among the rest is kept
