"""Loss bounds (MATH.md §4) against brute force and closed-form optima."""

from __future__ import annotations

import itertools
import math
import time

import pytest
import torch
import torch.nn.functional as F

from protolib.geometry import make_prototypes
from protolib.losses import supcon_loss
from protolib.theory import (
    BoundError,
    ce_bound_frobenius,
    ce_bound_row_norm,
    ce_l2_bound,
    ce_l2_optimal_norm,
    supcon_bound,
    supcon_lower_bound,
)


def all_batches_loss(features, labels, batch_size, tau):
    """SupCon (summed over anchors) of every multiset of size b, by enumeration."""
    total, count = 0.0, 0
    for batch in itertools.combinations_with_replacement(range(len(labels)), batch_size):
        index = torch.tensor(batch)
        total += supcon_loss(features[index], labels[index], tau=tau, reduction="sum")[
            "loss"
        ].item()
        count += 1
    return total, count


@pytest.mark.parametrize(
    ("N", "K", "b", "rho"),
    [
        (4, 2, 2, 1.0),
        (4, 2, 3, 0.7),
        (6, 3, 3, 1.5),
        (6, 2, 4, 1.0),
        (6, 3, 5, 2.0),
        (8, 4, 4, 1.2),
        (9, 3, 4, 0.5),
        (8, 2, 5, 1.0),
    ],
)
def test_theorem2_equals_enumeration_at_the_simplex_and_bounds_random_configs(N, K, b, rho):
    labels = torch.arange(N) % K
    simplex = make_prototypes("etf", K, K, dtype=torch.float64)[labels]  # collapsed classes
    tau = 1 / rho**2
    at_simplex, batches = all_batches_loss(simplex, labels, b, tau)
    bound = supcon_bound(N, K, b, rho)
    assert batches == math.comb(N + b - 1, b) == round(math.exp(bound.log_num_batches))
    assert bound.total == pytest.approx(at_simplex, rel=1e-12)  # equality at the simplex
    assert bound.per_batch == pytest.approx(at_simplex / batches, rel=1e-12)
    assert supcon_lower_bound(N, K, b, rho) == bound.per_batch
    assert supcon_lower_bound(N, K, b, rho, per_batch=False) == bound.total
    g = torch.Generator().manual_seed(N * b)
    for _ in range(3):
        random = F.normalize(torch.randn(N, K + 1, generator=g, dtype=torch.float64), dim=1)
        loss, _ = all_batches_loss(random, labels, b, tau)
        assert loss - bound.total >= -1e-9 * max(1.0, abs(loss))


def test_theorem2_at_the_cifar10_setting_in_under_a_second():
    start = time.perf_counter()
    bound = supcon_bound(50_000, 10, 256, 1 / math.sqrt(0.1))
    assert time.perf_counter() - start < 1.0
    # l anchors of a class with ~25.6 expected members each pay about log(l − 1)
    assert 800 < bound.per_batch < 850
    assert bound.total == math.inf and math.isfinite(bound.log_total)
    assert bound.log_total == pytest.approx(bound.log_num_batches + math.log(bound.per_batch))
    start = time.perf_counter()
    assert supcon_lower_bound(50_000, 100, 256, 1 / math.sqrt(0.1)) > 0
    assert time.perf_counter() - start < 1.0


def ce_at_simplex(K, rho, r):
    """Mean CE with h_i = ρ·u_{y_i}, w_y = r·u_y for a simplex u (equality case)."""
    u = make_prototypes("etf", K, K, dtype=torch.float64)
    labels = torch.arange(K)
    return F.cross_entropy((rho * u[labels]) @ (r * u).T, labels).item()


