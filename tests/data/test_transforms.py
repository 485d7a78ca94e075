"""STEP imbalance, label corruption and class balancing (MATH.md §4, §6) against their
closed-form counts."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from protolib.data import (
    balance_classes,
    check_imbalance,
    corrupt_labels,
    largest_valid_ratio,
    step_imbalance,
)


def uneven_labels(K: int, seed: int = 0) -> torch.Tensor:
    """Class ``c`` has ``30 + 7c`` points, in shuffled order."""
    labels = np.concatenate([np.full(30 + 7 * c, c) for c in range(K)])
    return torch.from_numpy(np.random.default_rng(seed).permutation(labels))


@pytest.mark.parametrize("K", [2, 3, 5, 10])
@pytest.mark.parametrize("ratio", [1, 2.5, 10, 100])
def test_step_imbalance_counts_follow_the_formula(K, ratio):
    labels = uneven_labels(K)
    kept = step_imbalance(labels, ratio, K, seed=0)
    assert kept.dtype == torch.int64
    assert torch.equal(kept, kept.unique())  # sorted, no repeats
    counts = torch.bincount(labels, minlength=K).tolist()
    got = torch.bincount(labels[kept], minlength=K).tolist()
    majority = math.ceil(K / 2)
    want = [
        n if c < majority else math.floor(Fraction(n) / Fraction(ratio))
        for c, n in enumerate(counts)
    ]
    assert got == want
    # the majority classes are untouched: every one of their points is kept
    majority_points = torch.nonzero(labels < majority).flatten()
    assert torch.isin(majority_points, kept).all()
    if ratio == 1:
        assert torch.equal(kept, torch.arange(len(labels)))


def test_step_imbalance_paper_setting():
    labels = torch.arange(50_000) % 10
    kept = step_imbalance(labels, 100, 10, seed=0)
    assert torch.bincount(labels[kept]).tolist() == [5000] * 5 + [50] * 5


def test_step_imbalance_deterministic_and_seeded():
    labels = uneven_labels(5)
    a = step_imbalance(labels, 2.5, 5, seed=1)
    assert torch.equal(a, step_imbalance(labels, 2.5, 5, seed=1))
    assert not torch.equal(a, step_imbalance(labels, 2.5, 5, seed=2))
    assert torch.equal(a, step_imbalance(labels.numpy(), 2.5, 5, seed=1))


@pytest.mark.parametrize("ratio", [0.5, 0, -3, float("inf"), float("nan")])
def test_step_imbalance_rejects_bad_ratio(ratio):
    with pytest.raises(ValueError, match=r"imbalance ratio must be >= 1"):
        step_imbalance(uneven_labels(3), ratio, 3, seed=0)


@pytest.mark.parametrize("counts", [[5, 9, 4, 7], [30, 2, 8], [3, 3, 3, 3, 3], [10, 6, 6, 12, 7]])
def test_largest_valid_ratio_is_the_last_ratio_keeping_every_class(counts):
    K = len(counts)
    labels = torch.tensor([c for c, n in enumerate(counts) for _ in range(n)])
    largest = largest_valid_ratio(labels, K)
    # brute force over ratios: the largest (integer or not) R whose STEP split keeps every class
    for ratio in [largest, largest - 0.5, 1.0]:
        kept = np.bincount(labels[step_imbalance(labels, ratio, K, 0)].numpy(), minlength=K)
        assert kept.min() >= 1
        check_imbalance(labels, ratio, K)
    for ratio in [largest + 1e-6, largest + 1, 10 * largest]:
        kept = np.bincount(labels[step_imbalance(labels, ratio, K, 0)].numpy(), minlength=K)
        assert kept.min() == 0
        with pytest.raises(ValueError, match=rf"imbalance_ratio .* largest valid .* is {largest}$"):
            check_imbalance(labels, ratio, K)


def test_transforms_reject_labels_out_of_range():
    with pytest.raises(ValueError, match=r"labels must lie in 0..2, got 0..3"):
        step_imbalance(torch.tensor([0, 3, 1]), 2, 3, seed=0)
    with pytest.raises(ValueError, match=r"labels must be a 1-D integer tensor"):
        corrupt_labels(torch.tensor([0.0, 1.0]), 0.5, 3, seed=0)


@pytest.mark.parametrize("mode", ["other", "uniform"])
@pytest.mark.parametrize(("N", "p"), [(20_000, 0.3), (100, 0.29), (7, 0.5), (50, 0.1)])
def test_corruption_changes_exactly_floor_of_p_times_n(N, p, mode):
    labels = torch.arange(N) % 4
    new, changed = corrupt_labels(labels, p, 4, seed=0, mode=mode)
    want = math.floor(Fraction(str(p)) * N)
    assert changed.dtype == torch.int64 and len(changed) == want
    assert torch.equal(changed, changed.unique())
    untouched = torch.ones(N, dtype=torch.bool)
    untouched[changed] = False
    assert torch.equal(new[untouched], labels[untouched])
    assert new.dtype == torch.int64 and new.min() >= 0 and new.max() < 4


def chi_square(counts: np.ndarray) -> float:
    expected = counts.sum() / len(counts)
    return float(((counts - expected) ** 2 / expected).sum())


def test_other_mode_never_keeps_the_label_and_is_uniform_over_the_rest():
    K, N = 10, 20_000
    labels = torch.from_numpy(np.random.default_rng(5).integers(0, K, N))
    new, changed = corrupt_labels(labels, 0.3, K, seed=3)
    assert len(changed) == 6000
    assert (new[changed] != labels[changed]).all()
    shifts = ((new[changed] - labels[changed]) % K).numpy()
    counts = np.bincount(shifts, minlength=K)
    assert counts[0] == 0
    assert chi_square(counts[1:]) < 40  # 8 degrees of freedom; P(χ² > 40) ≈ 3e-6
    # per original class too: class 0 goes to 1..9 about evenly
    from_zero = np.bincount(new[changed][labels[changed] == 0].numpy(), minlength=K)
    assert from_zero[0] == 0 and chi_square(from_zero[1:]) < 40
    # the drawn positions spread over the whole set
    assert abs((changed < N // 2).float().mean().item() - 0.5) < 0.05


def test_uniform_mode_draws_over_all_classes():
    K, N = 10, 20_000
    labels = torch.arange(N) % K
    new, changed = corrupt_labels(labels, 0.5, K, seed=0, mode="uniform")
    assert len(changed) == 10_000
    counts = np.bincount(new[changed].numpy(), minlength=K)
    assert chi_square(counts) < 45  # 9 degrees of freedom
    same = (new[changed] == labels[changed]).float().mean().item()
    assert abs(same - 1 / K) < 0.02


@pytest.mark.parametrize("mode", ["other", "uniform"])
def test_corruption_fraction_zero_and_one(mode):
    labels = torch.arange(30) % 3
    new, changed = corrupt_labels(labels, 0.0, 3, seed=0, mode=mode)
    assert torch.equal(new, labels) and changed.numel() == 0
    new, changed = corrupt_labels(labels, 1.0, 3, seed=0, mode=mode)
    assert torch.equal(changed, torch.arange(30))
    if mode == "other":
        assert (new != labels).all()


def test_corruption_deterministic_and_seeded():
    labels = torch.arange(1000) % 10
    a = corrupt_labels(labels, 0.2, 10, seed=4)
    b = corrupt_labels(labels, 0.2, 10, seed=4)
    c = corrupt_labels(labels, 0.2, 10, seed=5)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])
    assert torch.equal(labels, torch.arange(1000) % 10)  # input untouched


@pytest.mark.parametrize("fraction", [-0.1, 1.5, float("nan")])
def test_corruption_rejects_bad_fraction(fraction):
    with pytest.raises(ValueError, match=r"corruption fraction must lie in \[0, 1\]"):
        corrupt_labels(torch.arange(10) % 2, fraction, 2, seed=0)


def test_corruption_rejects_bad_mode_and_single_class():
    with pytest.raises(ValueError, match="known: other, uniform"):
        corrupt_labels(torch.arange(10) % 2, 0.5, 2, seed=0, mode="flip")
    with pytest.raises(ValueError, match="num_classes must be an integer >= 2"):
        corrupt_labels(torch.zeros(10, dtype=torch.int64), 0.5, 1, seed=0)


@pytest.mark.parametrize("K", [1, 2, 5, 10])
def test_balance_keeps_the_smallest_class_size_of_every_class(K):
    labels = uneven_labels(K, seed=K)  # class c has 30 + 7c points
    kept = balance_classes(labels, K, seed=3)
    assert kept.dtype == torch.int64
    assert torch.equal(kept, kept.unique())  # sorted, no repeats
    assert kept.min() >= 0 and kept.max() < len(labels)
    assert torch.bincount(labels[kept], minlength=K).tolist() == [30] * K
    # the smallest class is kept whole
    assert torch.isin(torch.nonzero(labels == 0).flatten(), kept).all()


def test_balance_of_balanced_labels_keeps_everything():
    labels = torch.from_numpy(np.random.default_rng(0).permutation(np.arange(60) % 4))
    assert torch.equal(balance_classes(labels, 4, seed=9), torch.arange(60))


def test_balance_deterministic_and_seeded():
    labels = uneven_labels(5)
    a = balance_classes(labels, 5, seed=1)
    assert torch.equal(a, balance_classes(labels, 5, seed=1))
    assert torch.equal(a, balance_classes(labels.numpy(), 5, seed=1))
    assert not torch.equal(a, balance_classes(labels, 5, seed=2))


def test_balance_keeps_each_point_with_equal_chance():
    """Over seeds, each of class 1's 6 points is kept with probability 3/6 (class 0 has 3)."""
    labels = torch.tensor([0, 1, 1, 0, 1, 1, 1, 0, 1])
    runs = 2000
    kept = np.zeros(len(labels))
    for seed in range(runs):
        kept[balance_classes(labels, 2, seed).numpy()] += 1
    assert (kept[labels.numpy() == 0] == runs).all()
    share = kept[labels.numpy() == 1] / runs
    assert np.abs(share - 0.5).max() < 0.05  # σ ≈ 0.011 per point


