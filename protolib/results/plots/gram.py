"""Heatmaps of final class-mean Gram matrices beside their targets (MATH.md §3).

The prototype study's Fig. 1: each distinct target ``G*/‖G*‖_F`` drawn once, then the
learned class-mean Grams ``G_M/‖G_M‖_F`` of the chosen runs, all on one colour scale.
"""

from __future__ import annotations

import math
import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from protolib.results.figures import (
    DELTA_G,
    at_level,
    empty_figure,
    new_figure,
    note,
    save_figure,
)

TITLE = "Final class-mean Gram beside its target (each divided by its Frobenius norm)"
#: the default number of runs drawn (:func:`select_gram_runs`)
MAX_RUNS = 8
#: two normalised targets within this (entrywise, absolute) are one target
TARGET_ATOL = 1e-6
#: panels per row at most
PER_ROW = 5
NO_MATRIX = "no finite matrix"


def select_gram_runs(runs: pd.DataFrame, *, max_runs: int = MAX_RUNS) -> list[str]:
    """The default runs of :func:`plot_gram_heatmaps` (the prototype study's Fig. 1,
    MATH.md §7: SupCon without prototypes, BCL, SupCon with the largest ``n_w``).

    Per loss variant (the ``loss`` column), among its completed runs (all its runs when
    there is no ``status`` column): those at its largest imbalance ratio, then at ``p = 0``
    (else its smallest ``p``); of these the run with ``n_w = 0`` and, when there are runs
    with ``n_w > 0``, the run with the largest ``n_w``; each the smallest seed (then the
    smallest run id). Runs with ``n_w = 0`` come first, then those with ``n_w > 0``; each
    group by variant name. At most the first ``max_runs`` of that order.
    """
    if runs.empty:
        return []
    frame = runs[runs["status"] == "completed"] if "status" in runs else runs
    chosen: list[tuple[bool, str, str]] = []  # (with prototypes, variant, run id)
    for loss in sorted(frame["loss"].astype(str).unique()):
        rows = frame[frame["loss"].astype(str) == loss]
        ratios = rows["imbalance_ratio"].astype(float)
        rows = rows[np.isclose(ratios, ratios.max())]
        rows, _ = at_level(rows, "label_corruption", 0.0)
        n_ws = rows["n_w"].astype(int)
        for n_w in sorted({n for n in (0, int(n_ws.max())) if (n_ws == n).any()}):
            best = rows[n_ws == n_w].sort_values(["seed", "run_id"])
            chosen.append((n_w > 0, loss, str(best["run_id"].iloc[0])))
    return [run_id for _, _, run_id in sorted(chosen)][:max_runs]


def long_matrix(geometry: pd.DataFrame, run_id: str, matrix: str) -> np.ndarray | None:
    """The K×K ``matrix`` of ``run_id`` from the long geometry table (None when absent)."""
    rows = geometry[(geometry["run_id"] == run_id) & (geometry["matrix"] == matrix)]
    if rows.empty:
        return None
    size = int(max(rows["row"].max(), rows["col"].max())) + 1
    out = np.full((size, size), np.nan)
    out[rows["row"].to_numpy(), rows["col"].to_numpy()] = rows["value"].astype(float)
    return out


def normalised(matrix: np.ndarray | None) -> np.ndarray | None:
    """``matrix / ‖matrix‖_F`` (MATH.md §3); None when absent, not finite or zero."""
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


@dataclass(frozen=True)
class Learned:
    """One run's panel: its normalised class-mean Gram, its target's index, its title."""

    run_id: str
    matrix: np.ndarray | None
    target: int | None  # index into the distinct targets; None: no finite target
    head: str  # loss variant, n_w, binding, R, p (the run id when the run is unknown)
    delta_g: float  # recorded, else computed from the two normalised matrices


def distinct_targets(
    targets: Sequence[np.ndarray | None], *, atol: float = TARGET_ATOL
) -> tuple[list[np.ndarray], list[int | None]]:
    """The distinct normalised targets (first occurrence kept, shapes and entries within
    ``atol`` compared) and, per input, the index of its distinct target (None if absent)."""
    kept: list[np.ndarray] = []
    index: list[int | None] = []
    for target in targets:
        if target is None:
            index.append(None)
            continue
        same = (
            k
            for k, other in enumerate(kept)
            if other.shape == target.shape and np.allclose(other, target, rtol=0.0, atol=atol)
        )
        found = next(same, None)
        if found is None:
            kept.append(target)
            found = len(kept) - 1
        index.append(found)
    return kept, index


def _binding(row: pd.Series) -> int:
    """The run's batch binding (0 when the column is absent or null: older aggregates)."""
    value = row.get("binding")
    return int(value) if value is not None and pd.notna(value) else 0


def _head(info: pd.DataFrame | None, run_id: str) -> tuple[str, float]:
    """The heading of a run's panel and its recorded Δ_G (NaN when unknown)."""
    if info is None or run_id not in info.index:
        return run_id, math.nan
    row = info.loc[run_id]
    head = f"{row['loss']}, $n_w$ = {int(row['n_w'])}"
    if _binding(row) > 0:
        head += f", binding {_binding(row)}"
    head += f"\nR = {float(row['imbalance_ratio']):g}"
    if float(row["label_corruption"]):
        head += f", p = {float(row['label_corruption']):g}"
    recorded = row.get("delta_g")
    return head, float(recorded) if recorded is not None and pd.notna(recorded) else math.nan


