"""Drawing helpers shared by every figure of protolib (the report's and the theory target's).

Figures are drawn on the Agg canvas directly (no pyplot, no display, no global backend
switch) and saved as PNG atomically (:func:`protolib.io.write_atomic`). The series
helpers draw one mean-over-seeds line with its min–max band per ``(loss, n_w)``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from protolib.io import write_atomic

DPI = 120
SPREAD = "line: mean over seeds; band: min–max; points: seeds"
DELTA_G = r"$\Delta_G$"


def new_figure(width: float, height: float) -> Figure:
    """A ``width`` × ``height`` inch figure with a constrained layout, on the Agg canvas."""
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as a PNG to ``path`` atomically; return ``path``."""
    return write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI))


def note(ax: Axes, text: str, *, y: float = 0.5) -> None:
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


def note_above(ax: Axes, text: str) -> None:
    """A note at the top of ``ax``, with the y range stretched so that it covers no data."""
    low, high = ax.get_ylim()
    ax.set_ylim(low, high + 0.3 * (high - low))
    note(ax, text, y=0.92)


def empty_figure(path: str | Path, title: str, text: str) -> Path:
    """A titled figure with no data, only ``text`` saying why; saved to ``path``."""
    fig = new_figure(7, 4.5)
    ax = fig.add_subplot()
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    note(ax, text)
    return save_figure(fig, path)


def series_label(loss: str, n_w: int) -> str:
    """Legend label of a (loss, n_w) series: ``supcon, n_w = 10`` or ``ce``."""
    return f"{loss}, $n_w$ = {int(n_w)}" if n_w else str(loss)


def category_colors(keys: Sequence) -> dict:
    """One colour of the ``tab10`` cycle per key, in order."""
    cycle = matplotlib.colormaps["tab10"].colors
    return {key: cycle[i % len(cycle)] for i, key in enumerate(keys)}


def sequential_colors(keys: Sequence) -> dict:
    """Colours along ``viridis`` for ordered keys (e.g. increasing ``n_w``)."""
    cmap = matplotlib.colormaps["viridis"]
    positions = np.linspace(0.0, 0.85, len(keys)) if len(keys) > 1 else [0.0]
    return {key: cmap(float(x)) for key, x in zip(keys, positions, strict=True)}


def at_level(df: pd.DataFrame, column: str, preferred: float) -> tuple[pd.DataFrame, float]:
    """Rows at ``column == preferred``; when there are none, at the smallest value present."""
    if df.empty:
        return df, preferred
    values = df[column].astype(float)
    mask = np.isclose(values, preferred)
    if mask.any():
        return df[mask], preferred
    lowest = float(values.min())
    return df[np.isclose(values, lowest)], lowest


def seed_stats(df: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """Mean, min, max and count of ``y`` over seeds at each ``x`` (sorted by ``x``)."""
    return (
        df.groupby(x, sort=True)[y]
        .agg(mean="mean", low="min", high="max", n="count")
        .reset_index()
        .sort_values(x)
    )


def series_keys(df: pd.DataFrame) -> list[tuple[str, int]]:
    """The sorted ``(loss, n_w)`` pairs present in ``df``."""
    pairs = df[["loss", "n_w"]].drop_duplicates().itertuples(index=False, name=None)
    return sorted((str(loss), int(n_w)) for loss, n_w in pairs)


def draw_series(ax: Axes, stats: pd.DataFrame, x: str, color, label: str) -> None:
    """The mean line of ``stats`` (:func:`seed_stats`) with its min–max band if seeds > 1."""
    ax.plot(stats[x], stats["mean"], "-o", color=color, lw=1.8, ms=4, label=label)
    if (stats["n"] > 1).any():
        ax.fill_between(stats[x], stats["low"], stats["high"], color=color, alpha=0.15, lw=0)


def each_series(ax: Axes, data: pd.DataFrame, x: str, y: str) -> Iterator[tuple]:
    """Draw one mean-over-seeds line with its spread per (loss, n_w) of ``data``; yield
    each series' rows and colour so the caller can add its own marks."""
    series = series_keys(data)
    colors = category_colors(series)
    for loss, n_w in series:
        sub = data[(data["loss"] == loss) & (data["n_w"] == n_w)]
        color = colors[(loss, n_w)]
        draw_series(ax, seed_stats(sub, x, y), x, color, series_label(loss, n_w))
        yield sub, color
