"""An experiment's report: plots and tables drawn from its aggregate tables only.

``make_report(aggregate_dir, out_dir)`` reads ``{runs,metrics,geometry,gamma}.parquet``
(:mod:`protolib.results.aggregate`) and writes::

    out_dir/plots/{time_to_fit,delta_g,gram,gamma,accuracy_vs_imbalance}.png
    out_dir/tables/{accuracy,time_to_fit,delta_g}.{csv,md,tex}

:func:`report_files` lists exactly these paths without reading anything, so a workflow
rule can declare them as outputs; :data:`CAPTIONS` holds one reStructuredText caption
per plot and per table (keys ``plots/<name>`` and ``tables/<name>``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from protolib.results import plots, tables
from protolib.results.aggregate import RUNS_SCHEMA
from protolib.results.schema import GAMMA_SCHEMA, GEOMETRY_SCHEMA, METRICS_SCHEMA, read_table

PLOTS = ["time_to_fit", "delta_g", "gram", "gamma", "accuracy_vs_imbalance"]
TABLES = ["accuracy", "time_to_fit", "delta_g"]
TABLE_FORMATS = ("csv", "md", "tex")
AGGREGATE_TABLES = {
    "runs": RUNS_SCHEMA,
    "metrics": METRICS_SCHEMA,
    "geometry": GEOMETRY_SCHEMA,
    "gamma": GAMMA_SCHEMA,
}

_SPREAD = (
    "Lines are means over seeds, bands the min–max range over seeds, faint points single seeds."
)

CAPTIONS: dict[str, str] = {
    "plots/time_to_fit": (
        "**Time to fit** (the first evaluated iteration with zero training error against the "
        "possibly corrupted labels, MATH.md §7) against the label corruption *p*, at balanced "
        f"classes (*R* = 1), one line per loss and *n_w*. {_SPREAD} Hollow markers are runs "
        "that did **not reach** zero training error; they are drawn at the budget, so a mean "
        "that includes one is a lower bound."
    ),
    "plots/delta_g": (
        "**Geometry convergence** Δ_G = ‖G_M/‖G_M‖_F − G*/‖G*‖_F‖_F (MATH.md §3) of the "
        "training class means during training, one panel per imbalance ratio *R* and one row "
        "per loss that uses prototypes, one line per *n_w*, at *p* = 0. "
        "Lines are means over seeds, bands the min–max range."
    ),
    "plots/gram": (
        "**Final Gram matrices**: the class-mean Gram G_M (left of each pair) and the target "
        "G* (right), each divided by its Frobenius norm, on one colour scale centred at 0. "
        "By default one run per loss: the largest *R*, *p* = 0, the largest *n_w*, the "
        "smallest seed."
    ),
    "plots/gamma": (
        "**Angular similarity** γ = 1 − arccos(cos)/π (MATH.md §3) at the end of training: "
        "between class means, between classifier rows or prototypes, and between each "
        "embedding and its class mean; densities pooled over seeds at *R* = 1, *p* = 0. "
        "The dashed line is the regular simplex's γ."
    ),
    "plots/accuracy_vs_imbalance": (
        "**Test accuracy** against the imbalance ratio *R* (STEP imbalance, MATH.md §6) at "
        f"*p* = 0, one line per loss and *n_w*. {_SPREAD}"
    ),
    "tables/accuracy": (
        "**Accuracy** on the test set (and of the linear probe for losses without a "
        "classifier head), mean ± standard deviation over seeds, per grid point."
    ),
    "tables/time_to_fit": (
        "**Time to fit** in iterations, mean ± standard deviation over the seeds that reached "
        "zero training error; *fitted k/n* counts them."
    ),
    "tables/delta_g": (
        "**Final Δ_G** against each run's target geometry, mean ± standard deviation over "
        "seeds, per grid point."
    ),
}


def report_files(out_dir: str | Path) -> list[Path]:
    """Every file :func:`make_report` writes into ``out_dir``, in a fixed order."""
    out = Path(out_dir)
    return [out / "plots" / f"{name}.png" for name in PLOTS] + [
        out / "tables" / f"{name}.{ext}" for name in TABLES for ext in TABLE_FORMATS
    ]


def read_aggregate(aggregate_dir: str | Path) -> dict[str, pd.DataFrame]:
    """The four aggregate tables as DataFrames, their schema names and versions checked."""
    folder = Path(aggregate_dir)
    frames = {}
    for name, schema in AGGREGATE_TABLES.items():
        path = folder / f"{name}.parquet"
        if not path.exists():
            raise FileNotFoundError(
                f"{path} is missing; aggregate the runs first "
                "(protolib.results.aggregate.aggregate(run_dirs, aggregate_dir))"
            )
        frames[name] = read_table(path, schema).to_pandas()
    return frames


def _num_classes(geometry: pd.DataFrame) -> int | None:
    target = geometry[geometry["matrix"] == "target"]
    return int(target["row"].max()) + 1 if not target.empty else None


def make_report(
    aggregate_dir: str | Path,
    out_dir: str | Path,
    *,
    gram_runs: Sequence[str] | None = None,
) -> dict[str, Path]:
    """Write the report's plots and tables; return ``relative path → path``.

    Keys are the paths relative to ``out_dir`` (``"plots/gram.png"``,
    ``"tables/accuracy.md"``, …), the same files as :func:`report_files`. ``gram_runs``
    picks the runs of the Gram heatmaps (default:
    :func:`protolib.results.plots.select_gram_runs`).
    """
    frames = read_aggregate(aggregate_dir)
    runs, metrics = frames["runs"], frames["metrics"]
    geometry, gamma = frames["geometry"], frames["gamma"]
    out = Path(out_dir)
    figures = out / "plots"
    drawn = {
        "time_to_fit": plots.plot_time_to_fit(runs, figures / "time_to_fit.png"),
        "delta_g": plots.plot_delta_g(metrics, figures / "delta_g.png"),
        "gram": plots.plot_gram_heatmaps(geometry, runs, figures / "gram.png", run_ids=gram_runs),
        "gamma": plots.plot_gamma(
            gamma, runs, figures / "gamma.png", num_classes=_num_classes(geometry)
        ),
        "accuracy_vs_imbalance": plots.plot_accuracy_vs_imbalance(
            runs, figures / "accuracy_vs_imbalance.png"
        ),
    }
    built = {
        "accuracy": tables.accuracy_table(runs),
        "time_to_fit": tables.time_to_fit_table(runs),
        "delta_g": tables.delta_g_table(runs),
    }
    written: dict[str, Path] = {f"plots/{name}.png": drawn[name] for name in PLOTS}
    for name in TABLES:
        paths = tables.write_table(built[name], out / "tables" / name)
        for ext, path in zip(TABLE_FORMATS, paths, strict=True):
            written[f"tables/{name}.{ext}"] = path
    return written
