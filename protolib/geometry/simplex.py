"""Closed forms of the regular simplex that need no tensors (MATH.md §3)."""

from __future__ import annotations

import math


def simplex_gamma(num_classes: int) -> float:
    """γ between two vertices of a regular K-simplex: ``1 − arccos(−1/(K−1))/π`` (§3)."""
    if num_classes < 2:
        raise ValueError(f"a simplex needs num_classes >= 2; got {num_classes}")
    return 1.0 - math.acos(-1.0 / (num_classes - 1)) / math.pi
