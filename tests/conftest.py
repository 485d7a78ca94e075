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


# -- the order modules start in ------------------------------------------------------------
# `make test` hands whole modules to pytest-xdist's workers in collection order
# (--no-loadscope-reorder). Modules that take longest, most of it waiting on processes they
# start (a SLURM cluster, Snakemake pipelines, servers), go first, longest first, so that
# they overlap with the rest of the suite instead of finishing it alone on one worker.
# Measured wall time per module on 2 cores; every other module keeps its place after them.
LONGEST_FIRST = (
    "tests/slurm/test_cluster.py",
    "tests/test_docs.py",
    "tests/workflow/test_pipeline.py",
    "tests/workflow/test_recovery.py",
    "tests/train/test_run.py",
    "tests/workflow/test_kill_anywhere.py",
    "tests/train/test_distributed.py",
    "tests/test_gpu_check.py",
    "tests/workflow/test_batches.py",
    "tests/workflow/test_fuzz_pipeline_config.py",
    "tests/test_cli_commands.py",
    "tests/test_tracking.py",
    "tests/theory/test_ufm.py",
    "tests/results/test_report.py",
    "tests/slurm/test_profile.py",
    "tests/train/test_fuzz_run_config.py",
)


def pytest_collection_modifyitems(session, config, items):
    """Put the modules of :data:`LONGEST_FIRST` first, in that order (a stable sort: the
    tests inside a module, and every other module, keep their order)."""
    rank = {module: i for i, module in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))
