"""How much of the pipeline's time is training: the default config end to end, this tree
against a baseline revision, side by side in one sitting.

    .venv/bin/python benchmarks/pipeline_overhead.py [--baseline REV] [--cores 2]

Each side runs `snakemake --cores N all` (what `make run` runs) on ``config.yaml`` in a
fresh folder, with its own code first on ``PYTHONPATH`` and a ``protolib`` on ``PATH`` that
records the wall time of every ``protolib train`` process (the train jobs). Reported per
side: the end-to-end wall time; the train jobs' seconds; the runs' own wall seconds (the
sum of ``wall_seconds`` in ``runs.parquet``: from the start of a run's training to its
outputs) and ``train_seconds``; their ratio (job seconds per run second: 1 means no start-up
or shutdown cost at all). Then the aggregate tables of the two sides are compared row for
row, timing and provenance columns excluded.

The baseline (default ``HEAD``: when measuring uncommitted work, the previous commit) is
exported with ``git archive`` into a temporary folder. Both sides use this virtual
environment's packages through a bare venv of their own (its site-packages named in a
``.pth`` file, so that this checkout's editable install does not shadow the side's code).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import sysconfig
import tempfile
import time
import tomllib
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
TABLES = ("runs", "metrics", "geometry", "gamma")
#: columns that differ between two identical runs (time, host, code revision)
VOLATILE = {"wall_seconds", "train_seconds", "images_per_second", "git_revision"}

# Stands in for the `protolib` command: runs the side's own console entry point in a child
# process and appends ``{"command", "seconds"}`` to PROTOLIB_BENCH_TIMES.
SHIM = """#!{python}
import json, os, subprocess, sys, time
start = time.perf_counter()
code = subprocess.call(
    [{python!r}, "-c", "import sys; from {module} import {function}; sys.exit({function}())",
     *sys.argv[1:]]
)
seconds = time.perf_counter() - start
with open(os.environ["PROTOLIB_BENCH_TIMES"], "a") as handle:
    handle.write(json.dumps({{"command": sys.argv[1:2], "seconds": seconds}}) + "\\n")
sys.exit(code)
"""


def export(rev: str, target: Path) -> None:
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)


def side_python(work: Path) -> Path:
    """A bare venv whose site-packages are this venv's, without the editable install's
    import hook (``.pth`` files of an added path are not run): ``PYTHONPATH`` decides."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(work / "venv")], check=True)
    ours = Path(sysconfig.get_paths()["purelib"])
    theirs = Path(
        subprocess.run(
            [
                str(work / "venv" / "bin" / "python"),
                "-c",
                "import sysconfig; print(sysconfig.get_paths()['purelib'])",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    (theirs / "protolib-bench.pth").write_text(f"{ours}\n")
    return work / "venv" / "bin" / "python"


def run_side(name: str, tree: Path, work: Path, cores: int) -> dict:
    """`snakemake --cores N all` on the default config with ``tree``'s code."""
    shim_dir = work / "bin"
    shim_dir.mkdir(parents=True)
    python = side_python(work)
    shim = shim_dir / "protolib"
    entry = tomllib.loads((tree / "pyproject.toml").read_text())["project"]["scripts"]["protolib"]
    module, function = entry.split(":")
    shim.write_text(SHIM.format(python=str(python), module=module, function=function))
    shim.chmod(0o755)
    times = work / "times.jsonl"
    env = {
        **os.environ,
        "PATH": f"{shim_dir}{os.pathsep}{python.parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(tree),
        "PROTOLIB_BENCH_TIMES": str(times),
    }
    check = subprocess.run(
        [str(python), "-c", "import protolib; print(protolib.__file__)"],
        cwd=work,  # not this checkout: `-c` and `-m` put the working directory first
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert check.startswith(str(tree)), f"{name}: protolib imported from {check}"
    (work / "config.yaml").write_bytes((tree / "config.yaml").read_bytes())
    command = [
        str(python),
        "-m",
        "snakemake",
        "--snakefile",
        str(tree / "Snakefile"),
        "--directory",
        str(work),
        "--cores",
        str(cores),
        "all",
    ]
    print(f"{name}: {' '.join(command[1:])}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    result = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{name}: snakemake failed:\n{result.stderr[-3000:]}")
    jobs = [json.loads(line) for line in times.read_text().splitlines()]
    train = [j["seconds"] for j in jobs if j["command"] == ["train"]]
    runs = pd.concat(
        pd.read_parquet(p) for p in sorted((work / "results").glob("*/aggregate/runs.parquet"))
    )
    return {
        "wall": wall,
        "train_jobs": len(train),
        "train_job_seconds": sum(train),
        "runs": len(runs),
        "run_wall_seconds": float(runs["wall_seconds"].sum()),
        "run_train_seconds": float(runs["train_seconds"].sum()),
        "results": work / "results",
    }


def compare(a: Path, b: Path) -> list[str]:
    """Differences between the aggregate tables under two results folders."""
    problems = []
    experiments = sorted(p.parent.name for p in a.glob("*/aggregate"))
    if experiments != sorted(p.parent.name for p in b.glob("*/aggregate")):
        return ["the two sides have different experiments"]
    for experiment in experiments:
        for table in TABLES:
            left, right = (
                pd.read_parquet(r / experiment / "aggregate" / f"{table}.parquet") for r in (a, b)
            )
            keep = [c for c in left.columns if c not in VOLATILE]
            order = [
                c
                for c in (
                    "run_id",
                    "step",
                    "split",
                    "metric",
                    "matrix",
                    "row",
                    "col",
                    "distribution",
                    "lower",
                )
                if c in keep
            ]
            left = left[keep].sort_values(order).reset_index(drop=True)
            right = right[keep].sort_values(order).reset_index(drop=True)
            try:
                pd.testing.assert_frame_equal(left, right, check_exact=True)
            except AssertionError as error:
                problems.append(f"{experiment}/{table}: {str(error).splitlines()[0]}")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="HEAD", help="git revision (default: HEAD)")
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="protolib-overhead-") as tmp:
        base_tree = Path(tmp) / "baseline-tree"
        base_tree.mkdir()
        export(args.baseline, base_tree)
        sides = {
            f"baseline {args.baseline}": run_side(
                "baseline", base_tree, Path(tmp) / "baseline", args.cores
            ),
            "this tree": run_side("this tree", ROOT, Path(tmp) / "current", args.cores),
        }
        print(
            "| side | end to end (s) | train jobs | job s | runs | run wall s | run train s "
            "| job s / run wall s |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for name, s in sides.items():
            print(
                f"| {name} | {s['wall']:.1f} | {s['train_jobs']} | {s['train_job_seconds']:.1f} "
                f"| {s['runs']} | {s['run_wall_seconds']:.1f} | {s['run_train_seconds']:.1f} "
                f"| {s['train_job_seconds'] / s['run_wall_seconds']:.2f} |"
            )
        base, current = sides.values()
        print(f"end to end, this tree / baseline: {current['wall'] / base['wall']:.2f}")
        problems = compare(base["results"], current["results"])
        print("result tables: " + ("identical row for row" if not problems else "DIFFER"))
        for problem in problems:
            print(f"  {problem}")
        if problems:
            raise SystemExit(1)


if __name__ == "__main__":
    main()
