"""Results: table schemas and writing (per run); aggregation and queries come later."""

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
    "SCHEMA_VERSION",
    "read_table",
    "write_table",
]