def test_balance_rejects_an_empty_class():
    with pytest.raises(ValueError, match=r"balance needs .* every class, but class 1 has none"):
        balance_classes(torch.tensor([0, 2, 2, 0]), 3, seed=0)
    with pytest.raises(ValueError, match=r"labels must lie in 0..1, got 0..2"):
        balance_classes(torch.tensor([0, 2, 1]), 2, seed=0)


def test_training_labels_apply_balance_imbalance_and_corruption_in_that_order():
    from protolib.data.transforms import training_labels

    labels = torch.tensor([0] * 40 + [1] * 30 + [2] * 25 + [3] * 20)
    keys = dict(imbalance="step", minority_fraction=0.5, corruption_mode="other", seed=5)
    kept, train, changed = training_labels(
        labels, 4, balance=True, imbalance_ratio=4, label_corruption=0.25, **keys
    )
    pool = balance_classes(labels, 4, 5)  # 20 per class
    expected_kept = pool[step_imbalance(labels[pool], 4, 4, 5)]  # 20, 20, 5, 5
    assert kept.tolist() == expected_kept.tolist()
    assert torch.bincount(labels[kept], minlength=4).tolist() == [20, 20, 5, 5]
    expected_train, expected_changed = corrupt_labels(labels[kept], 0.25, 4, 5, mode="other")
    assert train.tolist() == expected_train.tolist()
    assert changed.tolist() == expected_changed.tolist() and len(changed) == 12
    plain, _, _ = training_labels(
        labels, 4, balance=False, imbalance_ratio=1, label_corruption=0, **keys
    )
    assert plain.tolist() == list(range(len(labels)))


