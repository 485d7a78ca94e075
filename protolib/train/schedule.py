"""Learning-rate schedules as multipliers of the base rate (MATH.md §7)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence


def lr_multiplier(
    name: str,
    *,
    total: int,
    milestones: Sequence[int] = (),
    factor: float = 0.1,
    power: float = 5.0,
) -> Callable[[int], float]:
    """``t ↦ lr(t)/lr(0)`` for iteration ``t`` in ``[0, total)``.

    - ``constant``: 1.
    - ``step``: ``factor ** (number of milestones ≤ t)`` (milestones in iterations).
    - ``cosine``: ``(1 + cos(π t / total)) / 2``.
    - ``poly``: ``((total − t) / total) ** power`` — the SC-vs-CE study's "exponential"
      decay with ``power = 5``.
    """
    if name == "constant":
        return lambda t: 1.0
    if name == "step":
        marks = sorted(milestones)
        return lambda t: factor ** sum(1 for m in marks if t >= m)
    if name == "cosine":
        return lambda t: 0.5 * (1.0 + math.cos(math.pi * min(t, total) / total))
    if name == "poly":
        return lambda t: max(0.0, (total - t) / total) ** power
    raise ValueError(f"unknown schedule {name!r}; known: constant, step, cosine, poly")
