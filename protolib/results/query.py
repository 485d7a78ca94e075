"""SQL and pandas over every experiment's aggregate tables.

``connect()`` opens an in-memory DuckDB connection with four views, ``runs``,
``metrics``, ``geometry`` and ``gamma``, each over the ``results/<experiment>/aggregate/
<table>.parquet`` files of all experiments (every table has an ``experiment`` column), or
of one when ``experiment`` is given. The views read the files when queried; a table that
no experiment has yet is an empty view with the declared columns
(:data:`protolib.results.schema.SCHEMAS`), so a
query never fails for that reason::

    from protolib.results.query import load_runs, query

    query("SELECT loss, label_corruption, avg(time_to_fit) FROM runs GROUP BY ALL")
    runs = load_runs(experiment="default")  # a pandas DataFrame, one row per run

DataFrames are converted through Arrow, so their dtypes are those of
``pandas.read_parquet`` on the same files (DuckDB's DECIMAL and HUGEINT results become
floats or integers).
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from protolib.results.schema import SCHEMAS, TABLE_FILES

if TYPE_CHECKING:  # pandas is imported by pyarrow's to_pandas() when a DataFrame is asked for
    import duckdb  # imported by the functions that query: `import protolib.results` stays light
    import pandas as pd

#: view name → schema of the aggregate table it reads (its file: ``TABLE_FILES[name]``)
TABLES = SCHEMAS
AGGREGATE_DIR = "aggregate"

_SQL_TYPES = {
    pa.string(): "VARCHAR",
    pa.int64(): "BIGINT",
    pa.float64(): "DOUBLE",
    pa.bool_(): "BOOLEAN",
}


class QueryError(ValueError):
    """No aggregated results to query, an unknown experiment, or a statement that writes."""


#: statement types that only read (SELECT covers WITH, VALUES, FROM-first, DESCRIBE, SHOW,
#: SUMMARIZE); EXPLAIN is checked on the statement it explains (EXPLAIN ANALYZE runs it)
READ_ONLY = {"SELECT"}  # names of duckdb.StatementType members
_EXPLAIN = re.compile(
    r"^(?:\s|--[^\n]*(?:\n|$)|/\*.*?\*/)*EXPLAIN\b\s*(?:\([^)]*\)\s*)?(?:ANALY[SZ]E\b)?",
    re.IGNORECASE | re.DOTALL,
)


def _statement_kind(statement: duckdb.Statement) -> str | None:
    """``None`` for a read-only statement, else the name of its type (``COPY``, …)."""
    import duckdb

    if statement.type.name in READ_ONLY:
        return None
    if statement.type == duckdb.StatementType.EXPLAIN:
        match = _EXPLAIN.match(statement.query)
        if match is None:
            return "EXPLAIN"
        try:
            inner = duckdb.extract_statements(statement.query[match.end() :])
        except duckdb.Error:
            return "EXPLAIN"
        if len(inner) != 1:
            return "EXPLAIN"
        kind = _statement_kind(inner[0])
        return None if kind is None else f"EXPLAIN {kind}"
    return statement.type.name


def check_read_only(sql: str) -> None:
    """Raise :class:`QueryError` unless every statement of ``sql`` only reads.

    Allowed: SELECT and what DuckDB parses as one (WITH … SELECT, VALUES, FROM-first,
    DESCRIBE, SHOW, SUMMARIZE) and EXPLAIN of those. Everything else (COPY, ATTACH,
    CREATE, INSERT, INSTALL, LOAD, SET, PRAGMA, CALL, EXPORT, …) is refused, decided by
    DuckDB's own parser; ``duckdb.Error`` for SQL that does not parse.
    """
    import duckdb

    for statement in duckdb.extract_statements(sql):
        kind = _statement_kind(statement)
        if kind is not None:
            article = "an" if kind[0] in "AEIOU" else "a"
            raise QueryError(f"only read-only queries are allowed; got {article} {kind} statement")


def experiments(results: str | Path = "results") -> list[str]:
    """The experiments under ``results`` that have at least one aggregate table, sorted."""
    root = Path(results)
    if not root.is_dir():
        return []
    return sorted(
        folder.name
        for folder in root.iterdir()
        if any((folder / AGGREGATE_DIR / TABLE_FILES[t]).is_file() for t in TABLES)
    )


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _empty_view(schema: pa.Schema) -> str:
    columns = ", ".join(f'CAST(NULL AS {_SQL_TYPES[f.type]}) AS "{f.name}"' for f in schema)
    return f"SELECT {columns} WHERE false"


def connect(
    results: str | Path = "results", experiment: str | None = None
) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with views ``runs``, ``metrics``, ``geometry``, ``gamma``.

    Args:
        results: the results folder, holding ``<experiment>/aggregate/<table>.parquet``.
        experiment: only this experiment's tables (default: all of them).

    Raises:
        QueryError: no experiment under ``results`` has an aggregate, or ``experiment``
            is not one of them (the message lists those found).
    """
    import duckdb

    found = experiments(results)
    if not found:
        raise QueryError(
            f"no aggregated results under {str(results)!r} "
            "(run the pipeline first: snakemake --cores N all)"
        )
    chosen = found
    if experiment is not None:
        if experiment not in found:
            close = difflib.get_close_matches(experiment, found, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise QueryError(
                f"unknown experiment {experiment!r} under {str(results)!r}; "
                f"found: {', '.join(found)}{hint}"
            )
        chosen = [experiment]
    root = Path(results).resolve()
    connection = duckdb.connect()
    try:
        for table, schema in TABLES.items():
            files = [root / e / AGGREGATE_DIR / TABLE_FILES[table] for e in chosen]
            files = [_quote(str(f)) for f in files if f.is_file()]
            if files:
                source = f"SELECT * FROM read_parquet([{', '.join(files)}], union_by_name = true)"
            else:
                source = _empty_view(schema)
            connection.execute(f'CREATE VIEW "{table}" AS {source}')
        # no extension downloads (they write to the home folder), then no more settings
        connection.execute("SET autoinstall_known_extensions = false")
        connection.execute("SET lock_configuration = true")
    except BaseException:
        connection.close()
        raise
    return connection


def _plain_types(table: pa.Table) -> pa.Table:
    """DECIMAL columns (DuckDB's exact numerics, HUGEINT sums) as int64 or float64."""
    for index, field in enumerate(table.schema):
        if not pa.types.is_decimal(field.type):
            continue
        column = table.column(index)
        target = pa.float64()
        if field.type.scale == 0:
            try:
                column = pc.cast(column, pa.int64())
                target = pa.int64()
            except pa.ArrowInvalid:  # beyond int64
                pass
        if target == pa.float64():
            column = pc.cast(column, pa.float64(), safe=False)
        table = table.set_column(index, pa.field(field.name, target), column)
    return table


def query_arrow(
    sql: str, results: str | Path = "results", experiment: str | None = None
) -> pa.Table:
    """The result of ``sql`` over the views of :func:`connect`, as an Arrow table.

    Only read-only statements run (:func:`check_read_only`). Raises :class:`QueryError`
    as :func:`connect` does or for a statement that would write, and ``duckdb.Error``
    for bad SQL.
    """

    check_read_only(sql)
    connection = connect(results, experiment)
    try:
        relation = connection.sql(sql)
        if relation is None:  # a statement without a result
            return pa.table({})
        return _plain_types(relation.to_arrow_table())
    finally:
        connection.close()


def query(sql: str, results: str | Path = "results", experiment: str | None = None) -> pd.DataFrame:
    """The result of ``sql`` over the views of :func:`connect`, as a DataFrame."""
    return query_arrow(sql, results, experiment).to_pandas()


def load_runs(results: str | Path = "results", experiment: str | None = None) -> pd.DataFrame:
    """All rows of the ``runs`` view: one row per run, by experiment then run id."""
    return query("SELECT * FROM runs", results, experiment)


def load_metrics(results: str | Path = "results", experiment: str | None = None) -> pd.DataFrame:
    """All rows of the ``metrics`` view (long format), by experiment then run id and step."""
    return query("SELECT * FROM metrics", results, experiment)


def _cell(value: object) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        text = f"{value:.6g}"
        if text.lstrip("-").isdigit():  # 1.0 → "1.0", not "1": keep floats recognisable
            text += ".0"
        return text
    return str(value)


def format_table(table: pa.Table, max_rows: int = 50) -> str:
    """``table`` as aligned text: a header, at most ``max_rows`` rows, "… N more rows".

    Numbers are right-aligned, floats shown with 6 significant digits, nulls as NULL.
    """
    shown = table.slice(0, max(max_rows, 0))
    columns = []
    for field, column in zip(table.schema, shown.columns, strict=True):
        cells = [_cell(v) for v in column.to_pylist()]
        width = max([len(field.name), *map(len, cells)])
        numeric = pa.types.is_integer(field.type) or pa.types.is_floating(field.type)
        align = str.rjust if numeric else str.ljust
        columns.append([align(field.name, width), "-" * width, *(align(c, width) for c in cells)])
    lines = ["  ".join(parts).rstrip() for parts in zip(*columns, strict=True)]
    if table.num_rows == 0:
        lines.append("(no rows)")
    elif table.num_rows > shown.num_rows:
        rest = table.num_rows - shown.num_rows
        lines.append(f"… {rest} more row{'s' if rest != 1 else ''}")
    return "\n".join(lines)
