"""The MLflow store of a sync: its default URI, its SQLite file and the lock that makes
syncs to one SQLite store take turns, MLflow's per-process caches of it, and the HTTP
policy that bounds how long a request to a server may take."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

#: tracking URI schemes whose server decides where artifacts go
REMOTE_SCHEMES = ("http", "https", "databricks", "databricks-uc", "uc")


def default_tracking_uri(results: Path) -> str:
    """The default store: SQLite in ``<results>/mlflow.db`` (no server needed)."""
    return f"sqlite:///{Path(results).resolve() / 'mlflow.db'}"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (``None`` for other stores, in memory)."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return None
    path = uri[len(prefix) :].split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path)


@contextmanager
def store_lock(database: Path | None) -> Iterator[None]:
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


def forget_cached_stores(uri: str) -> None:
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


def http_policy(timeout_s: float) -> dict[str, str]:
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
def environment(values: Mapping[str, str]) -> Iterator[None]:
    """Set the environment variables ``values`` for the duration of the block."""
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
