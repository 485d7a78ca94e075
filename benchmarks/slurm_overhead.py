"""Scheduling overhead: a tiny grid through SLURM against the same grid on local cores.

    sudo .venv/bin/python benchmarks/slurm_overhead.py [--runs 8]

Starts the single-node cluster of tests/slurm/start-cluster.sh (root; installs SLURM's
Debian packages when missing), then times the whole `snakemake ... all` on the same tiny
config (``--runs`` digits runs of 300 iterations, plus theory, aggregate, report and
tracking), each in a fresh directory:

- local: `--cores 2`;
- SLURM, grouped: `--profile slurm`, the short runs packed into one job (the default);
- SLURM, one job per run: the same with PROTOLIB_SLURM_RUNS_PER_JOB=1.

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
SCRIPTS = ROOT / "tests" / "slurm"
NODE = {"PROTOLIB_SLURM_CPUS_PER_GPU": "1", "PROTOLIB_SLURM_MEM_PER_GPU_MB": "2000"}
FLAGS = ["--slurm-no-account", "--slurm-init-seconds-before-status-checks", "5"]


def config(runs: int) -> dict:
    base = {
        "dataset": "digits",
        "model": "mlp",
        "model_options": {"widths": [64], "out_dim": 16},
        "iterations": 300,
        "eval_every": 100,
        "batch_size": 64,
        "probe_iterations": 20,
    }
    losses = {"ce": {"loss": "ce"}, "supcon": {"loss": "supcon"}}
    seeds = list(range(max(1, runs // len(losses))))
    return {"experiments": {"tiny": {"base": base, "losses": losses, "grid": {"seed": seeds}}}}


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


def sbatch_calls(workdir: Path) -> int:
    out = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-a", "-S", "now-2hours", "-o", "JobID,WorkDir"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sum(1 for line in out.splitlines() if line.endswith(f"|{workdir}"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=8)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("slurm_overhead: run as root (it starts SLURM's daemons)")
    state = Path(tempfile.mkdtemp(prefix="protolib-slurm-", dir="/tmp"))
    subprocess.run([str(SCRIPTS / "start-cluster.sh"), str(state)], check=True)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **NODE}
    rows = []
    try:
        cases = [
            ("local, --cores 2", ["--cores", "2"], {}),
            ("SLURM, runs grouped (default)", ["--profile", str(ROOT / "slurm"), *FLAGS], {}),
            (
                "SLURM, one job per run",
                ["--profile", str(ROOT / "slurm"), *FLAGS],
                {"PROTOLIB_SLURM_RUNS_PER_JOB": "1"},
            ),
        ]
        for name, flags, extra in cases:
            workdir = Path(tempfile.mkdtemp(prefix="protolib-bench-", dir="/tmp"))
            (workdir / "config.yaml").write_text(yaml.safe_dump(config(args.runs)))
            seconds = timed(flags, workdir, {**env, **extra})
            jobs = sbatch_calls(workdir) if "SLURM" in name else 0
            rows.append((name, seconds, jobs))
            print(f"{name:32s} {seconds:7.1f} s   {jobs} SLURM jobs", flush=True)
    finally:
        subprocess.run([str(SCRIPTS / "stop-cluster.sh"), str(state)], check=False)
    local = rows[0][1]
    print(f"\n{args.runs} runs + theory, aggregate, report, tracking")
    print("| how | wall time | SLURM jobs | vs local |")
    print("|---|---|---|---|")
    for name, seconds, jobs in rows:
        print(f"| {name} | {seconds:.0f} s | {jobs} | {seconds / local:.2f}× |")


if __name__ == "__main__":
    main()
