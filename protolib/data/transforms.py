"""Training-set transforms of MATH.md §6: STEP and exponential imbalance, label
corruption, exact class balancing, the points bound to every batch, and the hash of a
run's training split.

Each is a pure function of ``(labels, parameter, seed)`` that returns indices and labels
(CPU int64 tensors), so a run can record exactly what it trained on. Randomness comes from
``numpy.random.default_rng(seed)``, whose streams numpy keeps stable across releases.
"""

from __future__ import annotations

import hashlib
import math
from fractions import Fraction

import numpy as np
import torch
from torch import Tensor

from protolib.choices import CORRUPTION_MODES
from protolib.data import DEFAULT_MINORITY_FRACTION, IMBALANCE_KINDS

# Counts ⌊x⌋ are taken as ⌊x + _EPS⌋ so that a float product such as 0.29·100 =
# 28.999999999999996 counts as the 29 it stands for.
_EPS = 1e-9


def _floor(x: float) -> int:
    return math.floor(x + _EPS)


def _check_labels(labels: Tensor, num_classes: int, smallest_k: int) -> np.ndarray:
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
    return [n if c < start else _floor(n / ratio) for c, n in enumerate(sizes)]


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
    array = _check_labels(labels, num_classes, 1)
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
    array = _check_labels(labels, num_classes, 1)
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
    array = _check_labels(labels, num_classes, 1)
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
    array = _check_labels(labels, num_classes, 1)
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


def split_sha256(kept: Tensor, train_labels: Tensor) -> str:
    """SHA-256 (hex) of a run's training split: the kept indices into the training split
    (int64 little-endian, sorted ascending) followed by their training labels in the same
    order (int64 little-endian). Two runs of one dataset (with the same dataset options)
    and equal hashes train on the same points with the same labels (``index`` and
    ``train_label`` of ``data.parquet``); the dataset itself is not part of the hash."""
    index = np.asarray(torch.as_tensor(kept).cpu(), dtype=np.int64)
    label = np.asarray(torch.as_tensor(train_labels).cpu(), dtype=np.int64)
    if index.shape != label.shape or index.ndim != 1:
        raise ValueError(
            f"kept and train_labels must be 1-D of one length, got {index.shape} and {label.shape}"
        )
    order = np.argsort(index, kind="stable")
    digest = hashlib.sha256(index[order].astype("<i8").tobytes())
    digest.update(label[order].astype("<i8").tobytes())
    return digest.hexdigest()


def corrupt_labels(
    labels: Tensor, fraction: float, num_classes: int, seed: int, mode: str = "other"
) -> tuple[Tensor, Tensor]:
    """Label corruption with fraction ``p`` (MATH.md §6).

    ``⌊p·N⌋`` positions are drawn without replacement; each gets a new label:
    ``(y + U{1..K−1}) mod K`` for ``mode="other"`` (always a different class) or
    ``U{0..K−1}`` for ``mode="uniform"`` (may equal the old one). Returns
    ``(new_labels, changed)``: int64 ``(N,)`` labels and the drawn positions, sorted
    ascending (for ``"uniform"``, all drawn positions, changed in value or not).
    """
    if mode not in CORRUPTION_MODES:
        raise ValueError(
            f"unknown label-corruption mode {mode!r}; known: {', '.join(CORRUPTION_MODES)}"
        )
    array = _check_labels(labels, num_classes, 2 if mode == "other" else 1)
    if (
        not isinstance(fraction, int | float)
        or isinstance(fraction, bool)
        or not 0 <= fraction <= 1
    ):
        raise ValueError(f"corruption fraction must lie in [0, 1], got {fraction!r}")
    rng = np.random.default_rng(seed)
    n = array.shape[0]
    changed = np.sort(rng.choice(n, size=min(_floor(fraction * n), n), replace=False))
    new = array.copy()
    if mode == "other":
        new[changed] = (array[changed] + rng.integers(1, num_classes, size=changed.size)) % (
            num_classes
        )
    else:
        new[changed] = rng.integers(0, num_classes, size=changed.size)
    return torch.from_numpy(new), torch.from_numpy(changed.astype(np.int64))


def _class_members(array: np.ndarray, num_classes: int, what: str) -> list[np.ndarray]:
    """Positions of each class's points; ``ValueError`` naming ``what`` when one has none."""
    members = [np.flatnonzero(array == c) for c in range(num_classes)]
    for c, points in enumerate(members):
        if points.size == 0:
            raise ValueError(
                f"{what} needs a training point in every class, but class {c} has none "
                f"(class sizes: {[len(m) for m in members]})"
            )
    return members


