"""Heatmaps of final class-mean Gram matrices beside their targets (MATH.md §3)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes

from protolib.results.figures import (
    DELTA_G,
    at_level,
    empty_figure,
    new_figure,
    note,
    save_figure,
    series_label,
)

TITLE = "Final class-mean Gram vs. target (each divided by its Frobenius norm)"


def select_gram_runs(runs: pd.DataFrame, *, max_runs: int = 6) -> list[str]:
    """The default runs of :func:`plot_gram_heatmaps`, at most ``max_runs``.

    For each loss (alphabetical): among its completed runs (all its runs if none
    completed), those at the largest imbalance ratio, then at ``p = 0`` (else the
    smallest ``p``), then at the largest ``n_w``; of these the smallest seed.
    """
    chosen: list[str] = []
    for loss in sorted(runs["loss"].unique()):
        frame = runs[runs["loss"] == loss]
        if "status" in frame:
            completed = frame[frame["status"] == "completed"]
            frame = completed if not completed.empty else frame
        frame = frame[np.isclose(frame["imbalance_ratio"], frame["imbalance_ratio"].max())]
        frame, _ = at_level(frame, "label_corruption", 0.0)
        frame = frame[frame["n_w"] == frame["n_w"].max()]
        chosen.append(str(frame.sort_values(["seed", "run_id"])["run_id"].iloc[0]))
    return chosen[:max_runs]


def long_matrix(geometry: pd.DataFrame, run_id: str, matrix: str) -> np.ndarray | None:
    """The K×K ``matrix`` of ``run_id`` from the long geometry table (None when absent)."""
    rows = geometry[(geometry["run_id"] == run_id) & (geometry["matrix"] == matrix)]
    if rows.empty:
        return None
    size = int(max(rows["row"].max(), rows["col"].max())) + 1
    out = np.full((size, size), np.nan)
    out[rows["row"].to_numpy(), rows["col"].to_numpy()] = rows["value"].astype(float)
    return out


def _normalised(matrix: np.ndarray | None) -> np.ndarray | None:
    if matrix is None or not np.isfinite(matrix).all():
        return None
    norm = np.linalg.norm(matrix)
    return matrix / norm if norm > 0 else None


def check_run_ids(
    geometry: pd.DataFrame, runs: pd.DataFrame, *, run_ids: Sequence[str] | None = None
) -> None:
    """Raise ValueError naming every id of ``run_ids`` in neither table (None: the default)."""
    known = set(runs["run_id"]) | set(geometry["run_id"])
    unknown = [str(r) for r in run_ids or () if str(r) not in known]
    if unknown:
        raise ValueError(
            f"unknown run id(s) {', '.join(unknown)}; known: {', '.join(sorted(known)) or 'none'}"
        )


def _pair_title(info: pd.DataFrame | None, run_id: str, learned, target) -> tuple[str, float]:
    """The heading of a run's pair (loss, n_w, R, p) and its Δ_G (recorded, else computed)."""
    row = info.loc[run_id] if info is not None and run_id in info.index else None
    if row is not None:
        head = f"{series_label(row['loss'], row['n_w'])}, R = {row['imbalance_ratio']:g}"
        if row["label_corruption"]:
            head += f", p = {row['label_corruption']:g}"
        dg = float(row["delta_g"]) if pd.notna(row["delta_g"]) else math.nan
    else:
        head, dg = run_id, math.nan
    if math.isnan(dg) and learned is not None and target is not None:
        dg = float(np.linalg.norm(learned - target))
    return head, dg


def _draw_matrix(ax: Axes, matrix: np.ndarray | None, title: str, vmax: float):
    """One heatmap on the shared scale ``±vmax``; a note when there is no finite matrix."""
    ax.set_title(title, fontsize=9)
    if matrix is None:
        ax.set_xticks([])
        ax.set_yticks([])
        note(ax, "no finite matrix")
        return None
    image = ax.imshow(matrix, cmap="RdBu_r", vmin=-vmax, vmax=vmax, interpolation="nearest")
    size = matrix.shape[0]
    ticks = range(size) if size <= 12 else range(0, size, max(1, size // 10))
    ax.set_xticks(list(ticks))
    ax.set_yticks(list(ticks))
    ax.tick_params(labelsize=6)
    ax.set_xlabel("class", fontsize=8)
    return image


def plot_gram_heatmaps(
    geometry: pd.DataFrame,
    runs: pd.DataFrame,
    path: str | Path,
    *,
    run_ids: Sequence[str] | None = None,
) -> Path:
    """Final class-mean Gram ``G_M/‖G_M‖_F`` beside the target ``G*/‖G*‖_F`` (MATH.md §3).

    ``run_ids`` defaults to :func:`select_gram_runs`. All panels share one diverging colour
    scale centred at 0; each pair is titled with the run's loss, ``n_w``, ``R`` and Δ_G.
    """
    check_run_ids(geometry, runs, run_ids=run_ids)
    ids = [str(r) for r in (select_gram_runs(runs) if run_ids is None else run_ids)]
    if not ids:
        return empty_figure(path, TITLE, "no runs in the runs table")
    info = runs.set_index("run_id") if not runs.empty else None
    pairs = {
        run_id: (
            _normalised(long_matrix(geometry, run_id, "class_means")),
            _normalised(long_matrix(geometry, run_id, "target")),
        )
        for run_id in ids
    }
    finite = [m for pair in pairs.values() for m in pair if m is not None]
    vmax = max((float(np.abs(m).max()) for m in finite), default=1.0) or 1.0
    per_row = min(len(ids), 3)
    nrows = math.ceil(len(ids) / per_row)
    fig = new_figure(per_row * 5.4 + 1.0, nrows * 3.0 + 0.8)
    axes = fig.subplots(nrows, 2 * per_row, squeeze=False)
    images = []
    for k, run_id in enumerate(ids):
        learned, target = pairs[run_id]
        row, column = k // per_row, 2 * (k % per_row)
        head, dg = _pair_title(info, run_id, learned, target)
        title = f"{head}\nclass means, {DELTA_G} = {dg:.3f}"
        images.append(_draw_matrix(axes[row][column], learned, title, vmax))
        images.append(_draw_matrix(axes[row][column + 1], target, f"{head}\ntarget G*", vmax))
    for k in range(len(ids), nrows * per_row):
        axes[k // per_row][2 * (k % per_row)].set_axis_off()
        axes[k // per_row][2 * (k % per_row) + 1].set_axis_off()
    drawn = [image for image in images if image is not None]
    if drawn:
        fig.colorbar(
            drawn[-1], ax=axes.ravel().tolist(), shrink=0.85, label=r"entry of $G\,/\,\|G\|_F$"
        )
    fig.suptitle(TITLE)
    return save_figure(fig, path)
