"""A run's tables and summary: the long metric rows while training, and at the end
``metrics``, ``geometry``, ``gamma`` and ``data.parquet`` and the ``summary.json`` record.

The summary is built from the results contract: :data:`FIGURES` says where each column of
``runs.parquet`` comes from and :data:`EXTRAS` each key that only ``summary.json`` holds,
and the summary is checked against ``RUNS_SCHEMA`` before it is written. A new figure is
a column in :mod:`protolib.results.contract` and its line in :data:`FIGURES`.

Only pyarrow is needed here (the results schemas), never pandas.
"""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import Tensor

import protolib
from protolib.data.transforms import split_sha256
from protolib.io import write_atomic, write_json
from protolib.results.contract import PANEL_TEST, PANEL_TRAIN
from protolib.results.manifest import build_manifest
from protolib.results.schema import (
    DATA,
    EXPERIMENT,
    GAMMA,
    GAMMA_SCHEMA,
    GEOMETRY,
    GEOMETRY_SCHEMA,
    MANIFEST_KEY,
    METRICS,
    METRICS_SCHEMA,
    RUN_ID,
    SUMMARY,
    check_summary,
    write_table,
)
from protolib.train.build import Prepared
from protolib.train.config import RunConfig

GAMMA_BINS = 50

Rows = dict[str, list]  # column name → values, in a results schema's columns


def grid_columns(prep: Prepared) -> dict[str, Any]:
    """The columns every row of a run's tables repeats: run id, experiment, grid keys."""
    config = prep.config
    return {RUN_ID.name: config.run_id, EXPERIMENT.name: config.experiment, **config.grid_keys}


def empty_metric_rows() -> Rows:
    return {f.name: [] for f in METRICS_SCHEMA}


def append_metrics(
    rows: Rows,
    grid: dict[str, Any],
    step: int,
    epoch: float,
    values: dict[tuple[str, str], float],
) -> None:
    """Append one row per ``(split, metric): value`` at ``step``."""
    for (split, metric), value in values.items():
        _add_grid(rows, grid, 1)
        rows["step"].append(step)
        rows["epoch"].append(epoch)
        rows["split"].append(split)
        rows["metric"].append(metric)
        rows["value"].append(float(value))


def final_values(rows: Rows) -> dict[str, float]:
    """``{"split/metric": value}`` of the last step that has rows."""
    last_step = max(rows["step"], default=None)
    columns = (rows["step"], rows["split"], rows["metric"], rows["value"])
    return {
        f"{split}/{metric}": value
        for step, split, metric, value in zip(*columns, strict=True)
        if step == last_step
    }


def write_tables(
    prep: Prepared,
    out: Path,
    rows: Rows,
    gram: Tensor | None,
    gammas: dict[str, Tensor],
    classifier: Tensor | None,
) -> None:
    """``metrics``, ``geometry``, ``gamma`` and ``data.parquet``, each atomically."""
    grid = grid_columns(prep)
    write_table(out / METRICS, rows, METRICS_SCHEMA)
    write_table(out / GEOMETRY, _geometry_rows(prep, grid, gram, classifier), GEOMETRY_SCHEMA)
    write_table(out / GAMMA, _gamma_rows(grid, gammas), GAMMA_SCHEMA)
    _write_data_table(prep, out / DATA)


@dataclass(frozen=True)
class RunFacts:
    """What a finished run's summary is made of: the prepared run, what the loop recorded
    (status, iterations, time_to_fit, final, probe_accuracy, wall_seconds, train_seconds,
    train_seconds_device, attempts, comparison:
    :func:`protolib.train.bounds.compare_to_bound`) and the run directory (whose other
    outputs are written)."""

    prep: Prepared
    record: Mapping[str, Any]
    out: Path

    @property
    def config(self) -> RunConfig:
        return self.prep.config

    @property
    def final(self) -> dict[str, float]:
        """``{"split/metric": value}`` at the last evaluated step."""
        return self.record["final"]


Source = Callable[[RunFacts], Any]


def _images_per_second(facts: RunFacts) -> float | None:
    config = facts.config  # a batch is batch_size sampled images plus the bound ones
    batch = config.batch_size + config.binding * facts.prep.data.num_classes
    images = facts.record["iterations"] * batch * config.views
    seconds = facts.record["train_seconds"]
    return images / seconds if seconds > 0 else None


def _final(split: str, name: str) -> Source:
    """The value of ``split/name`` at the last evaluation (None when not recorded)."""
    return lambda f: f.final.get(f"{split}/{name}")


#: where each column of ``runs.parquet`` after the key columns comes from (the order of
#: ``RUNS_FIGURES`` in :mod:`protolib.results.contract`)
FIGURES: dict[str, Source] = {
    "loss_type": lambda f: f.config.loss,
    "dataset": lambda f: f.config.dataset,
    "model": lambda f: f.config.model,
    "geometry": lambda f: f.config.geometry if f.prep.prototypes is not None else None,
    "status": lambda f: f.record["status"],
    "iterations": lambda f: f.record["iterations"],
    "epochs": lambda f: f.record["iterations"] / f.prep.loader.steps_per_epoch,
    "time_to_fit": lambda f: f.record["time_to_fit"],
    "fitted": lambda f: f.record["time_to_fit"] is not None,
    "train_error": lambda f: f.final.get("train/error"),
    "test_accuracy": lambda f: f.final.get("test/accuracy"),
    "mean_classifier_accuracy": lambda f: f.final.get("test/mean_classifier_accuracy"),
    "probe_accuracy": lambda f: f.record["probe_accuracy"],
    "delta_g": lambda f: f.final.get("train/delta_g"),
    **{name: _final("test", name) for name in PANEL_TEST},
    **{name: _final("train", name) for name in PANEL_TRAIN},
    "n_train": lambda f: int(f.prep.kept.numel()),
    "n_corrupted": lambda f: int(f.prep.changed.numel()),
    "split_sha256": lambda f: split_sha256(f.prep.kept, f.prep.train_labels),
    "balance": lambda f: f.config.balance,
    "binding": lambda f: f.config.binding,
    "bound_kind": lambda f: f.record["comparison"]["bound_kind"],
    "bound_attained": lambda f: f.record["comparison"]["bound_attained"],
    "bound_value": lambda f: f.record["comparison"]["bound_value"],
    "bound_gap": lambda f: f.record["comparison"]["bound_gap"],
    "wall_seconds": lambda f: f.record["wall_seconds"],
    "train_seconds": lambda f: f.record["train_seconds"],
    "train_seconds_device": lambda f: f.record["train_seconds_device"],
    "images_per_second": _images_per_second,
    "device": lambda f: _device_name(f.prep.device),
    "git_revision": lambda f: _git_revision(),
}

