"""Scheduling overhead: a tiny grid through SLURM against the same grid on local cores.

    sudo .venv/bin/python benchmarks/slurm_overhead.py [--runs 8]

Starts the single-node cluster of tests/slurm/start-cluster.sh (root; installs SLURM's
Debian packages when missing), then times the whole `snakemake ... all` on the same tiny
config (``--runs`` digits runs of 300 iterations, plus theory, aggregate, report and
tracking), each in a fresh directory:

- local: `--cores 2`;
- SLURM, batched: `--profile slurm`, the short runs trained in one job (the default);
- SLURM, one job per run: the same with `batch_seconds: 0` in the config.

The SLURM runs change only what a two-core CPU node needs (as in the cluster test) and
use `--slurm-init-seconds-before-status-checks 5`. The cluster is stopped at the end.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT))  # the cluster test's helpers, tests/slurm/cluster.py

from tests.slurm.cluster import (  # noqa: E402
    NODE_ENV,
    PLUGIN_FLAGS,
    SMALL_RUN,
    cluster_script,
    sacct_jobs,
)


def config(runs: int, batch_seconds: float) -> dict:
    base = SMALL_RUN
    losses = {"ce": {"loss": "ce"}, "supcon": {"loss": "supcon"}}
    seeds = list(range(max(1, runs // len(losses))))
    experiment = {"base": base, "losses": losses, "grid": {"seed": seeds}}
    return {"batch_seconds": batch_seconds, "experiments": {"tiny": experiment}}


def timed(args: list[str], workdir: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    result = subprocess.run(
        [str(BIN / "snakemake"), "--snakefile", str(ROOT / "Snakefile"), *args, "all"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"snakemake {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=8)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("slurm_overhead: run as root (it starts SLURM's daemons)")
    state = Path(tempfile.mkdtemp(prefix="protolib-slurm-", dir="/tmp"))
    started = cluster_script("start-cluster.sh", state, timeout=600)
    if started.returncode != 0:
        raise SystemExit(f"slurm_overhead: the cluster did not start:\n{started.stderr}")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **NODE_ENV}
    rows = []
    slurm = ["--profile", str(ROOT / "slurm"), *PLUGIN_FLAGS]
    try:
        cases = [
            ("local, --cores 2", ["--cores", "2"], 900),
            ("SLURM, runs batched (default)", slurm, 900),
            ("SLURM, one job per run", slurm, 0),
        ]
        for name, flags, batch_seconds in cases:
            workdir = Path(tempfile.mkdtemp(prefix="protolib-bench-", dir="/tmp"))
            (workdir / "config.yaml").write_text(yaml.safe_dump(config(args.runs, batch_seconds)))
            seconds = timed(flags, workdir, env)
            jobs = len(sacct_jobs(workdir, ["JobID"])) if "SLURM" in name else 0
            rows.append((name, seconds, jobs))
            print(f"{name:32s} {seconds:7.1f} s   {jobs} SLURM jobs", flush=True)
    finally:
        print(cluster_script("stop-cluster.sh", state, timeout=120).stdout, end="")
    local = rows[0][1]
    print(f"\n{args.runs} runs + theory, aggregate, report, tracking")
    print("| how | wall time | SLURM jobs | vs local |")
    print("|---|---|---|---|")
    for name, seconds, jobs in rows:
        print(f"| {name} | {seconds:.0f} s | {jobs} | {seconds / local:.2f}× |")


if __name__ == "__main__":
    main()
