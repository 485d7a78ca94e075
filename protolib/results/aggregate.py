"""Fan-in: compact many run directories into one experiment's query tables.

``aggregate(run_dirs, out_dir)`` writes, atomically and with explicit versioned schemas:

- ``runs.parquet``: one row per run — the grid keys and the figures of ``summary.json``;
- ``metrics.parquet``, ``geometry.parquet``, ``gamma.parquet``: the per-run tables
  concatenated (same schemas as the per-run files, :mod:`protolib.results.schema`).

Rows are ordered by run id (then by the per-run order), so the output is deterministic.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from protolib.io import write_atomic
from protolib.results.schema import (
    GAMMA_SCHEMA,
    GEOMETRY_SCHEMA,
    GRID_FIELDS,
    METRICS_SCHEMA,
    _with_metadata,
)

RUNS_SCHEMA = _with_metadata(
    "runs",
    [
        *GRID_FIELDS,
        pa.field("loss_type", pa.string()),
        pa.field("dataset", pa.string()),
        pa.field("model", pa.string()),
        pa.field("geometry", pa.string()),
        pa.field("status", pa.string()),
        pa.field("iterations", pa.int64()),
        pa.field("epochs", pa.float64()),
        pa.field("time_to_fit", pa.int64()),
        pa.field("fitted", pa.bool_()),
        pa.field("train_error", pa.float64()),
        pa.field("test_accuracy", pa.float64()),
        pa.field("mean_classifier_accuracy", pa.float64()),
        pa.field("probe_accuracy", pa.float64()),
        pa.field("delta_g", pa.float64()),
        pa.field("n_train", pa.int64()),
        pa.field("n_corrupted", pa.int64()),
        pa.field("wall_seconds", pa.float64()),
        pa.field("train_seconds", pa.float64()),
        pa.field("images_per_second", pa.float64()),
        pa.field("device", pa.string()),
        pa.field("git_revision", pa.string()),
    ],
)

#: per-run file name → schema of the concatenated table
RUN_TABLES = {
    "metrics.parquet": METRICS_SCHEMA,
    "geometry.parquet": GEOMETRY_SCHEMA,
    "gamma.parquet": GAMMA_SCHEMA,
}


class AggregateError(ValueError):
    """A run directory that cannot be aggregated (missing or unreadable outputs)."""


def runs_table(run_dirs: Sequence[Path]) -> pa.Table:
    """One row per run from each ``summary.json``, with :data:`RUNS_SCHEMA`."""
    columns: dict[str, list] = {f.name: [] for f in RUNS_SCHEMA}
    for run_dir in run_dirs:
        path = Path(run_dir) / "summary.json"
        try:
            summary = json.loads(path.read_text())
        except FileNotFoundError:
            raise AggregateError(f"{path} is missing: the run has not finished") from None
        except json.JSONDecodeError as error:
            raise AggregateError(f"{path} is not valid JSON: {error}") from None
        for name, values in columns.items():
            values.append(summary.get(name))
    return pa.Table.from_pydict(columns, schema=RUNS_SCHEMA)


def concat_table(paths: Sequence[Path], schema: pa.Schema) -> pa.Table:
    """The Parquet files at ``paths`` concatenated with DuckDB, ordered by run id."""
    missing = [str(p) for p in paths if not Path(p).exists()]
    if missing:
        raise AggregateError(f"{missing[0]} is missing ({len(missing)} files in all)")
    if not paths:
        return schema.empty_table()
    columns = ", ".join(f'"{f.name}"' for f in schema)
    connection = duckdb.connect()
    try:
        relation = connection.read_parquet([str(p) for p in paths], file_row_number=True)
        table = relation.order("run_id, file_row_number").project(columns).to_arrow_table()
    finally:
        connection.close()
    return table.cast(schema)


def aggregate(run_dirs: Sequence[str | Path], out_dir: str | Path) -> dict[str, Path]:
    """Compact ``run_dirs`` into ``out_dir/{runs,metrics,geometry,gamma}.parquet``."""
    dirs = sorted((Path(d) for d in run_dirs), key=lambda d: d.name)
    out = Path(out_dir)
    tables = {"runs.parquet": runs_table(dirs).sort_by("run_id")}
    for name, schema in RUN_TABLES.items():
        tables[name] = concat_table([d / name for d in dirs], schema)
    written = {}
    for name, table in tables.items():
        written[name.removesuffix(".parquet")] = write_atomic(
            out / name, lambda tmp, table=table: pq.write_table(table, tmp)
        )
    return written
