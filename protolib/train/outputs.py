"""A run's tables and summary: the long metric rows while training, and at the end
``metrics``, ``geometry``, ``gamma`` and ``data.parquet`` and the ``summary.json`` record.

Only pyarrow is needed here (the results schemas), never pandas.
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import Tensor

import protolib
from protolib.io import write_atomic, write_json
from protolib.results.manifest import SUMMARY, build_manifest
from protolib.results.schema import GAMMA_SCHEMA, GEOMETRY_SCHEMA, METRICS_SCHEMA, write_table
from protolib.train.build import Prepared

GAMMA_BINS = 50

Rows = dict[str, list]  # column name → values, in a results schema's columns


def grid_columns(prep: Prepared) -> dict[str, Any]:
    """The columns every row of a run's tables repeats: run id, experiment, grid keys."""
    config = prep.config
    return {"run_id": config.run_id, "experiment": config.experiment, **config.grid_keys}


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
    write_table(out / "metrics.parquet", rows, METRICS_SCHEMA)
    geometry = _geometry_rows(prep, grid, gram, classifier)
    write_table(out / "geometry.parquet", geometry, GEOMETRY_SCHEMA)
    write_table(out / "gamma.parquet", _gamma_rows(grid, gammas), GAMMA_SCHEMA)
    _write_data_table(prep, out / "data.parquet")


def write_summary(prep: Prepared, out: Path, record: dict[str, Any]) -> dict[str, Any]:
    """Write ``summary.json`` (last: its presence marks a finished run) and return it.

    ``record`` holds what the loop knows (status, iterations, time_to_fit, final,
    probe_accuracy, wall_seconds, train_seconds, attempts); the rest comes from ``prep``.
    """
    config, K = prep.config, prep.data.num_classes
    final = record["final"]
    images = record["iterations"] * config.batch_size * config.views
    train_seconds = record["train_seconds"]
    summary = {
        "run_id": config.run_id,
        "experiment": config.experiment,
        **config.grid_keys,
        "loss_type": config.loss,
        "dataset": config.dataset,
        "model": config.model,
        "geometry": config.geometry if prep.prototypes is not None else None,
        "status": record["status"],
        "iterations": record["iterations"],
        "epochs": record["iterations"] / prep.loader.steps_per_epoch,
        "time_to_fit": record["time_to_fit"],
        "fitted": record["time_to_fit"] is not None,
        "train_error": final.get("train/error"),
        "test_accuracy": final.get("test/accuracy"),
        "mean_classifier_accuracy": final.get("test/mean_classifier_accuracy"),
        "probe_accuracy": record["probe_accuracy"],
        "delta_g": final.get("train/delta_g"),
        "final": final,
        "n_train": int(prep.kept.numel()),
        "n_test": int(prep.data.test.labels.numel()),
        "n_corrupted": int(prep.changed.numel()),
        "class_counts": torch.bincount(prep.train_labels.cpu(), minlength=K).tolist(),
        "wall_seconds": record["wall_seconds"],
        "train_seconds": train_seconds,
        "images_per_second": images / train_seconds if train_seconds > 0 else None,
        "device": _device_name(prep.device),
        "device_type": prep.device.type,
        "versions": {
            "protolib": protolib.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "git_revision": _git_revision(),
        "hostname": platform.node(),
        "pid": os.getpid(),
        "attempts": record["attempts"],
        # size and sha256 of every other declared output; summary.json is written last
        "manifest": build_manifest(out),
    }
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
