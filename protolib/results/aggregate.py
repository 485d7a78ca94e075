"""Fan-in: compact many run directories into one experiment's query tables.

``aggregate(run_dirs, out_dir)`` writes atomically, with the contract's versioned schemas
(:mod:`protolib.results.schema`; ``RUNS_SCHEMA``, ``RUN_TABLES`` re-exported here),
``runs.parquet`` (a row per run: the grid keys and the figures of ``summary.json``) and
the per-run ``metrics``, ``geometry`` and ``gamma`` tables concatenated, ordered by run
id (then per-run order): the output is deterministic.

It is built for grids of many small runs (10 000 run directories take a few seconds on
two cores, ``benchmarks/aggregate_scale.py``): the per-run Parquet files are read by one
multithreaded DuckDB scan per table, in a background thread (DuckDB releases the GIL)
while the main thread parses the ``summary.json`` files; pyarrow writes the outputs with
the declared schemas, so nullability and metadata are exact.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

if TYPE_CHECKING:
    import duckdb

from protolib.io import atomic_path
from protolib.results.manifest import ManifestError, check_entry, file_entry, manifest_of
from protolib.results.schema import (
    KEY_COLUMNS,
    MANIFEST_KEY,
    RUN_TABLES,
    RUNS,
    RUNS_SCHEMA,
    SUMMARY,
    TABLE_FILES,
    TABLE_KEY,
    VERSION_KEY,
    misfit,
)

__all__ = ["RUNS_SCHEMA", "RUN_TABLES", "AggregateError", "aggregate", "concat_table", "runs_table"]


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
    for column in KEY_COLUMNS:
        for path, summary in zip(paths, summaries, strict=True):
            if summary.get(column.name) is None:
                raise AggregateError(f"{path} has no {column.name!r}; every summary needs one")
    seen: dict[tuple, str] = {}
    for path, summary in zip(paths, summaries, strict=True):
        key = (summary["experiment"], summary["run_id"])
        if key in seen:
            raise AggregateError(
                f"run_id {key[1]!r} of experiment {key[0]!r} appears twice: {seen[key]} and "
                f"{path}; each run needs its own run_id"
            )
        seen[key] = path


def _check_identity(paths: list[str], summaries: list[dict]) -> None:
    """Each summary names its own directory (run_id) and carries a complete manifest."""
    for path, summary in zip(paths, summaries, strict=True):
        folder = os.path.basename(os.path.dirname(os.path.abspath(path)))
        if summary["run_id"] != folder:
            raise AggregateError(
                f"{path} holds run_id {summary['run_id']!r}, expected {folder!r} (the name of "
                "its run directory): a summary copied from another run?"
            )
        try:
            manifest_of(summary, path)
        except ManifestError as error:
            raise AggregateError(str(error)) from None


def _summaries_table(paths: list[str], summaries: list[dict]) -> pa.Table:
    columns = {name: [s.get(name) for s in summaries] for name in RUNS_SCHEMA.names}
    try:
        return pa.Table.from_pydict(columns, schema=RUNS_SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        pass
    for path, summary in zip(paths, summaries, strict=True):  # find the culprit
        why = misfit(summary, RUNS_SCHEMA)
        if why is not None:
            raise AggregateError(f"{path}: {why}")
    raise AggregateError("the summaries do not fit the runs schema")  # pragma: no cover


def _runs(dirs: Sequence[str | Path]) -> tuple[pa.Table, list[dict]]:
    """The runs table (by run id) and the summaries (in ``dirs``' order), all checked."""
    paths, summaries = _load_summaries(dirs)
    _check_keys(paths, summaries)
    _check_identity(paths, summaries)
    order = sorted(
        range(len(summaries)),
        key=lambda i: (summaries[i]["run_id"], summaries[i]["experiment"]),
    )
    table = _summaries_table([paths[i] for i in order], [summaries[i] for i in order])
    return table, summaries


def runs_table(run_dirs: Sequence[str | Path]) -> pa.Table:
    """One row per run from each ``summary.json``, with :data:`RUNS_SCHEMA`, by run id.

    Raises :class:`AggregateError` naming the file when a summary is missing, not valid
    JSON, lacks a grid key or does not fit the schema, or when two runs of one
    experiment share a run id.
    """
    return _runs(run_dirs)[0]


# -- metrics / geometry / gamma: the per-run tables --------------------------------------


def _check_exist(paths: Sequence[str], *, unfinished: bool = False) -> None:
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        why = ": the run has not finished" if unfinished else ""
        more = f" ({len(missing)} of {len(paths)} files in all)" if len(missing) > 1 else ""
        raise AggregateError(f"{missing[0]} is missing{why}{more}")


def _check_version(path: str, schema: pa.Schema) -> None:
    """``path`` carries ``schema``'s table name and version in its metadata."""
    try:
        meta = pq.read_schema(path).metadata or {}
    except (OSError, pa.ArrowException) as error:
        raise AggregateError(f"{path} is not a readable Parquet file: {error}") from None
    for key in (TABLE_KEY.encode(), VERSION_KEY.encode()):
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
    import duckdb

    files = [str(p) for p in paths]
    _check_exist(files)
    if not files:
        return schema.empty_table()
    if connection is not None:
        return _concat(files, schema, connection)
    with duckdb.connect() as own:
        return _concat(files, schema, own)


def _concat(files: list[str], schema: pa.Schema, connection: duckdb.DuckDBPyConnection) -> pa.Table:
    import duckdb

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
        name = schema.metadata[TABLE_KEY.encode()].decode()
        first = str(error).strip().splitlines()[0]
        raise AggregateError(f"cannot concatenate the {name} tables: {first}") from None
    return table.cast(schema)


def _file_ids(files: list[str], connection: duckdb.DuckDBPyConnection) -> dict[str, tuple]:
    """Per file: (min, max run_id, min, max experiment, rows with a null key).

    A grouped scan of the two key columns; as costly as the tables' scan itself, so only
    run to find the culprit once the concatenated table is known to be wrong.
    """
    rows = connection.sql(
        "SELECT filename, min(run_id), max(run_id), min(experiment), max(experiment), "
        "count(*) FILTER (WHERE run_id IS NULL OR experiment IS NULL) "
        "FROM read_parquet($files, filename = true) GROUP BY filename",
        params={"files": files},
    ).fetchall()
    return {row[0]: row[1:] for row in rows}


def _show(values: set) -> str:
    return ", ".join(repr(v) for v in sorted(values, key=str))


def _verify_ids(
    name: str,
    dirs: list[str],
    summaries: dict[str, dict],
    pairs: set[tuple],
    connection: duckdb.DuckDBPyConnection,
) -> None:
    """Each ``dir/name`` holds rows of its own run (``run_id``, ``experiment``) only.

    ``pairs`` are the (run_id, experiment) values of the concatenated table. When they
    are not those of the summaries (a table copied from another run lacks its own run and
    repeats another), the files are scanned again to name the one that is wrong.
    """
    expected = {(s["run_id"], s["experiment"]) for s in summaries.values()}
    if pairs == expected:
        return
    paths = [os.path.join(d, name) for d in dirs]
    ids = _file_ids(paths, connection)
    for folder, path in zip(dirs, paths, strict=True):
        if path not in ids:  # no rows (an empty table is allowed)
            continue
        low_run, high_run, low_exp, high_exp, nulls = ids[path]
        runs, experiments = {low_run, high_run}, {low_exp, high_exp}
        run_id, experiment = summaries[folder]["run_id"], summaries[folder]["experiment"]
        if nulls or runs != {run_id} or experiments != {experiment}:
            raise AggregateError(
                f"{path} holds rows of run_id {_show(runs)} in experiment "
                f"{_show(experiments)}, expected only run_id {run_id!r} in experiment "
                f"{experiment!r} (from its summary.json): a table copied from another run?"
            )


def _file_digest(path: str) -> tuple[int, str]:
    entry = file_entry(path)
    return entry["size"], entry["sha256"]


def _verify_bytes(
    name: str, dirs: list[str], summaries: dict[str, dict], digests: list[tuple[int, str]]
) -> None:
    """Each ``dir/name`` has the size and SHA-256 (``digests``) its run's manifest records."""
    for folder, (size, digest) in zip(dirs, digests, strict=True):
        path = os.path.join(folder, name)
        try:
            check_entry(path, summaries[folder][MANIFEST_KEY][name], size=size, sha256=digest)
        except ManifestError as error:
            raise AggregateError(str(error)) from None


def _new_folders(path: Path) -> list[Path]:
    """The folders that creating ``path`` would create, deepest first."""
    missing = []
    for folder in [path, *path.parents]:
        if folder.exists():
            break
        missing.append(folder)
    return missing


def aggregate(run_dirs: Sequence[str | Path], out_dir: str | Path) -> dict[str, Path]:
    """Compact ``run_dirs`` into ``out_dir/{runs,metrics,geometry,gamma}.parquet``.

    Every table read is verified first: its size and SHA-256 against the run's manifest
    (:mod:`protolib.results.manifest`), and its ``run_id``/``experiment`` values against
    the run's ``summary.json``, whose ``run_id`` must be its directory's name.

    Returns table name (``runs``, ``metrics``, …) → path written. Raises
    :class:`AggregateError` naming the file when a run is unfinished, unreadable or
    inconsistent; then no output is replaced (each table goes to a temporary file, and
    all four are renamed at the end) and no folder is left behind (``out_dir`` is only
    created when the tables are written).
    """
    dirs = [os.fspath(d) for d in run_dirs]
    for name in [SUMMARY, *RUN_TABLES]:  # fail before any work when a run is unfinished
        _check_exist([os.path.join(d, name) for d in dirs], unfinished=name == SUMMARY)
    out = Path(out_dir)
    created = _new_folders(out)
    try:
        return _aggregate(dirs, out)
    except BaseException:
        for folder in created:  # deepest first; only folders this call created, if empty
            try:
                folder.rmdir()
            except OSError:
                break
        raise


def _aggregate(dirs: list[str], out: Path) -> dict[str, Path]:
    import duckdb

    names = [RUNS, *RUN_TABLES]  # the values of TABLE_FILES
    connection = duckdb.connect()
    cancelled = threading.Event()
    try:
        with ExitStack() as renames:
            temps = {name: renames.enter_context(atomic_path(out / name)) for name in names}
            # one thread scans the per-run tables with DuckDB (which releases the GIL and
            # uses every core) and hands each table to a writer thread; meanwhile this
            # thread parses the summaries and checks the files' bytes against the
            # manifests. Nothing is renamed into place before every check has passed.
            with ThreadPoolExecutor(max_workers=2) as pool:

                def write(name: str, table: pa.Table) -> None:
                    pq.write_table(table, temps[name])

                def scan() -> dict[str, tuple]:
                    found = {}
                    for name, schema in RUN_TABLES.items():
                        if cancelled.is_set():
                            break
                        paths = [os.path.join(d, name) for d in dirs]  # checked above
                        try:
                            table = _concat(paths, schema, connection)
                        except AggregateError as error:  # reported after the checks
                            found[name] = (None, None, error)
                            continue
                        keys = table.group_by(["run_id", "experiment"]).aggregate([])
                        pairs = set(zip(*keys.to_pydict().values(), strict=True))
                        found[name] = (pairs, pool.submit(write, name, table), None)
                    return found

                scans = pool.submit(scan)
                try:
                    runs, summaries = _runs(dirs)
                    by_dir = dict(zip(dirs, summaries, strict=True))
                    write(RUNS, runs)
                    digests = {  # while DuckDB scans: the bytes are in the page cache
                        name: [_file_digest(os.path.join(d, name)) for d in dirs]
                        for name in RUN_TABLES
                    }
                    found = scans.result()
                    for name, (pairs, _, _) in found.items():
                        if pairs is not None:
                            _verify_ids(name, dirs, by_dir, pairs, connection)
                    for name in RUN_TABLES:
                        _verify_bytes(name, dirs, by_dir, digests[name])
                except BaseException:
                    cancelled.set()
                    connection.interrupt()
                    raise
                for _, writing, error in found.values():
                    if error is not None:
                        raise error
                    writing.result()
    finally:
        connection.close()
    return {table: out / name for table, name in TABLE_FILES.items()}
