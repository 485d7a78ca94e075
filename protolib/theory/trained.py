"""Trained networks against the loss bounds (MATH.md §4, last bullet): pure functions of the
final training features, labels and classifier; no run directory is read or written.

**SupCon.** :func:`supcon_vs_bound` draws ``M`` batches of ``b`` training points as in
training and computes, per batch ``B``, the SupCon loss summed over anchors (MATH.md §1.3,
the form of Theorem 2, at ``ρ² = 1/τ``) and the batch's own bound from its class counts
``n_y = |B_y|``::

    bound(B) = Σ_{y: n_y ≥ 2} n_y log(n_y − 1 + (b − n_y) exp(−K ρ²/(K−1))).

Summed over every multiset of size ``b`` this is Theorem 2's total (``Σ_l l M_l log(…)``).
It is *not* a lower bound of each batch on its own: a batch that holds two classes placed
further apart than the simplex allows (e.g. antipodal) has a loss below ``bound(B)``.
The proof of Theorem 2 (Jensen within each batch, then across the batches with the same
class count, then across classes, where exact balance makes the class means cancel) needs
only that the batch distribution is invariant under permutations of the ``N`` points, so
it holds *in expectation* for both samplings: ``E[loss(B)] ≥ E[bound(B)]``, with equality
per batch when every class has collapsed to one vertex of a regular simplex. The mean gap
over the drawn batches estimates that non-negative expectation (``gap_stderr`` is its
standard error).

Theorem 2 per batch averages ``bound(B)`` over the ``C(N+b−1, b)`` multisets with equal
weight, which is neither sampling's distribution (with replacement the class counts are
binomial, per epoch hypergeometric). The two differ by ``O(b/N)`` relative: 0.023
(replacement) and 0.046 (epoch) for CIFAR-10 (``N = 50 000``, ``b = 256``, ``τ = 0.1``,
Theorem 2 = 824.487), 0.77 and 1.53 for ``N = 1 500``. The attained mean can therefore lie
*below* Theorem 2 per batch even at the simplex; compare it with ``bound`` (the drawn
batches' mean) or ``bound_expected`` (its exact expectation under the sampling), and read
``theorem2_per_batch`` as the reference value of the paper's setting only.

**CE.** :func:`ce_vs_bounds` compares the mean training CE of ``W h + b`` with Theorem 1
(``‖W‖_F``, ``ρ = max_i ‖h_i‖``) and Corollary 1 (``r = max_y ‖w_y‖``). With exactly
balanced labels the bias drops out of the proof (its mean over the wrong classes averages
to 0 over the training set), so both bounds hold with a bias; the tests check this.

Labels must be exactly balanced (``0..K−1``, each ``N/K`` times); otherwise the functions
raise :class:`ValueError` rather than compare with a bound that does not apply.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from fractions import Fraction
from typing import Any

import numpy as np
import torch
from torch import Tensor

from protolib.choices import SAMPLINGS
from protolib.theory.bounds import ce_bound_frobenius, ce_bound_row_norm, supcon_bound

DTYPE = torch.float64
#: largest accepted ``|‖z_i‖ − 1|`` of SupCon features (rows are renormalised in float64)
UNIT_NORM_TOL = 1e-3
#: similarities per chunk of stacked batches in :func:`batch_losses` (2 MiB of float64)
CHUNK_ELEMENTS = 1 << 18


class _Record(Mapping[str, Any]):
    """A frozen dataclass that is also a read-only mapping of its fields (``dict(r)``)."""

    def __getitem__(self, key: str) -> Any:
        if key not in self._keys():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys())

    def __len__(self) -> int:
        return len(self._keys())

    def _keys(self) -> tuple[str, ...]:
        return tuple(f.name for f in fields(self))  # type: ignore[arg-type]


@dataclass(frozen=True)
class SupConComparison(_Record):
    """SupCon of trained features against the bounds, per batch (see the module docstring)."""

    attained: float  # mean over the drawn batches of the loss summed over anchors
    bound: float  # mean over the drawn batches of bound(B)
    gap: float  # attained − bound
    gap_stderr: float | None  # standard error of the mean per-batch gap (None when M = 1)
    bound_expected: float  # E[bound(B)] under the sampling, exactly
    theorem2_per_batch: float  # Theorem 2 per batch: bound(B) averaged over all multisets
    num_batches: int
    batch_size: int
    sampling: str
    tau: float
    rho: float  # 1/√τ
    num_samples: int
    num_classes: int


@dataclass(frozen=True)
class CEComparison(_Record):
    """Mean training CE against Theorem 1 and Corollary 1 (MATH.md §4)."""

    attained: float  # mean CE of W h + b over the training set
    theorem1: float  # log(1 + (K−1) exp(−ρ √K ‖W‖_F/(K−1)))
    corollary1: float  # log(1 + (K−1) exp(−K ρ r/(K−1)))
    gap_theorem1: float
    gap_corollary1: float
    weight_norm: float  # ‖W‖_F
    rho: float  # max_i ‖h_i‖
    r: float  # max_y ‖w_y‖
    num_samples: int
    num_classes: int


def balanced_classes(labels: Tensor | np.ndarray, num_classes: int | None = None) -> int:
    """The number of classes ``K`` of exactly balanced labels ``0..K−1`` (each ``N/K``
    times); ``K`` is ``max + 1`` unless given. Raises :class:`ValueError` otherwise."""
    y = torch.as_tensor(labels)
    if y.ndim != 1 or y.numel() == 0 or y.dtype.is_floating_point or y.dtype == torch.bool:
        raise ValueError(
            f"labels must be a non-empty 1-D integer tensor, got {y.dtype} {tuple(y.shape)}"
        )
    low, high = int(y.min()), int(y.max())
    K = high + 1 if num_classes is None else num_classes
    if low < 0 or high >= K or K < 2:
        raise ValueError(
            f"labels must lie in 0..K-1 with K >= 2 classes, got {low}..{high} (K={K})"
        )
    counts = torch.bincount(y.long(), minlength=K)
    if int(counts.min()) != int(counts.max()):
        raise ValueError(
            "the bounds need exactly balanced labels (every class equally often), got class "
            f"counts from {int(counts.min())} to {int(counts.max())}"
        )
    return K


def draw_batches(
    num_samples: int, batch_size: int, num_batches: int, sampling: str, seed: int
) -> Tensor:
    """``(num_batches, batch_size)`` int64 indices into ``[N]``, drawn as in training
    (MATH.md §7) by a ``torch.Generator`` seeded with ``seed``: ``"replacement"`` — each row
    ``b`` uniform draws with replacement (a multiset); ``"epoch"`` — consecutive slices of
    seeded permutations, the short tail of each dropped (needs ``b ≤ N``)."""
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {', '.join(SAMPLINGS)}, got {sampling!r}")
    for name, value, low in (("batch_size", batch_size, 2), ("num_batches", num_batches, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    generator = torch.Generator().manual_seed(seed)
    if sampling == "replacement":
        return torch.randint(0, num_samples, (num_batches, batch_size), generator=generator)
    if batch_size > num_samples:
        raise ValueError(
            f"batch_size must be <= the number of samples {num_samples} for epoch sampling, "
            f"got {batch_size}"
        )
    per_epoch = num_samples // batch_size
    epochs = -(-num_batches // per_epoch)
    slices = [
        torch.randperm(num_samples, generator=generator)[: per_epoch * batch_size]
        for _ in range(epochs)
    ]
    return torch.cat(slices).view(-1, batch_size)[:num_batches]


def batch_losses(features: Tensor, labels: Tensor, batches: Tensor, *, tau: float) -> Tensor:
    """SupCon summed over anchors (MATH.md §1.3, ``reduction="sum"``) of each batch, ``(M,)``.

    A batch is a row of indices; every row is a member, so an index drawn ``c`` times is
    ``c`` distinct members at the same point (each the others' positive). Batches are
    stacked in chunks of about ``CHUNK_ELEMENTS`` similarities: a few tensor operations
    per chunk rather than many small ones per batch, which a busy machine's threads
    slow down by an order of magnitude."""
    b = batches.shape[1]
    off = ~torch.eye(b, dtype=torch.bool)
    chunk = max(1, CHUNK_ELEMENTS // (b * b))
    out = []
    with torch.no_grad():
        for part in batches.split(chunk):
            z, y = features[part], labels[part]  # (m, b, d), (m, b)
            similarity = z @ z.transpose(1, 2) / tau
            log_denominator = similarity.masked_fill(~off, -math.inf).logsumexp(dim=2)
            positive = (y.unsqueeze(2) == y.unsqueeze(1)) & off
            count = positive.sum(dim=2)
            positive_sum = torch.where(positive, similarity, 0.0).sum(dim=2)
            anchor = log_denominator - positive_sum / count.clamp_min(1)
            out.append(torch.where(count > 0, anchor, 0.0).sum(dim=1))
    return torch.cat(out)


def batch_bounds(class_counts: Tensor, *, rho: float) -> Tensor:
    """Each batch's own bound ``Σ_{y: n_y ≥ 2} n_y log(n_y − 1 + (b − n_y) e^{−Kρ²/(K−1)})``
    from its ``(M, K)`` class counts (``b`` = the row sums): the summand of Theorem 2, whose
    sum over all multisets is its total (MATH.md §4)."""
    n = class_counts.to(DTYPE)
    K = n.shape[1]
    b = n.sum(dim=1, keepdim=True)
    decay = math.exp(-K * rho * rho / (K - 1))
    counted = n >= 2
    inner = torch.where(counted, n - 1 + (b - n) * decay, torch.ones_like(n))
    return torch.where(counted, n * inner.log(), torch.zeros_like(n)).sum(dim=1)


def class_count_pmf(
    num_samples: int, num_classes: int, batch_size: int, sampling: str
) -> list[Fraction]:
    """Exact ``P(|B_y| = l)``, ``l = 0..b``, of one class of a balanced training set:
    binomial ``(b, 1/K)`` with replacement, hypergeometric ``(N, N/K, b)`` per epoch."""
    N, K, b = num_samples, num_classes, batch_size
    n = N // K
    if sampling == "replacement":
        return [Fraction(math.comb(b, l) * (K - 1) ** (b - l), K**b) for l in range(b + 1)]
    total = math.comb(N, b)
    return [Fraction(math.comb(n, l) * math.comb(N - n, b - l), total) for l in range(b + 1)]


def expected_batch_bound(
    num_samples: int, num_classes: int, batch_size: int, rho: float, sampling: str
) -> float:
    """``E[bound(B)] = K Σ_l P(|B_y| = l) l log(l − 1 + (b − l) e^{−Kρ²/(K−1)})`` under the
    sampling (:func:`class_count_pmf`), exactly: the mean :func:`batch_bounds` estimates."""
    K, b = num_classes, batch_size
    decay = math.exp(-K * rho * rho / (K - 1))
    pmf = class_count_pmf(num_samples, K, b, sampling)
    return K * sum(
        float(p) * l * math.log(l - 1 + (b - l) * decay) for l, p in enumerate(pmf) if l >= 2 and p
    )


def _unit_rows(features: Tensor | np.ndarray) -> Tensor:
    z = torch.as_tensor(features).detach().cpu()
    if z.ndim != 2 or not z.is_floating_point() or z.shape[0] < 2:
        raise ValueError(
            f"features must be a float (N, d) array with N >= 2, got {z.dtype} {tuple(z.shape)}"
        )
    z = z.to(DTYPE)
    norms = z.norm(dim=1)
    deviation = float((norms - 1).abs().max())
    if not deviation <= UNIT_NORM_TOL:  # also NaN
        raise ValueError(
            f"features must be unit rows (the bound is on the unit sphere at rho^2 = 1/tau): "
            f"max |norm - 1| = {deviation:.3g} > {UNIT_NORM_TOL:g}"
        )
    return z / norms.unsqueeze(1)


def supcon_vs_bound(
    features: Tensor | np.ndarray,
    labels: Tensor | np.ndarray,
    *,
    tau: float,
    batch_size: int,
    num_batches: int,
    sampling: str,
    seed: int,
) -> SupConComparison:
    """SupCon of trained features against Theorem 2, per batch (MATH.md §4, last bullet).

    Args:
        features: ``(N, d)`` unit rows (to 1e-3; renormalised in float64, so the bound on
            the sphere applies exactly), the trained embeddings of the training set.
        labels: ``(N,)`` exactly balanced labels ``0..K−1``.
        tau: the temperature (``ρ² = 1/τ``).
        batch_size, num_batches, sampling, seed: :func:`draw_batches`.

    Returns:
        A :class:`SupConComparison`; ``gap = attained − bound`` has expectation ≥ 0 and
        is 0 per batch at the simplex (the module docstring says why not per batch).
    """
    if isinstance(tau, bool) or not isinstance(tau, int | float) or not 0 < tau < math.inf:
        raise ValueError(f"tau must be a finite number > 0, got {tau!r}")
    z = _unit_rows(features)
    y = torch.as_tensor(labels).detach().cpu()
    if y.shape != (z.shape[0],):
        raise ValueError(f"labels must have shape ({z.shape[0]},), got {tuple(y.shape)}")
    K = balanced_classes(y)
    y = y.long()
    N, rho = z.shape[0], 1.0 / math.sqrt(tau)
    batches = draw_batches(N, batch_size, num_batches, sampling, seed)
    losses = batch_losses(z, y, batches, tau=float(tau))
    counts = torch.zeros(num_batches, K, dtype=DTYPE).scatter_add_(
        1, y[batches], torch.ones(batches.shape, dtype=DTYPE)
    )
    bounds = batch_bounds(counts, rho=rho)
    gaps = losses - bounds
    return SupConComparison(
        attained=float(losses.mean()),
        bound=float(bounds.mean()),
        gap=float(gaps.mean()),
        gap_stderr=float(gaps.std() / math.sqrt(num_batches)) if num_batches > 1 else None,
        bound_expected=expected_batch_bound(N, K, batch_size, rho, sampling),
        theorem2_per_batch=supcon_bound(N, K, batch_size, rho).per_batch,
        num_batches=num_batches,
        batch_size=batch_size,
        sampling=sampling,
        tau=float(tau),
        rho=rho,
        num_samples=N,
        num_classes=K,
    )


def ce_vs_bounds(
    features: Tensor | np.ndarray,
    weight: Tensor | np.ndarray,
    bias: Tensor | np.ndarray | None,
    labels: Tensor | np.ndarray,
) -> CEComparison:
    """Mean training CE of ``W h + b`` against Theorem 1 and Corollary 1 (MATH.md §4).

    Args:
        features: ``(N, d)`` inputs ``h_i`` of the linear head (``ρ = max_i ‖h_i‖``).
        weight: ``(K, d)`` trained ``W`` (``‖W‖_F``; ``r = max_y ‖w_y‖``).
        bias: ``(K,)`` or ``None``. With exactly balanced labels the bias cancels in the
            proof of both bounds, so they hold with it (checked numerically in the tests).
        labels: ``(N,)`` exactly balanced labels ``0..K−1``.

    Everything is computed in float64; the CE as ``log(1 + Σ_{j≠y} e^{x_j − x_y})`` by a
    log-add-exp, accurate also for a tiny loss. Both gaps are ≥ 0 (up to round-off) and 0
    at the simplex with equinorm weights and no bias.
    """
    h = torch.as_tensor(features).detach().cpu()
    W = torch.as_tensor(weight).detach().cpu()
    if h.ndim != 2 or not h.is_floating_point() or h.shape[0] < 1:
        raise ValueError(f"features must be a float (N, d) array, got {h.dtype} {tuple(h.shape)}")
    if W.ndim != 2 or not W.is_floating_point() or W.shape[1] != h.shape[1]:
        raise ValueError(
            f"weight must be a float (K, {h.shape[1]}) array, got {W.dtype} {tuple(W.shape)}"
        )
    h, W = h.to(DTYPE), W.to(DTYPE)
    K, N = W.shape[0], h.shape[0]
    logits = h @ W.T
    if bias is not None:
        b = torch.as_tensor(bias).detach().cpu()
        if b.shape != (K,) or not b.is_floating_point():
            raise ValueError(
                f"bias must be a float ({K},) array or None, got {b.dtype} {tuple(b.shape)}"
            )
        logits = logits + b.to(DTYPE)
    y = torch.as_tensor(labels).detach().cpu()
    if y.shape != (N,):
        raise ValueError(f"labels must have shape ({N},), got {tuple(y.shape)}")
    balanced_classes(y, K)
    y = y.long()
    if not bool(torch.isfinite(logits).all()):
        raise ValueError("features, weight and bias must be finite")
    margins = logits - logits.gather(1, y.unsqueeze(1))  # x_j − x_y; 0 at j = y
    others = margins.scatter(1, y.unsqueeze(1), -math.inf)
    attained = float(torch.logaddexp(torch.zeros(N, dtype=DTYPE), others.logsumexp(dim=1)).mean())
    rho = float(h.norm(dim=1).max())
    weight_norm = float(W.norm())
    r = float(W.norm(dim=1).max())
    theorem1 = ce_bound_frobenius(K, rho, weight_norm)
    corollary1 = ce_bound_row_norm(K, rho, r)
    return CEComparison(
        attained=attained,
        theorem1=theorem1,
        corollary1=corollary1,
        gap_theorem1=attained - theorem1,
        gap_corollary1=attained - corollary1,
        weight_norm=weight_norm,
        rho=rho,
        r=r,
        num_samples=N,
        num_classes=K,
    )
