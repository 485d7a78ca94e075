"""Trained networks against the bounds (MATH.md §4, last bullet): the pure computation of
protolib.theory.trained, against references written here from the formulas."""

from __future__ import annotations

import itertools
import json
import math
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from protolib.geometry import make_prototypes
from protolib.losses import supcon_loss
from protolib.theory import supcon_bound
from protolib.theory.trained import (
    batch_bounds,
    batch_losses,
    ce_vs_bounds,
    draw_batches,
    expected_batch_bound,
    supcon_vs_bound,
)
from protolib.theory.ufm import multiset_counts

SAMPLINGS = ("replacement", "epoch")


def unit(n: int, d: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)).double())


def reference_supcon_sum(z: np.ndarray, y: np.ndarray, tau: float) -> float:
    """MATH.md §1.3 literally, reduction sum: every row of the batch a member."""
    total = 0.0
    for i in range(len(y)):
        others = [k for k in range(len(y)) if k != i]
        positives = [j for j in others if y[j] == y[i]]
        if positives:
            s = {k: float(z[i] @ z[k]) / tau for k in others}
            log_den = math.log(sum(math.exp(s[k]) for k in others))
            total += sum(log_den - s[j] for j in positives) / len(positives)
    return total


def reference_bound(counts: list[int], rho: float) -> float:
    """One batch's bound from its class counts, by the formula of the task."""
    K, b = len(counts), sum(counts)
    decay = math.exp(-K * rho**2 / (K - 1))
    return sum(n * math.log(n - 1 + (b - n) * decay) for n in counts if n >= 2)


def class_counts(batches: torch.Tensor, labels: torch.Tensor, K: int) -> torch.Tensor:
    return F.one_hot(labels[batches], K).sum(dim=1)


def test_batch_losses_equal_the_literal_formula_with_duplicates():
    N, K, tau = 5, 2, 0.3
    z, y = unit(N, 3, 0), torch.arange(N) % K
    batches = draw_batches(N, 6, 12, "replacement", seed=1)  # 6 of 5 points: duplicates
    assert any(len(set(row.tolist())) < 6 for row in batches)
    got = batch_losses(z, y, batches, tau=tau)
    for m, row in enumerate(batches):
        want = reference_supcon_sum(z[row].numpy(), y[row].numpy(), tau)
        assert got[m].item() == pytest.approx(want, rel=1e-12)


def test_batch_losses_equal_the_training_loss_at_scale():
    """Against the training loss (protolib.losses.supcon_loss, reduction sum), batch by
    batch, for batches larger than one chunk (several chunks, a short last one)."""
    N, K, b, tau = 300, 10, 256, 0.07
    z, y = unit(N, 16, 1), torch.arange(N) % K
    batches = draw_batches(N, b, 9, "replacement", seed=2)
    got = batch_losses(z, y, batches, tau=tau)
    for m, row in enumerate(batches):
        want = supcon_loss(z[row], y[row], tau=tau, reduction="sum")["loss"].item()
        assert got[m].item() == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize(("N", "K", "b", "rho"), [(4, 2, 3, 0.7), (6, 3, 4, 1.5), (8, 4, 5, 1.2)])
def test_batch_bounds_summed_over_all_multisets_are_theorem2(N, K, b, rho):
    labels = torch.arange(N) % K
    per_sample = torch.from_numpy(multiset_counts(N, b))  # every multiset, as counts
    counts = per_sample @ F.one_hot(labels, K)
    bounds = batch_bounds(counts, rho=rho)
    for row in range(0, counts.shape[0], 7):
        assert bounds[row].item() == pytest.approx(reference_bound(counts[row].tolist(), rho))
    theorem2 = supcon_bound(N, K, b, rho)
    assert bounds.sum().item() == pytest.approx(theorem2.total, rel=1e-12)
    assert bounds.mean().item() == pytest.approx(theorem2.per_batch, rel=1e-12)


