"""Theory: exact loss bounds (MATH.md §4) and unconstrained-features simulations (§5).

The bounds below load ``protolib.theory.bounds`` (and scipy) on first use, so importing
the package, or a submodule that does not use them, does not import scipy.
"""

from __future__ import annotations

from protolib._lazy import lazy_exports

_BOUNDS = "protolib.theory.bounds"

#: exported name → the module that defines it
_EXPORTS = {
    "BoundError": _BOUNDS,
    "SupConBound": _BOUNDS,
    "ce_bound_frobenius": _BOUNDS,
    "ce_bound_row_norm": _BOUNDS,
    "ce_l2_bound": _BOUNDS,
    "ce_l2_optimal_norm": _BOUNDS,
    "supcon_bound": _BOUNDS,
    "supcon_lower_bound": _BOUNDS,
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
