"""Summary tables of an experiment's runs table, and writing them as CSV, Markdown, LaTeX.

Each table has one row per grid point (the loss and every grid axis but the seed,
:data:`GRID`, sorted) and summarises its seeds. A figure ``x`` becomes the columns
``x_mean``, ``x_ci_low``, ``x_ci_high`` (the 95 % Student-t interval of the mean,
:mod:`protolib.results.intervals`), ``x_std`` (sample standard deviation, ``ddof = 1``)
and ``x_n`` (the seeds where ``x`` is not null, which the others are over); ``n_seeds``
counts the runs. One seed gives the mean with NaN interval and std. CSV keeps every
column at full precision; Markdown and LaTeX show each figure as one cell,
``0.912 ± 0.004`` (± the interval's half-width), followed by ``(n = k)`` when it is over
``k`` ≠ ``n_seeds`` seeds or one seed (then without ``±``).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from protolib.io import write_text
from protolib.results.contract import GRID_COLUMNS, PANEL_TEST, PANEL_TRAIN, SEED
from protolib.results.intervals import CONFIDENCE, STATS, summarise
from protolib.results.markdown import markdown_table
from protolib.results.report import TABLE_FORMATS

#: the grid keys a table is grouped by (the seed is what is summarised)
GRID = [name for name in GRID_COLUMNS if name != SEED.name]
#: column → (Markdown header, LaTeX header); other columns keep their name
HEADERS = {
    "loss": ("loss", "loss"),
    "n_w": ("n_w", r"$n_w$"),
    "imbalance_ratio": ("R", r"$R$"),
    "imbalance": ("imbalance", "imbalance"),
    "minority_fraction": ("μ", r"$\mu$"),
    "label_corruption": ("p", r"$p$"),
    "test_accuracy": ("test accuracy", "test accuracy"),
    "probe_accuracy": ("probe accuracy", "probe accuracy"),
    "delta_g": ("Δ_G", r"$\Delta_G$"),
    "time_to_fit": ("time to fit (iterations)", "time to fit (iterations)"),
    "fitted": ("fitted", "fitted"),
    "budget": ("budget", "budget"),
    "n_seeds": ("seeds", "seeds"),
    "accuracy_many": ("many", "many"),
    "accuracy_medium": ("medium", "medium"),
    "accuracy_few": ("few", "few"),
    "knn_accuracy": ("kNN accuracy", "kNN accuracy"),
    "ncc_agreement": ("NCC agreement", "NCC agreement"),
    "effective_rank": ("effective rank", "effective rank"),
    "cdnv": ("CDNV", "CDNV"),
    "bound_kind": ("bound", "bound"),
    "bound_attained": ("attained loss", "attained loss"),
    "bound_value": ("lower bound", "lower bound"),
    "bound_gap": ("attained − bound", r"attained $-$ bound"),
}
DEFAULT_DECIMALS = 3
MISSING = ("—", "--")  # Markdown, LaTeX
#: what a summarised cell means, printed under every Markdown and LaTeX table
LEGEND = (
    f"Cells: mean ± half-width of the {CONFIDENCE * 100:g} % Student-t interval of the mean "
    "over seeds (t · s/√n). (n = k): the cell is over k seeds, fewer than the row's, or over "
    "a single seed (then no interval)."
)


def _groups(runs: pd.DataFrame):
    """``runs`` grouped by grid point (a null key is a group of its own, never dropped)."""
    return runs.groupby(GRID, sort=True, dropna=False)


def _summary(runs: pd.DataFrame, figures: list[str]) -> pd.DataFrame:
    """Grid keys, :data:`~protolib.results.intervals.STATS` of each figure, ``n_seeds``."""
    columns = [*GRID, *(f"{f}_{s}" for f in figures for s in STATS), "n_seeds"]
    if runs.empty:
        kinds = {"loss": object, "n_w": "int64"} | {c: runs[c].dtype for c in GRID if c in runs}
        kinds.update({c: "int64" for c in columns if c == "n_seeds" or c.endswith("_n")})
        return pd.DataFrame({c: pd.Series(dtype=kinds.get(c, float)) for c in columns})
    grouped = _groups(runs)
    parts = [pd.DataFrame({"n_seeds": grouped.size()})]
    for figure in figures:
        stats = summarise(grouped[figure])
        parts.append(stats.rename(columns={s: f"{figure}_{s}" for s in STATS}))
    return pd.concat(parts, axis=1).reset_index()[columns]


def accuracy_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Test accuracy and (for head-less losses) linear-probe accuracy over seeds: mean and
    95 % t-interval per grid point."""
    return _summary(runs, ["test_accuracy", "probe_accuracy"])


