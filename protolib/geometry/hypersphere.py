"""Alignment and uniformity of unit embeddings (MATH.md §3; Wang & Isola, 2020), exact
and chunked.

Both take the embeddings scaled to unit norm (a zero row stays zero). features (n, d),
labels (n,) int64 in ``[0, K)``. Neither forms an n×n matrix.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from protolib.geometry.chunks import chunk_rows, spans


def alignment(features: Tensor, labels: Tensor, *, num_classes: int) -> float:
    """``E‖f(x) − f(x')‖²`` over ordered same-class pairs x ≠ x' of unit embeddings.

    Exact from per-class sums, in float64: for a class of n_c points,
    ``Σ_{i≠j} ‖f_i − f_j‖² = 2 n_c Σ_i ‖f_i‖² − 2 ‖Σ_i f_i‖²`` over its n_c (n_c − 1)
    pairs; the pairs of all classes are pooled. NaN when no class has two points.
    """
    unit = F.normalize(features, dim=1)
    labels = labels.long().to(unit.device)
    sums = torch.zeros(num_classes, unit.shape[1], dtype=torch.float64, device=unit.device)
    squares = torch.zeros(num_classes, dtype=torch.float64, device=unit.device)
    for start, stop in spans(unit.shape[0], chunk_rows(unit.shape[1])):
        rows = unit[start:stop].double()
        sums.index_add_(0, labels[start:stop], rows)
        squares.index_add_(0, labels[start:stop], rows.square().sum(dim=1))
    counts = torch.bincount(labels, minlength=num_classes).double()
    pairs = float((counts * (counts - 1)).sum())
    if pairs == 0:
        return float("nan")
    within = 2.0 * counts * squares - 2.0 * sums.square().sum(dim=1)
    return float(within.clamp_min(0.0).sum()) / pairs


def uniformity(features: Tensor, *, chunk_size: int | None = None) -> float:
    """``log E exp(−2‖f(x) − f(y)‖²)`` over ordered pairs x ≠ y of unit embeddings.

    Exact: every unordered pair is visited once, in blocks of ``chunk_size`` rows against
    the rows from the block's start on (the upper triangle; blocks of at most 64 MiB by
    default). One matrix product gives a block's exponents: with a' = [2a, −2‖a‖², 1] and
    b' = [2b, 1, −2‖b‖²], ``<a', b'> = −2‖a − b‖²``. Products in the features' dtype,
    sums in float64. NaN for fewer than two points.
    """
    unit = F.normalize(features, dim=1)
    n = unit.shape[0]
    if n < 2:
        return float("nan")
    squared = unit.square().sum(dim=1, keepdim=True)  # 1, or 0 for a zero row
    ones = torch.ones_like(squared)
    rows_side = torch.cat([2.0 * unit, -2.0 * squared, ones], dim=1)
    cols_side = torch.cat([2.0 * unit, ones, -2.0 * squared], dim=1)
    total = 0.0
    for start, stop in spans(n, chunk_rows(n, chunk_size)):
        block = (rows_side[start:stop] @ cols_side[start:].T).clamp_max_(0.0).exp_()
        rows = stop - start
        block[:, :rows].fill_diagonal_(0.0)  # the pairs x = y are not counted
        inside = float(block[:, :rows].sum(dim=1).double().sum())  # both orders already
        beyond = float(block[:, rows:].sum(dim=1).double().sum())  # one order: counted twice
        total += inside + 2.0 * beyond
    return math.log(total / (n * (n - 1)))
