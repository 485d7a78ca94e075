"""The final angular-similarity (γ) distributions of an experiment's runs (MATH.md §3)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes

from protolib.geometry import simplex_gamma
from protolib.results.figures import (
    category_colors,
    new_figure,
    note,
    save_figure,
    series_keys,
    series_label,
)

#: the γ distributions of ``gamma.parquet`` (MATH.md §3), in panel order
GAMMA_DISTRIBUTIONS = ("class_means", "weights", "within")
GAMMA_TITLES = {
    "class_means": "class means (pairs)",
    "weights": "classifier rows / prototypes (pairs)",
    "within": "embedding vs. own class mean",
}


def classes_from_pairs(pairs: int) -> int | None:
    """K from the number of class-mean pairs ``K(K−1)/2`` (None if not such a number)."""
    k = round((1 + math.sqrt(1 + 8 * pairs)) / 2)
    return k if k >= 2 and k * (k - 1) // 2 == pairs else None


def num_classes(geometry: pd.DataFrame) -> int | None:
    """K of the geometry table's target Gram matrices (None when it has none)."""
    target = geometry[geometry["matrix"] == "target"]
    return int(target["row"].max()) + 1 if not target.empty else None


def _density(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray] | None:
    """Pooled histogram of ``frame``'s bins as a density: ``(density, edges)``, or None."""
    bins = frame.groupby(["lower", "upper"], sort=True)["count"].sum().reset_index()
    total = float(bins["count"].sum())
    if total <= 0:
        return None
    edges = np.append(bins["lower"].to_numpy(), bins["upper"].to_numpy()[-1])
    return bins["count"].to_numpy() / (total * np.diff(edges)), edges


def _panel(ax: Axes, name: str, data: pd.DataFrame, colors: dict, K: int | None) -> None:
    """One distribution's panel: a step line per series at R = 1, p = 0 (else all runs)."""
    ax.set_title(GAMMA_TITLES[name])
    ax.set_xlabel(r"angular similarity $\gamma$")
    ax.set_xlim(0, 1)
    ax.grid(alpha=0.3)
    drawn = False
    for loss, n_w in colors:
        frame = data[(data["loss"] == loss) & (data["n_w"] == n_w)]
        at_reference = frame[
            np.isclose(frame["imbalance_ratio"], 1.0) & np.isclose(frame["label_corruption"], 0.0)
        ]
        frame = at_reference if not at_reference.empty else frame
        density = _density(frame[frame["distribution"] == name])
        if density is None:
            continue
        ax.stairs(*density, color=colors[(loss, n_w)], lw=1.6, label=series_label(loss, n_w))
        drawn = True
    if K is not None and K >= 2 and name != "within":
        reference = simplex_gamma(K)
        ax.axvline(
            reference,
            color="k",
            ls="--",
            lw=1,
            label=f"simplex, K = {K} ($\\gamma$ = {reference:.3f})",
        )
    if not drawn:
        note(ax, "no data" if name != "weights" else "no data (no classifier or prototypes)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="best")


def plot_gamma(
    gamma: pd.DataFrame,
    runs: pd.DataFrame,
    path: str | Path,
    *,
    num_classes: int | None = None,
) -> Path:
    """The final γ distributions (MATH.md §3), one panel per distribution.

    One step line per (loss, n_w): histograms pooled over its runs at ``R = 1`` and
    ``p = 0`` (all its runs if it has none there), as densities. A dashed line marks the
    regular simplex's γ on the class-mean and weight panels; ``num_classes`` defaults to K
    inferred from the number of class-mean pairs of a run. Only runs present in ``runs``
    with status ``completed`` are used (all of ``gamma`` when ``runs`` is empty).
    """
    data = gamma
    if not runs.empty:
        keep = runs["run_id"][runs["status"] == "completed"] if "status" in runs else runs["run_id"]
        data = data[data["run_id"].isin(set(keep))]
    if num_classes is None and not data.empty:
        first = data[(data["distribution"] == "class_means")]
        if not first.empty:
            first = first[first["run_id"] == first["run_id"].iloc[0]]
            num_classes = classes_from_pairs(int(first["count"].sum()))
    fig = new_figure(14, 4.4)
    axes = fig.subplots(1, len(GAMMA_DISTRIBUTIONS), squeeze=False)[0]
    colors = category_colors(series_keys(data) if not data.empty else [])
    for ax, name in zip(axes, GAMMA_DISTRIBUTIONS, strict=True):
        _panel(ax, name, data, colors, num_classes)
    axes[0].set_ylabel("density")
    fig.suptitle(
        r"Final $\gamma$ distributions, pooled over seeds ($R$ = 1, $p$ = 0 where available)"
    )
    return save_figure(fig, path)


def plot_final_gamma(
    gamma: pd.DataFrame, runs: pd.DataFrame, geometry: pd.DataFrame, path: str | Path
) -> Path:
    """The report's γ figure: :func:`plot_gamma` with K from the geometry table's targets."""
    return plot_gamma(gamma, runs, path, num_classes=num_classes(geometry))
