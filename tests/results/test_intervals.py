"""Intervals over seeds: the t quantile, the tables' cells and the plots' bands, checked
against hand-computed values on small synthetic aggregate tables (no training)."""

from __future__ import annotations

import math

import matplotlib.image
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from matplotlib.collections import LineCollection

from protolib.results import tables
from protolib.results.contract import KEY_COLUMNS, Axis
from protolib.results.intervals import STATS, half_width, summarise, t_quantile
from protolib.results.plots import curves
from protolib.results.schema import SCHEMAS

# t_{0.975, df} from printed tables of Student's t
KNOWN_T = {1: 12.706, 2: 4.303, 4: 2.776, 9: 2.262, 29: 2.045}
KEYS = ["loss", "n_w", "imbalance_ratio", "label_corruption"]


def frame(table: str, rows: list[dict]) -> pd.DataFrame:
    """An aggregate table as the report reads it (Arrow schema → pandas); grid axes not
    given take their contract defaults."""
    defaults = {c.name: c.default for c in KEY_COLUMNS if isinstance(c, Axis)}
    records = [
        {**defaults, "experiment": "e", "status": "completed", **row, "run_id": f"r{i}"}
        for i, row in enumerate(rows)
    ]
    return pa.Table.from_pylist(records, schema=SCHEMAS[table]).to_pandas()


def runs_of(loss: str, accuracies: list, *, R: float = 1.0, p: float = 0.0, **more) -> list:
    """One run per accuracy (seeds 0, 1, …); ``more`` gives per-seed lists of other columns."""
    return [
        {
            "loss": loss,
            "imbalance_ratio": R,
            "label_corruption": p,
            "seed": seed,
            "test_accuracy": accuracy,
            "iterations": 300,
            **{key: values[seed] for key, values in more.items()},
        }
        for seed, accuracy in enumerate(accuracies)
    ]


# -- the quantile and the interval -------------------------------------------------------
@pytest.mark.parametrize(("df", "expected"), sorted(KNOWN_T.items()))
def test_t_quantile_matches_printed_tables(df, expected):
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=5e-4)


def test_t_quantile_limits_and_refusals():
    assert t_quantile(0.975, 10**7) == pytest.approx(1.95996, abs=1e-4)  # the normal's
    assert math.isnan(t_quantile(0.975, 0))
    assert t_quantile(0.5, 3) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match=r"probability 1\.0: allowed 0 < probability < 1"):
        t_quantile(1.0, 3)


def test_summarise_against_hand_computed_intervals():
    values = pd.DataFrame(
        {
            "g": ["five"] * 5 + ["two"] * 2 + ["one", "equal", "equal", "equal", "none"],
            "x": [1, 2, 3, 4, 5, 0.90, 0.92, 7.0, 0.5, 0.5, 0.5, None],
        }
    )
    stats = summarise(values.groupby("g")["x"])
    # five: s = √2.5, half = 2.776 · √2.5/√5 = 2.776/√2
    five = stats.loc["five"]
    assert five["mean"] == 3 and five["n"] == 5
    assert five["std"] == pytest.approx(math.sqrt(2.5), rel=1e-12)
    assert five["ci_low"] == pytest.approx(3 - 2.776 / math.sqrt(2), abs=5e-4)
    assert five["ci_high"] == pytest.approx(3 + 2.776 / math.sqrt(2), abs=5e-4)
    # two: s = 0.02/√2, half = 12.706 · s/√2 = 12.706 · 0.01
    two = stats.loc["two"]
    assert two["mean"] == pytest.approx(0.91)
    assert (two["ci_low"], two["ci_high"]) == pytest.approx(
        (0.91 - 0.12706, 0.91 + 0.12706), abs=1e-5
    )
    one, equal, none = stats.loc["one"], stats.loc["equal"], stats.loc["none"]
    assert one["mean"] == 7 and one["n"] == 1
    assert all(math.isnan(one[c]) for c in ("ci_low", "ci_high", "std"))  # never ± 0
    assert equal["ci_low"] == equal["ci_high"] == 0.5 and equal["n"] == 3
    assert none["n"] == 0 and math.isnan(none["mean"]) and math.isnan(none["ci_low"])
    assert stats["n"].dtype == np.int64
    assert np.isnan(half_width(np.array([1.0, 1.0]), np.array([1, 0]))).all()


# -- tables ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def runs() -> pd.DataFrame:
    rows = runs_of("ce", [0.80, 0.82, 0.84, 0.86, 0.88], time_to_fit=[100, 200, 300, None, None])
    rows += runs_of("supcon", [0.90, 0.92], probe_accuracy=[0.7, None])
    rows += runs_of("supcon", [0.60], R=10.0, probe_accuracy=[0.65], time_to_fit=[120])
    rows += runs_of("bcl", [0.5, 0.5, 0.5], p=0.2, time_to_fit=[None] * 3)
    return frame("runs", rows)


