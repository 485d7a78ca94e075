"""Exponential (long-tailed) imbalance, STEP's minority fraction μ, their refusals and the
hash of a training split (MATH.md §6), against exact integer references."""

from __future__ import annotations

import hashlib
import math
import struct
from fractions import Fraction

import numpy as np
import pytest
import torch

from protolib.data import (
    check_imbalance,
    exp_imbalance,
    imbalanced_indices,
    kept_counts,
    largest_valid_ratio,
    split_sha256,
    step_imbalance,
    training_labels,
)

#: the published CIFAR-10-LT training split at R = 100 (Cao et al. 2019, LDAM-DRW)
CIFAR10_LT_100 = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


def labels_of(counts: list[int], seed: int = 0) -> torch.Tensor:
    """Shuffled labels with ``counts[c]`` points of class ``c``."""
    labels = np.concatenate([np.full(n, c) for c, n in enumerate(counts)])
    return torch.from_numpy(np.random.default_rng(seed).permutation(labels))


def exp_reference(n: int, ratio: Fraction, c: int, K: int) -> int:
    """``⌊n · R^{−c/(K−1)}⌋`` by bisection on integers: the largest ``m`` with
    ``(m/n)^{K−1} ≤ R^{−c}``, i.e. ``m^{K−1} · p^c ≤ n^{K−1} · q^c`` for ``R = p/q``."""
    p, q, e = ratio.numerator, ratio.denominator, K - 1
    low, high = 0, n  # m = 0 always fits, m = n fits only for c = 0 or R = 1
    while low < high:
        mid = (low + high + 1) // 2
        if mid**e * p**c <= n**e * q**c:
            low = mid
        else:
            high = mid - 1
    return low


def test_exp_imbalance_gives_the_published_cifar10_lt_split():
    labels = torch.arange(50_000) % 10
    kept = exp_imbalance(labels, 100, 10, seed=0)
    assert torch.bincount(labels[kept]).tolist() == CIFAR10_LT_100
    assert kept_counts([5000] * 10, 100, kind="exp") == CIFAR10_LT_100
    ref = [exp_reference(5000, Fraction(100), c, 10) for c in range(10)]
    assert ref == CIFAR10_LT_100


@pytest.mark.parametrize("K", [10, 100])
@pytest.mark.parametrize("ratio", [1, 1.5, 2, 10, 12.5, 50, 99.9, 100])
def test_exp_counts_equal_the_exact_integer_reference(K, ratio):
    counts = [300 + (37 * c) % 211 for c in range(K)]  # uneven class sizes
    want = [exp_reference(n, Fraction(str(ratio)), c, K) for c, n in enumerate(counts)]
    assert kept_counts(counts, ratio, kind="exp") == want
    assert want[0] == counts[0]
    assert want[-1] == math.floor(Fraction(counts[-1]) / Fraction(str(ratio)))
    labels = labels_of(counts, seed=K)
    kept = exp_imbalance(labels, ratio, K, seed=3)
    assert torch.equal(kept, kept.unique())  # sorted, no repeats
    assert torch.bincount(labels[kept], minlength=K).tolist() == want
    # class 0 is untouched
    assert torch.isin(torch.nonzero(labels == 0).flatten(), kept).all()


@pytest.mark.parametrize(
    ("K", "ratio", "n", "c", "exact"),
    [
        (3, 100, 1000, 1, 100),  # 100^{-1/2} = 1/10
        (10, 512, 32, 5, 1),  # 512^{-5/9} = 1/32; n · R^(−c/(K−1)) in floats is 0.99999…
        (7, 64, 96, 5, 3),  # 64^{-5/6} = 1/32
        (11, 32, 4, 2, 2),  # 32^{-1/5} = 1/2
        (10, 100, 5000, 9, 50),
    ],
)
def test_exp_counts_at_exact_integers_are_not_lost_to_rounding(K, ratio, n, c, exact):
    counts = [n] * K
    assert kept_counts(counts, ratio, kind="exp")[c] == exact
    assert exp_reference(n, Fraction(ratio), c, K) == exact


def test_exp_imbalance_is_seeded_and_deterministic():
    labels = labels_of([40, 35, 30, 25])
    a = exp_imbalance(labels, 4, 4, seed=1)
    assert torch.equal(a, exp_imbalance(labels, 4, 4, seed=1))
    assert torch.equal(a, exp_imbalance(labels.numpy(), 4, 4, seed=1))
    assert not torch.equal(a, exp_imbalance(labels, 4, 4, seed=2))
    assert torch.equal(a, imbalanced_indices(labels, 4, 4, seed=1, kind="exp"))


