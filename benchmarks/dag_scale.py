"""Planning a 10 000-run grid: `snakemake -n` on protolib's workflow against a bare
two-rule Snakefile with the same number of jobs, both in this run.

    .venv/bin/python benchmarks/dag_scale.py [--runs-per-axis 10]

The grid is one loss (supcon) × n_w × imbalance_ratio × label_corruption × seed with
``--runs-per-axis`` values each (10 → 10 000 runs). Times are wall seconds of the whole
`snakemake -n` command (and with `-q`, which skips printing every job): start-up, config
validation, grid expansion and the DAG; median of ``--repeats``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

BARE = """
N = {n}
rule all:
    input: expand("out/{{i}}.txt", i=range(N))
rule make:
    output: "out/{{i}}.txt"
    shell: "touch {{output}}"
"""


def timed(cmd: list[str], cwd: Path) -> float:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{result.stderr[-2000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs-per-axis", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    k = args.runs_per_axis
    n = k**4
    grid = {
        "n_w": list(range(k)),
        "imbalance_ratio": [1 + i for i in range(k)],
        "label_corruption": [round(i / k, 3) for i in range(k)],
        "seed": list(range(k)),
    }
    config = {
        "batch_seconds": 0,  # one run per train job: a 10 000-job DAG, as the bare Snakefile
        "experiments": {
            "scale": {
                "base": {"iterations": 10},
                "losses": {"supcon": {"loss": "supcon"}},
                "grid": grid,
            }
        },
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "protolib"
        work.mkdir()
        (work / "config.yaml").write_text(yaml.safe_dump(config))
        bare = Path(tmp) / "bare"
        bare.mkdir()
        (bare / "Snakefile").write_text(BARE.format(n=n))
        for flags in (["-n"], ["-n", "-q"]):
            snakemake = [str(BIN / "snakemake"), *flags, "--cores", "1"]
            ours_cmd = [
                *snakemake,
                "--snakefile",
                str(ROOT / "Snakefile"),
                "--directory",
                str(work),
                "all",
            ]
            bare_cmd = [*snakemake, "all"]
            ours, base = [], []
            for _ in range(args.repeats):
                ours.append(timed(ours_cmd, work))
                base.append(timed(bare_cmd, bare))
            print(f"# {n} runs; snakemake {' '.join(flags)}; median of {args.repeats}")
            print(f"protolib workflow ({n} train jobs + fan-in): {statistics.median(ours):.1f} s")
            print(f"bare two-rule Snakefile ({n} jobs):          {statistics.median(base):.1f} s")


if __name__ == "__main__":
    main()