def test_a_validation_split_holds_out_a_fraction_of_every_class_and_keeps_the_rest():
    from protolib.data.transforms import split_validation

    kept = torch.arange(100, 200)
    train = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    changed = torch.tensor([3, 55, 99])
    (k2, t2, c2), (val, val_labels) = split_validation(kept, train, changed, 0.25, 3, seed=4)
    assert torch.bincount(val_labels, minlength=3).tolist() == [12, 7, 5]  # ⌊0.25·n_c⌋
    assert torch.bincount(t2, minlength=3).tolist() == [38, 23, 15]
    assert sorted(k2.tolist() + val.tolist()) == kept.tolist()  # a partition
    # labels travel with their points; changed positions follow them into the new kept
    lookup = dict(zip(kept.tolist(), train.tolist(), strict=True))
    assert [lookup[i] for i in k2.tolist()] == t2.tolist()
    assert [lookup[i] for i in val.tolist()] == val_labels.tolist()
    still = {kept[i].item() for i in changed.tolist()} - set(val.tolist())
    assert {k2[i].item() for i in c2.tolist()} == still
    again = split_validation(kept, train, changed, 0.25, 3, seed=4)
    assert again[1][0].tolist() == val.tolist()  # deterministic
    assert split_validation(kept, train, changed, 0.25, 3, seed=5)[1][0].tolist() != val.tolist()
    (k0, _, c0), (v0, _) = split_validation(kept, train, changed, 0.0, 3, seed=4)
    assert k0.tolist() == kept.tolist() and c0.tolist() == changed.tolist() and len(v0) == 0
    with pytest.raises(ValueError, match=r"validation_fraction must be in \[0, 1\), got 1"):
        split_validation(kept, train, changed, 1, 3, seed=4)