#: where each key of ``summary.json`` that ``runs.parquet`` does not hold comes from
#: (``SUMMARY_ONLY``); the manifest last: every other output is written by then
EXTRAS: dict[str, Source] = {
    "final": lambda f: f.final,
    "n_test": lambda f: int(f.prep.data.test.labels.numel()),
    "class_counts": lambda f: torch.bincount(
        f.prep.train_labels.cpu(), minlength=f.prep.data.num_classes
    ).tolist(),
    "device_type": lambda f: f.prep.device.type,
    "versions": lambda f: {
        "protolib": protolib.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
    },
    "hostname": lambda f: platform.node(),
    "pid": lambda f: os.getpid(),
    "attempts": lambda f: f.record["attempts"],
    "bounds": lambda f: f.record["comparison"]["bounds"],
    MANIFEST_KEY: lambda f: build_manifest(f.out),
}


def summary_of(facts: RunFacts) -> dict[str, Any]:
    """The summary of a finished run: the ``runs.parquet`` columns (the key columns, then
    :data:`FIGURES`), then :data:`EXTRAS`; checked against ``RUNS_SCHEMA`` (every column,
    each value of its type) and ``SUMMARY_ONLY`` (no other key)."""
    summary = grid_columns(facts.prep)
    for sources in (FIGURES, EXTRAS):
        summary.update((name, source(facts)) for name, source in sources.items())
    check_summary(summary)
    return summary


def write_summary(prep: Prepared, out: Path, record: dict[str, Any]) -> dict[str, Any]:
    """Write ``summary.json`` (last: its presence marks a finished run) and return it.

    ``record`` holds what the loop knows (see :class:`RunFacts`); the rest comes from
    ``prep`` (:func:`summary_of`).
    """
    summary = summary_of(RunFacts(prep, record, out))
    write_json(out / SUMMARY, summary)
    return summary


def _add_grid(rows: Rows, grid: dict[str, Any], count: int) -> None:
    """Append the run's grid keys ``count`` times (long tables repeat them per row)."""
    for key, grid_value in grid.items():
        rows[key].extend([grid_value] * count)


def _geometry_rows(
    prep: Prepared, grid: dict[str, Any], gram: Tensor | None, classifier: Tensor | None
) -> Rows:
    """The target Gram, the class-mean Gram (a completed run) and the Gram of the
    classifier or of the prototypes, as long rows of (matrix, row, col, value)."""
    rows: Rows = {f.name: [] for f in GEOMETRY_SCHEMA}
    matrices: dict[str, Tensor] = {"target": prep.target}
    if gram is not None:
        matrices["class_means"] = gram
    if classifier is not None:
        w = classifier.double()
        trained = prep.network.classifier_weight() is not None
        matrices["classifier" if trained else "prototypes"] = w @ w.T
    for name, matrix in matrices.items():
        values = matrix.detach().double().cpu()
        K = values.shape[0]
        _add_grid(rows, grid, K * K)
        rows["matrix"].extend([name] * (K * K))
        rows["row"].extend(torch.arange(K).repeat_interleave(K).tolist())
        rows["col"].extend(torch.arange(K).repeat(K).tolist())
        rows["value"].extend(values.flatten().tolist())
    return rows


def _gamma_rows(grid: dict[str, Any], gammas: dict[str, Tensor]) -> Rows:
    """Histograms of the final γ distributions on ``GAMMA_BINS`` equal bins of [0, 1]."""
    rows: Rows = {f.name: [] for f in GAMMA_SCHEMA}
    edges = torch.linspace(0, 1, GAMMA_BINS + 1, dtype=torch.float64)
    for name, values in gammas.items():
        counts = torch.histc(values.double().cpu(), bins=GAMMA_BINS, min=0.0, max=1.0)
        _add_grid(rows, grid, GAMMA_BINS)
        rows["distribution"].extend([name] * GAMMA_BINS)
        rows["lower"].extend(edges[:-1].tolist())
        rows["upper"].extend(edges[1:].tolist())
        rows["count"].extend(counts.long().tolist())
    return rows


def _write_data_table(prep: Prepared, path: Path) -> None:
    """The training points used: split index, original and training label, corrupted."""
    changed = torch.zeros(prep.kept.numel(), dtype=torch.bool)
    changed[prep.changed] = True
    table = pa.table(
        {
            "index": prep.kept.cpu().numpy(),
            "label": prep.original_labels.cpu().numpy(),
            "train_label": prep.train_labels.cpu().numpy(),
            "corrupted": changed.numpy(),
        }
    )
    write_atomic(path, lambda tmp: pq.write_table(table, tmp))


def _git_revision() -> str | None:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(protolib.__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)"
