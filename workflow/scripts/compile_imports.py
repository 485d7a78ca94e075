"""Compile, once, the modules protolib's commands and its test suite import (``make env``).

The Makefile installs the environment with ``pip install --no-compile``: compiling every
module of torch, MLflow, Snakemake and the rest at install time costs about a minute of
CPU on 2 cores (measured: 174 s against 112 s for the two installs), most of it on modules
nothing here imports. This script imports every protolib module and the libraries they
import lazily with bytecode writing on, so later processes read compiled modules; any
other module is compiled on its first import, as Python always does. A module that fails to
import fails the environment build, naming it.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

#: imported lazily by protolib (plots, tracking, data) or by the test suite
LIBRARIES = (
    "torchvision",
    "timm",
    "sklearn.datasets",
    "matplotlib.pyplot",
    "mlflow",
    "duckdb",
    "snakemake.cli",
    "snakemake_executor_plugin_slurm",
    "pytest",
    "xdist",
    "hypothesis",
)


def main() -> int:
    sys.dont_write_bytecode = False
    import protolib

    names = [
        module.name
        for module in pkgutil.walk_packages(protolib.__path__, "protolib.")
        if not module.name.endswith(".__main__")
    ]
    optional = {"pytest", "xdist", "hypothesis"}  # the dev extra only
    for name in [*names, *LIBRARIES]:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as error:
            if name in optional and error.name == name:
                continue
            print(f"compile_imports: cannot import {name}: {error}", file=sys.stderr)
            return 1
    print(f"compiled the imports of {len(names)} protolib modules and {len(LIBRARIES)} libraries")
    return 0


if __name__ == "__main__":
    sys.exit(main())
