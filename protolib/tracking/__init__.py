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

from protolib.tracking.content import PARENT_TAG, RUN_ID_TAG, SYNCED_TAG, flatten_params
from protolib.tracking.errors import TrackingError
from protolib.tracking.marker import marker_staleness
from protolib.tracking.store import default_tracking_uri
from protolib.tracking.sync import sync_experiment

__all__ = [
    "PARENT_TAG",
    "RUN_ID_TAG",
    "SYNCED_TAG",
    "TrackingError",
    "default_tracking_uri",
    "flatten_params",
    "marker_staleness",
    "sync_experiment",
]
