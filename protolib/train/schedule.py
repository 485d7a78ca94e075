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
    warmup: int = 0,
) -> Callable[[int], float]:
    """``t ↦ lr(t)/lr(0)`` for iteration ``t`` in ``[0, total)``: the schedule ``name``
    times a linear warm-up ``min(1, (t + 1) / warmup)`` over the first ``warmup``
    iterations (0: none; the long-tail protocol's first 5 epochs).

    - ``constant``: 1.
    - ``step``: ``factor ** (number of milestones ≤ t)`` (milestones in iterations).
    - ``cosine``: ``(1 + cos(π t / total)) / 2``.
    - ``poly``: ``((total − t) / total) ** power`` — the SC-vs-CE study's "exponential"
      decay with ``power = 5``.
    """
    schedule = _schedule(name, total, milestones, factor, power)
    if warmup <= 0:
        return schedule
    return lambda t: min(1.0, (t + 1) / warmup) * schedule(t)


def _schedule(
    name: str, total: int, milestones: Sequence[int], factor: float, power: float
) -> Callable[[int], float]:
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
