"""The Gram figure (the prototype study's Fig. 1) on synthetic aggregate tables."""

from __future__ import annotations

import math

import matplotlib.image
import numpy as np
import pandas as pd
import pytest

from protolib.results.plots.gram import (
    NO_MATRIX,
    check_run_ids,
    gram_figure,
    plot_gram_heatmaps,
    select_gram_runs,
)

K = 4
RUN_COLUMNS = ["loss", "n_w", "imbalance_ratio", "label_corruption", "seed", "status"]


def etf(k: int = K) -> np.ndarray:
    """A Gram proportional to the simplex ETF's: ``I − 11ᵀ/k``."""
    return np.eye(k) - np.ones((k, k)) / k


def collapse(k: int = K) -> np.ndarray:
    """A Gram whose first two classes share one direction (a different target)."""
    g = np.eye(k)
    g[0, 1] = g[1, 0] = 1.0
    return g


def unit(matrix: np.ndarray) -> np.ndarray:
    """``matrix`` over the square root of its sum of squares (the reference normalisation)."""
    return matrix / math.sqrt(float((matrix**2).sum()))


def geometry_table(matrices: dict[str, dict[str, np.ndarray]]) -> pd.DataFrame:
    """The long geometry table: ``{run_id: {matrix name: K×K}}`` → one row per entry."""
    rows = [
        {"run_id": run_id, "matrix": name, "row": i, "col": j, "value": float(m[i, j])}
        for run_id, named in matrices.items()
        for name, m in named.items()
        for i in range(m.shape[0])
        for j in range(m.shape[1])
    ]
    return pd.DataFrame(rows, columns=["run_id", "matrix", "row", "col", "value"])


def runs_table(rows: list[tuple], **extra: list) -> pd.DataFrame:
    """Runs ``r0, r1, …`` from ``(loss, n_w, R, p, seed, status)`` rows, plus columns."""
    runs = pd.DataFrame(rows, columns=RUN_COLUMNS)
    runs["run_id"] = [f"r{i}" for i in range(len(runs))]
    runs["delta_g"] = np.nan
    for name, values in extra.items():
        runs[name] = values
    return runs


def heatmaps(fig) -> list[tuple[str, np.ndarray]]:
    """(title, drawn array) of every heatmap on ``fig``, in panel order."""
    return [(ax.get_title(), np.asarray(im.get_array())) for ax in fig.axes for im in ax.images]


def panel(fig, run_id_head: str):
    """The one axes whose title starts with ``run_id_head``."""
    (ax,) = [ax for ax in fig.axes if ax.get_title().startswith(run_id_head)]
    return ax


# a learned Gram per run: the target plus a run-specific perturbation
RNG = np.random.default_rng(0)
LEARNED = {f"r{i}": etf() + 0.2 * (lambda a: a + a.T)(RNG.normal(size=(K, K))) for i in range(4)}


def test_runs_sharing_a_target_draw_it_once():
    runs = runs_table(
        [("bcl", 0, 10, 0.0, 0, "completed"), ("supcon", 100, 10, 0.0, 0, "completed")],
        binding=[4, 0],
        geometry=["etf", "etf"],
    )
    # the same target at two scales and within rounding: one normalised target
    geometry = geometry_table(
        {
            "r0": {"class_means": LEARNED["r0"], "target": 3.0 * etf()},
            "r1": {"class_means": LEARNED["r1"], "target": etf() + 1e-12},
        }
    )
    fig = gram_figure(geometry, runs, ["r0", "r1"])
    drawn = heatmaps(fig)
    assert len(drawn) == 3  # one target, two learned
    (title, target), *learned = drawn
    assert title == "target G*\netf"
    np.testing.assert_allclose(target, unit(etf()), atol=1e-12)
    for (title, array), run_id in zip(learned, ["r0", "r1"], strict=True):
        np.testing.assert_allclose(array, unit(LEARNED[run_id]), atol=1e-12)
        delta = math.sqrt(float(((unit(LEARNED[run_id]) - unit(etf())) ** 2).sum()))
        assert f"= {delta:.3f}" in title and "vs." not in title
    assert learned[0][0].startswith("bcl, $n_w$ = 0, binding 4\nR = 10\n")
    assert learned[1][0].startswith("supcon, $n_w$ = 100\nR = 10\n")  # binding 0: unnamed
    # one colour scale: every heatmap has the same limits, the largest absolute entry
    limits = {im.get_clim() for ax in fig.axes for im in ax.images}
    largest = max(float(np.abs(a).max()) for _, a in drawn)
    assert limits == {(-largest, largest)}


def test_distinct_targets_are_each_drawn_once_and_named_by_their_runs():
    runs = runs_table(
        [
            ("limit_etf", 0, 10, 0.0, 0, "completed"),
            ("limit_collapse", 0, 10, 0.0, 0, "completed"),
            ("limit_etf2", 0, 10, 0.0, 0, "completed"),
        ],
        geometry=["etf", "majority_collapse", "etf"],
    )
    runs.loc[2, "delta_g"] = 0.5  # a recorded Δ_G is shown as recorded
    geometry = geometry_table(
        {
            "r0": {"class_means": LEARNED["r0"], "target": etf()},
            "r1": {"class_means": LEARNED["r1"], "target": collapse()},
            "r2": {"class_means": LEARNED["r2"], "target": 2 * etf()},
        }
    )
    drawn = heatmaps(gram_figure(geometry, runs, ["r0", "r1", "r2"]))
    titles = [title for title, _ in drawn]
    assert len(drawn) == 5  # two targets, three learned
    assert titles[:2] == ["target A\netf", "target B\nmajority_collapse"]
    np.testing.assert_allclose(drawn[0][1], unit(etf()), atol=1e-12)
    np.testing.assert_allclose(drawn[1][1], unit(collapse()), atol=1e-12)
    against = {"r0": ("A", etf()), "r1": ("B", collapse())}
    for title, (run_id, (name, target)) in zip(titles[2:4], against.items(), strict=True):
        delta = math.sqrt(float(((unit(LEARNED[run_id]) - unit(target)) ** 2).sum()))
        assert title.endswith(f"= {delta:.3f} vs. target {name}")
    assert titles[4].endswith("= 0.500 vs. target A")


