"""Line plots of an experiment's aggregate: a figure against a grid axis or over training.

Each line is one ``(loss, n_w)`` series (or one ``n_w``): the mean over seeds, the band of
its 95 % Student-t interval (:func:`protolib.results.figures.seed_stats`; none where a point
has one seed), and for the grid plots the seeds as faint points.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from protolib.results.figures import (
    BAND,
    DELTA_G,
    SPREAD,
    at_level,
    blank_figure,
    category_colors,
    clamp_ylim,
    draw_series,
    each_series,
    new_figure,
    note,
    note_above,
    one_imbalance_shape,
    save_figure,
    seed_stats,
    sequential_colors,
)


# -- time to fit ------------------------------------------------------------------------
def plot_time_to_fit(runs: pd.DataFrame, path: str | Path) -> Path:
    """:func:`time_to_fit_figure` saved to ``path`` as a PNG."""
    return save_figure(time_to_fit_figure(runs), path)


def time_to_fit_figure(runs: pd.DataFrame) -> Figure:
    """Time to fit (iterations) against label corruption ``p`` at ``R = 1`` (MATH.md §7).

    One line per (loss, n_w): the mean over seeds, the band of its 95 % t-interval and the
    seeds as faint points. A run that never reached zero training error counts at its
    series' budget (its ``iterations``) in the mean and the interval and is drawn as a
    hollow marker ("not reached"), so a mean that includes one is a lower bound. Without
    balanced runs the smallest ratio is used.
    """
    title = "Time to fit vs. label corruption"
    data, ratio = at_level(one_imbalance_shape(runs), "imbalance_ratio", 1.0)
    if data.empty:
        return blank_figure(title, "no runs in the runs table")
    data = data.copy()
    data["reached"] = data["time_to_fit"].notna()
    keys = ["loss", "n_w"]
    budget = data.groupby(keys)["iterations"].transform("max").astype(float)
    data["y"] = data["time_to_fit"].astype(float).where(data["reached"], budget)

    fig = new_figure(7.5, 4.8)
    ax = fig.add_subplot()
    for sub, color in each_series(ax, data, "label_corruption", "y"):
        hit, miss = sub[sub["reached"]], sub[~sub["reached"]]
        ax.scatter(hit["label_corruption"], hit["y"], s=16, color=color, alpha=0.4, lw=0)
        ax.scatter(
            miss["label_corruption"],
            miss["y"],
            s=60,
            facecolors="none",
            edgecolors=color,
            linewidths=1.4,
            zorder=3,
        )
    handles, labels = ax.get_legend_handles_labels()
    known = data["y"].dropna()
    top = float(known.max()) if not known.empty else 1.0
    ax.axhline(top, color="0.5", ls=":", lw=1)
    handles.append(Line2D([], [], color="0.5", ls=":", lw=1))
    labels.append(f"budget ({top:g} iterations)")
    if not data["reached"].all():
        handles.append(Line2D([], [], marker="o", ls="", mfc="none", mec="0.3", ms=8, mew=1.4))
        labels.append("not reached (drawn at the budget)")
    ax.legend(handles, labels, fontsize=8, loc="best")
    ax.set_xlabel("label corruption $p$")
    ax.set_ylabel("time to fit (iterations)")
    ax.set_ylim(bottom=0, top=top * 1.08 if top > 0 else 1)
    ax.set_title(f"{title} ($R$ = {ratio:g})\n{SPREAD}", fontsize=10)
    ax.grid(alpha=0.3)
    values = sorted(data["label_corruption"].unique())
    if len(values) < 2:
        note_above(ax, f"needs ≥ 2 values of p (have p = {values[0]:g} only)")
    return fig


# -- Δ_G over training -------------------------------------------------------------------
def plot_delta_g(metrics: pd.DataFrame, path: str | Path) -> Path:
    """:func:`delta_g_figure` saved to ``path`` as a PNG."""
    return save_figure(delta_g_figure(metrics), path)


def delta_g_figure(metrics: pd.DataFrame) -> Figure:
    """Δ_G (``train/delta_g``, MATH.md §3) against epoch, one panel per imbalance ratio.

    One row of panels per loss that has runs with ``n_w > 0``, one line per ``n_w`` (mean
    over seeds, band of its 95 % t-interval); when no loss has prototypes, one row with one
    line per loss. Runs at ``p = 0`` (else the smallest ``p``); shared y axis.
    """
    title = f"Geometry convergence {DELTA_G} during training"
    data = metrics[(metrics["split"] == "train") & (metrics["metric"] == "delta_g")]
    data = data[np.isfinite(data["value"].astype(float))]
    if data.empty:
        return blank_figure(title, "no train/delta_g values in the metrics table")
    data, p = at_level(one_imbalance_shape(data), "label_corruption", 0.0)
    prototype_losses = sorted(data.loc[data["n_w"] > 0, "loss"].unique())
    if prototype_losses:
        rows = [(str(loss), data[data["loss"] == loss], "n_w") for loss in prototype_losses]
    else:
        rows = [(None, data, "loss")]
    ratios = sorted(float(r) for r in data["imbalance_ratio"].unique())
    fig = new_figure(max(6.0, 3.8 * len(ratios) + 0.6), 3.0 * len(rows) + 0.9)
    axes = fig.subplots(len(rows), len(ratios), sharey=True, squeeze=False)
    # one colour per n_w (or loss) across all rows
    key = rows[0][2]
    lines = sorted(pd.concat([frame[key] for _, frame, _ in rows]).unique())
    colors = sequential_colors(lines) if key == "n_w" else category_colors(lines)
    for i, (loss, frame, key) in enumerate(rows):
        for j, ratio in enumerate(ratios):
            ax = axes[i][j]
            ax.set_title(f"R = {ratio:g}")
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
            sub = frame[np.isclose(frame["imbalance_ratio"].astype(float), ratio)]
            if sub.empty:
                note(ax, "no runs")
                continue
            for value, runs_of_line in sub.groupby(key, sort=True):
                stats = seed_stats(runs_of_line, "step", "value")
                stats["epoch"] = runs_of_line.groupby("step", sort=True)["epoch"].mean().to_numpy()
                label = f"$n_w$ = {int(value)}" if key == "n_w" else str(value)
                draw_series(ax, stats, "epoch", colors[value], label)
            if sub["step"].nunique() < 2:
                note_above(ax, "needs ≥ 2 evaluations")
            ax.legend(fontsize=8, loc="best")
        axes[i][0].set_ylabel(f"{DELTA_G} ({loss})" if loss else DELTA_G)
    clamp_ylim(axes[0][0], 0.0)  # Δ_G ≥ 0 (MATH.md §3); the y axis is shared
    fig.suptitle(f"{title} (train, $p$ = {p:g})\n{BAND}")
    return fig


# -- accuracy against imbalance --------------------------------------------------------
def plot_accuracy_vs_imbalance(runs: pd.DataFrame, path: str | Path) -> Path:
    """:func:`accuracy_vs_imbalance_figure` saved to ``path`` as a PNG."""
    return save_figure(accuracy_vs_imbalance_figure(runs), path)


def accuracy_vs_imbalance_figure(runs: pd.DataFrame) -> Figure:
    """Test accuracy against the imbalance ratio ``R`` at ``p = 0`` (else the smallest ``p``).

    One line per (loss, n_w), mean over seeds with the band of its 95 % t-interval; log x
    axis when the ratios span more than 10×.
    """
    title = "Test accuracy vs. imbalance ratio"
    data, p = at_level(one_imbalance_shape(runs), "label_corruption", 0.0)
    data = data[data["test_accuracy"].notna()] if not data.empty else data
    if data.empty:
        return blank_figure(title, "no runs with a test accuracy")
    fig = new_figure(7.5, 4.8)
    ax = fig.add_subplot()
    for sub, color in each_series(ax, data, "imbalance_ratio", "test_accuracy"):
        ax.scatter(sub["imbalance_ratio"], sub["test_accuracy"], s=16, color=color, alpha=0.4)
    ratios = sorted(float(r) for r in data["imbalance_ratio"].unique())
    if ratios[-1] / ratios[0] > 10:
        ax.set_xscale("log")
        ax.minorticks_off()
    ax.set_xticks(ratios)
    ax.set_xticklabels([f"{r:g}" for r in ratios])
    ax.set_xlabel("imbalance ratio $R$")
    ax.set_ylabel("test accuracy")
    clamp_ylim(ax, 0.0, 1.0)
    ax.set_title(f"{title} ($p$ = {p:g})\n{SPREAD}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    if len(ratios) < 2:
        note_above(ax, f"needs ≥ 2 imbalance ratios (have R = {ratios[0]:g} only)")
    return fig
