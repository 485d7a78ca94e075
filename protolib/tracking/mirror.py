"""The MLflow side of a sync: create, replace and delete runs (``MlflowClient``, no
fluent global state), keep what is unchanged, and clear orphaned artifact folders."""

from __future__ import annotations

import logging
import re
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from protolib.tracking.content import (
    PARENT_RUN_TAG,
    PARENT_TAG,
    RUN_ID_TAG,
    SYNCED_TAG,
    Content,
)
from protolib.tracking.inputs import Inputs

_log = logging.getLogger(__name__)

EXPERIMENT_PREFIX = "protolib/"

# MLflow's limits (mlflow.utils.validation) on the entities of one log_batch call
MAX_METRICS_PER_BATCH = 1000
MAX_ENTITIES_PER_BATCH = 1000
MAX_PARAMS_TAGS_PER_BATCH = 100


def now_ms() -> int:
    """The time in milliseconds since the epoch (MLflow's metric timestamps)."""
    return int(time.time() * 1000)


class Mirror:
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

    def create(self, content: Content, parent_id: str | None = None) -> str:
        from mlflow.entities import Metric, Param

        tags = dict(content.tags)
        if parent_id is not None:
            tags[PARENT_RUN_TAG] = parent_id
        run = self.client.create_run(self.experiment_id, tags=tags, run_name=content.name)
        run_id = run.info.run_id
        params = [Param(k, v) for k, v in content.params.items()]
        stamp = now_ms()
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


def pick(existing: list[Any], digest: str) -> Any | None:
    """The first of ``existing`` already synced to ``digest`` (``None``: none is)."""
    for run in existing:
        if run.data.tags.get(SYNCED_TAG) == digest:
            return run
    return None


def clean_artifacts(mirror: Mirror, artifact_location: str | None) -> None:
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


def sync_runs(
    inputs: Inputs, uri: str, experiment: str, artifact_location: str | None
) -> tuple[dict[str, int], dict[str, str]]:
    """Mirror ``inputs`` into the store at ``uri``; the counts of child runs created,
    updated and unchanged, and the store identity the marker records."""
    mirror = Mirror(uri, experiment, artifact_location)
    # the parent
    parent = inputs.parent(experiment)
    digest = parent.digest()
    parents = [r for r in mirror.search(PARENT_TAG) if r.data.tags[PARENT_TAG] == experiment]
    kept = pick(parents, digest)
    parent_id = kept.info.run_id if kept is not None else mirror.create(parent)
    # the children
    children: dict[str, list[Any]] = {}
    for run in mirror.search(RUN_ID_TAG):
        children.setdefault(run.data.tags[RUN_ID_TAG], []).append(run)
    counts = {"created": 0, "updated": 0, "unchanged": 0}
    for row in inputs.runs:
        content = inputs.child(row, experiment)
        existing = children.pop(row["run_id"], [])
        match = pick(existing, content.digest())
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
    clean_artifacts(mirror, artifact_location)
    return counts, {"mlflow_experiment_id": str(mirror.experiment_id), "parent_run_id": parent_id}