@pytest.mark.parametrize(
    ("K", "rho", "lam"),
    [(2, 1.0, 1e-2), (3, 1.0, 1e-3), (3, 1.0, 1e-1), (10, 2.0, 5e-3), (100, 5.0, 1e-4)],
)
def test_ce_bounds_are_attained_at_the_simplex(K, rho, lam):
    bound, r = ce_l2_bound(K, rho, lam)
    assert r == ce_l2_optimal_norm(K, rho, lam)
    # r* solves 2λx = ρ / (exp(Kρx/(K−1)) + K − 1) to 1e-12 relative
    rhs = rho / (math.exp(K * rho * r / (K - 1)) + K - 1)
    assert 2 * lam * r == pytest.approx(rhs, rel=1e-12)
    assert ce_at_simplex(K, rho, r) + lam * K * r * r == pytest.approx(bound, rel=1e-12)
    assert ce_bound_row_norm(K, rho, r) == pytest.approx(ce_at_simplex(K, rho, r), rel=1e-12)
    # Theorem 1 (MATH.md §4, corrected exponent ρ √K/(K−1) ‖W‖_F) is attained at the simplex
    # with equinorm weights, ‖W‖_F = √K r, for every K, and agrees there with Corollary 1
    frobenius = ce_bound_frobenius(K, rho, math.sqrt(K) * r)
    assert frobenius == pytest.approx(ce_at_simplex(K, rho, r), rel=1e-12)
    assert frobenius == pytest.approx(ce_bound_row_norm(K, rho, r), rel=1e-12)
    # the exponent by hand: log(1 + (K−1) exp(−ρ (√K/(K−1)) √K r)) = log(1 + (K−1) e^{−ρKr/(K−1)})
    assert frobenius == pytest.approx(math.log1p((K - 1) * math.exp(-rho * K * r / (K - 1))))
    # r* minimises the bound's right-hand side over r
    for other in (0.9 * r, 1.1 * r):
        assert ce_bound_row_norm(K, rho, other) + lam * K * other**2 > bound


def test_ce_bounds_hold_for_random_configurations():
    g = torch.Generator().manual_seed(0)
    K, rho, lam = 4, 1.5, 0.02
    bound, _ = ce_l2_bound(K, rho, lam)
    for _ in range(20):
        h = F.normalize(torch.randn(40, 5, generator=g, dtype=torch.float64), dim=1) * rho
        W = torch.randn(K, 5, generator=g, dtype=torch.float64)
        labels = torch.arange(40) % K
        ce = F.cross_entropy(h @ W.T, labels).item()
        assert ce + lam * W.square().sum().item() >= bound
        assert ce >= ce_bound_frobenius(K, rho, W.norm().item()) - 1e-12
        assert ce >= ce_bound_row_norm(K, rho, W.norm(dim=1).max().item()) - 1e-12


def test_bad_parameters_have_clear_errors():
    with pytest.raises(BoundError, match=r"num_samples .* must be a multiple of num_classes"):
        supcon_bound(10, 3, 4, 1.0)
    with pytest.raises(BoundError, match="num_classes must be an integer >= 2"):
        ce_l2_bound(1, 1.0, 0.1)
    with pytest.raises(BoundError, match=r"lam .* must be > 0"):
        ce_l2_bound(3, 1.0, 0.0)
    with pytest.raises(BoundError, match=r"rho .* must be > 0"):
        supcon_bound(10, 2, 4, -1.0)


def test_bounds_command(capsys):
    from protolib.cli import main

    assert (
        main(
            [
                "bounds",
                "supcon",
                "--samples",
                "50000",
                "--classes",
                "10",
                "--batch-size",
                "256",
                "--tau",
                "0.1",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    per_batch = supcon_lower_bound(50_000, 10, 256, 1 / math.sqrt(0.1))
    assert f"{per_batch:.12g} per batch" in out
    assert main(["bounds", "ce", "--classes", "3", "--rho", "1", "--lam", "0.01"]) == 0
    bound, r = ce_l2_bound(3, 1.0, 0.01)
    assert f"{bound:.12g} at r* = {r:.12g}" in capsys.readouterr().out
    assert (
        main(
            [
                "bounds",
                "supcon",
                "--samples",
                "10",
                "--classes",
                "3",
                "--batch-size",
                "4",
                "--rho",
                "1",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("protolib bounds: error: Theorem 2 assumes balanced labels")
    assert err.count("\n") == 1
