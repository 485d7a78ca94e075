"""Results: table schemas and writing (per run); aggregation and queries come later."""

from protolib.results.schema import (
    GEOMETRY_SCHEMA,
    METRICS_SCHEMA,
    SCHEMA_VERSION,
    read_table,
    write_table,
)

__all__ = ["GEOMETRY_SCHEMA", "METRICS_SCHEMA", "SCHEMA_VERSION", "read_table", "write_table"]
