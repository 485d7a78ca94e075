"""The tables of the theory target: the bounds (Theorem 2 at the studies' settings,
Corollary 2 over a range of weight decays; MATH.md §4) and the bound against the loss
each simulation attained (MATH.md §5)."""

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
