"""Aggregation at grid scale: compact N run directories (default 10 000) into query tables.

    .venv/bin/python benchmarks/aggregate_scale.py [--runs 10000] [--repeats 3] [--keep DIR]

Trains one real (tiny) run with ``protolib.train.train_run``, then clones it ``--runs``
times into a temporary folder: every clone has the same files as a real run directory
(``config.json``, ``data.parquet``, ``metrics.parquet``, ``geometry.parquet``,
``gamma.parquet``, ``checkpoint.pt``, ``summary.json``), with ``run_id``, ``seed`` and
``label_corruption`` rewritten in the Parquet tables, the summary and the config so that
every run is distinct (the large ``checkpoint.pt`` and the unchanged ``data.parquet``
are hard links). It then times ``protolib.results.aggregate.aggregate`` (median of
``--repeats``) against a baseline in the same run: pandas ``pd.concat(pd.read_parquet(f)
for f in files)`` for the metrics plus a ``json.load`` loop over the summaries.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from protolib.results.aggregate import RUN_TABLES, aggregate
from protolib.results.manifest import build_manifest
from protolib.train import train_run

TEMPLATE_CONFIG = {
    "run_id": "template",
    "experiment": "bench",
    "iterations": 20,
    "eval_every": 10,
    "probe_iterations": 0,
    "threads": 1,
}
CORRUPTIONS = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
LINKED = ["data.parquet", "checkpoint.pt"]


def _with_grid(table: pa.Table, grid: dict) -> pa.Table:
    """``table`` with the grid columns set to constant ``grid`` values (types kept)."""
    for name, value in grid.items():
        index = table.schema.get_field_index(name)
        field = table.schema.field(index)
        column = pa.array([value] * table.num_rows, type=field.type)
        table = table.set_column(index, field, column)
    return table


def make_runs(root: Path, n: int) -> list[Path]:
    """``n`` distinct run directories under ``root``, cloned from one real run."""
    template = root / "template"
    train_run(TEMPLATE_CONFIG, template, progress=False)
    summary = json.loads((template / "summary.json").read_text())
    config = json.loads((template / "config.json").read_text())
    tables = {name: pq.read_table(template / name) for name in RUN_TABLES}
    runs = root / "runs"
    dirs = []
    for i in range(n):
        corruption = CORRUPTIONS[i % len(CORRUPTIONS)]
        seed = i // len(CORRUPTIONS)
        run_id = f"{summary['loss']}-p{corruption:.1f}-s{seed:05d}"
        grid = {"run_id": run_id, "label_corruption": corruption, "seed": seed}
        out = runs / run_id
        out.mkdir(parents=True)
        for name, table in tables.items():
            pq.write_table(_with_grid(table, grid), out / name)
        for name in LINKED:
            os.link(template / name, out / name)
        (out / "config.json").write_text(json.dumps({**config, **grid}, indent=2) + "\n")
        clone = {**summary, **grid, "manifest": build_manifest(out)}  # of the files above
        (out / "summary.json").write_text(json.dumps(clone, indent=2) + "\n")
        dirs.append(out)
    return dirs


def baseline(dirs: list[Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The obvious way: pandas for the metrics, a json.load loop for the summaries."""
    metrics = pd.concat(pd.read_parquet(d / "metrics.parquet") for d in dirs)
    summaries = []
    for d in dirs:
        with open(d / "summary.json") as handle:
            summaries.append(json.load(handle))
    return metrics, pd.DataFrame(summaries)


def median_time(fn, repeats: int) -> tuple[float, list[float], list[float]]:
    """Median wall seconds, and the wall and CPU seconds (all threads) of each repeat."""
    walls, cpus = [], []
    for _ in range(repeats):
        start, cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), walls, cpus


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep", help="generate into this folder and keep it (default: temp)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="aggregate_scale.") as tmp:
        root = Path(args.keep) if args.keep else Path(tmp)
        start = time.perf_counter()
        dirs = make_runs(root, args.runs)
        print(f"# generated {len(dirs)} run directories in {time.perf_counter() - start:.1f} s")
        random.Random(0).shuffle(dirs)  # a workflow need not pass them in run_id order
        out = root / "aggregate"
        seconds, walls, cpus = median_time(lambda: aggregate(dirs, out), args.repeats)
        print(
            f"aggregate (all four tables): {seconds:.2f} s median wall "
            f"(wall {_fmt(walls)}; CPU {_fmt(cpus)})"
        )
        for name in ["runs", "metrics", "geometry", "gamma"]:
            print(f"  {name}.parquet: {pq.read_metadata(out / f'{name}.parquet').num_rows} rows")
        seconds, walls, cpus = median_time(lambda: baseline(dirs), args.repeats)
        print(
            f"baseline (pandas metrics + json.load summaries): {seconds:.2f} s median wall "
            f"(wall {_fmt(walls)}; CPU {_fmt(cpus)})"
        )


def _fmt(times: list[float]) -> str:
    return ", ".join(f"{t:.2f}" for t in times)


if __name__ == "__main__":
    main()
