"""Plots of an experiment's aggregate tables: one PNG figure per question.

Every function reads aggregate DataFrames only (``runs``, ``metrics``, ``geometry``,
``gamma``; :mod:`protolib.results.aggregate`), never run directories, writes one PNG
atomically (:func:`protolib.io.write_atomic`) and returns its path. Figures are drawn on
the Agg canvas directly (no pyplot, no display, no global backend switch). Degenerate
input — no runs, one value on the x axis, a missing metric — still gives a figure, with a
note in it saying what is missing.

Spread over seeds is always the min–max band; individual seeds are faint points.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from protolib.geometry import simplex_gamma
from protolib.io import write_atomic

DPI = 120
#: the γ distributions of ``gamma.parquet`` (MATH.md §3), in panel order
GAMMA_DISTRIBUTIONS = ("class_means", "weights", "within")
GAMMA_TITLES = {
    "class_means": "class means (pairs)",
    "weights": "classifier rows / prototypes (pairs)",
    "within": "embedding vs. own class mean",
}
SPREAD = "line: mean over seeds; band: min–max; points: seeds"
DELTA_G = r"$\Delta_G$"


# -- helpers ---------------------------------------------------------------------------
def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    return write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI))


def _note(ax: Axes, text: str, *, y: float = 0.5) -> None:
    """Write ``text`` in a box inside ``ax`` (what the figure cannot show, and why)."""
    ax.text(
        0.5,
        y,
        text,
        transform=ax.transAxes,
        ha="center",
        va="center",
        fontsize=10,
        color="0.25",
        bbox={"boxstyle": "round", "facecolor": "0.96", "edgecolor": "0.7"},
    )


def _note_above(ax: Axes, text: str) -> None:
    """A note at the top of ``ax``, with the y range stretched so that it covers no data."""
    low, high = ax.get_ylim()
    ax.set_ylim(low, high + 0.3 * (high - low))
    _note(ax, text, y=0.92)


def series_label(loss: str, n_w: int) -> str:
    """Legend label of a (loss, n_w) series: ``supcon, n_w = 10`` or ``ce``."""
    return f"{loss}, $n_w$ = {int(n_w)}" if n_w else str(loss)


def _colors(keys: Sequence) -> dict:
    cycle = matplotlib.colormaps["tab10"].colors
    return {key: cycle[i % len(cycle)] for i, key in enumerate(keys)}


def _sequential(keys: Sequence) -> dict:
    cmap = matplotlib.colormaps["viridis"]
    positions = np.linspace(0.0, 0.85, len(keys)) if len(keys) > 1 else [0.0]
    return {key: cmap(float(x)) for key, x in zip(keys, positions, strict=True)}


def _at_level(df: pd.DataFrame, column: str, preferred: float) -> tuple[pd.DataFrame, float]:
    """Rows at ``column == preferred``; when there are none, at the smallest value present."""
    if df.empty:
        return df, preferred
    values = df[column].astype(float)
    mask = np.isclose(values, preferred)
    if mask.any():
        return df[mask], preferred
    lowest = float(values.min())
    return df[np.isclose(values, lowest)], lowest


def _seed_stats(df: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """Mean, min, max and count of ``y`` over seeds at each ``x`` (sorted by ``x``)."""
    return (
        df.groupby(x, sort=True)[y]
        .agg(mean="mean", low="min", high="max", n="count")
        .reset_index()
        .sort_values(x)
    )


def _series(df: pd.DataFrame) -> list[tuple[str, int]]:
    pairs = df[["loss", "n_w"]].drop_duplicates().itertuples(index=False, name=None)
    return sorted((str(loss), int(n_w)) for loss, n_w in pairs)


def _draw_series(ax: Axes, stats: pd.DataFrame, x: str, color, label: str) -> None:
    ax.plot(stats[x], stats["mean"], "-o", color=color, lw=1.8, ms=4, label=label)
    if (stats["n"] > 1).any():
        ax.fill_between(stats[x], stats["low"], stats["high"], color=color, alpha=0.15, lw=0)


def _each_series(ax: Axes, data: pd.DataFrame, x: str, y: str) -> Iterator[tuple]:
    """Draw one mean-over-seeds line with its spread per (loss, n_w) of ``data``; yield
    each series' rows and colour so the caller can add its own marks."""
    series = _series(data)
    colors = _colors(series)
    for loss, n_w in series:
        sub = data[(data["loss"] == loss) & (data["n_w"] == n_w)]
        color = colors[(loss, n_w)]
        _draw_series(ax, _seed_stats(sub, x, y), x, color, series_label(loss, n_w))
        yield sub, color


