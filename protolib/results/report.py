"""An experiment's report: its figures and tables, declared once in :data:`ITEMS`.

Each :class:`Item` names a figure or table, the function that draws or builds it, the
aggregate tables it reads (:mod:`protolib.results.aggregate`) and its reStructuredText
caption. Everything else derives from that list: the files :func:`make_report` writes
(:func:`report_files`, the report rule's outputs), the captions of Snakemake's report
(:data:`CAPTIONS`, :func:`caption_file`) and the code that runs. Adding a figure is one
entry here and its tests. By default the report is::

    out_dir/plots/{time_to_fit,delta_g,gram,gamma,accuracy_vs_imbalance}.png
    out_dir/tables/{accuracy,time_to_fit,trained_bounds,accuracy_by_group,collapse,delta_g}
        .{csv,md,tex}

The Snakefile imports this module when it is parsed, so it imports only the standard
library; the drawing functions are named ``"module:function"`` and imported when used.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from protolib.io import write_atomic
from protolib.results.contract import TABLE_FILES

if TYPE_CHECKING:
    import pandas as pd

#: the aggregate tables an item may read, each ``<name>.parquet`` in the aggregate folder
AGGREGATE_TABLES = tuple(TABLE_FILES)  # runs, metrics, geometry, gamma
#: the formats every table is written in (:func:`protolib.results.tables.write_table`)
TABLE_FORMATS = ("csv", "md", "tex")
#: the folder of each kind of item under the report folder
FOLDERS = {"plot": "plots", "table": "tables"}
#: where :func:`caption_file` writes captions for Snakemake (beside Snakemake's metadata)
CAPTION_FOLDER = Path(".snakemake", "protolib", "captions")

_NAME = re.compile(r"[a-z][a-z0-9_]*")


@dataclass(frozen=True)
class Item:
    """One figure or table of the report.

    - ``function``: ``"module:function"``. A plot's is called as ``f(*inputs, path,
      **options)`` and returns the path it wrote; a table's as ``f(*inputs)`` and returns
      a DataFrame, written in every :data:`TABLE_FORMATS`.
    - ``inputs``: the aggregate tables passed to it, in order (:data:`AGGREGATE_TABLES`).
    - ``caption``: reStructuredText, shown by ``snakemake --report``.
    - ``options``: ``(keyword of function, keyword of make_report)`` pairs.
    - ``check``: ``"module:function"`` called as ``f(*inputs, **options)`` before anything
      is written; it raises ValueError for options it cannot honour.
    """

    name: str
    kind: Literal["plot", "table"]
    function: str
    inputs: tuple[str, ...]
    caption: str
    options: tuple[tuple[str, str], ...] = ()
    check: str | None = None

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ValueError(f"item name {self.name!r}: use lower case, digits and _")
        if self.kind not in FOLDERS:
            raise ValueError(f"item {self.name}: kind {self.kind!r}; allowed: plot, table")
        unknown = [t for t in self.inputs if t not in AGGREGATE_TABLES]
        if unknown or not self.inputs:
            raise ValueError(
                f"item {self.name}: inputs {list(self.inputs)}; allowed: a non-empty list "
                f"of {', '.join(AGGREGATE_TABLES)}"
            )
        for reference in filter(None, (self.function, self.check)):
            if reference.count(":") != 1:
                raise ValueError(f"item {self.name}: {reference!r} is not 'module:function'")

    @property
    def key(self) -> str:
        """``plots/<name>`` or ``tables/<name>`` (a plot and a table may share a name)."""
        return f"{FOLDERS[self.kind]}/{self.name}"

    @property
    def files(self) -> tuple[str, ...]:
        """The files it writes, relative to the report folder."""
        if self.kind == "plot":
            return (f"{self.key}.png",)
        return tuple(f"{self.key}.{ext}" for ext in TABLE_FORMATS)


def resolve(reference: str) -> Callable[..., Any]:
    """The function named ``"module:function"`` (importing its module)."""
    module, name = reference.split(":")
    return getattr(importlib.import_module(module), name)


_PLOTS = "protolib.results.plots"
_TABLES = "protolib.results.tables"
_SPREAD = (
    "Lines are means over seeds, bands the 95 % Student-t confidence interval of the mean "
    "(mean ± t·s/√n over the seeds, with a capped bar at each point; none where a point has a "
    "single seed), faint points single seeds."
)

#: the report, in order: plots first, then tables
ITEMS: tuple[Item, ...] = (
    Item(
        "time_to_fit",
        "plot",
        f"{_PLOTS}.curves:plot_time_to_fit",
        ("runs",),
        "**Time to fit** (the first evaluated iteration with zero training error against the "
        "possibly corrupted labels, MATH.md §7) against the label corruption *p*, at balanced "
        f"classes (*R* = 1), one line per loss and *n_w*. {_SPREAD} Hollow markers are runs "
        "that did **not reach** zero training error; they are drawn at the budget, so a mean "
        "that includes one is a lower bound. The mean and its interval count such runs at the "
        "budget.",
    ),
    Item(
        "delta_g",
        "plot",
        f"{_PLOTS}.curves:plot_delta_g",
        ("metrics",),
        "**Geometry convergence** Δ_G = ‖G_M/‖G_M‖_F − G*/‖G*‖_F‖_F (MATH.md §3) of the "
        "training class means during training, one panel per imbalance ratio *R* and one row "
        "per loss that uses prototypes, one line per *n_w*, at *p* = 0. "
        "Lines are means over seeds, bands the 95 % Student-t interval of the mean (none with "
        "a single seed).",
    ),
    Item(
        "gram",
        "plot",
        f"{_PLOTS}.gram:plot_gram_heatmaps",
        ("geometry", "runs"),
        "**Final Gram matrices**: the class-mean Gram G_M of each chosen run beside one copy of "
        "its target G*, each divided by its Frobenius norm, on one colour scale centred at 0. "
        "Each distinct target is drawn once, first (named A, B, … when the runs have several); "
        "each run's panel gives its loss variant, *n_w*, batch binding (when > 0), *R*, *p* "
        "(when > 0) and Δ_G against its target. By default, per loss variant, among its "
        "completed runs at its largest *R* and *p* = 0 (else its smallest *p*), with the "
        "smallest seed: the run with *n_w* = 0 and the one with the largest *n_w*; runs without "
        "prototypes first, at most 8.",
        options=(("run_ids", "gram_runs"),),
        check=f"{_PLOTS}.gram:check_run_ids",
    ),
    Item(
        "gamma",
        "plot",
        f"{_PLOTS}.gamma:plot_final_gamma",
        ("gamma", "runs", "geometry"),
        "**Angular similarity** γ = 1 − arccos(cos)/π (MATH.md §3) at the end of training: "
        "between class means, between classifier rows or prototypes, and between each "
        "embedding and its class mean; densities pooled over seeds at *R* = 1, *p* = 0. "
        "The dashed line is the regular simplex's γ.",
    ),
    Item(
        "accuracy_vs_imbalance",
        "plot",
        f"{_PLOTS}.curves:plot_accuracy_vs_imbalance",
        ("runs",),
        "**Test accuracy** against the imbalance ratio *R* (STEP imbalance, MATH.md §6) at "
        f"*p* = 0, one line per loss and *n_w*. {_SPREAD}",
    ),
    Item(
        "accuracy",
        "table",
        f"{_TABLES}:accuracy_table",
        ("runs",),
        "**Accuracy** on the test set (and of the linear probe for losses without a "
        "classifier head) per grid point: mean ± half-width of the 95 % Student-t interval of "
        "the mean over seeds (t·s/√n); *(n = k)* marks a cell over fewer seeds than its row, "
        "or a single seed (no interval). The CSV also holds the interval's ends, the standard "
        "deviation and the counts.",
    ),
    Item(
        "time_to_fit",
        "table",
        f"{_TABLES}:time_to_fit_table",
        ("runs",),
        "**Time to fit** in iterations: mean ± half-width of the 95 % Student-t interval over "
        "the seeds that reached zero training error; *fitted k/n* counts them.",
    ),
    Item(
        "trained_bounds",
        "table",
        f"{_TABLES}:trained_bounds_table",
        ("runs",),
        "**Bound vs attained (trained networks)**, MATH.md §4: for runs with exactly balanced "
        "training labels, *supcon_batch* is the SupCon loss summed over anchors per batch "
        "(ρ² = 1/τ) over ``bound_batches`` batches drawn as in training, against the mean "
        "of those batches' Theorem 2 terms (summed over every multiset they give Theorem 2; a "
        "term bounds the expected loss of a batch, not each batch, so the gap estimates a "
        "non-negative number, 0 at the simplex); *ce_theorem1* is the mean training "
        "cross-entropy against Theorem 1 with the trained ‖W‖_F and the largest feature norm "
        "(never below it). Mean ± half-width of the 95 % Student-t interval over seeds.",
    ),
    Item(
        "accuracy_by_group",
        "table",
        f"{_TABLES}:group_accuracy_table",
        ("runs",),
        "**Accuracy by class size** (MATH.md §3) at the end of training: test accuracy on "
        "the *many* (> 100 training images), *medium* (20–100) and *few* (< 20) classes "
        "(empty when no class is of that size), kNN accuracy (k = 20, cosine, the training "
        "embeddings) and the agreement of the model's prediction with the nearest class "
        "mean (NC4). Mean ± half-width of the 95 % Student-t interval over seeds.",
    ),
    Item(
        "collapse",
        "table",
        f"{_TABLES}:collapse_table",
        ("runs",),
        "**Collapse statistics** of the final training embeddings (MATH.md §3): effective "
        "rank of the centred class means (*K* − 1 at a simplex), CDNV (0 when every class "
        "is collapsed), alignment and uniformity (Wang & Isola). Mean ± half-width of the "
        "95 % Student-t interval over seeds.",
    ),
    Item(
        "delta_g",
        "table",
        f"{_TABLES}:delta_g_table",
        ("runs",),
        "**Final Δ_G** against each run's target geometry per grid point: mean ± half-width of "
        "the 95 % Student-t interval of the mean over seeds; *(n = k)* marks fewer seeds.",
    ),
)

PLOTS = [item.name for item in ITEMS if item.kind == "plot"]
TABLES = [item.name for item in ITEMS if item.kind == "table"]
#: ``plots/<name>`` / ``tables/<name>`` → reStructuredText caption
CAPTIONS: dict[str, str] = {item.key: item.caption for item in ITEMS}
if len(CAPTIONS) != len(ITEMS):
    raise ValueError("two report items share a kind and a name")


def report_files(out_dir: str | Path) -> list[Path]:
    """Every file :func:`make_report` writes into ``out_dir``, in a fixed order."""
    out = Path(out_dir)
    return [out / name for item in ITEMS for name in item.files]


def caption_file(key: str, folder: str | Path = CAPTION_FOLDER) -> str:
    """The absolute path of a file holding the caption of ``key`` (``plots/<name>`` or
    ``tables/<name>``), for ``report(path, caption=...)`` in a Snakemake rule.

    The file is (re)written atomically only when missing or different, so parsing the
    workflow many times at once (cluster jobs) is safe and usually writes nothing.
    """
    if key not in CAPTIONS:
        raise KeyError(f"no report item {key!r}; known: {', '.join(CAPTIONS)}")
    path = Path(folder, key.replace("/", "_") + ".rst").absolute()
    text = CAPTIONS[key].rstrip() + "\n"
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return str(path)


def read_aggregate(aggregate_dir: str | Path) -> dict[str, pd.DataFrame]:
    """The four aggregate tables as DataFrames, their schema names and versions checked."""
    from protolib.results.schema import SCHEMAS, TABLE_FILES, read_table

    folder = Path(aggregate_dir)
    frames = {}
    for name in AGGREGATE_TABLES:
        path = folder / TABLE_FILES[name]
        if not path.exists():
            raise FileNotFoundError(
                f"{path} is missing; aggregate the runs first "
                "(protolib.results.aggregate.aggregate(run_dirs, aggregate_dir))"
            )
        frames[name] = read_table(path, SCHEMAS[name]).to_pandas()
    return frames


def _keywords(item: Item, options: dict[str, Any]) -> dict[str, Any]:
    """The keywords of ``item``'s function, from the report's ``options``."""
    missing = [source for _, source in item.options if source not in options]
    if missing:
        raise ValueError(f"item {item.key} needs option(s) {missing}; given: {sorted(options)}")
    return {keyword: options[source] for keyword, source in item.options}


def write_items(
    items: Sequence[Item],
    frames: dict[str, pd.DataFrame],
    out_dir: str | Path,
    options: dict[str, Any],
) -> dict[str, Path]:
    """Check every item's options, then draw or build and write each item; return
    ``path relative to out_dir → path`` (the keys are each item's :attr:`Item.files`)."""
    keywords = {item.key: _keywords(item, options) for item in items}
    for item in items:
        if item.check is not None:
            resolve(item.check)(*(frames[t] for t in item.inputs), **keywords[item.key])
    out = Path(out_dir)
    written: dict[str, Path] = {}
    for item in items:
        inputs = [frames[t] for t in item.inputs]
        function = resolve(item.function)
        if item.kind == "plot":
            (name,) = item.files
            written[name] = function(*inputs, out / name, **keywords[item.key])
        else:
            from protolib.results.tables import write_table

            table = function(*inputs, **keywords[item.key])
            paths = write_table(table, out / item.key)
            written.update(zip(item.files, paths, strict=True))
    return written


def make_report(
    aggregate_dir: str | Path,
    out_dir: str | Path,
    *,
    gram_runs: Sequence[str] | None = None,
) -> dict[str, Path]:
    """Write the report's plots and tables (:data:`ITEMS`); return ``relative path → path``.

    Keys are the paths relative to ``out_dir`` (``"plots/gram.png"``,
    ``"tables/accuracy.md"``, …), the same files as :func:`report_files`. ``gram_runs``
    picks the runs of the Gram heatmaps (default:
    :func:`protolib.results.plots.select_gram_runs`); an unknown one is refused
    (ValueError) before anything is written.
    """
    frames = read_aggregate(aggregate_dir)
    return write_items(ITEMS, frames, out_dir, {"gram_runs": gram_runs})
