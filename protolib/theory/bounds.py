"""Lower bounds of the CE and SupCon losses for balanced labels (MATH.md §4).

Every bound is evaluated in closed form. Theorem 2 counts multisets exactly with Python's
integer binomials, so it is exact for any ``N``, ``K``, ``b`` (CIFAR's ``N = 50 000``,
``b = 256`` included) without enumerating batches, and never overflows: the per-batch
mean uses the exact ratios ``M_l / C(N+b−1, b)``, the total is returned through its
logarithm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction


class BoundError(ValueError):
    """Parameters outside a bound's domain (the message says what is allowed)."""


def _check(num_classes: int, rho: float) -> None:
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
        raise BoundError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if not (isinstance(rho, int | float) and rho > 0 and math.isfinite(rho)):
        raise BoundError(f"rho (the embedding norm bound / sphere radius) must be > 0, got {rho!r}")


def ce_bound_frobenius(num_classes: int, rho: float, weight_norm: float) -> float:
    """Theorem 1: ``L_CE ≥ log(1 + (K−1) exp(−ρ (√K/(K−1)) ‖W‖_F))`` for ``‖h_i‖ ≤ ρ``.

    Attained at the simplex with equinorm weights for every ``K`` (MATH.md §4, corrected).
    """
    _check(num_classes, rho)
    K = num_classes
    return math.log1p((K - 1) * math.exp(-rho * math.sqrt(K) / (K - 1) * weight_norm))


def ce_bound_row_norm(num_classes: int, rho: float, r: float) -> float:
    """Corollary 1: ``L_CE ≥ log(1 + (K−1) exp(−K ρ r/(K−1)))`` for ``‖w_y‖ ≤ r``."""
    _check(num_classes, rho)
    K = num_classes
    return math.log1p((K - 1) * math.exp(-K * rho * r / (K - 1)))


def ce_l2_optimal_norm(num_classes: int, rho: float, lam: float) -> float:
    """``r*``: the unique positive root of ``2λx − ρ/(exp(Kρx/(K−1)) + K − 1)`` (Corollary 2),
    by Brent's bracketing method on ``[0, ρ/(2λ)]`` to 1e-15 relative."""
    _check(num_classes, rho)
    if not (isinstance(lam, int | float) and lam > 0 and math.isfinite(lam)):
        raise BoundError(f"lam (the weight decay λ) must be > 0, got {lam!r}")
    K = num_classes
    a = K * rho / (K - 1)

    def f(x: float) -> float:
        e = math.exp(-a * x)  # ρ/(e^{ax} + K − 1) written without overflow
        return 2 * lam * x - rho * e / (1 + (K - 1) * e)

    from scipy.optimize import brentq  # scipy.optimize costs 0.3 s to import: only here

    return brentq(f, 0.0, rho / (2 * lam), xtol=1e-300, rtol=4 * 2.220446049250313e-16, maxiter=500)


def ce_l2_bound(num_classes: int, rho: float, lam: float) -> tuple[float, float]:
    """Corollary 2: ``L_CE + λ‖W‖_F² ≥ log(1 + (K−1) exp(−Kρr*/(K−1))) + λ K r*²``.

    Returns ``(bound, r*)``; at the bound every ``‖w_y‖ = r*``."""
    r = ce_l2_optimal_norm(num_classes, rho, lam)
    return ce_bound_row_norm(num_classes, rho, r) + lam * num_classes * r * r, r


@dataclass(frozen=True)
class SupConBound:
    """Theorem 2 for ``N`` samples in ``K`` balanced classes and batches of size ``b``."""

    per_batch: float  # the bound divided by the number of multisets
    log_total: float  # log of the bound summed over all multisets
    log_num_batches: float  # log C(N+b−1, b)

    @property
    def total(self) -> float:
        """The bound summed over all multisets (``inf`` when beyond float range)."""
        return math.exp(self.log_total) if self.log_total < 709.78 else math.inf


def supcon_bound(num_samples: int, num_classes: int, batch_size: int, rho: float) -> SupConBound:
    """Theorem 2 (MATH.md §4), exactly::

        L_SC ≥ Σ_{l=2}^{b} l · M_l · log(l − 1 + (b − l) exp(−K ρ² / (K−1))),
        M_l = Σ_y |{B : |B_y| = l}| = K · C(n+l−1, l) · C(N−n+b−l−1, b−l),  n = N/K,

    over all multisets ``B`` of size ``b`` drawn from ``[N]`` (there are ``C(N+b−1, b)``);
    embeddings on the sphere of radius ``ρ``, no temperature (``ρ² = 1/τ``).
    """
    _check(num_classes, rho)
    N, K, b = num_samples, num_classes, batch_size
    for name, value in (("num_samples", N), ("batch_size", b)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise BoundError(f"{name} must be a positive integer, got {value!r}")
    if N % K:
        raise BoundError(
            f"Theorem 2 assumes balanced labels: num_samples ({N}) must be a multiple of "
            f"num_classes ({K})"
        )
    n = N // K
    num_batches = math.comb(N + b - 1, b)
    decay = math.exp(-K * rho * rho / (K - 1))
    per_batch = 0.0
    for size in range(2, b + 1):  # |B_y| = size for one class y; the rest from the others
        count = K * math.comb(n + size - 1, size) * math.comb(N - n + b - size - 1, b - size)
        if count:
            weight = float(Fraction(size * count, num_batches))
            per_batch += weight * math.log(size - 1 + (b - size) * decay)
    log_batches = math.log(num_batches)
    log_total = log_batches + math.log(per_batch) if per_batch > 0 else -math.inf
    return SupConBound(per_batch=per_batch, log_total=log_total, log_num_batches=log_batches)


def supcon_lower_bound(
    num_samples: int, num_classes: int, batch_size: int, rho: float, *, per_batch: bool = True
) -> float:
    """Theorem 2 as the mean per batch (default) or the total over all multisets (which
    may be ``inf`` in float range; :func:`supcon_bound` gives its logarithm)."""
    bound = supcon_bound(num_samples, num_classes, batch_size, rho)
    return bound.per_batch if per_batch else bound.total