@pytest.mark.parametrize(("N", "K", "b", "rho"), [(6, 3, 4, 1.5), (6, 2, 3, 0.8), (8, 4, 4, 1.0)])
def test_expected_bound_equals_the_mean_over_every_batch_the_sampling_can_draw(N, K, b, rho):
    labels = torch.arange(N) % K
    ordered = torch.tensor(list(itertools.product(range(N), repeat=b)))  # equally likely
    subsets = torch.tensor(list(itertools.combinations(range(N), b)))
    for sampling, batches in (("replacement", ordered), ("epoch", subsets)):
        mean = batch_bounds(class_counts(batches, labels, K), rho=rho).mean().item()
        assert expected_batch_bound(N, K, b, rho, sampling) == pytest.approx(mean, rel=1e-12)
    # neither is Theorem 2's mean over multisets
    assert expected_batch_bound(N, K, b, rho, "replacement") != pytest.approx(
        supcon_bound(N, K, b, rho).per_batch
    )


@pytest.mark.parametrize("sampling", SAMPLINGS)
def test_drawn_batches_follow_the_sampling(sampling):
    N, K, b, tau = 12, 3, 5, 0.5
    result = supcon_vs_bound(
        unit(N, 4, 2), torch.arange(N) % K, tau=tau, batch_size=b, num_batches=3000,
        sampling=sampling, seed=3,
    )  # fmt: skip
    stderr = 2.5 / math.sqrt(3000)  # per-batch bounds of this setting spread < 2.5
    assert abs(result["bound"] - result["bound_expected"]) < 4 * stderr
    batches = draw_batches(N, b, 40, sampling, seed=3)
    assert batches.shape == (40, b) and batches.min() >= 0 and batches.max() < N
    if sampling == "epoch":  # N // b = 2 disjoint batches per permutation
        for epoch in batches.view(20, 2 * b):
            assert len(set(epoch.tolist())) == 2 * b


@pytest.mark.parametrize("sampling", SAMPLINGS)
@pytest.mark.parametrize("N", [6, 60])  # N = 6 with b = 5: duplicates under replacement
def test_gap_is_positive_for_random_features(sampling, N):
    K = 3
    for seed in range(8):
        result = supcon_vs_bound(
            unit(N, 2 + seed % 3, seed), torch.arange(N) % K, tau=0.2 + 0.1 * seed,
            batch_size=5, num_batches=60, sampling=sampling, seed=seed,
        )  # fmt: skip
        assert result["gap"] == pytest.approx(result["attained"] - result["bound"])
        assert result["gap"] > 0


def circle(centres: list[float], noise: float, y: torch.Tensor) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    angle = torch.tensor(centres)[y] + noise * torch.randn(y.numel(), generator=g)
    return torch.stack([angle.cos(), angle.sin()], dim=1).double()


def test_a_batch_of_two_far_apart_classes_beats_its_own_bound():
    """Classes 0 and 1 of three placed antipodally (further apart than the simplex): a
    batch holding only them has a loss below its own bound."""
    y = torch.arange(6) % 3
    z = circle([0.0, math.pi, math.pi / 2], 0.0, y)
    two_classes = torch.tensor([[0, 3, 1, 4]])  # classes 0, 0, 1, 1
    loss = batch_losses(z, y, two_classes, tau=1.0).item()
    bound = batch_bounds(class_counts(two_classes, y, 3), rho=1.0).item()
    assert loss == pytest.approx(4 * math.log(1 + 2 * math.exp(-2)), rel=1e-12)
    assert bound == pytest.approx(4 * math.log(1 + 2 * math.exp(-1.5)), rel=1e-12)
    assert loss < bound


@pytest.mark.parametrize(
    ("centres", "noise"),
    [
        ([0.0, math.pi, math.pi / 2], 0.05),  # two classes antipodal
        ([0.0, 2 * math.pi / 3, 4 * math.pi / 3], 0.1),  # near the simplex
        ([0.0, 2 * math.pi / 3, 4 * math.pi / 3], 0.01),  # per-batch gaps O(ε), mean O(ε²)
    ],
)
def test_gap_is_negative_for_some_batches_but_not_in_expectation(centres, noise):
    """Over every batch either sampling can draw (equally likely), the mean gap is >= 0
    although some batches' gaps are negative (the module docstring's claim)."""
    N, K, b = 6, 3, 4
    y = torch.arange(N) % K
    z = circle(centres, noise, y)
    for batches in (
        torch.tensor(list(itertools.product(range(N), repeat=b))),  # with replacement
        torch.tensor(list(itertools.combinations(range(N), b))),  # one epoch's batch
    ):
        gaps = batch_losses(z, y, batches, tau=1.0) - batch_bounds(
            class_counts(batches, y, K), rho=1.0
        )
        assert gaps.min() < 0 < gaps.mean()


