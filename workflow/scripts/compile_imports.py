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


def import_all(names: list[str]) -> str | None:
    """Import ``names`` in turn; the first failure, in one line, or None."""
    for name in names:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as error:
            if name in OPTIONAL and error.name == name:
                continue
            return f"cannot import {name}: {error}"
        except Exception as error:  # any import-time failure fails the build, named
            return f"cannot import {name}: {type(error).__name__}: {error}"
    return None


def main(argv: list[str]) -> int:
    sys.dont_write_bytecode = False
    if argv == ["--without-torch"]:
        failure = import_all(list(WITHOUT_TORCH))
        if failure:
            print(f"compile_imports: {failure}", file=sys.stderr)
        return 1 if failure else 0
    other = subprocess.Popen([sys.executable, __file__, "--without-torch"])
    import protolib

    names = [
        module.name
        for module in pkgutil.walk_packages(protolib.__path__, "protolib.")
        if not module.name.endswith(".__main__")
    ]
    failure = import_all([*names, *WITH_TORCH])
    if failure:
        print(f"compile_imports: {failure}", file=sys.stderr)
    if other.wait() != 0 or failure:
        return 1
    print(
        f"compiled the imports of {len(names)} protolib modules and "
        f"{len(WITH_TORCH) + len(WITHOUT_TORCH)} libraries"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