def test_default_selection_takes_n_w_0_and_the_largest_n_w_per_variant():
    rows = [
        # loss, n_w, R, p, seed, status
        ("supcon", 0, 50, 0.0, 1, "completed"),
        ("supcon", 0, 50, 0.0, 0, "completed"),  # r1 <- n_w 0, seed 0
        ("supcon", 10, 50, 0.0, 0, "completed"),
        ("supcon", 100, 50, 0.0, 0, "diverged"),  # not completed
        ("supcon", 100, 50, 0.0, 1, "completed"),  # r4 <- largest n_w, smallest seed left
        ("supcon", 100, 50, 0.2, 0, "completed"),  # p > 0
        ("supcon", 200, 10, 0.0, 0, "completed"),  # not the largest R
        ("bcl", 0, 50, 0.3, 0, "completed"),
        ("bcl", 0, 50, 0.1, 2, "completed"),  # r8 <- no p = 0 at R = 50: smallest p
        ("bcl", 0, 1, 0.0, 0, "completed"),
        ("ce", 0, 10, 0.0, 0, "completed"),  # r10 <- its own largest R
        ("protos", 10, 50, 0.0, 0, "completed"),
        ("protos", 20, 50, 0.0, 3, "completed"),  # r12 <- no n_w = 0: only the largest
        ("broken", 0, 50, 0.0, 0, "diverged"),  # no completed run: no panel
    ]
    runs = runs_table(rows)
    # without prototypes first, then with; each by variant name
    assert select_gram_runs(runs) == ["r8", "r10", "r1", "r12", "r4"]
    assert select_gram_runs(runs, max_runs=2) == ["r8", "r10"]
    assert select_gram_runs(runs.drop(columns="status"))[-2:] == ["r12", "r3"]
    assert select_gram_runs(runs.iloc[:0]) == []
    many = runs_table([(f"loss{i}", 0, 1.0, 0.0, 0, "completed") for i in range(10)])
    assert select_gram_runs(many) == [f"r{i}" for i in range(8)]


def test_a_run_without_a_finite_matrix_still_draws_with_a_note(tmp_path):
    runs = runs_table([("supcon", 0, 10, 0.0, 0, "completed")] * 3)
    broken = LEARNED["r1"].copy()
    broken[0, 0] = np.nan
    geometry = geometry_table(
        {
            "r0": {"class_means": LEARNED["r0"], "target": etf()},
            "r1": {"class_means": broken, "target": etf()},
            # r2: nothing recorded
        }
    )
    fig = gram_figure(geometry, runs, ["r0", "r1", "r2"])
    assert len(heatmaps(fig)) == 2  # the target and r0
    axes = [ax for ax in fig.axes if ax.get_title().startswith("supcon")]
    assert len(axes) == 3
    noted = [[t.get_text() for t in ax.texts] for ax in axes]
    assert noted == [[], [NO_MATRIX], [NO_MATRIX]]
    assert [len(ax.images) for ax in axes] == [1, 0, 0]
    assert axes[1].get_title().endswith("= n/a")
    assert axes[2].get_title().endswith("= n/a no target recorded")
    path = plot_gram_heatmaps(geometry, runs, tmp_path / "g.png", run_ids=["r0", "r1", "r2"])
    image = matplotlib.image.imread(path)
    assert image.shape[1] > image.shape[0] > 100


def test_explicit_run_ids_are_honoured_and_unknown_ones_refused(tmp_path):
    runs = runs_table([("ce", 0, 1, 0.0, 0, "completed"), ("supcon", 10, 10, 0.2, 1, "diverged")])
    geometry = geometry_table(
        {
            "r0": {"class_means": LEARNED["r0"], "target": etf()},
            "r1": {"class_means": LEARNED["r1"], "target": etf()},
            "extra": {"class_means": LEARNED["r2"], "target": etf()},  # not in runs
        }
    )
    ids = ["r1", "extra", "r0"]  # not the default, a diverged run, in this order
    drawn = heatmaps(gram_figure(geometry, runs, ids))
    assert [title.split("\n")[0] for title, _ in drawn] == [
        "target G*",
        "supcon, $n_w$ = 10",
        "extra",
        "ce, $n_w$ = 0",
    ]
    assert drawn[1][0].split("\n")[1] == "R = 10, p = 0.2"
    for (_, array), run_id in zip(drawn[1:], ["r1", "r2", "r0"], strict=True):
        np.testing.assert_allclose(array, unit(LEARNED[run_id]), atol=1e-12)
    path = plot_gram_heatmaps(geometry, runs, tmp_path / "g.png", run_ids=ids)
    assert path == tmp_path / "g.png" and path.read_bytes()[:4] == b"\x89PNG"
    check_run_ids(geometry, runs, run_ids=ids)
    check_run_ids(geometry, runs)
    with pytest.raises(ValueError, match=r"^unknown run id\(s\) nope, r9; known: extra, r0, r1$"):
        plot_gram_heatmaps(geometry, runs, tmp_path / "x.png", run_ids=["r0", "nope", "r9"])
    assert not (tmp_path / "x.png").exists()
