"""Class-distance normalised variance and effective rank of the class means (MATH.md §3,
"beyond the studies"; Galanti et al., 2022; Roy & Vetterli, 2007).

features (n, d), labels (n,) int64 in ``[0, K)``, class means (K, d) (every class
present; :func:`~protolib.geometry.class_means`). Computed in float64.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from protolib.geometry.chunks import chunk_rows, spans


def class_variances(features: Tensor, labels: Tensor, means: Tensor) -> Tensor:
    """``σ_c²``, the mean squared distance of class c's points to its mean μ_c: (K,)
    float64, summed over blocks of rows (no n×d float64 copy)."""
    mu = means.double()
    labels = labels.long().to(mu.device)
    totals = torch.zeros(mu.shape[0], dtype=torch.float64, device=mu.device)
    for start, stop in spans(features.shape[0], chunk_rows(features.shape[1])):
        y = labels[start:stop]
        residuals = features[start:stop].double().to(mu.device) - mu[y]
        totals.index_add_(0, y, residuals.square().sum(dim=1))
    return totals / torch.bincount(labels, minlength=mu.shape[0]).double()


def cdnv(features: Tensor, labels: Tensor, means: Tensor) -> float:
    """CDNV: ``(σ_c² + σ_c'²) / (2‖μ_c − μ_c'‖²)`` averaged over unordered class pairs
    c < c' (0 when every class has collapsed to distinct means). NaN for K < 2; +inf when
    two classes with spread share a mean, NaN when two collapsed classes share one (0/0)."""
    mu = means.double()
    K = mu.shape[0]
    if K < 2:
        return float("nan")
    variances = class_variances(features, labels, mu)
    i, j = torch.triu_indices(K, K, offset=1, device=mu.device)
    distances = (mu[i] - mu[j]).square().sum(dim=1)
    return float(((variances[i] + variances[j]) / (2.0 * distances)).mean())


def effective_rank(means: Tensor) -> float:
    """``exp(H(σ/‖σ‖₁))`` of the centred class means μ_c − (1/K) Σ_c' μ_c' (σ their
    singular values, H the Shannon entropy, 0 log 0 = 0): ``K − 1`` at a simplex ETF.
    NaN when the class means coincide."""
    mu = means.double()
    singular = torch.linalg.svdvals(mu - mu.mean(dim=0))
    total = float(singular.sum())
    if not total > 0:
        return float("nan")
    p = singular[singular > 0] / total
    return math.exp(float(-(p * p.log()).sum()))
