"""Explicit, versioned Arrow schemas of the results tables, built from the contract.

:mod:`protolib.results.contract` defines the columns once; this module turns them into
pyarrow schemas (``RUNS_SCHEMA``, ``METRICS_SCHEMA``, ``GEOMETRY_SCHEMA``,
``GAMMA_SCHEMA``), re-exports the contract, and reads and writes the tables. The schema
name and version are in each file's metadata (``protolib.table``,
``protolib.schema_version``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from protolib.io import write_atomic
from protolib.results.contract import (
    AXES,
    AXIS_NAMES,
    CHECKPOINT,
    CONFIG,
    DATA,
    EXPERIMENT,
    GAMMA,
    GEOMETRY,
    GRID_COLUMNS,
    IMBALANCE,
    IMBALANCE_RATIO,
    KEY_COLUMNS,
    LABEL_CORRUPTION,
    LOSS,
    MANIFEST_KEY,
    METRICS,
    MINORITY_FRACTION,
    N_W,
    RESUME,
    RUN_FILES,
    RUN_ID,
    RUNS,
    SEED,
    SUMMARY,
    SUMMARY_ONLY,
    TABLE_FILES,
    TABLES,
    Axis,
    Column,
)

SCHEMA_VERSION = 2
TABLE_KEY, VERSION_KEY = "protolib.table", "protolib.schema_version"


def arrow_field(column: Column) -> pa.Field:
    """The pyarrow field of a contract column."""
    return pa.field(column.name, getattr(pa, column.arrow)(), nullable=column.nullable)


def table_schema(name: str) -> pa.Schema:
    """The schema of table ``name`` of :data:`TABLES`, with its name and version."""
    return pa.schema(
        [arrow_field(column) for column in TABLES[name]],
        metadata={TABLE_KEY: name, VERSION_KEY: str(SCHEMA_VERSION)},
    )


#: the key columns every table starts with (identity and grid point)
#: table name → schema, for every table of the contract
SCHEMAS = {name: table_schema(name) for name in TABLES}
RUNS_SCHEMA = SCHEMAS["runs"]
METRICS_SCHEMA = SCHEMAS["metrics"]
GEOMETRY_SCHEMA = SCHEMAS["geometry"]
GAMMA_SCHEMA = SCHEMAS["gamma"]
#: per-run table file name → its schema (an aggregate's table of that name has it too)
RUN_TABLES = {TABLE_FILES[name]: schema for name, schema in SCHEMAS.items() if name != "runs"}


def misfit(row: Mapping[str, Any], schema: pa.Schema) -> str | None:
    """Why ``row`` (column → one value) does not fit ``schema``'s types, or ``None``."""
    for field in schema:
        value = row.get(field.name)
        if value is None and not field.nullable:
            return f"{field.name} is None, expected a {field.type} value"
        try:
            pa.array([value], type=field.type)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            return f"{field.name} is {value!r}, expected {field.type}"
    return None


def check_summary(summary: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` unless ``summary`` has exactly the :data:`RUNS_SCHEMA` columns
    (each value of its type) and the :data:`SUMMARY_ONLY` keys."""
    expected = {*RUNS_SCHEMA.names, *SUMMARY_ONLY}
    missing = [key for key in [*RUNS_SCHEMA.names, *SUMMARY_ONLY] if key not in summary]
    extra = [key for key in summary if key not in expected]
    if missing or extra:
        raise ValueError(
            f"{SUMMARY}: missing keys {missing}, unexpected keys {extra}; allowed: the columns "
            "of RUNS_SCHEMA and SUMMARY_ONLY (protolib.results.contract)"
        )
    why = misfit(summary, RUNS_SCHEMA)
    if why is not None:
        raise ValueError(f"{SUMMARY}: {why}")


def write_table(path: str | Path, columns: dict[str, list[Any]], schema: pa.Schema) -> Path:
    """Write ``columns`` (name → values) as a Parquet file with ``schema``, atomically."""
    table = pa.Table.from_pydict({f.name: columns[f.name] for f in schema}, schema=schema)
    return write_atomic(path, lambda tmp: pq.write_table(table, tmp))


def read_table(path: str | Path, schema: pa.Schema) -> pa.Table:
    """Read a table and check that it carries ``schema``'s name and version."""
    table = pq.read_table(path)
    meta = table.schema.metadata or {}
    expected = schema.metadata
    for key in (TABLE_KEY.encode(), VERSION_KEY.encode()):
        if meta.get(key) != expected[key]:
            raise ValueError(
                f"{path}: {key.decode()} is {meta.get(key)!r}, expected {expected[key]!r}"
            )
    return table


__all__ = [
    "AXES",
    "AXIS_NAMES",
    "CHECKPOINT",
    "CONFIG",
    "DATA",
    "EXPERIMENT",
    "GAMMA",
    "GAMMA_SCHEMA",
    "GEOMETRY",
    "GEOMETRY_SCHEMA",
    "GRID_COLUMNS",
    "IMBALANCE",
    "IMBALANCE_RATIO",
    "KEY_COLUMNS",
    "LABEL_CORRUPTION",
    "LOSS",
    "MANIFEST_KEY",
    "METRICS",
    "METRICS_SCHEMA",
    "MINORITY_FRACTION",
    "N_W",
    "RESUME",
    "RUNS",
    "RUNS_SCHEMA",
    "RUN_FILES",
    "RUN_ID",
    "RUN_TABLES",
    "SCHEMAS",
    "SCHEMA_VERSION",
    "SEED",
    "SUMMARY",
    "SUMMARY_ONLY",
    "TABLES",
    "TABLE_FILES",
    "Axis",
    "Column",
    "arrow_field",
    "check_summary",
    "misfit",
    "read_table",
    "table_schema",
    "write_table",
]