def time_to_fit_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Time to fit (MATH.md §7) over the runs that fitted, and how many did: ``fitted k/n``.

    Columns: grid keys, the ``time_to_fit_*`` summary over the seeds that fitted (mean,
    95 % t-interval, std; NaN when none did; ``time_to_fit_n`` is ``k``), ``fitted`` (the
    string ``"k/n"``), ``n_seeds`` (``n``) and ``budget`` (the largest number of
    iterations run).
    """
    table = _summary(runs, ["time_to_fit"])
    if runs.empty:
        table["fitted"] = pd.Series(dtype=object)
        table["budget"] = pd.Series(dtype=float)
    else:
        table["fitted"] = [
            f"{k}/{n}" for k, n in zip(table["time_to_fit_n"], table["n_seeds"], strict=True)
        ]
        table["budget"] = _groups(runs)["iterations"].max().to_numpy()
    columns = [*GRID, *(f"time_to_fit_{s}" for s in STATS), "fitted", "n_seeds", "budget"]
    table = table[columns]
    table.attrs["decimals"] = {"time_to_fit": 0}
    table.attrs["hidden"] = ["n_seeds"]  # shown as "fitted k/n"
    return table


def group_accuracy_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Test accuracy on the many / medium / few classes (by training-set size), kNN
    accuracy and nearest-class-mean agreement (MATH.md §3), over seeds."""
    return _summary(runs, [f for f in PANEL_TEST if f in runs])


def collapse_table(runs: pd.DataFrame) -> pd.DataFrame:
    """The collapse statistics of the final training embeddings (MATH.md §3): effective
    rank of the centred class means, CDNV, alignment and uniformity, over seeds."""
    return _summary(runs, [f for f in PANEL_TRAIN if f in runs])


def delta_g_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Final Δ_G (MATH.md §3) against the run's target geometry over seeds: mean and 95 %
    t-interval per grid point."""
    return _summary(runs, ["delta_g"])


def trained_bounds_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Trained networks against their loss bounds (MATH.md §4, last bullet): per grid
    point and bound, the attained loss, the bound and their gap (≥ 0), mean and 95 %
    t-interval over seeds, for the runs that made the comparison (exactly balanced
    training labels)."""
    compared = runs[runs["bound_kind"].notna()] if "bound_kind" in runs else runs.iloc[:0]
    figures = ["bound_attained", "bound_value", "bound_gap"]
    table = _summary(compared, figures)
    if compared.empty:
        table.insert(len(GRID), "bound_kind", pd.Series(dtype=object))
    else:
        kinds = _groups(compared)["bound_kind"].agg(lambda k: ", ".join(sorted(set(k))))
        table.insert(len(GRID), "bound_kind", kinds.to_numpy())
    table.attrs["decimals"] = dict.fromkeys(figures)  # six significant digits: 1e-21 to 800
    return table


# -- formatting ------------------------------------------------------------------------
def _number(value, decimals: int | None) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if decimals is not None:
        return f"{float(value):.{decimals}f}"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def _summaries(df: pd.DataFrame) -> list[str]:
    """The figures ``x`` of ``df`` with every summary column ``x_<stat>``."""
    return [
        column[: -len("_mean")]
        for column in df.columns
        if column.endswith("_mean") and all(f"{column[: -len('_mean')]}_{s}" in df for s in STATS)
    ]


def summary_cell(record: dict, figure: str, decimals: int | None, *, latex: bool = False) -> str:
    """One figure of one row as shown: ``mean ± half`` (half-width of the t-interval),
    ``(n = k)`` added when its ``k`` seeds are one or not all of the row's ``n_seeds``;
    missing (``—``, ``--`` in LaTeX) with no seed."""
    missing = MISSING[1] if latex else MISSING[0]
    n = int(record[f"{figure}_n"])
    mean = _number(record[f"{figure}_mean"], decimals)
    if n == 0 or mean is None:
        return missing
    cell = mean
    if n >= 2:
        low, high = record[f"{figure}_ci_low"], record[f"{figure}_ci_high"]
        half = _number((high - low) / 2, decimals)
        cell += (r" $\pm$ " if latex else " ± ") + (half or missing)
    seeds = record.get("n_seeds")
    if n == 1 or seeds is None or n != int(seeds):
        cell += f" (n = {n})"
    return cell


