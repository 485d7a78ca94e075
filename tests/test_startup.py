"""Start-up: what `import protolib` and the light commands import, and the console script's
exit without interpreter teardown. Each command runs in a real interpreter."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pyarrow.parquet as pq

from tests.results.grid_fixture import grid_fixture  # noqa: F401 (the results_grid fixture)

HEAVY = ("torch", "sklearn", "pandas", "matplotlib", "scipy", "mlflow")


def imported_by(*args: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run ``python -X importtime -m protolib.cli ARGS``; the process and every module it
    imported (importtime's report on stderr names each one, nested ones indented)."""
    process = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "protolib.cli", *args],
        capture_output=True,
        text=True,
        check=False,
    )
    modules = set()
    rest = []
    for line in process.stderr.splitlines():
        if line.startswith("import time:"):
            name = line.rsplit("|", 1)[1].strip()
            if name != "imported package":  # importtime's header line
                modules.add(name)
        else:
            rest.append(line)
    process.stderr = "\n".join(rest)
    return process, modules


def top_level(modules: set[str]) -> set[str]:
    return {name.split(".")[0] for name in modules}


def test_the_probe_sees_heavy_imports():
    """The probe itself works: `protolib list` must import torch (it lists the built-ins)."""
    process, modules = imported_by("list", "losses")
    assert process.returncode == 0, process.stderr
    assert "ce" in process.stdout.split(": ", 1)[1].split(", ")
    assert {"torch", "protolib.losses.ce"} <= modules


def test_help_and_version_import_nothing_heavy():
    for args in (["--help"], ["--version"], ["query", "--help"], ["train", "--help"]):
        process, modules = imported_by(*args)
        assert process.returncode == 0, (args, process.stderr)
        assert not top_level(modules) & set(HEAVY), (args, top_level(modules) & set(HEAVY))
    assert process.stdout.startswith("usage: protolib train")


def test_query_and_aggregate_do_not_import_torch(results_grid, tmp_path):
    process, modules = imported_by(
        "query", "SELECT count(*) AS n FROM runs", "--results", str(results_grid.root)
    )
    assert process.returncode == 0, process.stderr
    runs = sum(len(dirs) for dirs in results_grid.runs.values())
    assert process.stdout.split() == ["n", "-", str(runs)]
    assert not top_level(modules) & {"torch", "sklearn", "matplotlib", "scipy", "pandas"}
    run_dirs = [str(d) for d in results_grid.runs["grid_a"]]
    process, modules = imported_by("aggregate", *run_dirs, "--out", str(tmp_path / "agg"))
    assert process.returncode == 0, process.stderr
    assert pq.read_table(tmp_path / "agg" / "runs.parquet").num_rows == len(run_dirs)
    assert "torch" not in top_level(modules)


def test_import_protolib_is_light_and_registries_fill_on_first_use():
    code = textwrap.dedent(
        """
        import sys
        import protolib
        from protolib import LOSSES
        heavy = sorted(m for m in ("torch", "sklearn", "pandas", "duckdb") if m in sys.modules)
        assert not heavy, heavy
        assert "ce" in LOSSES and "torch" in sys.modules
        assert protolib.losses.CrossEntropy is LOSSES.get("ce")
        assert {"etf", "orthonormal"} <= set(protolib.GEOMETRIES.names())
        assert "mlp" in protolib.MODELS and "digits" in protolib.DATASETS
        assert "sklearn" not in sys.modules
        print(protolib.__version__)
        """
    )
    process = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert process.returncode == 0, process.stderr
    assert process.stdout.strip() not in ("", "0+unknown")


def test_console_script_runs_exit_handlers_and_skips_teardown():
    """`run()` ends with os._exit: atexit handlers run and output is flushed, but objects
    are not torn down (their __del__ never runs)."""
    code = textwrap.dedent(
        """
        import atexit, sys

        class Witness:
            def __del__(self):
                print("torn down")

        witness = Witness()
        atexit.register(print, "exit handler ran")
        sys.argv = ["protolib", *sys.argv[1:]]
        from protolib.cli import run
        run()
        """
    )
    ok = subprocess.run(
        [sys.executable, "-c", code, "--version"], capture_output=True, text=True, check=False
    )
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.splitlines()[1:] == ["exit handler ran"]
    assert ok.stdout.startswith("protolib ")
    bad = subprocess.run(
        [sys.executable, "-c", code, "query", "COPY runs TO 'x.csv'", "--results", "nowhere"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2
    assert bad.stderr.splitlines() == [
        "protolib query: error: only read-only queries are allowed; got a COPY statement"
    ]
    assert bad.stdout == "exit handler ran\n"