def cells(text: str, prefix: str) -> list[str]:
    (line,) = [line for line in text.splitlines() if line.startswith(prefix)]
    return [c.strip() for c in line.strip("|\\ ").split("&" if "&" in line else "|")]


def test_accuracy_table_holds_the_hand_computed_intervals(runs, tmp_path):
    table = tables.accuracy_table(runs)
    got = table.set_index(KEYS)
    ce = got.loc[("ce", 0, 1.0, 0.0)]
    # s = √0.001, half = 2.776 · √0.001/√5 = 2.776 · √0.0002
    half = 2.7764451 * math.sqrt(0.0002)
    assert ce["test_accuracy_mean"] == pytest.approx(0.84)
    assert ce["test_accuracy_ci_low"] == pytest.approx(0.84 - half, rel=1e-7)
    assert ce["test_accuracy_ci_high"] == pytest.approx(0.84 + half, rel=1e-7)
    assert ce["test_accuracy_std"] == pytest.approx(math.sqrt(0.001))
    assert (ce["test_accuracy_n"], ce["probe_accuracy_n"], ce["n_seeds"]) == (5, 0, 5)
    csv, md, tex = (p.read_text() for p in tables.write_table(table, tmp_path / "accuracy"))
    back = pd.read_csv(tmp_path / "accuracy.csv")
    for column in ("test_accuracy_ci_low", "test_accuracy_ci_high"):  # full precision
        np.testing.assert_array_equal(back[column], table[column])
    header = csv.splitlines()[0].split(",")
    first = header.index("test_accuracy_mean")
    assert header[first : first + 5] == [f"test_accuracy_{s}" for s in STATS]
    assert STATS == ("mean", "ci_low", "ci_high", "std", "n")
    expected = {  # (Markdown, LaTeX) of (test accuracy, probe accuracy, seeds)
        "bcl": (["0.500 ± 0.000", "—", "3"], [r"0.500 $\pm$ 0.000", "--", "3"]),
        "ce": (["0.840 ± 0.039", "—", "5"], [r"0.840 $\pm$ 0.039", "--", "5"]),
        "supcon | 0 | 1 |": (["0.910 ± 0.127", "0.700 (n = 1)", "2"], None),
        "supcon | 0 | 10 |": (["0.600 (n = 1)", "0.650 (n = 1)", "1"], None),
    }
    for row, (markdown, latex) in expected.items():
        assert cells(md, f"| {row}")[-3:] == markdown, row
        if latex:
            assert cells(tex, f"{row} &")[-3:] == latex, row
    assert tables.LEGEND in md and tex.startswith(f"% {tables.LEGEND}\n\\begin{{tabular}}")


def test_time_to_fit_table_intervals_over_the_seeds_that_fitted(runs):
    table = tables.time_to_fit_table(runs)
    got = table.set_index(KEYS)
    ce = got.loc[("ce", 0, 1.0, 0.0)]
    # fitted at 100, 200, 300: s = 100, half = 4.303 · 100/√3
    assert ce["time_to_fit_mean"] == 200 and ce["time_to_fit_n"] == 3
    assert ce["time_to_fit_ci_high"] - 200 == pytest.approx(430.3 / math.sqrt(3), abs=0.05)
    assert (ce["fitted"], ce["n_seeds"], ce["budget"]) == ("3/5", 5, 300)
    md = tables.to_markdown(table)
    assert cells(md, "| ce |")[-3:] == ["200 ± 248 (n = 3)", "3/5", "300"]
    assert cells(md, "| bcl |")[-3:] == ["—", "0/3", "300"]
    assert cells(md, "| supcon | 0 | 10 |")[-3:] == ["120 (n = 1)", "1/1", "300"]
    assert "n_seeds" not in md and "seeds" not in md.splitlines()[0]


def test_six_significant_digits_keep_their_interval(runs):
    bounds = runs.assign(
        bound_kind="ce_theorem1", bound_attained=1e-20, bound_value=0.0, bound_gap=1e-20
    )
    bounds.loc[bounds["seed"] == 1, ["bound_attained", "bound_gap"]] = 3e-20
    md = tables.to_markdown(tables.trained_bounds_table(bounds))
    (line,) = [line for line in md.splitlines() if line.startswith("| supcon | 0 | 1 |")]
    half = f"{12.7062047 * 1e-20:g}"  # two seeds: s = √2·1e-20, half = t · 1e-20
    assert f"| 2e-20 ± {half} |" in line and "| 0 ± 0 |" in line


