"""The sync marker (``results/<experiment>/tracking.json``) and whether it still
describes its store: cheap, read-only, and safe in a Snakemake dry run."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from protolib.io import one_line
from protolib.tracking.errors import redact
from protolib.tracking.store import default_tracking_uri, sqlite_path


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
        return f"{marker} cannot be read ({one_line(error, 120)})"
    uri = tracking_uri or default_tracking_uri(results)
    if not isinstance(data, dict) or "parent_run_id" not in data:
        return f"{marker} does not record the store it describes (an older protolib)"
    if data.get("tracking_uri") != redact(uri):
        return f"{marker} describes the store {data.get('tracking_uri')}, not {redact(uri)}"
    database = sqlite_path(uri)
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
        return f"the MLflow store {database} cannot be read ({one_line(error, 120)})"
    if row is None or row[0] != "active":
        return f"the MLflow store {database} no longer holds the runs {marker} describes"
    return None
