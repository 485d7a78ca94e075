"""Training-set transforms of MATH.md §6: STEP imbalance, label corruption, exact class
balancing and the points bound to every batch.

Each is a pure function of ``(labels, parameter, seed)`` that returns indices and labels
(CPU int64 tensors), so a run can record exactly what it trained on. Randomness comes from
``numpy.random.default_rng(seed)``, whose streams numpy keeps stable across releases.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from protolib.choices import CORRUPTION_MODES

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


def step_imbalance(labels: Tensor, ratio: float, num_classes: int, seed: int) -> Tensor:
    """Indices of the training points kept under STEP imbalance with ratio ``R`` (MATH.md §6).

    ``labels`` int ``(N,)`` in ``0..K−1``. The first ``⌈K/2⌉`` classes keep all their
    points; every other class ``c`` keeps ``⌊n_c / R⌋`` of its ``n_c`` points, the first of
    a seeded permutation of them (classes visited in increasing order). ``R = 1`` keeps
    everything. Returns int64 ``(M,)`` positions into ``labels``, sorted ascending.
    """
    array = _check_labels(labels, num_classes, 1)
    if (
        not isinstance(ratio, int | float)
        or isinstance(ratio, bool)
        or not math.isfinite(ratio)
        or ratio < 1
    ):
        raise ValueError(f"imbalance ratio must be >= 1 and finite, got {ratio!r}")
    rng = np.random.default_rng(seed)
    keep = array < math.ceil(num_classes / 2)
    for c in range(math.ceil(num_classes / 2), num_classes):
        members = np.flatnonzero(array == c)
        chosen = rng.permutation(members)[: _floor(len(members) / ratio)]
        keep[chosen] = True
    return torch.from_numpy(np.flatnonzero(keep).astype(np.int64))


def largest_valid_ratio(labels: Tensor, num_classes: int) -> int:
    """The largest STEP ratio ``R`` that leaves every class at least one training point.

    A minority class ``c`` keeps ``⌊n_c / R⌋`` points (:func:`step_imbalance`), so ``R`` may
    be at most the smallest minority class size ``n_c``. ``labels`` int ``(N,)``.
    """
    array = _check_labels(labels, num_classes, 1)
    counts = np.bincount(array, minlength=num_classes)
    minority = counts[math.ceil(num_classes / 2) :]
    return int(minority.min()) if minority.size else int(counts.min())


def check_imbalance(labels: Tensor, ratio: float, num_classes: int) -> None:
    """Raise ``ValueError`` (naming ``imbalance_ratio`` and the largest valid ratio) when
    STEP imbalance with ``ratio`` would leave a class without a training point."""
    array = _check_labels(labels, num_classes, 1)
    counts = np.bincount(array, minlength=num_classes)
    for c in range(num_classes):
        kept = counts[c] if c < math.ceil(num_classes / 2) else _floor(counts[c] / ratio)
        if kept < 1:
            raise ValueError(
                f"imbalance_ratio {ratio!r} leaves class {c} ({int(counts[c])} training points) "
                f"without any; the largest valid imbalance_ratio for this dataset is "
                f"{largest_valid_ratio(labels, num_classes)}"
            )


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
    imbalance_ratio: float,
    label_corruption: float,
    corruption_mode: str,
    seed: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """The transforms of MATH.md §6 in a run's order: balancing (when ``balance``), STEP
    imbalance, label corruption. Returns ``(kept, train_labels, changed)``: the kept
    indices into ``labels`` (sorted), their training labels and the positions (into
    ``kept``) whose label was drawn anew. Raises ``ValueError`` (one line naming the key)
    when a class would be left without a training point."""
    pool = torch.arange(len(labels))
    if balance:
        pool = balance_classes(labels, num_classes, seed)
    check_imbalance(labels[pool], imbalance_ratio, num_classes)
    kept = pool[step_imbalance(labels[pool], imbalance_ratio, num_classes, seed)]
    train, changed = corrupt_labels(
        labels[kept], label_corruption, num_classes, seed, mode=corruption_mode
    )
    return kept, train, changed
