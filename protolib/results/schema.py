"""Explicit, versioned Parquet schemas of the per-run tables.

``metrics.parquet`` is long format — one row per run × step × split × metric — with the
grid keys as real columns. ``geometry.parquet`` holds final K×K matrices in long format
(one row per entry); ``gamma.parquet`` histograms of the final γ distributions. The
schema name and version are in each file's metadata (``protolib.table``,
``protolib.schema_version``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from protolib.io import write_atomic

SCHEMA_VERSION = 1

GRID_FIELDS = [
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("experiment", pa.string(), nullable=False),
    pa.field("loss", pa.string(), nullable=False),
    pa.field("n_w", pa.int64(), nullable=False),
    pa.field("imbalance_ratio", pa.float64(), nullable=False),
    pa.field("label_corruption", pa.float64(), nullable=False),
    pa.field("seed", pa.int64(), nullable=False),
]


def _with_metadata(name: str, fields: list[pa.Field]) -> pa.Schema:
    return pa.schema(
        fields,
        metadata={"protolib.table": name, "protolib.schema_version": str(SCHEMA_VERSION)},
    )


METRICS_SCHEMA = _with_metadata(
    "metrics",
    [
        *GRID_FIELDS,
        pa.field("step", pa.int64(), nullable=False),
        pa.field("epoch", pa.float64(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("metric", pa.string(), nullable=False),
        pa.field("value", pa.float64(), nullable=True),
    ],
)

GEOMETRY_SCHEMA = _with_metadata(
    "geometry",
    [
        *GRID_FIELDS,
        pa.field("matrix", pa.string(), nullable=False),
        pa.field("row", pa.int64(), nullable=False),
        pa.field("col", pa.int64(), nullable=False),
        pa.field("value", pa.float64(), nullable=True),
    ],
)


GAMMA_SCHEMA = _with_metadata(
    "gamma",
    [
        *GRID_FIELDS,
        pa.field("distribution", pa.string(), nullable=False),
        pa.field("lower", pa.float64(), nullable=False),
        pa.field("upper", pa.float64(), nullable=False),
        pa.field("count", pa.int64(), nullable=False),
    ],
)


def write_table(path: str | Path, columns: dict[str, list[Any]], schema: pa.Schema) -> Path:
    """Write ``columns`` (name → values) as a Parquet file with ``schema``, atomically."""
    table = pa.Table.from_pydict({f.name: columns[f.name] for f in schema}, schema=schema)
    return write_atomic(path, lambda tmp: pq.write_table(table, tmp))


def read_table(path: str | Path, schema: pa.Schema) -> pa.Table:
    """Read a table and check that it carries ``schema``'s name and version."""
    table = pq.read_table(path)
    meta = table.schema.metadata or {}
    expected = schema.metadata
    for key in (b"protolib.table", b"protolib.schema_version"):
        if meta.get(key) != expected[key]:
            raise ValueError(
                f"{path}: {key.decode()} is {meta.get(key)!r}, expected {expected[key]!r}"
            )
    return table
