"""Compile, once, the modules protolib's commands and its test suite import (``make env``).

The Makefile installs the environment with ``pip install --no-compile``: compiling every
module of torch, MLflow, Snakemake and the rest at install time, most of which nothing here
imports, made the two installs take 174 s instead of 112 s (measured on 2 cores). This
script imports every protolib module and the libraries they import lazily, with bytecode
writing on, so later processes read compiled modules; any other module is compiled on its
first import, as Python always does. The libraries that do not need torch are imported by a
second process at the same time (on 2 cores, 15 s instead of 33 s, measured). A module that
fails to import fails the environment build, naming it.
"""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

#: imported lazily by protolib (models, plots, tracking, data) or by the test suite;
#: the first group needs torch, the second does not and is imported by a second process
WITH_TORCH = ("torchvision", "timm")
WITHOUT_TORCH = (
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
#: the dev extra's: absent from an environment installed without it
OPTIONAL = {"pytest", "xdist", "hypothesis"}


def import_all(names: list[str]) -> bool:
    """Import ``names`` in turn; on the first failure, say which in one line, and False."""
    for name in names:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as error:
            if name in OPTIONAL and error.name == name:
                continue
            print(f"compile_imports: cannot import {name}: {error}", file=sys.stderr)
            return False
        except Exception as error:  # any import-time failure fails the build, named
            kind = type(error).__name__
            print(f"compile_imports: cannot import {name}: {kind}: {error}", file=sys.stderr)
            return False
    return True


def main(argv: list[str]) -> int:
    sys.dont_write_bytecode = False
    if argv == ["--without-torch"]:
        return 0 if import_all(list(WITHOUT_TORCH)) else 1
    other = subprocess.Popen([sys.executable, __file__, "--without-torch"])
    import protolib

    names = [
        module.name
        for module in pkgutil.walk_packages(protolib.__path__, "protolib.")
        if not module.name.endswith(".__main__")
    ]
    imported = import_all([*names, *WITH_TORCH])
    if other.wait() != 0 or not imported:
        return 1
    print(
        f"compiled the imports of {len(names)} protolib modules and "
        f"{len(WITH_TORCH) + len(WITHOUT_TORCH)} libraries"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
