"""Class imbalance of MATH.md §6: STEP (the last ``⌊μK⌋`` classes keep ``⌊n_c/R⌋``) and
exponential (class ``c`` keeps ``⌊n_c·R^{−c/(K−1)}⌋``, the long-tailed CIFAR protocol),
exact in the ratio given, as pure seeded functions of the labels; and the checks that
refuse a ratio which leaves a class without a training point.

Randomness comes from ``numpy.random.default_rng(seed)``, whose streams numpy keeps stable
across releases.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import torch
from torch import Tensor

from protolib.data import DEFAULT_MINORITY_FRACTION, IMBALANCE_KINDS

# Counts ⌊x⌋ are taken as ⌊x + _EPS⌋ so that a float product such as 0.29·100 =
# 28.999999999999996 counts as the 29 it stands for.
_EPS = 1e-9


def floor_count(x: float) -> int:
    """``⌊x⌋`` of a count that a float stands for (``_EPS`` above)."""
    return math.floor(x + _EPS)


def label_array(labels: Tensor, num_classes: int, smallest_k: int) -> np.ndarray:
    """``labels`` as an int64 numpy array, checked: 1-D integers in ``0..K−1``, with
    ``num_classes`` an integer of at least ``smallest_k`` (``ValueError`` otherwise)."""
    if (
        not isinstance(num_classes, int)
        or isinstance(num_classes, bool)
        or num_classes < smallest_k
    ):
        raise ValueError(f"num_classes must be an integer >= {smallest_k}, got {num_classes!r}")
    array = labels.detach().cpu().numpy() if isinstance(labels, Tensor) else np.asarray(labels)
    if array.ndim != 1 or not (np.issubdtype(array.dtype, np.integer) or array.size == 0):
        raise ValueError(
            f"labels must be a 1-D integer tensor (N,), got {array.dtype} {tuple(array.shape)}"
        )
    if array.size and (array.min() < 0 or array.max() >= num_classes):
        raise ValueError(
            f"labels must lie in 0..{num_classes - 1}, got {array.min()}..{array.max()}"
        )
    return array.astype(np.int64, copy=False)


def _exact(value: float) -> Fraction:
    """The number a config value stands for: an int as it is, a float as its shortest
    decimal (``0.29`` is 29/100, not the binary fraction nearest to it)."""
    return Fraction(value) if isinstance(value, int) else Fraction(repr(float(value)))


def _check_ratio(ratio: float) -> Fraction:
    if (
        not isinstance(ratio, int | float)
        or isinstance(ratio, bool)
        or not math.isfinite(ratio)
        or ratio < 1
    ):
        raise ValueError(f"imbalance ratio must be >= 1 and finite, got {ratio!r}")
    return _exact(ratio)


def _check_kind(kind: str, minority_fraction: float) -> None:
    if kind not in IMBALANCE_KINDS:
        raise ValueError(f"unknown imbalance {kind!r}; known: {', '.join(IMBALANCE_KINDS)}")
    if (
        not isinstance(minority_fraction, int | float)
        or isinstance(minority_fraction, bool)
        or not 0 < minority_fraction <= 1
    ):
        raise ValueError(f"minority_fraction must lie in (0, 1], got {minority_fraction!r}")
    if kind == "exp" and minority_fraction != DEFAULT_MINORITY_FRACTION:
        raise ValueError(
            f"minority_fraction {minority_fraction!r} applies to imbalance 'step' only; with "
            f"imbalance 'exp' leave it at {DEFAULT_MINORITY_FRACTION}"
        )


def first_minority(num_classes: int, minority_fraction: float) -> int:
    """The first minority class of STEP imbalance: the last ``⌊μK⌋`` classes are the
    minorities (MATH.md §6), so ``K − ⌊μK⌋`` (``⌈K/2⌉`` for ``μ = 0.5``)."""
    return num_classes - math.floor(_exact(minority_fraction) * num_classes)


def _exp_count(n: int, ratio: Fraction, c: int, num_classes: int) -> int:
    """``⌊n · R^{−c/(K−1)}⌋`` exactly: the largest ``m`` with ``m^{K−1}·p^c ≤ n^{K−1}·q^c``
    for ``R = p/q`` (integers only; a float estimate is corrected both ways)."""
    if c == 0 or n == 0:
        return n
    p, q, e = ratio.numerator, ratio.denominator, num_classes - 1
    bound = n**e * q**c

    def fits(m: int) -> bool:
        return m**e * p**c <= bound

    m = max(0, math.floor(n * float(ratio) ** (-c / e)))
    while fits(m + 1):
        m += 1
    while m > 0 and not fits(m):
        m -= 1
    return m


def kept_counts(
    counts: list[int] | np.ndarray,
    ratio: float,
    *,
    kind: str = "step",
    minority_fraction: float = DEFAULT_MINORITY_FRACTION,
) -> list[int]:
    """How many training points each class keeps under imbalance ``kind`` with ratio
    ``R`` (MATH.md §6), from the class sizes ``n_c`` (length ``K``).

    ``"step"``: classes before :func:`first_minority` keep all, the others ``⌊n_c/R⌋``;
    ``"exp"``: class ``c`` keeps ``⌊n_c · R^{−c/(K−1)}⌋``, computed exactly in integers.
    """
    ratio_q = _check_ratio(ratio)
    _check_kind(kind, minority_fraction)
    sizes = [int(n) for n in counts]
    K = len(sizes)
    if kind == "exp":
        return [_exp_count(n, ratio_q, c, K) for c, n in enumerate(sizes)] if K > 1 else sizes
    start = first_minority(K, minority_fraction)
    # ⌊n_c / R⌋ as it has always been computed (the STEP splits of earlier runs stay)
    return [n if c < start else floor_count(n / ratio) for c, n in enumerate(sizes)]


def step_imbalance(
    labels: Tensor,
    ratio: float,
    num_classes: int,
    seed: int,
    minority_fraction: float = DEFAULT_MINORITY_FRACTION,
) -> Tensor:
    """Indices of the training points kept under STEP imbalance with ratio ``R`` (MATH.md §6).

    ``labels`` int ``(N,)`` in ``0..K−1``. The last ``⌊μK⌋`` classes (``μ`` the
    ``minority_fraction``; ``⌊K/2⌋`` by default) are the minorities: every minority class
    ``c`` keeps ``⌊n_c / R⌋`` of its ``n_c`` points, the first of a seeded permutation of
    them (classes visited in increasing order); the others keep all. ``R = 1`` keeps
    everything. Returns int64 ``(M,)`` positions into ``labels``, sorted ascending.
    """
    array = label_array(labels, num_classes, 1)
    counts = np.bincount(array, minlength=num_classes)
    keep_n = kept_counts(counts, ratio, kind="step", minority_fraction=minority_fraction)
    start = first_minority(num_classes, minority_fraction)
    return _subsample(array, keep_n, range(start, num_classes), seed)


def exp_imbalance(labels: Tensor, ratio: float, num_classes: int, seed: int) -> Tensor:
    """Indices of the training points kept under exponential (long-tailed) imbalance with
    ratio ``R`` (MATH.md §6; the CIFAR-10/100-LT protocol of Cao et al. 2019).

    ``labels`` int ``(N,)`` in ``0..K−1``. Class ``c`` keeps ``⌊n_c · R^{−c/(K−1)}⌋`` of
    its ``n_c`` points (class 0 all, class ``K−1`` ``⌊n_c/R⌋``; exact integer arithmetic),
    the first of a seeded permutation of them (classes ``1..K−1`` in increasing order).
    Returns int64 ``(M,)`` positions into ``labels``, sorted ascending.
    """
    array = label_array(labels, num_classes, 1)
    counts = np.bincount(array, minlength=num_classes)
    keep_n = kept_counts(counts, ratio, kind="exp")
    return _subsample(array, keep_n, range(1, num_classes), seed)


def _subsample(array: np.ndarray, keep_n: list[int], visited: range, seed: int) -> Tensor:
    """Every point of the classes not ``visited``; of each visited class ``c`` (in order),
    the first ``keep_n[c]`` of a seeded permutation of its points. Sorted int64 indices."""
    rng = np.random.default_rng(seed)
    keep = ~np.isin(array, np.asarray(visited, dtype=np.int64))
    for c in visited:
        members = np.flatnonzero(array == c)
        keep[rng.permutation(members)[: keep_n[c]]] = True
    return torch.from_numpy(np.flatnonzero(keep).astype(np.int64))


def imbalanced_indices(
    labels: Tensor,
    ratio: float,
    num_classes: int,
    seed: int,
    *,
    kind: str,
    minority_fraction: float = DEFAULT_MINORITY_FRACTION,
) -> Tensor:
    """:func:`step_imbalance` (with ``minority_fraction``) or :func:`exp_imbalance`, by
    ``kind`` (one of ``IMBALANCE_KINDS``; ``minority_fraction`` other than its default
    with ``"exp"`` is an error)."""
    _check_kind(kind, minority_fraction)
    if kind == "exp":
        return exp_imbalance(labels, ratio, num_classes, seed)
    return step_imbalance(labels, ratio, num_classes, seed, minority_fraction)


def _exp_limit(n: int, c: int, num_classes: int) -> Fraction:
    """The largest ratio with ``⌊n · R^{−c/(K−1)}⌋ ≥ 1`` for ``c ≥ 1``, i.e.
    ``n^{(K−1)/c}``: exact when it is an integer, else rounded down to six significant
    digits (still a valid ratio). ``10^300`` stands for any larger bound (never the
    smallest: the last class's bound is its size)."""
    e = num_classes - 1
    if n <= 1:
        return Fraction(n)
    log10 = e / c * math.log10(n)
    if log10 > 300:
        return Fraction(10**300)
    power = n**e  # R = p/q keeps a point when p^c ≤ n^e · q^c

    def valid(value: Fraction) -> bool:
        return value.numerator**c <= power * value.denominator**c

    root = round(10**log10)
    for r in (root - 1, root, root + 1):
        if r >= 1 and r**c == power:
            return Fraction(r)
    scale = Fraction(10) ** (math.floor(log10) - 5)
    t = math.floor(10 ** (log10 - math.floor(log10) + 5))
    while valid((t + 1) * scale):
        t += 1
    while not valid(t * scale):
        t -= 1
    return t * scale


def largest_valid_ratio(
    labels: Tensor,
    num_classes: int,
    *,
    kind: str = "step",
    minority_fraction: float = DEFAULT_MINORITY_FRACTION,
) -> int | float:
    """The largest ratio ``R`` that leaves every class at least one training point under
    imbalance ``kind`` (MATH.md §6). ``labels`` int ``(N,)``.

    STEP: a minority class keeps ``⌊n_c / R⌋``, so ``R`` may be at most the smallest
    minority class size (an int; ``inf`` when there is no minority class). Exponential:
    class ``c ≥ 1`` keeps ``⌊n_c · R^{−c/(K−1)}⌋ ≥ 1`` exactly when ``R ≤ n_c^{(K−1)/c}``;
    the smallest of those bounds, an int when it is one (usually ``n_{K−1}``), else rounded
    down to six significant digits (still valid).
    """
    array = label_array(labels, num_classes, 1)
    _check_kind(kind, minority_fraction)
    counts = np.bincount(array, minlength=num_classes)
    if kind == "exp":
        limits = [_exp_limit(int(n), c, num_classes) for c, n in enumerate(counts) if c > 0]
        if not limits:
            return math.inf
        best = min(limits)
        return int(best) if best.denominator == 1 else float(best)
    minority = counts[first_minority(num_classes, minority_fraction) :]
    return int(minority.min()) if minority.size else math.inf


def check_imbalance(
    labels: Tensor,
    ratio: float,
    num_classes: int,
    *,
    kind: str = "step",
    minority_fraction: float = DEFAULT_MINORITY_FRACTION,
) -> None:
    """Raise ``ValueError`` (naming ``imbalance_ratio``, its value, the imbalance when not
    the default STEP, and the largest valid ratio) when imbalance ``kind`` with ``ratio``
    would leave a class without a training point."""
    array = label_array(labels, num_classes, 1)
    minorities = num_classes - first_minority(num_classes, minority_fraction)
    if kind == "step" and ratio > 1 and not 1 <= minorities <= num_classes - 1:
        raise ValueError(
            f"minority_fraction {minority_fraction!r} makes ⌊μK⌋ = {minorities} of the "
            f"K = {num_classes} classes minorities, so imbalance_ratio {ratio!r} would leave "
            f"the classes balanced; allowed: a minority_fraction in [1/K, (K−1)/K] = "
            f"[{1 / num_classes:.4g}, {(num_classes - 1) / num_classes:.4g}]"
        )
    counts = np.bincount(array, minlength=num_classes)
    kept = kept_counts(counts, ratio, kind=kind, minority_fraction=minority_fraction)
    for c in range(num_classes):
        if kept[c] < 1:
            largest = largest_valid_ratio(
                labels, num_classes, kind=kind, minority_fraction=minority_fraction
            )
            which = _describe(kind, minority_fraction)
            raise ValueError(
                f"imbalance_ratio {ratio!r}{which} leaves class {c} ({int(counts[c])} training "
                f"points) without any; the largest valid imbalance_ratio{which} for this "
                f"dataset is {largest}"
            )


def _describe(kind: str, minority_fraction: float) -> str:
    """The imbalance in a message; empty for the default STEP split."""
    if kind == "exp":
        return " (imbalance 'exp')"
    if minority_fraction != DEFAULT_MINORITY_FRACTION:
        return f" (imbalance 'step', minority_fraction {minority_fraction!r})"
    return ""
