"""Unconstrained-features simulations (MATH.md §5).

The embeddings (and, for cross-entropy, the classifier) are free parameters, optimised
directly in float64 on the CPU by L-BFGS with a strong-Wolfe line search from seeded
random starts, so every run is deterministic and reaches its optimum to near machine
precision. The five simulations:

1. :func:`ce_l2` — CE + λ‖W‖_F² with ‖h_i‖ ≤ ρ in R², against Corollary 2 (§4);
2. :func:`supcon_circle` — full-batch SupCon on the unit circle: collapse to a simplex;
3. :func:`supcon_all_multisets` — SupCon summed over *every* multiset batch, exactly,
   against Theorem 2 (§4), with the histogram of batch losses;
4. :func:`limit_geometries` — the large-``n_w`` limit loss (§1.5) with fixed prototype
   geometries: the learned class-mean Gram against the target Gram;
5. :func:`batchwise_minimisers` — the minimiser of one batch's SupCon loss per label
   configuration (the SC-vs-CE study's Fig. 5): it depends on the batch.

One module per simulation (:mod:`.cross_entropy`, :mod:`.circle`, :mod:`.multisets`,
:mod:`.limit`, :mod:`.batchwise`), on a shared core (:mod:`.core`: result tables, seeded
starts, the L-BFGS fit). Each returns a :class:`UFMResult`: a tidy ``table`` (one row per
simulation, setting and quantity), the ``final`` configuration as NumPy arrays, and a
per-step ``trace``.

Free features confined to the circle are a non-convex problem with spurious local
minima (a class split into two antipodal clusters is one: its Hessian is positive
semi-definite, so no local method leaves it). The circle simulations therefore take the
best of a few seeded random starts (``starts``); the table reports how many of them
reached the best loss (``starts_at_best``) and which one won (``best_start``).
"""

from __future__ import annotations

from protolib.theory.ufm.batchwise import (
    LABEL_CONFIGURATIONS,
    antipodal_batch_bound,
    batchwise_minimisers,
    theorem2_batch_term,
)
from protolib.theory.ufm.circle import supcon_circle
from protolib.theory.ufm.core import TABLE_COLUMNS, TRACE_COLUMNS, UFMResult
from protolib.theory.ufm.cross_entropy import ce_l2
from protolib.theory.ufm.limit import limit_geometries
from protolib.theory.ufm.multisets import (
    multiset_counts,
    multiset_supcon_losses,
    multiset_supcon_mean,
    supcon_all_multisets,
)

__all__ = [
    "LABEL_CONFIGURATIONS",
    "TABLE_COLUMNS",
    "TRACE_COLUMNS",
    "UFMResult",
    "antipodal_batch_bound",
    "batchwise_minimisers",
    "ce_l2",
    "limit_geometries",
    "multiset_counts",
    "multiset_supcon_losses",
    "multiset_supcon_mean",
    "run_all",
    "supcon_all_multisets",
    "supcon_circle",
    "theorem2_batch_term",
]


def run_all(seed: int = 0) -> dict[str, UFMResult]:
    """The five simulations of MATH.md §5 with their defaults, keyed by function name."""
    return {
        "ce_l2": ce_l2(seed=seed),
        "supcon_circle": supcon_circle(seed=seed),
        "supcon_all_multisets": supcon_all_multisets(seed=seed),
        "limit_geometries": limit_geometries(seed=seed),
        "batchwise_minimisers": batchwise_minimisers(seed=seed),
    }
