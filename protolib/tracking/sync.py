""":func:`sync_experiment`: one idempotent sync of an experiment's aggregate into MLflow
(see :mod:`protolib.tracking`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import urlsplit

from protolib.io import write_json
from protolib.tracking.errors import TrackingError, redact, tracking_error
from protolib.tracking.inputs import Inputs
from protolib.tracking.mirror import sync_runs
from protolib.tracking.store import (
    REMOTE_SCHEMES,
    default_tracking_uri,
    environment,
    forget_cached_stores,
    http_policy,
    sqlite_path,
    store_lock,
)

_log = logging.getLogger(__name__)


# Longer than 60 lines only through its docstring (it documents every argument); the code
# itself is under 40 lines.
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
    """Mirror ``aggregate_dir/{runs,metrics}.parquet`` into MLflow; see :mod:`protolib.tracking`.

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
            store (see :mod:`protolib.tracking`); ``None`` writes none.

    Returns:
        ``{"created": n, "updated": n, "unchanged": n}``, counting child runs.

    Raises:
        TrackingError: unreadable inputs, or an unreachable or failing tracking store.
    """
    if not experiment:
        raise TrackingError("experiment must be a non-empty name")
    results = Path(results)
    uri = tracking_uri or default_tracking_uri(results)
    inputs = Inputs(Path(aggregate_dir), run_dirs, artifacts)
    artifact_location = None
    if urlsplit(uri).scheme not in REMOTE_SCHEMES:
        artifact_location = (results.resolve() / "mlartifacts" / experiment).as_uri()
    if uri == default_tracking_uri(results):
        results.mkdir(parents=True, exist_ok=True)
    database = sqlite_path(uri)
    started = time.monotonic()
    with store_lock(database):
        if database is not None and not database.exists():
            forget_cached_stores(uri)
        try:
            with environment(http_policy(timeout_s)):
                counts, identity = sync_runs(inputs, uri, experiment, artifact_location)
        except TrackingError:
            raise
        except Exception as error:
            raise tracking_error(uri, error) from error
    _log.info(
        "synced %s to %s in %.1f s: %s",
        experiment,
        redact(uri),
        time.monotonic() - started,
        counts,
    )
    if marker is not None:
        write_json(
            marker,
            {"experiment": experiment, **counts, "tracking_uri": redact(uri), **identity},
        )
    return counts
