"""Theory: exact loss bounds (MATH.md §4) and unconstrained-features simulations (§5)."""

from protolib.theory.bounds import (
    BoundError,
    SupConBound,
    ce_bound_frobenius,
    ce_bound_row_norm,
    ce_l2_bound,
    ce_l2_optimal_norm,
    supcon_bound,
    supcon_lower_bound,
)

__all__ = [
    "BoundError",
    "SupConBound",
    "ce_bound_frobenius",
    "ce_bound_row_norm",
    "ce_l2_bound",
    "ce_l2_optimal_norm",
    "supcon_bound",
    "supcon_lower_bound",
]
