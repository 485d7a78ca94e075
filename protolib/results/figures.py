"""Drawing helpers shared by every figure of protolib (the report's and the theory target's).

Figures are drawn on the Agg canvas directly (no pyplot, no display, no global backend
switch) and saved as PNG atomically (:func:`protolib.io.write_atomic`). The series
helpers draw one mean-over-seeds line per ``(loss, n_w)`` with its band, the 95 % Student-t
interval of the mean (:mod:`protolib.results.intervals`; no band where a point has one seed).
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
from protolib.results.intervals import CONFIDENCE, summarise

DPI = 120
SPREAD = (
    f"line: mean over seeds; band: {CONFIDENCE * 100:g} % t-interval of the mean; points: seeds"
)
#: the same without the points
BAND = SPREAD.removesuffix("; points: seeds")
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


def blank_figure(title: str, text: str) -> Figure:
    """A titled figure with no data, only ``text`` saying why."""
    fig = new_figure(7, 4.5)
    ax = fig.add_subplot()
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    note(ax, text)
    return fig


def empty_figure(path: str | Path, title: str, text: str) -> Path:
    """:func:`blank_figure` saved to ``path``."""
    return save_figure(blank_figure(title, text), path)


def clamp_ylim(ax: Axes, low: float | None = None, high: float | None = None) -> None:
    """Keep ``ax``'s y range within ``[low, high]`` (2 % margin): the figure's own bounds
    (an accuracy in [0, 1]), which a wide interval band of few seeds may cross."""
    bottom, top = ax.get_ylim()
    margin = 0.02 * ((high if high is not None else top) - (low if low is not None else bottom))
    ax.set_ylim(
        bottom if low is None else max(bottom, low - margin),
        top if high is None else min(top, high + margin),
    )


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


#: the imbalance axes besides the ratio, each with its default (the results contract)
IMBALANCE_SHAPE = (("imbalance", "step"), ("minority_fraction", 0.5))


def one_imbalance_shape(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of one imbalance kind and minority fraction (the defaults when present, else
    the first values), so that a curve over the ratio never pools STEP with exponential
    imbalance or two minority fractions."""
    for column, default in IMBALANCE_SHAPE:
        if column in df and df[column].nunique() > 1:
            values = set(df[column])
            keep = default if default in values else sorted(values, key=str)[0]
            df = df[df[column] == keep]
    return df


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
    """Per value of ``x`` (sorted): the mean of ``y`` over seeds, its 95 % t-interval
    ``low``–``high`` (NaN with one seed) and the count ``n`` of non-null values."""
    stats = summarise(df.groupby(x, sort=True)[y])
    return stats.rename(columns={"ci_low": "low", "ci_high": "high"}).reset_index()


def series_keys(df: pd.DataFrame) -> list[tuple[str, int]]:
    """The sorted ``(loss, n_w)`` pairs present in ``df``."""
    pairs = df[["loss", "n_w"]].drop_duplicates().itertuples(index=False, name=None)
    return sorted((str(loss), int(n_w)) for loss, n_w in pairs)


def draw_series(ax: Axes, stats: pd.DataFrame, x: str, color, label: str) -> None:
    """The mean line of ``stats`` (:func:`seed_stats`) and, at each point with ≥ 2 seeds,
    its interval as a capped bar, filled as a band between neighbouring such points (a
    point with one seed has neither)."""
    ax.plot(stats[x], stats["mean"], "-o", color=color, lw=1.8, ms=4, label=label)
    banded = stats["n"] >= 2
    if not banded.any():
        return
    ax.fill_between(
        stats[x], stats["low"], stats["high"], where=banded, color=color, alpha=0.15, lw=0
    )
    bars = stats[banded]
    ax.errorbar(
        bars[x],
        bars["mean"],
        yerr=[bars["mean"] - bars["low"], bars["high"] - bars["mean"]],
        fmt="none",
        ecolor=color,
        elinewidth=1.0,
        capsize=3,
        alpha=0.6,
    )


def each_series(ax: Axes, data: pd.DataFrame, x: str, y: str) -> Iterator[tuple]:
    """Draw one mean-over-seeds line with its interval band per (loss, n_w) of ``data``; yield
    each series' rows and colour so the caller can add its own marks."""
    series = series_keys(data)
    colors = category_colors(series)
    for loss, n_w in series:
        sub = data[(data["loss"] == loss) & (data["n_w"] == n_w)]
        color = colors[(loss, n_w)]
        draw_series(ax, seed_stats(sub, x, y), x, color, series_label(loss, n_w))
        yield sub, color
