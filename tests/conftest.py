"""Test-session set-up shared by every test module."""

import os

# `make test` runs the suite on one pytest-xdist worker per core: one intra-op thread per
# worker (and for the processes the tests start), or the workers' thread pools fight over
# the cores and CPU-bound tests slow down several-fold.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")
