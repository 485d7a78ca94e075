"""Test-session set-up shared by every test module, and the tiny-run factory."""

import copy
import os

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


# -- tests that need a CUDA device ---------------------------------------------------------
# Mark them ``@pytest.mark.cuda`` (or ``pytestmark = pytest.mark.cuda``; a parameter:
# ``pytest.param("cuda", marks=pytest.mark.cuda)``), written literally so: that is how
# benchmarks/gpu_check.py finds their modules, and it runs them with ``-m cuda``. Without
# CUDA they are skipped; with PROTOLIB_REQUIRE_CUDA=1 (the GPU check) that is a failure,
# so a check on a GPU can never pass by skipping.


def pytest_runtest_setup(item):
    """Skip (or, with PROTOLIB_REQUIRE_CUDA=1, fail) a ``cuda``-marked test without CUDA."""
    if item.get_closest_marker("cuda") is None:
        return
    import pytest
    import torch

    if not torch.cuda.is_available():
        if os.environ.get("PROTOLIB_REQUIRE_CUDA") == "1":
            pytest.fail("PROTOLIB_REQUIRE_CUDA=1 but torch finds no CUDA device")
        pytest.skip("no CUDA")
