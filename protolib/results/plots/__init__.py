"""Plots of an experiment's aggregate tables: one PNG figure per question.

Every function reads aggregate DataFrames only (``runs``, ``metrics``, ``geometry``,
``gamma``; :mod:`protolib.results.aggregate`), never run directories, writes one PNG
atomically and returns its path (helpers: :mod:`protolib.results.figures`). Degenerate
input — no runs, one value on the x axis, a missing metric — still gives a figure, with a
note in it saying what is missing. Spread over seeds is always the 95 % Student-t
interval of the mean (band and capped bars; none for a single seed);
individual seeds are faint points. One module per figure family:
:mod:`~protolib.results.plots.curves` (lines over the grid and over training),
:mod:`~protolib.results.plots.gram` (Gram heatmaps), :mod:`~protolib.results.plots.gamma`
(γ distributions). Which of them the report draws: :data:`protolib.results.report.ITEMS`.
"""

from protolib.results.plots.curves import (
    plot_accuracy_vs_imbalance,
    plot_delta_g,
    plot_time_to_fit,
)
from protolib.results.plots.gamma import (
    GAMMA_DISTRIBUTIONS,
    classes_from_pairs,
    plot_final_gamma,
    plot_gamma,
)
from protolib.results.plots.gram import long_matrix, plot_gram_heatmaps, select_gram_runs

__all__ = [
    "GAMMA_DISTRIBUTIONS",
    "classes_from_pairs",
    "long_matrix",
    "plot_accuracy_vs_imbalance",
    "plot_delta_g",
    "plot_final_gamma",
    "plot_gamma",
    "plot_gram_heatmaps",
    "plot_time_to_fit",
    "select_gram_runs",
]
