"""Confidence intervals of a mean over seeds: what the report's tables and bands show.

Over the ``n`` seeds of a grid point where a figure is known (null values are left out),
the interval is Student's t-interval of the mean at :data:`CONFIDENCE`::

    mean ± t_{(1 + CONFIDENCE)/2, n − 1} · s / √n      (s: sample std, ddof = 1)

One seed gives the mean and no interval (low, high and std are NaN, never ± 0); no seed
gives NaN throughout and ``n = 0``. Equal values give a zero-width interval (s = 0).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pandas.core.groupby import SeriesGroupBy
from scipy.special import stdtrit

#: the coverage of every interval in the report
CONFIDENCE = 0.95
#: the columns of :func:`summarise`, in order
STATS = ("mean", "ci_low", "ci_high", "std", "n")


def t_quantile(probability: float, df: np.ndarray | float) -> np.ndarray | float:
    """The ``probability`` quantile of Student's t with ``df`` degrees of freedom
    (``t_quantile(0.975, 4) = 2.776``); NaN where ``df < 1``."""
    if not 0 < probability < 1:
        raise ValueError(f"probability {probability!r}: allowed 0 < probability < 1")
    df = np.asarray(df, dtype=float)
    out = stdtrit(np.where(df >= 1, df, np.nan), probability)
    return float(out) if out.ndim == 0 else out


def half_width(std: np.ndarray, n: np.ndarray) -> np.ndarray:
    """``t · s/√n`` at :data:`CONFIDENCE` for each (std, n); NaN where ``n < 2``."""
    std = np.asarray(std, dtype=float)
    n = np.asarray(n, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        half = t_quantile((1 + CONFIDENCE) / 2, n - 1) * std / np.sqrt(n)
    return np.where(n >= 2, half, np.nan)


def summarise(values: SeriesGroupBy) -> pd.DataFrame:
    """Per group of ``values``: :data:`STATS` (``n`` counts the non-null values)."""
    out = values.agg(["mean", "std", "count"]).rename(columns={"count": "n"})
    half = half_width(out["std"].to_numpy(), out["n"].to_numpy())
    out["std"] = out["std"].where(out["n"] >= 2)
    out["ci_low"] = out["mean"] - half
    out["ci_high"] = out["mean"] + half
    out["n"] = out["n"].astype("int64")
    return out[list(STATS)]
