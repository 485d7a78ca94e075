"""What the cluster test and benchmarks/slurm_overhead.py share: the tiny run, what a
two-core CPU-only node changes in the slurm profile, the start/stop scripts and SLURM's
job records."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pandas as pd

from tests.conftest import tiny_run

HERE = Path(__file__).resolve().parent

# A digits run of a second or two.
SMALL_RUN = tiny_run(
    model_options={"widths": [64], "out_dim": 16},
    iterations=300,
    eval_every=100,
    batch_size=64,
    probe_iterations=20,
)
# What a CPU-only node with 2 cores needs; everything else is the repository's profile.
NODE_ENV = {"PROTOLIB_SLURM_CPUS_PER_GPU": "1", "PROTOLIB_SLURM_MEM_PER_GPU_MB": "2000"}
PLUGIN_FLAGS = [
    "--slurm-no-account",
    "--slurm-init-seconds-before-status-checks",
    "1",
    "--seconds-between-status-checks",
    "1",
]


def cluster_script(name: str, state: Path, timeout: float) -> subprocess.CompletedProcess:
    """Run ``start-cluster.sh`` or ``stop-cluster.sh`` on the state directory ``state``."""
    return subprocess.run(
        [str(HERE / name), str(state)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def sacct_jobs(workdir: Path, fields: list[str]) -> pd.DataFrame:
    """SLURM's accounting records (``fields``) of the jobs submitted from ``workdir`` in
    the last two hours."""
    columns = [*fields, "WorkDir"] if "WorkDir" not in fields else fields
    out = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-a", "-S", "now-2hours", "-o", ",".join(columns)],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    rows = [line.split("|") for line in out.splitlines() if line.strip()]
    table = pd.DataFrame(rows, columns=columns)
    return table[table["WorkDir"] == str(workdir)].reset_index(drop=True)
