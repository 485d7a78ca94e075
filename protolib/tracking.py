"""Mirror an experiment's aggregate into MLflow, idempotently (the pipeline's last step).

Training jobs never write to MLflow: the per-run Parquet files are the source of truth,
and :func:`sync_experiment` copies an experiment's aggregate into the MLflow experiment
``protolib/<experiment>``:

- one **parent run** (tag ``protolib.parent = <experiment>``): params describing the grid
  (``grid.<key>`` = the JSON list of its values, ``runs``), the report's plots and tables
  as artifacts;
- one **child run** per grid point (tags ``protolib.run_id``, ``mlflow.parentRunId``,
  ``protolib.git_revision``, ``protolib.status``): params = the run's ``config.json``
  (nested keys flattened as ``a.b``, values as JSON text except strings) and the grid keys
  (which win over a config key of the same name: ``loss`` is the grid's loss variant),
  metric histories ``<split>/<metric>`` (and ``epoch``) at every evaluated step, the final
  figures of ``runs.parquet`` (``test_accuracy``, ``time_to_fit``, …) at the last step,
  and ``summary.json`` / ``config.json`` as artifacts. Its MLflow status is FINISHED for
  a completed run and FAILED for a diverged one.

Any store that is not a server (SQLite, the default) keeps artifacts under
``<results>/mlartifacts/<experiment>``; a server decides for itself.

**Idempotency.** Each synced run carries the tag ``protolib.synced``: a SHA-256 of
everything logged to it (params, metric points, tags, artifact contents; not the
timestamps). It is written last, so a run without it is an interrupted sync. A child
whose tag equals the hash of what it should hold is left alone (``unchanged``). Otherwise
a **new run is created and fully logged, then the old one is deleted** (``updated``;
``created`` when none existed): MLflow params cannot change and metric histories cannot
be deleted through its API, so replacing a run is the only way to never duplicate a
metric point. The same holds for the parent; when it is replaced, the children are
re-pointed to it (``mlflow.parentRunId`` is a tag, so no child is recreated for that).
Deletion is MLflow's soft delete (``mlflow gc`` frees the space). Children whose run is
no longer in the aggregate are kept (logged, not deleted). Any failure part-way leaves at
worst an unsynced extra run, which the next call replaces.

**The marker.** With ``marker=PATH`` a successful sync writes a JSON file (the pipeline's
``results/<experiment>/tracking.json``) that ties the sync to the store it went to: the
tracking URI (credentials removed), the MLflow experiment id and the parent run's id.
:func:`marker_staleness` tells, cheaply and without writing, whether a marker still
describes its store; for SQLite it checks that the database file exists and still holds
that parent run (a deleted or recreated store does not), so the pipeline re-syncs.

**Artifacts.** With a local store the artifacts of a run live in
``<results>/mlartifacts/<experiment>/<MLflow run id>/``. After each sync, folders there
whose run the store does not know (any lifecycle stage) are removed: they belonged to a
store that was deleted or recreated, and would otherwise pile up.

**Failure.** An unreachable or failing store raises :class:`TrackingError` with one line,
within about ``timeout_s`` seconds per request (MLflow's HTTP retries, backoff and
timeout are set through its environment variables for the duration of the call and
restored afterwards). Results and aggregate files are only read, never written.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import math
import os
import posixpath
import re
import shutil
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import pyarrow as pa
import pyarrow.compute as pc

from protolib.io import write_json
from protolib.results.aggregate import RUNS_SCHEMA
from protolib.results.schema import GRID_FIELDS, METRICS_SCHEMA, read_table

__all__ = ["TrackingError", "default_tracking_uri", "marker_staleness", "sync_experiment"]

_log = logging.getLogger(__name__)

#: bump when what a synced run holds changes, so that every run is re-synced once
SYNC_FORMAT = 1

EXPERIMENT_PREFIX = "protolib/"
PARENT_TAG = "protolib.parent"
RUN_ID_TAG = "protolib.run_id"
SYNCED_TAG = "protolib.synced"
PARENT_RUN_TAG = "mlflow.parentRunId"

# MLflow's limits (mlflow.utils.validation): entities per log_batch call, value lengths
MAX_METRICS_PER_BATCH = 1000


@contextmanager
def _store_lock(database: Path | None) -> Iterator[None]:
    """Syncs to one SQLite store take turns (an exclusive ``flock`` on a file beside it).

    Snakemake runs the tracking jobs of several experiments at once, each in its own
    process; two of them creating the store at the same time break MLflow's schema
    migration, and SQLite serialises writers anyway. Server stores need no lock.
    """
    if database is None:
        yield
        return
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(database.parent / f".{database.name}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


MAX_ENTITIES_PER_BATCH = 1000
MAX_PARAMS_TAGS_PER_BATCH = 100
MAX_PARAM_VALUE_LENGTH = 6000
MAX_TAG_VALUE_LENGTH = 8000
MAX_KEY_LENGTH = 250
TRUNCATED = "...[truncated]"

#: the grid coordinates of a run (params of each child); run_id/experiment are tags
GRID_KEYS = tuple(f.name for f in GRID_FIELDS if f.name not in ("run_id", "experiment"))
#: runs.parquet columns that are tags of each child rather than params or metrics
TAG_COLUMNS = {
    "status": "protolib.status",
    "git_revision": "protolib.git_revision",
    "device": "protolib.device",
}
#: tracking URI schemes whose server decides where artifacts go
REMOTE_SCHEMES = ("http", "https", "databricks", "databricks-uc", "uc")
#: MLflow run status of a synced child, by protolib status
RUN_STATUS = {"completed": "FINISHED"}


class TrackingError(RuntimeError):
    """The MLflow sync failed; the message is one line that says why and what to do."""


def default_tracking_uri(results: Path) -> str:
    """The default store: SQLite in ``<results>/mlflow.db`` (no server needed)."""
    return f"sqlite:///{Path(results).resolve() / 'mlflow.db'}"


# -- desired state -------------------------------------------------------------------------


@dataclass
class _Content:
    """Everything one MLflow run should hold, and its digest."""

    name: str
    params: dict[str, str] = field(default_factory=dict)
    metrics: list[tuple[str, float, int]] = field(default_factory=list)  # key, value, step
    tags: dict[str, str] = field(default_factory=dict)
    status: str = "FINISHED"
    files: list[tuple[Path, str | None]] = field(default_factory=list)  # path, artifact dir

    def digest(self) -> str:
        files = [[_digest(path), path.name, folder] for path, folder in self.files]
        payload = {
            "format": SYNC_FORMAT,
            "params": self.params,
            "metrics": [[k, v if math.isfinite(v) else repr(v), s] for k, v, s in self.metrics],
            "tags": self.tags,
            "status": self.status,
            "files": files,
        }
        text = json.dumps(payload, sort_keys=True, allow_nan=False)
        return hashlib.sha256(text.encode()).hexdigest()


def _digest(path: Path) -> str:
    """SHA-256 of a file's bytes, or of a folder's file names and contents."""
    digest = hashlib.sha256()
    if path.is_dir():
        for item in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(f"{item.relative_to(path).as_posix()}\0{_digest(item)}\0".encode())
        return digest.hexdigest()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _key(key: str) -> str:
    """An MLflow-valid param/metric key: allowed characters, no path tricks, ≤ 250 chars."""
    key = re.sub(r"[^\w\-. /:]", "_", key)
    if key.startswith("/") or posixpath.normpath(key) != key:
        key = key.replace("/", "_")
    if len(key) > MAX_KEY_LENGTH:
        suffix = hashlib.sha256(key.encode()).hexdigest()[:8]
        key = f"{key[: MAX_KEY_LENGTH - 9]}_{suffix}"
    return key


def _text(value: Any, limit: int) -> str:
    """Strings as they are, anything else as JSON text; cut to ``limit`` characters."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if len(text) > limit:
        text = text[: limit - len(TRUNCATED)] + TRUNCATED
    return text


