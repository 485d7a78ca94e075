"""Summary tables of an experiment's runs table, and writing them as CSV, Markdown, LaTeX.

Each table has one row per grid point (``loss × n_w × imbalance_ratio ×
label_corruption``, sorted) and summarises the seeds: a figure ``x`` becomes the columns
``x_mean`` and ``x_std`` (sample standard deviation, ``ddof = 1``; NaN with one seed)
over the runs where it is not null, and ``n_seeds`` counts the runs. CSV keeps every
column at full precision; Markdown and LaTeX show each pair as ``0.912 ± 0.004``.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from protolib.io import write_text
from protolib.results.contract import GRID_COLUMNS, SEED
from protolib.results.markdown import markdown_table
from protolib.results.report import TABLE_FORMATS

#: the grid keys a table is grouped by (the seed is what is summarised)
GRID = [name for name in GRID_COLUMNS if name != SEED.name]
#: column → (Markdown header, LaTeX header); other columns keep their name
HEADERS = {
    "loss": ("loss", "loss"),
    "n_w": ("n_w", r"$n_w$"),
    "imbalance_ratio": ("R", r"$R$"),
    "label_corruption": ("p", r"$p$"),
    "test_accuracy": ("test accuracy", "test accuracy"),
    "probe_accuracy": ("probe accuracy", "probe accuracy"),
    "delta_g": ("Δ_G", r"$\Delta_G$"),
    "time_to_fit": ("time to fit (iterations)", "time to fit (iterations)"),
    "fitted": ("fitted", "fitted"),
    "budget": ("budget", "budget"),
    "n_seeds": ("seeds", "seeds"),
    "bound_kind": ("bound", "bound"),
    "bound_attained": ("attained loss", "attained loss"),
    "bound_value": ("lower bound", "lower bound"),
    "bound_gap": ("attained − bound", r"attained $-$ bound"),
}
DEFAULT_DECIMALS = 3
MISSING = ("—", "--")  # Markdown, LaTeX


def _mean_std(runs: pd.DataFrame, figures: list[str]) -> pd.DataFrame:
    columns = [*GRID, *(f"{f}_{s}" for f in figures for s in ("mean", "std")), "n_seeds"]
    if runs.empty:
        kinds = {"loss": object, "n_w": "int64", "n_seeds": "int64"}
        return pd.DataFrame({c: pd.Series(dtype=kinds.get(c, float)) for c in columns})
    grouped = runs.groupby(GRID, sort=True)
    out = pd.DataFrame({"n_seeds": grouped.size()})
    for figure in figures:
        values = grouped[figure]
        out[f"{figure}_mean"] = values.mean()
        out[f"{figure}_std"] = values.std(ddof=1)
    return out.reset_index()[columns]


def accuracy_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Test accuracy and (for head-less losses) linear-probe accuracy, mean ± std over seeds."""
    return _mean_std(runs, ["test_accuracy", "probe_accuracy"])


def time_to_fit_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Time to fit (MATH.md §7) over the runs that fitted, and how many did: ``fitted k/n``.

    Columns: grid keys, ``time_to_fit_mean``/``_std`` (NaN when none fitted),
    ``n_fitted``, ``n_seeds``, ``fitted`` (the string ``"k/n"``) and ``budget`` (the
    largest number of iterations run).
    """
    table = _mean_std(runs, ["time_to_fit"])
    if runs.empty:
        for column in ("n_fitted", "fitted", "budget"):
            table[column] = pd.Series(
                dtype={"fitted": object, "n_fitted": "int64"}.get(column, float)
            )
    else:
        grouped = runs.groupby(GRID, sort=True)
        extra = pd.DataFrame(
            {
                "n_fitted": grouped["time_to_fit"].count(),
                "budget": grouped["iterations"].max(),
            }
        ).reset_index()
        table = table.merge(extra, on=GRID, how="left")
        table["fitted"] = [
            f"{k}/{n}" for k, n in zip(table["n_fitted"], table["n_seeds"], strict=True)
        ]
    columns = [*GRID, "time_to_fit_mean", "time_to_fit_std", "fitted", "n_fitted", "n_seeds"]
    table = table[[*columns, "budget"]]
    table.attrs["decimals"] = {"time_to_fit": 0}
    table.attrs["hidden"] = ["n_fitted", "n_seeds"]  # shown as "fitted k/n"
    return table


def delta_g_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Final Δ_G (MATH.md §3) against the run's target geometry, mean ± std over seeds."""
    return _mean_std(runs, ["delta_g"])


def trained_bounds_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Trained networks against their loss bounds (MATH.md §4, last bullet): per grid
    point and bound, the attained loss, the bound and their gap (≥ 0), mean ± std over
    seeds, for the runs that made the comparison (exactly balanced training labels)."""
    compared = runs[runs["bound_kind"].notna()] if "bound_kind" in runs else runs.iloc[:0]
    figures = ["bound_attained", "bound_value", "bound_gap"]
    table = _mean_std(compared, figures)
    if compared.empty:
        table.insert(len(GRID), "bound_kind", pd.Series(dtype=object))
    else:
        kinds = compared.groupby(GRID, sort=True)["bound_kind"].agg(
            lambda k: ", ".join(sorted(set(k)))
        )
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


def display_cells(df: pd.DataFrame, *, latex: bool = False) -> tuple[list[str], list[list[str]]]:
    """Headers and cell strings of ``df`` as shown in Markdown (or LaTeX, unescaped text).

    ``x_mean``/``x_std`` pairs become one column ``mean ± std`` (``$\\pm$`` in LaTeX) with
    ``df.attrs["decimals"][x]`` decimals (default 3); columns in ``df.attrs["hidden"]``
    are left out; a missing value is ``—`` (``--`` in LaTeX).
    """
    decimals = df.attrs.get("decimals", {})
    hidden = set(df.attrs.get("hidden", []))
    plus_minus = r" $\pm$ " if latex else " ± "
    missing = MISSING[1] if latex else MISSING[0]
    columns: list[tuple[str, str | None]] = []  # (display name, std column or None)
    for column in df.columns:
        if column in hidden or (column.endswith("_std") and column[:-4] + "_mean" in df):
            continue
        if column.endswith("_mean") and column[:-5] + "_std" in df:
            columns.append((column, column[:-5] + "_std"))
        else:
            columns.append((column, None))
    headers, rows = [], []
    for column, std in columns:
        base = column[:-5] if std else column
        headers.append(HEADERS.get(base, (base, base))[1 if latex else 0])
    for record in df.to_dict("records"):
        cells = []
        for column, std in columns:
            if std:
                places = decimals.get(column[:-5], DEFAULT_DECIMALS)
                mean, spread = _number(record[column], places), _number(record[std], places)
                cell = missing if mean is None else mean + (plus_minus + spread if spread else "")
            else:
                cell = _number(record[column], None) or missing
            cells.append(cell)
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
    """A GitHub-flavoured Markdown table of ``df`` (see :func:`display_cells`)."""
    headers, rows = display_cells(df)
    align = ["right" if n else "left" for n in _numeric(headers, rows)]
    return markdown_table(headers, rows, align=align)


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
    """A LaTeX ``tabular`` of ``df`` (plain ``\\hline`` rules, no extra packages)."""
    headers, rows = display_cells(df, latex=True)
    numeric = _numeric(headers, rows)
    spec = "".join("r" if n else "l" for n in numeric)
    lines = [f"\\begin{{tabular}}{{{spec}}}", r"\hline"]
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
