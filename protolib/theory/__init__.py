"""Theory: exact loss bounds (MATH.md §4), trained networks against them (§4, last
bullet) and unconstrained-features simulations (§5).

The names below load their module (``protolib.theory.bounds`` with scipy,
``protolib.theory.trained`` with torch) on first use, so importing the package, or a
submodule that does not use them, imports neither.
"""

from __future__ import annotations

from protolib._lazy import lazy_exports

_BOUNDS = "protolib.theory.bounds"
_TRAINED = "protolib.theory.trained"

#: exported name → the module that defines it
_EXPORTS = {
    "BoundError": _BOUNDS,
    "CEComparison": _TRAINED,
    "SupConComparison": _TRAINED,
    "SupConBound": _BOUNDS,
    "ce_bound_frobenius": _BOUNDS,
    "ce_bound_row_norm": _BOUNDS,
    "ce_l2_bound": _BOUNDS,
    "ce_l2_optimal_norm": _BOUNDS,
    "ce_vs_bounds": _TRAINED,
    "supcon_bound": _BOUNDS,
    "supcon_lower_bound": _BOUNDS,
    "supcon_vs_bound": _TRAINED,
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