def flatten_params(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Flatten nested mappings to ``a.b`` keys with MLflow-valid keys and string values.

    An empty mapping stays one param (``"{}"``); lists are JSON text; values longer than
    MLflow's limit of 6000 characters are cut and end in ``...[truncated]``.
    """
    out: dict[str, str] = {}
    for name, value in data.items():
        key = f"{prefix}{name}"
        if isinstance(value, Mapping) and value:
            out.update(flatten_params(value, f"{key}."))
        else:
            out[_key(key)] = _text(value, MAX_PARAM_VALUE_LENGTH)
    return out


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise TrackingError(f"{path} is missing; the run directory is incomplete") from None
    except (OSError, json.JSONDecodeError) as error:
        raise TrackingError(f"{path} cannot be read: {_one_line(error)}") from None


class _Inputs:
    """The aggregate (and run directories) read and checked before MLflow is touched."""

    def __init__(
        self,
        aggregate_dir: Path,
        run_dirs: Mapping[str, Path] | None,
        artifacts: Sequence[Path],
    ) -> None:
        self.aggregate_dir = aggregate_dir
        tables = {}
        for name, schema in (("runs", RUNS_SCHEMA), ("metrics", METRICS_SCHEMA)):
            path = aggregate_dir / f"{name}.parquet"
            if not path.exists():
                raise TrackingError(f"{path} is missing; run the aggregate rule first")
            try:
                tables[name] = read_table(path, schema)
            except (OSError, ValueError, pa.ArrowException) as error:
                raise TrackingError(f"{path} cannot be read: {_one_line(error)}") from None
        self.runs: list[dict[str, Any]] = sorted(
            tables["runs"].to_pylist(), key=lambda row: row["run_id"]
        )
        ids = [row["run_id"] for row in self.runs]
        if len(set(ids)) != len(ids):
            raise TrackingError(f"{aggregate_dir / 'runs.parquet'} lists a run_id twice")
        self._metrics = _split_by_run(tables["metrics"])
        known = set(ids)
        self.run_dirs = {str(k): Path(v) for k, v in (run_dirs or {}).items() if k in known}
        for run_dir in self.run_dirs.values():
            for name in ("config.json", "summary.json"):
                if not (run_dir / name).is_file():
                    raise TrackingError(f"{run_dir / name} is missing; the run has not finished")
        self.artifacts = [Path(p) for p in artifacts]
        for path in self.artifacts:
            if not path.exists():
                raise TrackingError(f"artifact {path} does not exist")

    def child(self, row: dict[str, Any], experiment: str) -> _Content:
        run_id = row["run_id"]
        content = _Content(name=run_id)
        run_dir = self.run_dirs.get(run_id)
        params: dict[str, Any] = {}
        if run_dir is not None:
            params.update(_read_json(run_dir / "config.json"))
            content.files = [(run_dir / "summary.json", None), (run_dir / "config.json", None)]
        numeric = (pa.types.is_integer, pa.types.is_floating, pa.types.is_boolean)
        for column in RUNS_SCHEMA:
            value = row[column.name]
            if column.name in GRID_KEYS or column.name in ("run_id", "experiment"):
                continue
            if column.name in TAG_COLUMNS:
                content.tags[TAG_COLUMNS[column.name]] = _text(
                    "unknown" if value is None else value, MAX_TAG_VALUE_LENGTH
                )
            elif any(is_type(column.type) for is_type in numeric):
                if value is not None:
                    step = int(row["iterations"] or 0)
                    content.metrics.append((_key(column.name), float(value), step))
            elif value is not None:
                params.setdefault(column.name, value)
        params.update({key: row[key] for key in GRID_KEYS})
        content.params = flatten_params(params)
        content.metrics = self._history(run_id) + content.metrics
        content.tags.update({RUN_ID_TAG: run_id, "protolib.experiment": experiment})
        content.status = RUN_STATUS.get(row["status"], "FAILED")
        return content

    def _history(self, run_id: str) -> list[tuple[str, float, int]]:
        table = self._metrics.get(run_id)
        if table is None:
            return []
        columns = table.select(["step", "epoch", "split", "metric", "value"]).to_pydict()
        points: list[tuple[str, float, int]] = []
        epochs: dict[int, float] = {}
        for step, epoch, split, metric, value in zip(*columns.values(), strict=True):
            epochs.setdefault(step, epoch)
            if value is not None:
                points.append((_key(f"{split}/{metric}"), float(value), int(step)))
        points.extend(("epoch", float(epoch), int(step)) for step, epoch in epochs.items())
        return points

    def parent(self, experiment: str) -> _Content:
        content = _Content(name=experiment)
        params: dict[str, Any] = {"experiment": experiment, "runs": len(self.runs)}
        for key in GRID_KEYS:
            values = {row[key] for row in self.runs if row[key] is not None}
            params[f"grid.{key}"] = sorted(values)
        content.params = flatten_params(params)
        content.tags = {PARENT_TAG: experiment}
        experiment_dir = self.aggregate_dir.parent.resolve()
        for path in self.artifacts:
            folder = None
            try:
                relative = path.resolve().parent.relative_to(experiment_dir)
                folder = relative.as_posix() if relative.parts else None
            except ValueError:
                pass
            content.files.append((path, folder))
        return content


def _split_by_run(table: pa.Table) -> dict[str, pa.Table]:
    """``table`` as one slice per run_id (stable order within a run)."""
    if table.num_rows == 0:
        return {}
    table = table.take(pc.sort_indices(table, sort_keys=[("run_id", "ascending")]))
    counts = pc.value_counts(table.column("run_id"))
    slices, offset = {}, 0
    for item in counts.to_pylist():
        slices[item["values"]] = table.slice(offset, item["counts"])
        offset += item["counts"]
    return slices


# -- the MLflow side -----------------------------------------------------------------------


def _http_policy(timeout_s: float) -> dict[str, str]:
    """MLflow HTTP settings so that one request gives up within about ``timeout_s``."""
    retries = next(r for r in (3, 2, 1) if 2**r - 2 <= timeout_s / 3 or r == 1)
    backoff_total = 2**retries - 2  # urllib3: no wait before the first retry, then 2, 4 s
    request_timeout = max(1, int((timeout_s - backoff_total) / (retries + 1)))
    return {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(retries),
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
        "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(request_timeout),
        "MLFLOW_HTTP_RESPECT_RETRY_AFTER_HEADER": "false",
    }


@contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _one_line(error: BaseException | str, limit: int = 300) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _causes(error: BaseException) -> list[BaseException]:
    """``error`` and everything it was raised from (causes, contexts, urllib3 reasons)."""
    seen: list[BaseException] = []
    todo = [error]
    while todo:
        item = todo.pop(0)
        if item is None or any(item is s for s in seen) or len(seen) > 20:
            continue
        seen.append(item)
        todo.extend([item.__cause__, item.__context__, getattr(item, "reason", None)])
        todo.extend(arg for arg in item.args if isinstance(arg, BaseException))
    return seen


def _unreachable(chain: list[BaseException]) -> bool:
    import requests

    for item in chain:
        if isinstance(item, ConnectionError | TimeoutError | requests.ConnectionError):
            return True
        if isinstance(item, requests.Timeout):
            return True
        if type(item).__name__ in ("NewConnectionError", "ConnectTimeoutError", "ReadTimeoutError"):
            return True
    return False


def _redact(uri: str) -> str:
    parts = urlsplit(uri)
    if parts.username or parts.password:
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        return urlunsplit(parts._replace(netloc=netloc))
    return uri


def _tracking_error(uri: str, error: BaseException) -> TrackingError:
    chain = _causes(error)
    kind = "server" if urlsplit(uri).scheme in REMOTE_SCHEMES else "store"
    root = chain[-1]
    for item in chain:  # the innermost that says something
        if str(item).strip():
            root = item
    if _unreachable(chain):
        what, when = f"is unreachable: {_one_line(root, 160)}", "up"
    elif str(error).startswith("API request to"):  # MLflow's wrapper of an HTTP failure
        what, when = f"failed: {_one_line(root, 240)}", "fixed"
    else:
        what, when = f"failed: {_one_line(error, 240)}", "fixed"
    return TrackingError(
        f"MLflow tracking {kind} at {_redact(uri)} {what}; runs and aggregates are untouched; "
        f"re-run the tracking rule once it is {when}"
    )


def _now_ms() -> int:
    return int(time.time() * 1000)


class _Mirror:
    """The MLflow operations of one sync (MlflowClient, no fluent global state)."""

    def __init__(self, uri: str, experiment: str, artifact_location: str | None) -> None:
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        self.experiment_id = self._experiment(EXPERIMENT_PREFIX + experiment, artifact_location)

    def _experiment(self, name: str, artifact_location: str | None) -> str:
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(name)
        if found is None:
            try:
                return self.client.create_experiment(name, artifact_location=artifact_location)
            except MlflowException:  # created meanwhile by another process
                found = self.client.get_experiment_by_name(name)
                if found is None:
                    raise
        if found.lifecycle_stage == "deleted":
            self.client.restore_experiment(found.experiment_id)
        return found.experiment_id

    def search(self, tag: str) -> list[Any]:
        """Active runs of the experiment that carry ``tag`` (any value)."""
        runs, token = [], None
        while True:
            page = self.client.search_runs(
                [self.experiment_id],
                filter_string=f"tags.`{tag}` LIKE '%'",
                max_results=1000,
                order_by=["attributes.start_time ASC"],
                page_token=token,
            )
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def create(self, content: _Content, parent_id: str | None = None) -> str:
        from mlflow.entities import Metric, Param

        tags = dict(content.tags)
        if parent_id is not None:
            tags[PARENT_RUN_TAG] = parent_id
        run = self.client.create_run(self.experiment_id, tags=tags, run_name=content.name)
        run_id = run.info.run_id
        params = [Param(k, v) for k, v in content.params.items()]
        stamp = _now_ms()
        metrics = [Metric(k, v, stamp, s) for k, v, s in content.metrics]
        while params or metrics:  # few calls: each is a transaction (an fsync on SQLite)
            some_params = params[:MAX_PARAMS_TAGS_PER_BATCH]
            room = min(MAX_METRICS_PER_BATCH, MAX_ENTITIES_PER_BATCH - len(some_params))
            some_metrics = metrics[:room]
            params, metrics = params[len(some_params) :], metrics[len(some_metrics) :]
            self.client.log_batch(
                run_id, metrics=some_metrics, params=some_params, synchronous=True
            )
        for path, folder in content.files:
            if path.is_dir():
                self.client.log_artifacts(run_id, str(path), artifact_path=folder)
            else:
                self.client.log_artifact(run_id, str(path), artifact_path=folder)
        self.client.set_terminated(run_id, content.status)
        self.client.set_tag(run_id, SYNCED_TAG, content.digest())  # last: marks it complete
        return run_id

    def delete(self, runs: Sequence[Any]) -> None:
        for run in runs:
            self.client.delete_run(run.info.run_id)


def _pick(existing: list[Any], digest: str) -> Any | None:
    for run in existing:
        if run.data.tags.get(SYNCED_TAG) == digest:
            return run
    return None


def sync_experiment(
    aggregate_dir: Path,
    *,
    experiment: str,
    tracking_uri: str | None = None,
    results: Path,
    run_dirs: Mapping[str, Path] | None = None,
    artifacts: Sequence[Path] = (),
    timeout_s: float = 30,
    marker: Path | None = None,
) -> dict:
    """Mirror ``aggregate_dir/{runs,metrics}.parquet`` into MLflow; see the module docstring.

    Args:
        aggregate_dir: an experiment's aggregate folder.
        experiment: the experiment's name; the MLflow experiment is ``protolib/<experiment>``.
        tracking_uri: any MLflow tracking URI; ``None`` is :func:`default_tracking_uri`.
        results: the results folder; with a local store, artifacts go under
            ``<results>/mlartifacts/<experiment>``.
        run_dirs: run_id → run directory; those runs also get their ``config.json`` as
            params and ``summary.json`` / ``config.json`` as artifacts.
        artifacts: files or folders (plots, tables) for the parent run; those under the
            experiment folder keep their sub-folder (``plots/…``).
        timeout_s: about how long one MLflow request may take before the sync gives up.
        marker: where to write, after a successful sync, the marker that ties it to the
            store (see the module docstring); ``None`` writes none.

    Returns:
        ``{"created": n, "updated": n, "unchanged": n}``, counting child runs.

    Raises:
        TrackingError: unreadable inputs, or an unreachable or failing tracking store.
    """
    if not experiment:
        raise TrackingError("experiment must be a non-empty name")
    results = Path(results)
    uri = tracking_uri or default_tracking_uri(results)
    inputs = _Inputs(Path(aggregate_dir), run_dirs, artifacts)
    artifact_location = None
    if urlsplit(uri).scheme not in REMOTE_SCHEMES:
        artifact_location = (results.resolve() / "mlartifacts" / experiment).as_uri()
    if uri == default_tracking_uri(results):
        results.mkdir(parents=True, exist_ok=True)
    database = _sqlite_path(uri)
    started = time.monotonic()
    with _store_lock(database):
        if database is not None and not database.exists():
            _forget_cached_stores(uri)
        try:
            with _environment(_http_policy(timeout_s)):
                counts, identity = _sync(inputs, uri, experiment, artifact_location)
        except TrackingError:
            raise
        except Exception as error:
            raise _tracking_error(uri, error) from error
    _log.info(
        "synced %s to %s in %.1f s: %s",
        experiment,
        _redact(uri),
        time.monotonic() - started,
        counts,
    )
    if marker is not None:
        write_json(
            marker,
            {"experiment": experiment, **counts, "tracking_uri": _redact(uri), **identity},
        )
    return counts


def _forget_cached_stores(uri: str) -> None:
    """Drop MLflow's cached store and engine of ``uri``, whose SQLite file was deleted.

    MLflow caches both per process; a cached engine keeps the deleted file open and would
    write into it (lost on close) instead of creating the new store.
    """
    try:
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
        from mlflow.tracking._tracking_service.utils import _tracking_store_registry

        _tracking_store_registry._get_store_with_resolved_uri.cache_clear()
        engine = SqlAlchemyStore._engine_map.pop(uri, None)
    except (ImportError, AttributeError):  # another MLflow: nothing cached that way
        return
    if engine is not None:
        engine.dispose()


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (``None`` for other stores, in memory)."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return None
    path = uri[len(prefix) :].split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path)


def marker_staleness(marker: Path, *, tracking_uri: str | None, results: Path) -> str | None:
    """Why the sync marker ``marker`` no longer describes its store, or ``None``.

    ``None`` when the marker is missing (nothing to compare: the pipeline runs the sync
    anyway) or is current. Stale: unreadable, written by an older protolib (no store
    identity), another tracking URI, or, for SQLite, a database file that is missing or
    no longer holds the marker's parent run (deleted or recreated store). Other stores
    are taken as current (checking them needs the network). Opens the database
    read-only: nothing is written.
    """
    try:
        data = json.loads(Path(marker).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        return f"{marker} cannot be read ({_one_line(error, 120)})"
    uri = tracking_uri or default_tracking_uri(results)
    if not isinstance(data, dict) or "parent_run_id" not in data:
        return f"{marker} does not record the store it describes (an older protolib)"
    if data.get("tracking_uri") != _redact(uri):
        return f"{marker} describes the store {data.get('tracking_uri')}, not {_redact(uri)}"
    database = _sqlite_path(uri)
    if database is None:
        return None
    if not database.is_file():
        return f"the MLflow store {database} is missing"
    try:
        with sqlite3.connect(f"{database.resolve().as_uri()}?mode=ro", uri=True) as db:
            row = db.execute(
                "SELECT lifecycle_stage FROM runs WHERE run_uuid = ? AND experiment_id = ?",
                (str(data["parent_run_id"]), str(data.get("mlflow_experiment_id"))),
            ).fetchone()
    except sqlite3.Error as error:
        return f"the MLflow store {database} cannot be read ({_one_line(error, 120)})"
    if row is None or row[0] != "active":
        return f"the MLflow store {database} no longer holds the runs {marker} describes"
    return None


def _clean_artifacts(mirror: _Mirror, artifact_location: str | None) -> None:
    """Remove run folders under the experiment's local artifact root that no run owns."""
    if artifact_location is None:
        return
    from mlflow.entities import ViewType

    experiment = mirror.client.get_experiment(mirror.experiment_id)
    if experiment.artifact_location != artifact_location:
        return  # a root this sync does not manage
    root = Path(unquote(urlsplit(artifact_location).path))
    if not root.is_dir():
        return
    known, token = set(), None
    while True:
        page = mirror.client.search_runs(
            [mirror.experiment_id], run_view_type=ViewType.ALL, max_results=1000, page_token=token
        )
        known.update(run.info.run_id for run in page)
        token = page.token
        if not token:
            break
    for folder in root.iterdir():
        if (
            folder.is_dir()
            and re.fullmatch(r"[0-9a-f]{32}", folder.name)
            and folder.name not in known
        ):
            _log.info("removing %s: its MLflow run is not in the store", folder)
            shutil.rmtree(folder)


def _sync(
    inputs: _Inputs, uri: str, experiment: str, artifact_location: str | None
) -> tuple[dict[str, int], dict[str, str]]:
    mirror = _Mirror(uri, experiment, artifact_location)
    # the parent
    parent = inputs.parent(experiment)
    digest = parent.digest()
    parents = [r for r in mirror.search(PARENT_TAG) if r.data.tags[PARENT_TAG] == experiment]
    kept = _pick(parents, digest)
    parent_id = kept.info.run_id if kept is not None else mirror.create(parent)
    # the children
    children: dict[str, list[Any]] = {}
    for run in mirror.search(RUN_ID_TAG):
        children.setdefault(run.data.tags[RUN_ID_TAG], []).append(run)
    counts = {"created": 0, "updated": 0, "unchanged": 0}
    for row in inputs.runs:
        content = inputs.child(row, experiment)
        existing = children.pop(row["run_id"], [])
        match = _pick(existing, content.digest())
        if match is None:
            mirror.create(content, parent_id)
            counts["updated" if existing else "created"] += 1
        else:
            counts["unchanged"] += 1
            if match.data.tags.get(PARENT_RUN_TAG) != parent_id:
                mirror.client.set_tag(match.info.run_id, PARENT_RUN_TAG, parent_id)
        mirror.delete([run for run in existing if run is not match])
    for run_id, runs in sorted(children.items()):  # no longer in the aggregate: kept
        _log.info("MLflow run %s of %s is not in the aggregate; kept", run_id, experiment)
        for run in runs:
            if run.data.tags.get(PARENT_RUN_TAG) != parent_id:
                mirror.client.set_tag(run.info.run_id, PARENT_RUN_TAG, parent_id)
    mirror.delete([run for run in parents if run.info.run_id != parent_id])
    _clean_artifacts(mirror, artifact_location)
    return counts, {"mlflow_experiment_id": str(mirror.experiment_id), "parent_run_id": parent_id}