def display_cells(df: pd.DataFrame, *, latex: bool = False) -> tuple[list[str], list[list[str]]]:
    """Headers and cell strings of ``df`` as shown in Markdown (or LaTeX, unescaped text).

    A figure's summary columns (``x_mean`` … ``x_n``) become one column
    (:func:`summary_cell`) with ``df.attrs["decimals"][x]`` decimals (default 3, None:
    six significant digits); columns in ``df.attrs["hidden"]`` are left out; a missing
    value is ``—`` (``--`` in LaTeX).
    """
    decimals = df.attrs.get("decimals", {})
    hidden = set(df.attrs.get("hidden", []))
    figures = _summaries(df)
    folded = {f"{f}_{s}" for f in figures for s in STATS if s != "mean"}
    columns: list[tuple[str, str | None]] = []  # (column, figure it shows, or None)
    for column in df.columns:
        if column in hidden or column in folded:
            continue
        figure = column[: -len("_mean")] if column.endswith("_mean") else None
        columns.append((column, figure if figure in figures else None))
    headers = [
        HEADERS.get(figure or column, (figure or column,) * 2)[1 if latex else 0]
        for column, figure in columns
    ]
    missing = MISSING[1] if latex else MISSING[0]
    rows = []
    for record in df.to_dict("records"):
        cells = []
        for column, figure in columns:
            if figure:
                places = decimals.get(figure, DEFAULT_DECIMALS)
                cells.append(summary_cell(record, figure, places, latex=latex))
            else:
                cells.append(_number(record[column], None) or missing)
        rows.append(cells)
    return headers, rows


def _numeric(headers: list[str], rows: list[list[str]]) -> list[bool]:
    """Whether each displayed column holds numbers (right-aligned)."""
    flags = []
    for i in range(len(headers)):
        cells = [r[i] for r in rows if r[i] not in MISSING]
        flags.append(bool(cells) and all(c[:1].isdigit() or c[:1] == "-" for c in cells))
    return flags


def to_markdown(df: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table of ``df`` (see :func:`display_cells`), followed
    by :data:`LEGEND` when it summarises a figure."""
    headers, rows = display_cells(df)
    align = ["right" if n else "left" for n in _numeric(headers, rows)]
    table = markdown_table(headers, rows, align=align)
    return table + f"\n{LEGEND}\n" if _summaries(df) else table


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def latex_escape(text: str) -> str:
    """Escape LaTeX's special characters in plain text (``$`` is left for math)."""
    return "".join(_LATEX_SPECIAL.get(c, c) for c in text)


def _latex_cell(text: str) -> str:
    # keep math ($...$) as is, escape the text between
    parts = text.split("$")
    return "$".join(p if i % 2 else latex_escape(p) for i, p in enumerate(parts))


def to_latex(df: pd.DataFrame) -> str:
    """A LaTeX ``tabular`` of ``df`` (plain ``\\hline`` rules, no extra packages), after
    :data:`LEGEND` as a comment when it summarises a figure."""
    headers, rows = display_cells(df, latex=True)
    numeric = _numeric(headers, rows)
    spec = "".join("r" if n else "l" for n in numeric)
    lines = [f"% {LEGEND}"] if _summaries(df) else []
    lines += [f"\\begin{{tabular}}{{{spec}}}", r"\hline"]
    lines.append(" & ".join(_latex_cell(h) for h in headers) + r" \\")
    lines.append(r"\hline")
    lines.extend(" & ".join(_latex_cell(c) for c in row) + r" \\" for row in rows)
    lines += [r"\hline", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def write_table(df: pd.DataFrame, stem: str | Path) -> tuple[Path, ...]:
    """Write ``stem.csv``, ``stem.md`` and ``stem.tex`` atomically; return the paths in the
    order of :data:`protolib.results.report.TABLE_FORMATS`."""
    stem = Path(stem)
    texts = {
        "csv": lambda: df.to_csv(index=False),
        "md": lambda: to_markdown(df),
        "tex": lambda: to_latex(df),
    }
    return tuple(
        write_text(stem.with_name(f"{stem.name}.{ext}"), texts[ext]()) for ext in TABLE_FORMATS
    )