def _target_names(count: int) -> list[str]:
    """``target G*`` for a single target, else ``target A``, ``target B``, …"""
    if count == 1:
        return ["target G*"]
    letters = string.ascii_uppercase
    return [f"target {letters[k % 26]}{k // 26 or ''}" for k in range(count)]


def _geometry_name(runs: pd.DataFrame, ids: Sequence[str]) -> str | None:
    """The ``geometry`` column's one value over ``ids`` (None when absent or mixed)."""
    if "geometry" not in runs:
        return None
    names = set(runs.loc[runs["run_id"].isin(ids), "geometry"].dropna().astype(str))
    return names.pop() if len(names) == 1 else None


def _draw_matrix(ax: Axes, matrix: np.ndarray | None, title: str, vmax: float) -> None:
    """One heatmap on the shared scale ``±vmax``; a note when there is no finite matrix."""
    ax.set_title(title, fontsize=8)
    if matrix is None:
        ax.set_xticks([])
        ax.set_yticks([])
        note(ax, NO_MATRIX)
        return
    ax.imshow(matrix, cmap="RdBu_r", vmin=-vmax, vmax=vmax, interpolation="nearest")
    size = matrix.shape[0]
    ticks = list(range(size) if size <= 12 else range(0, size, max(1, size // 10)))
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    ax.tick_params(labelsize=6)
    ax.set_xlabel("class", fontsize=7)


def gram_figure(geometry: pd.DataFrame, runs: pd.DataFrame, run_ids: Sequence[str]) -> Figure:
    """The figure of :func:`plot_gram_heatmaps` for ``run_ids`` (non-empty), unsaved.

    Panels, row by row (at most :data:`PER_ROW` a row): each distinct target first, then
    one per run in ``run_ids`` order, titled with its loss variant, ``n_w``, binding (when
    > 0), ``R``, ``p`` (when > 0) and Δ_G (the recorded one, else computed, MATH.md §3),
    naming its target when there are several.
    """
    info = runs.set_index("run_id") if not runs.empty else None
    ids = [str(r) for r in run_ids]
    targets, index = distinct_targets([normalised(long_matrix(geometry, r, "target")) for r in ids])
    names = _target_names(len(targets))
    panels: list[Learned] = []
    for run_id, target in zip(ids, index, strict=True):
        learned = normalised(long_matrix(geometry, run_id, "class_means"))
        head, dg = _head(info, run_id)
        comparable = learned is not None and target is not None
        if comparable and math.isnan(dg) and learned.shape == targets[target].shape:
            dg = float(np.linalg.norm(learned - targets[target]))
        panels.append(Learned(run_id, learned, target, head, dg))

    finite = [*targets, *(p.matrix for p in panels if p.matrix is not None)]
    vmax = max((float(np.abs(m).max()) for m in finite), default=1.0) or 1.0
    total = len(targets) + len(panels)
    nrows = math.ceil(total / PER_ROW)
    ncols = math.ceil(total / nrows)
    fig = new_figure(ncols * 2.9 + 1.0, nrows * 3.2 + 0.8)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for k, (target, name) in enumerate(zip(targets, names, strict=True)):
        members = [r for r, t in zip(ids, index, strict=True) if t == k]
        geometry_name = _geometry_name(runs, members)
        title = f"{name}" + (f"\n{geometry_name}" if geometry_name else "")
        _draw_matrix(axes[k], target, title, vmax)
    for k, panel in enumerate(panels, start=len(targets)):
        dg = f"{panel.delta_g:.3f}" if math.isfinite(panel.delta_g) else "n/a"
        against = (
            "no target recorded"
            if panel.target is None
            else (f"vs. {names[panel.target]}" if len(targets) > 1 else "")
        )
        tail = f"{DELTA_G} = {dg}" + (f" {against}" if against else "")
        _draw_matrix(axes[k], panel.matrix, f"{panel.head}\n{tail}", vmax)
    for ax in axes[total:]:
        ax.set_axis_off()
    images = [image for ax in axes for image in ax.images]
    if images:
        fig.colorbar(images[-1], ax=list(axes), shrink=0.85, label=r"entry of $G\,/\,\|G\|_F$")
    fig.suptitle(TITLE)
    return fig


def plot_gram_heatmaps(
    geometry: pd.DataFrame,
    runs: pd.DataFrame,
    path: str | Path,
    *,
    run_ids: Sequence[str] | None = None,
) -> Path:
    """Each distinct target ``G*/‖G*‖_F`` once, then the final class-mean Grams
    ``G_M/‖G_M‖_F`` of ``run_ids`` on one colour scale centred at 0 (MATH.md §3).

    ``run_ids`` defaults to :func:`select_gram_runs`; an id in neither table is refused
    (:func:`check_run_ids`) before anything is written. Layout: :func:`gram_figure`.
    """
    check_run_ids(geometry, runs, run_ids=run_ids)
    ids = [str(r) for r in (select_gram_runs(runs) if run_ids is None else run_ids)]
    if not ids:
        reason = "no runs in the runs table" if runs.empty else "no completed runs"
        return empty_figure(path, TITLE, reason)
    return save_figure(gram_figure(geometry, runs, ids), path)