def _empty_figure(path: str | Path, title: str, text: str) -> Path:
    fig = _figure(7, 4.5)
    ax = fig.add_subplot()
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    _note(ax, text)
    return _save(fig, path)


# -- 1. time to fit --------------------------------------------------------------------
def plot_time_to_fit(runs: pd.DataFrame, path: str | Path) -> Path:
    """Time to fit (iterations) against label corruption ``p`` at ``R = 1`` (MATH.md §7).

    One line per (loss, n_w): the mean over seeds, a min–max band and the seeds as faint
    points. A run that never reached zero training error counts at its series' budget (its
    ``iterations``) and is drawn as a hollow marker ("not reached"), so a mean that
    includes one is a lower bound. Without balanced runs the smallest ratio is used.
    """
    title = "Time to fit vs. label corruption"
    data, ratio = _at_level(runs, "imbalance_ratio", 1.0)
    if data.empty:
        return _empty_figure(path, title, "no runs in the runs table")
    data = data.copy()
    data["reached"] = data["time_to_fit"].notna()
    keys = ["loss", "n_w"]
    budget = data.groupby(keys)["iterations"].transform("max").astype(float)
    data["y"] = data["time_to_fit"].astype(float).where(data["reached"], budget)

    fig = _figure(7.5, 4.8)
    ax = fig.add_subplot()
    for sub, color in _each_series(ax, data, "label_corruption", "y"):
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
        _note_above(ax, f"needs ≥ 2 values of p (have p = {values[0]:g} only)")
    return _save(fig, path)


# -- 2. Δ_G over training ------------------------------------------------------------
def plot_delta_g(metrics: pd.DataFrame, path: str | Path) -> Path:
    """Δ_G (``train/delta_g``, MATH.md §3) against epoch, one panel per imbalance ratio.

    One row of panels per loss that has runs with ``n_w > 0``, one line per ``n_w`` (mean
    over seeds, min–max band); when no loss has prototypes, one row with one line per
    loss. Runs at ``p = 0`` (else the smallest ``p``); shared y axis.
    """
    title = f"Geometry convergence {DELTA_G} during training"
    data = metrics[(metrics["split"] == "train") & (metrics["metric"] == "delta_g")]
    data = data[np.isfinite(data["value"].astype(float))]
    if data.empty:
        return _empty_figure(path, title, "no train/delta_g values in the metrics table")
    data, p = _at_level(data, "label_corruption", 0.0)
    prototype_losses = sorted(data.loc[data["n_w"] > 0, "loss"].unique())
    if prototype_losses:
        rows = [(str(loss), data[data["loss"] == loss], "n_w") for loss in prototype_losses]
    else:
        rows = [(None, data, "loss")]
    ratios = sorted(float(r) for r in data["imbalance_ratio"].unique())
    fig = _figure(max(6.0, 3.8 * len(ratios) + 0.6), 3.0 * len(rows) + 0.9)
    axes = fig.subplots(len(rows), len(ratios), sharey=True, squeeze=False)
    # one colour per n_w (or loss) across all rows
    key = rows[0][2]
    lines = sorted(pd.concat([frame[key] for _, frame, _ in rows]).unique())
    colors = _sequential(lines) if key == "n_w" else _colors(lines)
    for i, (loss, frame, key) in enumerate(rows):
        for j, ratio in enumerate(ratios):
            ax = axes[i][j]
            ax.set_title(f"R = {ratio:g}")
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
            sub = frame[np.isclose(frame["imbalance_ratio"].astype(float), ratio)]
            if sub.empty:
                _note(ax, "no runs")
                continue
            for value, runs_of_line in sub.groupby(key, sort=True):
                stats = (
                    runs_of_line.groupby("step", sort=True)
                    .agg(
                        epoch=("epoch", "mean"),
                        mean=("value", "mean"),
                        low=("value", "min"),
                        high=("value", "max"),
                        n=("value", "count"),
                    )
                    .reset_index()
                )
                label = f"$n_w$ = {int(value)}" if key == "n_w" else str(value)
                _draw_series(ax, stats, "epoch", colors[value], label)
            if sub["step"].nunique() < 2:
                _note_above(ax, "needs ≥ 2 evaluations")
            ax.legend(fontsize=8, loc="best")
        axes[i][0].set_ylabel(f"{DELTA_G} ({loss})" if loss else DELTA_G)
    fig.suptitle(f"{title} (train, $p$ = {p:g})\nline: mean over seeds; band: min–max")
    return _save(fig, path)