@pytest.mark.parametrize("K", [10, 100])
@pytest.mark.parametrize("mu", [0.05, 0.1, 0.29, 0.3, 0.5, 0.7, 1])
def test_step_minority_fraction_makes_the_last_floor_mu_k_classes_minorities(K, mu):
    counts = [40 + (13 * c) % 17 for c in range(K)]
    labels = labels_of(counts, seed=1)
    minorities = math.floor(Fraction(str(mu)) * K)  # 0.29 · 100 = 29 (not 28.999…)
    start = K - minorities
    want = [n if c < start else n // 4 for c, n in enumerate(counts)]
    kept = step_imbalance(labels, 4, K, seed=0, minority_fraction=mu)
    assert torch.bincount(labels[kept], minlength=K).tolist() == want
    same = imbalanced_indices(labels, 4, K, seed=0, kind="step", minority_fraction=mu)
    assert torch.equal(kept, same)


def uneven_labels(K: int) -> torch.Tensor:
    """The label set of ``tests/data/test_transforms.py``: class ``c`` has ``30 + 7c``."""
    return labels_of([30 + 7 * c for c in range(K)])


def fingerprint(*tensors: torch.Tensor) -> str:
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(tensor.numpy().astype("<i8").tobytes())
    return digest.hexdigest()[:16]


@pytest.mark.parametrize(
    ("K", "ratio", "seed", "before"),
    [  # recorded with the STEP code as it was before μ and exponential imbalance
        (3, 2.5, 0, "fbba1be09da5f81e"),
        (10, 10, 1, "96e5e3be519373a7"),
        (10, 29, 4, "a5ebf778aaa20220"),
        (7, 3, 2, "f9e90d4cc570f66a"),
    ],
)
def test_the_default_step_split_is_the_one_earlier_runs_trained_on(K, ratio, seed, before):
    labels = uneven_labels(K)
    assert fingerprint(step_imbalance(labels, ratio, K, seed)) == before
    assert fingerprint(step_imbalance(labels, ratio, K, seed, minority_fraction=0.5)) == before
    assert fingerprint(imbalanced_indices(labels, ratio, K, seed, kind="step")) == before


@pytest.mark.parametrize(
    ("K", "ratio", "seed", "before"),
    [(10, 4, 5, "31130e2bd9e1a03e"), (5, 2, 0, "767a9857fb61136d")],
)
def test_the_default_training_labels_are_those_of_earlier_runs(K, ratio, seed, before):
    got = training_labels(
        uneven_labels(K),
        K,
        balance=True,
        imbalance="step",
        imbalance_ratio=ratio,
        minority_fraction=0.5,
        label_corruption=0.25,
        corruption_mode="other",
        seed=seed,
    )
    assert fingerprint(*got) == before


def test_training_labels_apply_exp_imbalance_to_the_balanced_pool():
    labels = uneven_labels(4)  # 30, 37, 44, 51
    kept, train, changed = training_labels(
        labels,
        4,
        balance=False,
        imbalance="exp",
        imbalance_ratio=8,
        minority_fraction=0.5,
        label_corruption=0,
        corruption_mode="other",
        seed=2,
    )
    assert torch.equal(kept, exp_imbalance(labels, 8, 4, seed=2))
    assert torch.bincount(train, minlength=4).tolist() == [30, 18, 11, 6]  # 8^{-c/3}·n_c
    assert changed.numel() == 0


# ------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("counts", "largest"),
    [
        ([50, 40, 30, 7], 7),  # the last class binds: n_{K-1}
        ([9, 9, 2, 100], 2.82842),  # class 2 binds: 2^{3/2} = 2.828427…, six digits down
        ([30, 3, 50], 9),  # class 1 binds: 3^{2/1}
    ],
)
def test_exp_largest_valid_ratio_is_the_last_one_keeping_every_class(counts, largest):
    K = len(counts)
    labels = labels_of(counts)
    assert largest_valid_ratio(labels, K, kind="exp") == largest
    for ratio in (largest, 1.0):
        check_imbalance(labels, ratio, K, kind="exp")
        assert min(kept_counts(counts, ratio, kind="exp")) >= 1
    above = largest + 1e-5 if isinstance(largest, float) else largest + 1e-9
    assert min(kept_counts(counts, above, kind="exp")) == 0
    with pytest.raises(ValueError) as caught:
        check_imbalance(labels, above, K, kind="exp")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"imbalance_ratio {above!r} (imbalance 'exp') leaves class ")
    assert message.endswith(
        f"the largest valid imbalance_ratio (imbalance 'exp') for this dataset is {largest}"
    )