def balance_classes(labels: Tensor, num_classes: int, seed: int) -> Tensor:
    """Indices of the training points kept when every class is subsampled to the smallest
    class's size ``n_min`` (the exactly balanced labels of MATH.md §4, applied before the
    transforms of §6).

    ``labels`` int ``(N,)`` in ``0..K−1``. Each class ``c`` keeps the first ``n_min`` of a
    seeded permutation of its points (classes visited in increasing order). Labels already
    balanced keep everything. Returns int64 ``(K·n_min,)`` positions into ``labels``, sorted
    ascending; ``ValueError`` when a class has no point.
    """
    array = _check_labels(labels, num_classes, 1)
    members = _class_members(array, num_classes, "balance")
    smallest = min(len(points) for points in members)
    rng = np.random.default_rng(seed)
    keep = np.zeros(array.shape[0], dtype=bool)
    for points in members:
        keep[rng.permutation(points)[:smallest]] = True
    return torch.from_numpy(np.flatnonzero(keep).astype(np.int64))


def bound_points(labels: Tensor, binding: int, num_classes: int, seed: int) -> Tensor:
    """The points bound to every batch under batch binding (MATH.md §6): ``binding`` points
    of each class, the first ``binding`` of a seeded permutation of its points (without
    replacement; classes visited in increasing order).

    ``labels`` int ``(N,)`` in ``0..K−1`` (the run's training set, after its other
    transforms). Returns int64 ``(K·binding,)`` positions into ``labels``, sorted ascending;
    empty for ``binding = 0``. ``ValueError`` naming ``binding``, its value and the largest
    allowed (the smallest class size) when a class has fewer than ``binding`` points.
    """
    array = _check_labels(labels, num_classes, 1)
    if not isinstance(binding, int) or isinstance(binding, bool) or binding < 0:
        raise ValueError(f"binding must be an integer >= 0, got {binding!r}")
    if binding == 0:
        return torch.empty(0, dtype=torch.int64)
    counts = np.bincount(array, minlength=num_classes)
    smallest = int(counts.min())
    if smallest < binding:
        c = int(counts.argmin())
        raise ValueError(
            f"binding {binding} exceeds the {smallest} training points of class {c}; "
            f"binding must be at most the smallest class size, {smallest}"
        )
    rng = np.random.default_rng(seed)
    chosen = [rng.permutation(np.flatnonzero(array == c))[:binding] for c in range(num_classes)]
    return torch.from_numpy(np.sort(np.concatenate(chosen)).astype(np.int64))


def training_labels(
    labels: Tensor,
    num_classes: int,
    *,
    balance: bool,
    imbalance: str,
    imbalance_ratio: float,
    minority_fraction: float,
    label_corruption: float,
    corruption_mode: str,
    seed: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """The transforms of MATH.md §6 in a run's order: balancing (when ``balance``), the
    ``imbalance`` (``"step"`` with ``minority_fraction``, or ``"exp"``) with
    ``imbalance_ratio``, label corruption. Returns ``(kept, train_labels, changed)``: the
    kept indices into ``labels`` (sorted), their training labels and the positions (into
    ``kept``) whose label was drawn anew. Raises ``ValueError`` (one line naming the key)
    when a class would be left without a training point. The train job and the pipeline's
    plan-time checks both call this."""
    pool = torch.arange(len(labels))
    if balance:
        pool = balance_classes(labels, num_classes, seed)
    kind = {"kind": imbalance, "minority_fraction": minority_fraction}
    check_imbalance(labels[pool], imbalance_ratio, num_classes, **kind)
    kept = pool[imbalanced_indices(labels[pool], imbalance_ratio, num_classes, seed, **kind)]
    train, changed = corrupt_labels(
        labels[kept], label_corruption, num_classes, seed, mode=corruption_mode
    )
    return kept, train, changed


def split_validation(
    kept: Tensor, train: Tensor, changed: Tensor, fraction: float, num_classes: int, seed: int
) -> tuple[tuple[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]:
    """Hold out a validation split from a run's training points (the output of
    :func:`training_labels`), for model selection: ``⌊fraction · n_c⌋`` points of each class
    ``c`` of the training labels, drawn by a seeded permutation (a stream of its own, so the
    other draws of the run do not move). Returns the remaining ``(kept, train_labels,
    changed)`` — ``changed`` as positions into the new ``kept`` — and the validation
    ``(indices, labels)``; its labels are the training labels (corrupted where the run's
    are), as a validation set carved from noisy data is. Every class keeps at least one
    training point (``fraction < 1``)."""
    if not 0 <= fraction < 1:
        raise ValueError(f"validation_fraction must be in [0, 1), got {fraction!r}")
    rng = np.random.default_rng([seed, 0x7A11D])
    array = train.cpu().numpy()
    held = np.zeros(len(array), dtype=bool)
    for c in range(num_classes):
        members = np.flatnonzero(array == c)
        take = _floor(fraction * len(members))
        held[rng.permutation(members)[:take]] = True
    keep = torch.from_numpy(np.flatnonzero(~held))
    out = torch.from_numpy(np.flatnonzero(held))
    was_changed = torch.zeros(len(array), dtype=torch.bool)
    was_changed[changed] = True
    new_changed = torch.nonzero(was_changed[keep]).flatten()
    return (kept[keep], train[keep], new_changed), (kept[out], train[out])