@pytest.mark.parametrize("sampling", SAMPLINGS)
@pytest.mark.parametrize(("K", "d", "tau"), [(3, 2, 0.5), (5, 8, 0.1), (10, 16, 0.07)])
def test_features_at_the_simplex_attain_the_bound_exactly(sampling, K, d, tau):
    N = 12 * K
    y = torch.arange(N) % K
    simplex = make_prototypes("etf", K, d, dtype=torch.float64)[y]
    result = supcon_vs_bound(
        simplex, y, tau=tau, batch_size=8, num_batches=50, sampling=sampling, seed=0
    )
    assert abs(result["gap"]) < 1e-9
    assert result["bound"] == pytest.approx(result["attained"], rel=1e-12)
    assert result["theorem2_per_batch"] == supcon_bound(N, K, 8, 1 / math.sqrt(tau)).per_batch


def test_rows_within_the_tolerance_are_renormalised():
    """Rows a little off the sphere are compared as the unit rows they stand for, so the
    bound on the sphere applies exactly."""
    N, K = 30, 3
    z, y = unit(N, 4, 7), torch.arange(N) % K
    scale = 1 + 9e-4 * torch.rand(N, 1, generator=torch.Generator().manual_seed(0)).double()
    options = {"tau": 0.1, "batch_size": 8, "num_batches": 20, "sampling": "epoch", "seed": 1}
    exact, scaled = supcon_vs_bound(z, y, **options), supcon_vs_bound(scale * z, y, **options)
    assert scaled["attained"] == pytest.approx(exact["attained"], rel=1e-14)


def test_theorem2_per_batch_is_above_the_expected_bound_of_either_sampling():
    """Why the attained mean is compared with the drawn batches' bounds: even at the
    simplex, its expectation lies below Theorem 2 per batch (N = 1 500, b = 256)."""
    theorem2 = supcon_bound(1500, 10, 256, 1 / math.sqrt(0.1)).per_batch
    for sampling, at_least in (("replacement", 0.7), ("epoch", 1.5)):
        assert theorem2 - expected_batch_bound(1500, 10, 256, 0.1**-0.5, sampling) > at_least


def test_supcon_comparison_is_deterministic_and_fast():
    N, K = 1500, 10
    z, y = unit(N, 32, 4), torch.arange(N) % K
    options = {"tau": 0.1, "batch_size": 256, "num_batches": 200, "seed": 5}
    first = supcon_vs_bound(z, y, sampling="epoch", **options)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as under `make test`; a busy machine slows thread pools
    try:
        start = time.perf_counter()
        again = supcon_vs_bound(z, y, sampling="epoch", **options)
        seconds = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    assert seconds < 1.0  # about 0.1 s
    assert dict(first) == dict(again)
    assert json.loads(json.dumps(dict(first))) == dict(first)
    other = supcon_vs_bound(z, y, sampling="epoch", **{**options, "seed": 6})
    assert other["attained"] != first["attained"]
    assert {"attained", "bound", "gap"} <= set(first)


def reference_ce(h, W, bias, y) -> float:
    logits = h @ W.T + (0 if bias is None else bias)
    return F.cross_entropy(logits, y).item()


def test_ce_attains_both_bounds_at_the_simplex_with_equinorm_weights():
    for K, d, rho, r in [(2, 3, 1.0, 1.0), (4, 5, 2.0, 0.5), (10, 12, 3.0, 4.0)]:
        y = torch.arange(5 * K) % K
        u = make_prototypes("etf", K, d, dtype=torch.float64)
        result = ce_vs_bounds(rho * u[y], r * u, None, y)
        assert result["attained"] == pytest.approx(reference_ce(rho * u[y], r * u, None, y))
        assert abs(result["gap_theorem1"]) < 1e-9 and abs(result["gap_corollary1"]) < 1e-9
        assert result["rho"] == pytest.approx(rho) and result["r"] == pytest.approx(r)