def test_step_largest_valid_ratio_follows_the_minority_fraction():
    counts = [5, 9, 4, 7, 30]
    labels = labels_of(counts)
    assert largest_valid_ratio(labels, 5) == 7  # minorities: classes 3, 4
    assert largest_valid_ratio(labels, 5, kind="step", minority_fraction=0.6) == 4
    check_imbalance(labels, 7, 5)
    with pytest.raises(ValueError) as caught:
        check_imbalance(labels, 7, 5, minority_fraction=0.6)
    assert str(caught.value) == (
        "imbalance_ratio 7 (imbalance 'step', minority_fraction 0.6) leaves class 2 (4 "
        "training points) without any; the largest valid imbalance_ratio (imbalance "
        "'step', minority_fraction 0.6) for this dataset is 4"
    )
    assert largest_valid_ratio(labels, 5, minority_fraction=0.1) == math.inf  # no minority


@pytest.mark.parametrize(
    ("kind", "mu", "needle"),
    [
        ("exp", 0.3, "minority_fraction 0.3 applies to imbalance 'step' only"),
        ("linear", 0.5, "unknown imbalance 'linear'; known: step, exp"),
        ("step", 0, "minority_fraction must lie in (0, 1], got 0"),
        ("step", 1.5, "minority_fraction must lie in (0, 1], got 1.5"),
    ],
)
def test_an_unknown_kind_or_a_fraction_it_cannot_use_is_refused(kind, mu, needle):
    with pytest.raises(ValueError) as caught:
        imbalanced_indices(uneven_labels(3), 2, 3, seed=0, kind=kind, minority_fraction=mu)
    assert needle in str(caught.value)


# ------------------------------------------------------------------------ split hash


def split_reference(kept: list[int], labels: list[int]) -> str:
    """SHA-256 of the sorted indices then their labels, each packed as int64 little-endian."""
    pairs = sorted(zip(kept, labels, strict=True))
    data = b"".join(struct.pack("<q", i) for i, _ in pairs)
    data += b"".join(struct.pack("<q", y) for _, y in pairs)
    return hashlib.sha256(data).hexdigest()


def test_the_split_hash_is_sha256_of_sorted_indices_and_their_labels():
    kept, labels = [3, 17, 2**40, 5], [1, 0, 2, 9]
    want = split_reference(kept, labels)
    assert split_sha256(torch.tensor(kept), torch.tensor(labels)) == want
    order = [2, 0, 3, 1]  # the same pairs in another order: the same split
    assert split_sha256(torch.tensor(kept)[order], torch.tensor(labels)[order]) == want
    assert split_sha256(torch.tensor(kept), torch.tensor([1, 0, 2, 8])) != want
    with pytest.raises(ValueError, match="1-D of one length"):
        split_sha256(torch.tensor(kept), torch.tensor(labels[:3]))


@pytest.mark.parametrize("mu", [0.05, 1.0])
def test_a_minority_fraction_that_leaves_the_classes_balanced_is_refused(mu):
    from protolib.data.transforms import check_imbalance, training_labels

    labels = torch.arange(10).repeat_interleave(30)
    with pytest.raises(ValueError, match=rf"minority_fraction {mu} makes ⌊μK⌋ = \d+ of the K = 10"):
        check_imbalance(labels, 10, 10, kind="step", minority_fraction=mu)
    with pytest.raises(ValueError, match="minority_fraction"):
        training_labels(
            labels,
            10,
            balance=False,
            imbalance="step",
            imbalance_ratio=10,
            minority_fraction=mu,
            label_corruption=0,
            corruption_mode="other",
            seed=0,
        )
    check_imbalance(labels, 1, 10, kind="step", minority_fraction=mu)  # R = 1: nothing to do
    check_imbalance(labels, 10, 10, kind="step", minority_fraction=0.1)  # one minority: fine
