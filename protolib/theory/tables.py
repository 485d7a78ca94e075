"""The tables of the theory target: the bounds (Theorem 2 at the studies' settings,
Corollary 2 over a range of weight decays; MATH.md §4), the bound against the loss
each simulation attained, and the batch-wise minimisers per label configuration
(MATH.md §5)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from protolib.results.markdown import markdown_table
from protolib.theory.bounds import ce_l2_bound, supcon_bound

if TYPE_CHECKING:
    from protolib.theory.ufm import UFMResult

#: (name, N, K, b, τ) — the SC-vs-CE study's CIFAR settings
SUPCON_SETTINGS = [
    ("cifar10", 50_000, 10, 256, 0.1),
    ("cifar100", 50_000, 100, 256, 0.1),
    ("digits-like", 1_350, 10, 256, 0.1),
]
LAMBDAS = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1]


def bounds_table() -> pd.DataFrame:
    """One row per evaluated bound: ``bound``, ``setting``, the parameters, ``value``
    (per batch for Theorem 2), ``log_total`` (Theorem 2) and ``r_star`` (Corollary 2)."""
    rows = []
    for name, N, K, b, tau in SUPCON_SETTINGS:
        bound = supcon_bound(N, K, b, 1 / math.sqrt(tau))
        rows.append(
            {
                "bound": "supcon_theorem2",
                "setting": name,
                "num_samples": N,
                "num_classes": K,
                "batch_size": b,
                "rho": 1 / math.sqrt(tau),
                "lam": None,
                "value": bound.per_batch,
                "log_total": bound.log_total,
                "r_star": None,
            }
        )
    for K in (10, 100):
        for lam in LAMBDAS:
            value, r = ce_l2_bound(K, 1.0, lam)
            rows.append(
                {
                    "bound": "ce_l2_corollary2",
                    "setting": f"K={K}, lam={lam:g}",
                    "num_samples": None,
                    "num_classes": K,
                    "batch_size": None,
                    "rho": 1.0,
                    "lam": lam,
                    "value": value,
                    "log_total": None,
                    "r_star": r,
                }
            )
    return pd.DataFrame(rows)


def result_value(table: pd.DataFrame, setting: str, quantity: str) -> float:
    """The ``value`` of ``quantity`` at ``setting`` in a simulation table (NaN if absent)."""
    rows = table[(table.setting == setting) & (table.quantity == quantity)]
    return float(rows.value.iloc[0]) if len(rows) else float("nan")


def comparison_table(results: dict[str, UFMResult]) -> pd.DataFrame:
    """Bound against attained loss for every simulation with a closed-form optimum."""
    rows = []
    ce = results["ce_l2"].table
    for setting in ce.setting.unique():
        rows.append(
            {
                "simulation": "CE + λ‖W‖² on the disc (Corollary 2)",
                "setting": setting,
                "bound": result_value(ce, setting, "bound"),
                "attained": result_value(ce, setting, "attained"),
                "gap": result_value(ce, setting, "gap"),
                "r_star": result_value(ce, setting, "r_star"),
                "mean_w_norm": result_value(ce, setting, "mean_w_norm"),
            }
        )
    sc = results["supcon_all_multisets"].table
    setting = next(s for s in sc.setting.unique() if not s.startswith("bin_centre"))
    rows.append(
        {
            "simulation": "SupCon over all multisets (Theorem 2, per batch)",
            "setting": setting,
            "bound": result_value(sc, setting, "bound_mean"),
            "attained": result_value(sc, setting, "attained_mean"),
            "gap": result_value(sc, setting, "gap"),
        }
    )
    circle = results["supcon_circle"].table
    setting = circle.setting.iloc[0]
    rows.append(
        {
            "simulation": "SupCon on the circle (simplex value, per anchor)",
            "setting": setting,
            "bound": result_value(circle, setting, "simplex_loss"),
            "attained": result_value(circle, setting, "final_loss"),
            "gap": result_value(circle, setting, "gap"),
        }
    )
    return pd.DataFrame(rows)


def comparison_markdown(frame: pd.DataFrame) -> str:
    """:func:`comparison_table` as Markdown: floats to 6 significant digits, ``gap`` as
    ``1.23e-09``, a missing value as ``—``."""
    rows = []
    for _, row in frame.iterrows():
        cells = []
        for column in frame.columns:
            value = row[column]
            if isinstance(value, float):
                cells.append(
                    "—"
                    if np.isnan(value)
                    else f"{value:.6g}"
                    if column != "gap"
                    else f"{value:.2e}"
                )
            else:
                cells.append(str(value))
        rows.append(cells)
    return markdown_table(list(frame.columns), rows)


def batchwise_table(result: UFMResult) -> pd.DataFrame:
    """One row per label configuration of
    :func:`~protolib.theory.ufm.batchwise_minimisers` (MATH.md §5.5): the attained loss of
    that batch, the batch's term of Theorem 2 (its loss at the simplex), the antipodal
    lower bound, the angles between the class means present (degrees) and whether every
    class collapsed."""
    table = result.table
    rows = []
    for setting in table.setting.unique():
        here = table[table.setting == setting]
        angles = here[here.quantity.str.startswith("class_mean_angle_")]
        rows.append(
            {
                "class sizes": setting.removeprefix("counts="),
                "ρ": result_value(table, setting, "rho"),
                "attained": result_value(table, setting, "attained"),
                "Theorem 2 term (simplex)": result_value(table, setting, "theorem2_term"),
                "antipodal bound": result_value(table, setting, "antipodal_bound"),
                "class-mean angles": ", ".join(
                    f"{q.removeprefix('class_mean_angle_').replace('_', '–')}: "
                    f"{math.degrees(v):.1f}°"
                    for q, v in zip(angles.quantity, angles.value, strict=True)
                ),
                "collapsed": "yes" if result_value(table, setting, "collapsed") == 1 else "no",
            }
        )
    return pd.DataFrame(rows)


def batchwise_markdown(frame: pd.DataFrame) -> str:
    """:func:`batchwise_table` as Markdown, losses (summed over a batch's anchors, on the
    circle of radius ρ) to 6 decimals, with a note on what the Theorem 2 term is (and is
    not) for one batch."""

    def cell(column: str, value: object) -> str:
        if column == "ρ":
            return f"{value:g}"
        return f"{value:.6f}" if isinstance(value, float) else str(value)

    rows = [
        [cell(c, v) for c, v in zip(frame.columns, row, strict=True)]
        for row in frame.itertuples(index=False)
    ]
    note = (
        "\nThe Theorem 2 term of a batch is its loss at the collapsed regular simplex; summed "
        "over every multiset it is Theorem 2's bound, but a single batch whose classes differ "
        "in size has a lower minimum: no configuration minimises every batch (MATH.md §5.5).\n"
    )
    return markdown_table(list(frame.columns), rows) + note