# -- 3. Gram heatmaps ----------------------------------------------------------------
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
        frame, _ = _at_level(frame, "label_corruption", 0.0)
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
    title = "Final class-mean Gram vs. target (each divided by its Frobenius norm)"
    ids = [str(r) for r in (select_gram_runs(runs) if run_ids is None else run_ids)]
    known = set(runs["run_id"]) | set(geometry["run_id"])
    unknown = [r for r in ids if r not in known]
    if unknown:
        raise ValueError(
            f"unknown run id(s) {', '.join(unknown)}; known: {', '.join(sorted(known)) or 'none'}"
        )
    if not ids:
        return _empty_figure(path, title, "no runs in the runs table")
    info = runs.set_index("run_id") if not runs.empty else None
    pairs = {}
    for run_id in ids:
        pairs[run_id] = (
            _normalised(long_matrix(geometry, run_id, "class_means")),
            _normalised(long_matrix(geometry, run_id, "target")),
        )
    finite = [m for pair in pairs.values() for m in pair if m is not None]
    vmax = max((float(np.abs(m).max()) for m in finite), default=1.0) or 1.0
    per_row = min(len(ids), 3)
    nrows = math.ceil(len(ids) / per_row)
    fig = _figure(per_row * 5.4 + 1.0, nrows * 3.0 + 0.8)
    axes = fig.subplots(nrows, 2 * per_row, squeeze=False)
    image = None
    for k, run_id in enumerate(ids):
        learned, target = pairs[run_id]
        ax_l, ax_t = (
            axes[k // per_row][2 * (k % per_row)],
            axes[k // per_row][2 * (k % per_row) + 1],
        )
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
        for ax, matrix, name in ((ax_l, learned, "class means"), (ax_t, target, "target G*")):
            ax.set_title(
                f"{head}\n{name}" + (f", {DELTA_G} = {dg:.3f}" if ax is ax_l else ""),
                fontsize=9,
            )
            if matrix is None:
                ax.set_xticks([])
                ax.set_yticks([])
                _note(ax, "no finite matrix")
                continue
            image = ax.imshow(matrix, cmap="RdBu_r", vmin=-vmax, vmax=vmax, interpolation="nearest")
            size = matrix.shape[0]
            ticks = range(size) if size <= 12 else range(0, size, max(1, size // 10))
            ax.set_xticks(list(ticks))
            ax.set_yticks(list(ticks))
            ax.tick_params(labelsize=6)
            ax.set_xlabel("class", fontsize=8)
    for k in range(len(ids), nrows * per_row):
        axes[k // per_row][2 * (k % per_row)].set_axis_off()
        axes[k // per_row][2 * (k % per_row) + 1].set_axis_off()
    if image is not None:
        fig.colorbar(
            image, ax=axes.ravel().tolist(), shrink=0.85, label=r"entry of $G\,/\,\|G\|_F$"
        )
    fig.suptitle(title)
    return _save(fig, path)


# -- 4. γ distributions ---------------------------------------------------------------
def classes_from_pairs(pairs: int) -> int | None:
    """K from the number of class-mean pairs ``K(K−1)/2`` (None if not such a number)."""
    k = round((1 + math.sqrt(1 + 8 * pairs)) / 2)
    return k if k >= 2 and k * (k - 1) // 2 == pairs else None


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
    fig = _figure(14, 4.4)
    axes = fig.subplots(1, len(GAMMA_DISTRIBUTIONS), squeeze=False)[0]
    series = _series(data) if not data.empty else []
    colors = _colors(series)
    for ax, name in zip(axes, GAMMA_DISTRIBUTIONS, strict=True):
        ax.set_title(GAMMA_TITLES[name])
        ax.set_xlabel(r"angular similarity $\gamma$")
        ax.set_xlim(0, 1)
        ax.grid(alpha=0.3)
        drawn = False
        for loss, n_w in series:
            frame = data[(data["loss"] == loss) & (data["n_w"] == n_w)]
            at_reference = frame[
                np.isclose(frame["imbalance_ratio"], 1.0)
                & np.isclose(frame["label_corruption"], 0.0)
            ]
            frame = at_reference if not at_reference.empty else frame
            frame = frame[frame["distribution"] == name]
            bins = frame.groupby(["lower", "upper"], sort=True)["count"].sum().reset_index()
            total = float(bins["count"].sum())
            if total <= 0:
                continue
            edges = np.append(bins["lower"].to_numpy(), bins["upper"].to_numpy()[-1])
            density = bins["count"].to_numpy() / (total * np.diff(edges))
            ax.stairs(
                density, edges, color=colors[(loss, n_w)], lw=1.6, label=series_label(loss, n_w)
            )
            drawn = True
        if num_classes is not None and num_classes >= 2 and name != "within":
            reference = simplex_gamma(num_classes)
            ax.axvline(
                reference,
                color="k",
                ls="--",
                lw=1,
                label=f"simplex, K = {num_classes} ($\\gamma$ = {reference:.3f})",
            )
        if not drawn:
            _note(ax, "no data" if name != "weights" else "no data (no classifier or prototypes)")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="best")
    axes[0].set_ylabel("density")
    fig.suptitle(
        r"Final $\gamma$ distributions, pooled over seeds ($R$ = 1, $p$ = 0 where available)"
    )
    return _save(fig, path)


# -- 5. accuracy against imbalance -----------------------------------------------------
def plot_accuracy_vs_imbalance(runs: pd.DataFrame, path: str | Path) -> Path:
    """Test accuracy against the imbalance ratio ``R`` at ``p = 0`` (else the smallest ``p``).

    One line per (loss, n_w), mean over seeds with min–max band; log x axis when the ratios
    span more than 10×.
    """
    title = "Test accuracy vs. imbalance ratio"
    data, p = _at_level(runs, "label_corruption", 0.0)
    data = data[data["test_accuracy"].notna()] if not data.empty else data
    if data.empty:
        return _empty_figure(path, title, "no runs with a test accuracy")
    fig = _figure(7.5, 4.8)
    ax = fig.add_subplot()
    for sub, color in _each_series(ax, data, "imbalance_ratio", "test_accuracy"):
        ax.scatter(sub["imbalance_ratio"], sub["test_accuracy"], s=16, color=color, alpha=0.4)
    ratios = sorted(float(r) for r in data["imbalance_ratio"].unique())
    if ratios[-1] / ratios[0] > 10:
        ax.set_xscale("log")
        ax.minorticks_off()
    ax.set_xticks(ratios)
    ax.set_xticklabels([f"{r:g}" for r in ratios])
    ax.set_xlabel("imbalance ratio $R$")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"{title} ($p$ = {p:g})\n{SPREAD}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    if len(ratios) < 2:
        _note_above(ax, f"needs ≥ 2 imbalance ratios (have R = {ratios[0]:g} only)")
    return _save(fig, path)