def test_ce_bounds_hold_with_a_bias_for_balanced_labels_only():
    K, d = 4, 6
    y = torch.arange(8 * K) % K
    u = make_prototypes("etf", K, d, dtype=torch.float64)
    h, W = 2.0 * u[y], 1.5 * u
    for seed in range(20):  # random configurations, with a bias
        g = torch.Generator().manual_seed(seed)
        hr = torch.randn(8 * K, d, generator=g).double() * (seed + 1) / 4
        Wr = torch.randn(K, d, generator=g).double() * (seed + 1) / 4
        br = torch.randn(K, generator=g).double() * 3
        result = ce_vs_bounds(hr, Wr, br, y)
        assert result["attained"] == pytest.approx(reference_ce(hr, Wr, br, y), rel=1e-12)
        rho, r, frobenius = hr.norm(dim=1).max(), Wr.norm(dim=1).max(), Wr.pow(2).sum().sqrt()
        theorem1 = math.log(1 + (K - 1) * math.exp(-rho * math.sqrt(K) / (K - 1) * frobenius))
        corollary1 = math.log(1 + (K - 1) * math.exp(-K * rho * r / (K - 1)))
        assert result["theorem1"] == pytest.approx(theorem1, rel=1e-12)
        assert result["corollary1"] == pytest.approx(corollary1, rel=1e-12)
        assert result["attained"] >= result["theorem1"] >= result["corollary1"]
        bias = torch.randn(K, generator=g).double()  # at the bound: any bias only adds
        assert ce_vs_bounds(h, W, bias, y)["gap_theorem1"] > 0
    # with unbalanced labels a bias would beat the bound: the comparison is refused
    unbalanced = torch.cat([y, torch.zeros(16, dtype=torch.long)])
    features = 2.0 * u[unbalanced]
    favour_0 = torch.tensor([1.0, 0, 0, 0], dtype=torch.float64)
    bound = ce_vs_bounds(h, W, None, y)["theorem1"]
    assert reference_ce(features, W, favour_0, unbalanced) < bound
    with pytest.raises(ValueError, match="exactly balanced"):
        ce_vs_bounds(features, W, favour_0, unbalanced)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"labels": torch.tensor([0, 0, 1, 1, 1, 2])}, "exactly balanced"),
        ({"labels": torch.tensor([0, 0, 2, 2, 3, 3])}, "exactly balanced"),  # class 1 missing
        ({"labels": torch.zeros(6, dtype=torch.long)}, "K >= 2"),
        ({"labels": torch.tensor([0.0, 0.4, 1, 1, 2, 2])}, "integer"),
        ({"features": 1.01 * unit(6, 3, 0)}, "unit rows"),
        ({"tau": 0.0}, "tau"),
        ({"sampling": "shuffle"}, "sampling"),
        ({"sampling": "epoch", "batch_size": 7}, "batch_size"),
        ({"batch_size": 1}, "batch_size"),
        ({"num_batches": 0}, "num_batches"),
    ],
)
def test_supcon_refuses_what_it_cannot_compare(change, message):
    args = {
        "features": unit(6, 3, 0),
        "labels": torch.arange(6) % 3,
        "tau": 0.5,
        "batch_size": 4,
        "num_batches": 3,
        "sampling": "replacement",
        "seed": 0,
    }
    args.update(change)
    features, labels = args.pop("features"), args.pop("labels")
    with pytest.raises(ValueError, match=message):
        supcon_vs_bound(features, labels, **args)


def test_ce_refuses_what_it_cannot_compare():
    h, W, y = torch.randn(6, 3).double(), torch.randn(3, 3).double(), torch.arange(6) % 3
    with pytest.raises(ValueError, match="exactly balanced"):
        ce_vs_bounds(h, W, None, torch.tensor([0, 0, 0, 1, 1, 2]))
    with pytest.raises(ValueError, match=r"0\.\.K-1"):
        ce_vs_bounds(h, W, None, torch.tensor([1, 1, 2, 2, 3, 3]))  # no row for 3
    with pytest.raises(ValueError, match="bias"):
        ce_vs_bounds(h, W, torch.zeros(2).double(), y)
    with pytest.raises(ValueError, match="weight"):
        ce_vs_bounds(h, W[:, :2], None, y)
