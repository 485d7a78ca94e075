"""Fan-in: compact many run directories into one experiment's query tables.

``aggregate(run_dirs, out_dir)`` writes, atomically and with explicit versioned schemas:

- ``runs.parquet``: one row per run — the grid keys and the figures of ``summary.json``;
- ``metrics.parquet``, ``geometry.parquet``, ``gamma.parquet``: the per-run tables
  concatenated (same schemas as the per-run files, :mod:`protolib.results.schema`).

Rows are ordered by run id (then by the per-run order), so the output is deterministic.

It is built for grids of many small runs (10 000 run directories take a few seconds on
two cores, ``benchmarks/aggregate_scale.py``): the per-run Parquet files are read by one
multithreaded DuckDB scan per table, which runs in a background thread (DuckDB releases
the GIL) while the main thread parses the ``summary.json`` files; the outputs are written
by pyarrow with the declared schemas, so nullability and metadata are exact.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from protolib.io import atomic_path
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

SUMMARY = "summary.json"
_TABLE_KEY, _VERSION_KEY = "protolib.table", "protolib.schema_version"


class AggregateError(ValueError):
    """A run directory that cannot be aggregated (missing or unreadable outputs)."""


# -- runs.parquet: the summaries ------------------------------------------------------


def _read_bytes(path: str) -> bytes:
    # os.open/os.read: a third of the cost of Path.read_text for 10 000 small files
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)


def _load_summaries(run_dirs: Sequence[str | Path]) -> tuple[list[str], list[dict]]:
    paths = [os.path.join(d, SUMMARY) for d in run_dirs]
    summaries: list[dict] = []
    missing: list[str] = []
    for path in paths:
        try:
            data = _read_bytes(path)
        except FileNotFoundError:
            missing.append(path)
            continue
        try:
            summary = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise AggregateError(f"{path} is not valid JSON: {error}") from None
        if not isinstance(summary, dict):
            raise AggregateError(f"{path} holds a JSON {type(summary).__name__}, not an object")
        summaries.append(summary)
    if missing:
        more = f" ({len(missing)} of {len(paths)} files in all)" if len(missing) > 1 else ""
        raise AggregateError(f"{missing[0]} is missing: the run has not finished{more}")
    return paths, summaries


def _check_keys(paths: list[str], summaries: list[dict]) -> None:
    """Grid keys present in every summary; (experiment, run_id) unique."""
    for field in GRID_FIELDS:
        for path, summary in zip(paths, summaries, strict=True):
            if summary.get(field.name) is None:
                raise AggregateError(f"{path} has no {field.name!r}; every summary needs one")
    seen: dict[tuple, str] = {}
    for path, summary in zip(paths, summaries, strict=True):
        key = (summary["experiment"], summary["run_id"])
        if key in seen:
            raise AggregateError(
                f"run_id {key[1]!r} of experiment {key[0]!r} appears twice: {seen[key]} and "
                f"{path}; each run needs its own run_id"
            )
        seen[key] = path


def _summaries_table(paths: list[str], summaries: list[dict]) -> pa.Table:
    columns = {name: [s.get(name) for s in summaries] for name in RUNS_SCHEMA.names}
    try:
        return pa.Table.from_pydict(columns, schema=RUNS_SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        pass
    for path, summary in zip(paths, summaries, strict=True):  # find the culprit
        for field in RUNS_SCHEMA:
            try:
                pa.array([summary.get(field.name)], type=field.type)
            except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
                raise AggregateError(
                    f"{path}: {field.name} is {summary.get(field.name)!r}, expected {field.type}"
                ) from None
    raise AggregateError("the summaries do not fit the runs schema")  # pragma: no cover


def runs_table(run_dirs: Sequence[str | Path]) -> pa.Table:
    """One row per run from each ``summary.json``, with :data:`RUNS_SCHEMA`, by run id.

    Raises :class:`AggregateError` naming the file when a summary is missing, not valid
    JSON, lacks a grid key or does not fit the schema, or when two runs of one
    experiment share a run id.
    """
    paths, summaries = _load_summaries(run_dirs)
    _check_keys(paths, summaries)
    order = sorted(
        range(len(summaries)),
        key=lambda i: (summaries[i]["run_id"], summaries[i]["experiment"]),
    )
    return _summaries_table([paths[i] for i in order], [summaries[i] for i in order])


# -- metrics / geometry / gamma: the per-run tables --------------------------------------


def _check_exist(paths: Sequence[str], *, unfinished: bool = False) -> None:
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        why = ": the run has not finished" if unfinished else ""
        more = f" ({len(missing)} of {len(paths)} files in all)" if len(missing) > 1 else ""
        raise AggregateError(f"{missing[0]} is missing{why}{more}")


def _check_version(path: str, schema: pa.Schema) -> None:
    """``path`` carries ``schema``'s table name and version in its metadata."""
    meta = pq.read_schema(path).metadata or {}
    for key in (_TABLE_KEY.encode(), _VERSION_KEY.encode()):
        if meta.get(key) != schema.metadata[key]:
            found = meta[key].decode() if key in meta else None
            raise AggregateError(
                f"{path}: {key.decode()} is {found!r}, expected "
                f"{schema.metadata[key].decode()!r} (written by another protolib version?)"
            )


