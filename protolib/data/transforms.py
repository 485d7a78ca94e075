"""Training-set transforms of MATH.md §6: label corruption, exact class balancing, the
points bound to every batch, the validation hold-out, the hash of a run's training split,
and the order in which a run applies them with the imbalance
(:mod:`protolib.data.imbalance`).

Each is a pure function of ``(labels, parameter, seed)`` that returns indices and labels
(CPU int64 tensors), so a run can record exactly what it trained on. Randomness comes from
``numpy.random.default_rng(seed)``, whose streams numpy keeps stable across releases.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from torch import Tensor

from protolib.choices import CORRUPTION_MODES
from protolib.data.imbalance import (
    check_imbalance,
    floor_count,
    imbalanced_indices,
    label_array,
)


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
    array = label_array(labels, num_classes, 2 if mode == "other" else 1)
    if (
        not isinstance(fraction, int | float)
        or isinstance(fraction, bool)
        or not 0 <= fraction <= 1
    ):
        raise ValueError(f"corruption fraction must lie in [0, 1], got {fraction!r}")
    rng = np.random.default_rng(seed)
    n = array.shape[0]
    changed = np.sort(rng.choice(n, size=min(floor_count(fraction * n), n), replace=False))
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
    array = label_array(labels, num_classes, 1)
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
    array = label_array(labels, num_classes, 1)
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
        take = floor_count(fraction * len(members))
        held[rng.permutation(members)[:take]] = True
    keep = torch.from_numpy(np.flatnonzero(~held))
    out = torch.from_numpy(np.flatnonzero(held))
    was_changed = torch.zeros(len(array), dtype=torch.bool)
    was_changed[changed] = True
    new_changed = torch.nonzero(was_changed[keep]).flatten()
    return (kept[keep], train[keep], new_changed), (kept[out], train[out])
