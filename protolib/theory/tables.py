"""The bounds table of the theory target: Theorem 2 at the studies' settings and
Corollary 2 over a range of weight decays (MATH.md §4)."""

from __future__ import annotations

import math

import pandas as pd

from protolib.theory.bounds import ce_l2_bound, supcon_bound

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
