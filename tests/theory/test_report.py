"""The theory target's Markdown table of bound against attained loss."""

from __future__ import annotations

import math

import pandas as pd

from protolib.theory.tables import (
    batchwise_markdown,
    batchwise_table,
    comparison_markdown,
    comparison_table,
)
from protolib.theory.ufm import UFMResult


def result(name: str, rows: list[tuple[str, str, float]]) -> UFMResult:
    table = pd.DataFrame(
        [(name, setting, quantity, value) for setting, quantity, value in rows],
        columns=["simulation", "setting", "quantity", "value"],
    )
    return UFMResult(table)


def test_comparison_table_and_its_markdown_match_a_hand_written_table():
    results = {
        "ce_l2": result(
            "ce_l2",
            [
                ("lambda=0.01", "bound", 0.123456789),
                ("lambda=0.01", "attained", 0.1234567891),
                ("lambda=0.01", "gap", 1.234e-10),
                ("lambda=0.01", "r_star", 2.5),
                ("lambda=0.01", "mean_w_norm", 2.5000001),
            ],
        ),
        "supcon_all_multisets": result(
            "supcon_all_multisets",
            [
                ("bin_centre=1", "hist_count", 3.0),
                ("rho=2", "bound_mean", 12.0),
                ("rho=2", "attained_mean", 12.5),
                ("rho=2", "gap", 0.5),
            ],
        ),
        "supcon_circle": result(
            "supcon_circle",
            [("tau=0.1", "simplex_loss", 4.0), ("tau=0.1", "final_loss", 4.0)],
        ),
    }
    table = comparison_table(results)
    assert math.isnan(table.loc[2, "gap"])  # the circle's gap is missing
    assert comparison_markdown(table) == (
        "| simulation | setting | bound | attained | gap | r_star | mean_w_norm |\n"
        "|---|---|---|---|---|---|---|\n"
        "| CE + λ‖W‖² on the disc (Corollary 2) | lambda=0.01 | 0.123457 | 0.123457 "
        "| 1.23e-10 | 2.5 | 2.5 |\n"
        "| SupCon over all multisets (Theorem 2, per batch) | rho=2 | 12 | 12.5 | 5.00e-01 "
        "| — | — |\n"
        "| SupCon on the circle (simplex value, per anchor) | tau=0.1 | 4 | 4 | — | — | — |\n"
    )


def test_batchwise_table_and_its_markdown_match_a_hand_written_table():
    rows = [
        ("counts=2,1", "rho", 2.0),
        ("counts=2,1", "attained", 1.25),
        ("counts=2,1", "theorem2_term", 1.5),
        ("counts=2,1", "antipodal_bound", 1.25),
        ("counts=2,1", "class_mean_angle_0_1", math.pi),
        ("counts=2,1", "collapsed", 1.0),
        ("counts=1,2", "rho", 0.5),
        ("counts=1,2", "attained", 2.0),
        ("counts=1,2", "theorem2_term", 2.0),
        ("counts=1,2", "antipodal_bound", 1.0),
        ("counts=1,2", "class_mean_angle_0_1", math.pi / 2),
        ("counts=1,2", "collapsed", 0.0),
    ]
    table = batchwise_table(result("batchwise_minimisers", rows))
    assert batchwise_markdown(table).startswith(
        "| class sizes | ρ | attained | Theorem 2 term (simplex) | antipodal bound "
        "| class-mean angles | collapsed |\n"
        "|---|---|---|---|---|---|---|\n"
        "| 2,1 | 2 | 1.250000 | 1.500000 | 1.250000 | 0–1: 180.0° | yes |\n"
        "| 1,2 | 0.5 | 2.000000 | 2.000000 | 1.000000 | 0–1: 90.0° | no |\n"
        "\nThe Theorem 2 term of a batch is its loss at the collapsed regular simplex"
    )