# -- plots -------------------------------------------------------------------------------
def bars(fig) -> np.ndarray:
    """``(x, low, high)`` of every interval bar drawn in ``fig``, one row each, sorted."""
    found = []
    for ax in fig.axes:
        for collection in ax.collections:
            if isinstance(collection, LineCollection):
                found += [(s[0][0], s[0][1], s[1][1]) for s in collection.get_segments()]
    return np.array(sorted(found))


def test_accuracy_plot_draws_the_interval_and_no_band_for_one_seed(runs):
    fig = curves.accuracy_vs_imbalance_figure(runs)
    half_ce, half_supcon = 2.7764451 * math.sqrt(0.0002), 0.1270620
    expected = [
        (1.0, 0.84 - half_ce, 0.84 + half_ce),
        (1.0, 0.91 - half_supcon, 0.91 + half_supcon),
    ]
    assert bars(fig) == pytest.approx(
        np.array(sorted(expected)), abs=1e-6
    )  # none at R = 10 (one seed)
    assert "t-interval" in fig.axes[0].get_title()


def test_time_to_fit_plot_counts_censored_runs_at_the_budget(runs):
    fig = curves.time_to_fit_figure(runs)
    # ce at p = 0: 100, 200, 300 and two censored at 300 → mean 240, s = √8000; supcon
    # (p = 0) and bcl (p = 0.2) never fitted: every seed at 300, a zero-width interval
    half = 2.7764451 * math.sqrt(8000 / 5)
    expected = [(0.0, 240 - half, 240 + half), (0.0, 300, 300), (0.2, 300, 300)]
    assert bars(fig) == pytest.approx(np.array(expected), abs=1e-6)
    labels = [text.get_text() for text in fig.axes[0].get_legend().get_texts()]
    assert "not reached (drawn at the budget)" in labels


def test_delta_g_plot_draws_the_interval_per_evaluation():
    rows = [
        {
            "loss": "supcon",
            "n_w": 10,
            "seed": seed,
            "step": step,
            "epoch": step / 10,
            "split": "train",
            "metric": "delta_g",
            "value": value,
        }
        for seed, values in enumerate([(0.9, 0.4), (0.7, 0.2)])
        for step, value in zip((10, 20), values, strict=True)
    ]
    fig = curves.delta_g_figure(frame("metrics", rows))
    half = 12.7062047 * 0.1  # two seeds 0.2 apart: s = 0.2/√2, half = t · 0.1
    expected = [(1.0, 0.8 - half, 0.8 + half), (2.0, 0.3 - half, 0.3 + half)]
    assert bars(fig) == pytest.approx(np.array(expected), abs=1e-6)
    assert fig.axes[0].get_ylim()[0] >= -0.1  # Δ_G ≥ 0: the wide band is cut at 0


# -- degenerate input ---------------------------------------------------------------------
TABLES = [
    tables.accuracy_table,
    tables.time_to_fit_table,
    tables.delta_g_table,
    tables.trained_bounds_table,
]
PLOTS = [curves.plot_time_to_fit, curves.plot_accuracy_vs_imbalance]


@pytest.mark.parametrize("count", [0, 1])
def test_every_table_and_plot_works_on_no_run_and_on_one(runs, tmp_path, count):
    some = (
        runs[runs["loss"] == "ce"]
        .iloc[:count]
        .assign(bound_kind="supcon_batch", bound_attained=2.0, bound_value=1.5, bound_gap=0.5)
    )
    for build in TABLES:
        table = build(some)
        assert len(table) == count, build.__name__
        for path in tables.write_table(table, tmp_path / build.__name__):
            assert path.read_text().strip(), path
    for draw in PLOTS:
        image = matplotlib.image.imread(draw(some, tmp_path / f"{draw.__name__}.png"))
        assert image.shape[0] > 100 and float(image[..., :3].var()) > 1e-3
    metrics = frame("metrics", [])
    curves.plot_delta_g(metrics, tmp_path / "delta_g.png")
    assert (tmp_path / "delta_g.png").stat().st_size > 1000
    if count:
        md = tables.to_markdown(tables.accuracy_table(some))
        assert "0.800 (n = 1)" in md and "±" not in md.split("\n\n")[0]


def test_curves_never_pool_two_imbalance_shapes():
    from protolib.results.figures import one_imbalance_shape

    runs = pd.DataFrame(
        {
            "imbalance": ["step", "exp", "exp", "step"],
            "minority_fraction": [0.5, 0.5, 0.5, 0.3],
            "run_id": ["a", "b", "c", "d"],
        }
    )
    assert list(one_imbalance_shape(runs)["run_id"]) == ["a"]  # the defaults
    only_exp = runs[runs["imbalance"] == "exp"]
    assert list(one_imbalance_shape(only_exp)["run_id"]) == ["b", "c"]
    assert list(one_imbalance_shape(runs.drop(columns=["imbalance"]))["run_id"]) == ["a", "b", "c"]
