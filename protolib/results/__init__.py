"""Results: per-run table schemas, aggregation, queries, plots and tables."""

from protolib.results.aggregate import RUNS_SCHEMA, aggregate
from protolib.results.query import connect, load_metrics, load_runs, query
from protolib.results.schema import (
    GAMMA_SCHEMA,
    GEOMETRY_SCHEMA,
    METRICS_SCHEMA,
    SCHEMA_VERSION,
    read_table,
    write_table,
)

__all__ = [
    "GAMMA_SCHEMA",
    "GEOMETRY_SCHEMA",
    "METRICS_SCHEMA",
    "RUNS_SCHEMA",
    "SCHEMA_VERSION",
    "aggregate",
    "connect",
    "load_metrics",
    "load_runs",
    "query",
    "read_table",
    "write_table",
]