def concat_table(
    paths: Sequence[str | Path],
    schema: pa.Schema,
    *,
    connection: duckdb.DuckDBPyConnection | None = None,
) -> pa.Table:
    """The Parquet files at ``paths`` concatenated, ordered by run id then per-file order.

    One multithreaded DuckDB scan over all files. The first file must carry ``schema``'s
    name and version in its metadata (checking all of them would cost as much as the
    scan); the others must have its columns, with types DuckDB can cast to the schema's
    (a missing column or an impossible cast raises). ``connection`` reuses an open
    DuckDB connection.
    """
    files = [str(p) for p in paths]
    _check_exist(files)
    if not files:
        return schema.empty_table()
    if connection is not None:
        return _concat(files, schema, connection)
    with duckdb.connect() as own:
        return _concat(files, schema, own)


def _concat(files: list[str], schema: pa.Schema, connection: duckdb.DuckDBPyConnection) -> pa.Table:
    if not files:
        return schema.empty_table()
    _check_version(files[0], schema)
    columns = ", ".join(f'"{f.name}"' for f in schema)
    try:
        table = connection.sql(
            f"SELECT {columns} FROM read_parquet($files, file_row_number = true) "
            "ORDER BY run_id, experiment, file_row_number",
            params={"files": files},
        ).to_arrow_table()
    except duckdb.Error as error:
        name = schema.metadata[_TABLE_KEY.encode()].decode()
        first = str(error).strip().splitlines()[0]
        raise AggregateError(f"cannot concatenate the {name} tables: {first}") from None
    return table.cast(schema)


def aggregate(run_dirs: Sequence[str | Path], out_dir: str | Path) -> dict[str, Path]:
    """Compact ``run_dirs`` into ``out_dir/{runs,metrics,geometry,gamma}.parquet``.

    Returns table name (``runs``, ``metrics``, …) → path written. Raises
    :class:`AggregateError` when a run is unfinished or unreadable; then no output is
    replaced (each table goes to a temporary file, and all four are renamed at the end).
    """
    dirs = [os.fspath(d) for d in run_dirs]
    for name in [SUMMARY, *RUN_TABLES]:  # fail before any work when a run is unfinished
        _check_exist([os.path.join(d, name) for d in dirs], unfinished=name == SUMMARY)
    out = Path(out_dir)
    names = ["runs.parquet", *RUN_TABLES]
    connection = duckdb.connect()
    cancelled = threading.Event()
    try:
        with ExitStack() as renames:
            temps = {name: renames.enter_context(atomic_path(out / name)) for name in names}
            # one thread scans the per-run tables with DuckDB (which releases the GIL and
            # uses every core) and hands each table to a writer thread; meanwhile this
            # thread parses the summaries
            with ThreadPoolExecutor(max_workers=2) as pool:

                def write(name: str, table: pa.Table) -> None:
                    pq.write_table(table, temps[name])

                def scan() -> list[Future]:
                    writes = []
                    for name, schema in RUN_TABLES.items():
                        if cancelled.is_set():
                            break
                        paths = [os.path.join(d, name) for d in dirs]  # checked above
                        table = _concat(paths, schema, connection)
                        writes.append(pool.submit(write, name, table))
                    return writes

                scans = pool.submit(scan)
                try:
                    write("runs.parquet", runs_table(dirs))
                except BaseException:
                    cancelled.set()
                    connection.interrupt()
                    raise
                for future in scans.result():
                    future.result()
    finally:
        connection.close()
    return {name.removesuffix(".parquet"): out / name for name in names}
