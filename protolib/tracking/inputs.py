"""The aggregate and run directories of a sync, read and checked before MLflow is
touched, and the :class:`~protolib.tracking.content.Content` of each run they describe."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from protolib.io import one_line
from protolib.results.schema import (
    CONFIG,
    GRID_COLUMNS,
    KEY_COLUMNS,
    METRICS_SCHEMA,
    RUNS_SCHEMA,
    SUMMARY,
    TABLE_FILES,
    read_table,
)
from protolib.tracking.content import (
    MAX_TAG_VALUE_LENGTH,
    PARENT_TAG,
    RUN_ID_TAG,
    Content,
    flatten_params,
    mlflow_key,
    mlflow_text,
)
from protolib.tracking.errors import TrackingError

#: the grid coordinates of a run (params of each child); run_id/experiment are tags
_KEY_NAMES = frozenset(c.name for c in KEY_COLUMNS)  # not params: the run's identity
#: runs.parquet columns that are tags of each child rather than params or metrics
TAG_COLUMNS = {
    "status": "protolib.status",
    "git_revision": "protolib.git_revision",
    "device": "protolib.device",
}
#: MLflow run status of a synced child, by protolib status
RUN_STATUS = {"completed": "FINISHED"}


def read_json(path: Path) -> dict[str, Any]:
    """A run directory's JSON file, or a :class:`TrackingError` naming it."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise TrackingError(f"{path} is missing; the run directory is incomplete") from None
    except (OSError, json.JSONDecodeError) as error:
        raise TrackingError(f"{path} cannot be read: {one_line(error, 300)}") from None


class Inputs:
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
            path = aggregate_dir / TABLE_FILES[name]
            if not path.exists():
                raise TrackingError(f"{path} is missing; run the aggregate rule first")
            try:
                tables[name] = read_table(path, schema)
            except (OSError, ValueError, pa.ArrowException) as error:
                raise TrackingError(f"{path} cannot be read: {one_line(error, 300)}") from None
        self.runs: list[dict[str, Any]] = sorted(
            tables["runs"].to_pylist(), key=lambda row: row["run_id"]
        )
        ids = [row["run_id"] for row in self.runs]
        if len(set(ids)) != len(ids):
            raise TrackingError(f"{aggregate_dir / TABLE_FILES['runs']} lists a run_id twice")
        self._metrics = split_by_run(tables["metrics"])
        known = set(ids)
        self.run_dirs = {str(k): Path(v) for k, v in (run_dirs or {}).items() if k in known}
        for run_dir in self.run_dirs.values():
            for name in (CONFIG, SUMMARY):
                if not (run_dir / name).is_file():
                    raise TrackingError(f"{run_dir / name} is missing; the run has not finished")
        self.artifacts = [Path(p) for p in artifacts]
        for path in self.artifacts:
            if not path.exists():
                raise TrackingError(f"artifact {path} does not exist")

    def child(self, row: dict[str, Any], experiment: str) -> Content:
        run_id = row["run_id"]
        content = Content(name=run_id)
        run_dir = self.run_dirs.get(run_id)
        params: dict[str, Any] = {}
        if run_dir is not None:
            params.update(read_json(run_dir / CONFIG))
            content.files = [(run_dir / SUMMARY, None), (run_dir / CONFIG, None)]
        numeric = (pa.types.is_integer, pa.types.is_floating, pa.types.is_boolean)
        for column in RUNS_SCHEMA:
            value = row[column.name]
            if column.name in _KEY_NAMES:
                continue
            if column.name in TAG_COLUMNS:
                content.tags[TAG_COLUMNS[column.name]] = mlflow_text(
                    "unknown" if value is None else value, MAX_TAG_VALUE_LENGTH
                )
            elif any(is_type(column.type) for is_type in numeric):
                if value is not None:
                    step = int(row["iterations"] or 0)
                    content.metrics.append((mlflow_key(column.name), float(value), step))
            elif value is not None:
                params.setdefault(column.name, value)
        params.update({key: row[key] for key in GRID_COLUMNS})
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
                points.append((mlflow_key(f"{split}/{metric}"), float(value), int(step)))
        points.extend(("epoch", float(epoch), int(step)) for step, epoch in epochs.items())
        return points

    def parent(self, experiment: str) -> Content:
        content = Content(name=experiment)
        params: dict[str, Any] = {"experiment": experiment, "runs": len(self.runs)}
        for key in GRID_COLUMNS:
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


def split_by_run(table: pa.Table) -> dict[str, pa.Table]:
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
