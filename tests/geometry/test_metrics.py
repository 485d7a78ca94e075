"""Geometry metrics (MATH.md §3) against independent references: explicit numpy float64
loops over samples and classes, closed forms, and brute force."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from protolib.geometry.metrics import (
    angular_similarity,
    class_mean_gram,
    class_means,
    delta_g,
    delta_g_from_gram,
    gamma_distributions,
    neural_collapse,
    pairwise_angular_similarity,
    simplex_gamma,
)

# ---------------------------------------------------------------------------------------
# helpers: data and references written independently of the module under test
# ---------------------------------------------------------------------------------------


def etf(K: int, d: int, seed: int = 0) -> np.ndarray:
    """Simplex ETF (K, d), d ≥ K − 1: rows of sqrt(K/(K−1))(I − 11ᵀ/K), written in an
    orthonormal basis of 1^⊥ (K − 1 coordinates), mapped into R^d by a random isometry."""
    rng = np.random.default_rng(seed)
    P = math.sqrt(K / (K - 1)) * (np.eye(K) - np.ones((K, K)) / K)
    basis, _ = np.linalg.qr(np.eye(K)[:, : K - 1] - 1.0 / K)  # (K, K−1), spans 1^⊥
    Q, _ = np.linalg.qr(rng.standard_normal((d, K - 1)))  # (d, K−1), orthonormal columns
    return P @ basis @ Q.T


def random_data(
    n: int, K: int, d: int, seed: int, *, imbalanced: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Non-collapsed features (n, d) with class offsets, labels (n,) covering all K classes."""
    rng = np.random.default_rng(seed)
    if imbalanced:
        weights = np.arange(1, K + 1, dtype=float) ** 2
        labels = rng.choice(K, size=n, p=weights / weights.sum())
        labels[:K] = np.arange(K)
    else:
        labels = np.arange(n) % K
    rng.shuffle(labels)
    offsets = rng.standard_normal((K, d)) * 2.0 + 0.5
    features = offsets[labels] + rng.standard_normal((n, d))
    return features, labels


def t(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(x))


def ref_means(features: np.ndarray, labels: np.ndarray, K: int) -> np.ndarray:
    means = np.zeros((K, features.shape[1]))
    for c in range(K):
        total = np.zeros(features.shape[1])
        count = 0
        for i in range(len(labels)):
            if labels[i] == c:
                total += features[i]
                count += 1
        means[c] = total / count
    return means


def ref_gram(vectors: np.ndarray) -> np.ndarray:
    K = vectors.shape[0]
    G = np.zeros((K, K))
    for a in range(K):
        for b in range(K):
            G[a, b] = float(np.dot(vectors[a], vectors[b]))
    return G


def ref_delta_g(gram: np.ndarray, target: np.ndarray) -> float:
    return float(
        np.sqrt(
            np.sum((gram / np.sqrt(np.sum(gram**2)) - target / np.sqrt(np.sum(target**2))) ** 2)
        )
    )


def ref_gamma(x: np.ndarray, y: np.ndarray) -> float:
    cos = float(np.dot(x, y) / (np.linalg.norm(x) * np.linalg.norm(y)))
    return 1.0 - math.acos(min(1.0, max(-1.0, cos))) / math.pi


def ref_cos(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.dot(x, y) / (np.linalg.norm(x) * np.linalg.norm(y)))


def population_std(values: list[float]) -> float:
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


# ---------------------------------------------------------------------------------------
# class means and their Gram
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("imbalanced", [False, True])
def test_class_means_and_gram_equal_loops(imbalanced: bool) -> None:
    features, labels = random_data(300, 7, 5, seed=1, imbalanced=imbalanced)
    means = class_means(t(features).float(), t(labels))
    expected = ref_means(features.astype(np.float32).astype(np.float64), labels, 7)
    assert means.dtype == torch.float64 and means.shape == (7, 5)
    np.testing.assert_allclose(means.numpy(), expected, rtol=1e-12, atol=1e-12)
    gram = class_mean_gram(t(features), t(labels), num_classes=7)
    np.testing.assert_allclose(gram.numpy(), ref_gram(ref_means(features, labels, 7)), rtol=1e-12)


def test_missing_class_raises_with_its_name() -> None:
    features, labels = random_data(40, 5, 3, seed=2)
    labels[labels == 3] = 0
    with pytest.raises(ValueError, match=r"^class 3 has no samples; class means need at least"):
        class_means(t(features), t(labels))
    labels[labels == 1] = 0
    with pytest.raises(ValueError, match=r"classes 1, 3 have no samples"):
        class_means(t(features), t(labels))
    with pytest.raises(ValueError, match=r"classes 5, 6 have no samples"):
        class_means(t(features), t(np.arange(40) % 5), num_classes=7)


def test_bad_labels_raise() -> None:
    features, labels = random_data(20, 4, 3, seed=3)
    with pytest.raises(ValueError, match=r"label 3 is out of range for num_classes=3"):
        class_means(t(features), t(labels), num_classes=3)
    with pytest.raises(ValueError, match=r"non-negative"):
        class_means(t(features), t(labels - 1))
    with pytest.raises(ValueError, match=r"integer"):
        class_means(t(features), t(labels).double())
    with pytest.raises(ValueError, match=r"shape \(n,\)"):
        class_means(t(features), t(labels[:-1]))


# ---------------------------------------------------------------------------------------
# Δ_G
# ---------------------------------------------------------------------------------------


def test_delta_g_zero_when_means_realise_the_target() -> None:
    K, d, n = 10, 32, 500
    W = etf(K, d, seed=4)
    rng = np.random.default_rng(5)
    labels = rng.permutation(np.arange(n) % K)
    noise = rng.standard_normal((n, d))
    for c in range(K):  # per-class noise mean exactly zero
        noise[labels == c] -= noise[labels == c].mean(axis=0)
    features = 3.7 * W[labels] + noise
    target = W @ W.T
    assert delta_g(t(features), t(labels), t(target)) < 1e-6
    assert delta_g(t(features).float(), t(labels), t(target).float()) < 1e-6


def test_delta_g_invariant_to_scale_and_rotation() -> None:
    K, d = 10, 32
    features, labels = random_data(400, K, d, seed=6)
    W = etf(K, d, seed=7)
    target = t(W @ W.T)
    base = delta_g(t(features), t(labels), target)
    assert base > 1e-3
    for scale in (0.01, 100.0):
        np.testing.assert_allclose(delta_g(t(features * scale), t(labels), target), base, rtol=1e-6)
    Q, _ = np.linalg.qr(np.random.default_rng(8).standard_normal((d, d)))
    np.testing.assert_allclose(delta_g(t(features @ Q), t(labels), target), base, rtol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_delta_g_equals_numpy_formula(seed: int) -> None:
    K, d = 6, 9
    features, labels = random_data(120, K, d, seed=seed, imbalanced=True)
    target = np.random.default_rng(seed + 100).standard_normal((K, K))
    target = target @ target.T
    expected = ref_delta_g(ref_gram(ref_means(features, labels, K)), target)
    np.testing.assert_allclose(delta_g(t(features), t(labels), t(target)), expected, rtol=1e-10)
    gram = class_mean_gram(t(features), t(labels))
    np.testing.assert_allclose(delta_g_from_gram(gram, t(target)), expected, rtol=1e-10)


def test_delta_g_large_for_random_features_against_etf() -> None:
    K, d = 10, 32
    rng = np.random.default_rng(9)
    labels = np.arange(500) % K
    features = rng.standard_normal((500, d))
    W = etf(K, d, seed=10)
    assert delta_g(t(features), t(labels), t(W @ W.T)) > 0.1


def test_delta_g_errors() -> None:
    features, labels = random_data(50, 5, 4, seed=11)
    with pytest.raises(ValueError, match=r"target_gram must be a square \(K, K\) matrix"):
        delta_g(t(features), t(labels), torch.eye(5)[:4])
    with pytest.raises(ValueError, match=r"num_classes=6 does not match target_gram"):
        delta_g(t(features), t(labels), torch.eye(5), num_classes=6)
    with pytest.raises(ValueError, match=r"label 4 is out of range for num_classes=4"):
        delta_g(t(features), t(labels), torch.eye(4))
    with pytest.raises(ValueError, match=r"both must be \(K, K\) for the same K"):
        delta_g_from_gram(torch.eye(5), torch.eye(4))
    with pytest.raises(ValueError, match=r"gram has Frobenius norm 0.0"):
        delta_g_from_gram(torch.zeros(3, 3), torch.eye(3))


@settings(deadline=None, max_examples=50)
@given(
    K=st.integers(2, 6),
    d=st.integers(1, 6),
    per_class=st.integers(1, 4),
    seed=st.integers(0, 2**32 - 1),
    log_scale=st.floats(-6.0, 6.0),
)
def test_delta_g_bounded(K: int, d: int, per_class: int, seed: int, log_scale: float) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(K * per_class) % K)
    features = rng.standard_normal((K * per_class, d)) * 10.0**log_scale
    B = rng.standard_normal((K, rng.integers(1, 2 * K)))
    value = delta_g(t(features), t(labels), t(B @ B.T))
    assert 0.0 <= value <= 2.0
    assert value <= math.sqrt(2.0) + 1e-9  # both Grams are PSD: <G_M, G*>_F >= 0
    signed = rng.standard_normal((K, K))  # any symmetric target: still within [0, 2]
    assert 0.0 <= delta_g(t(features), t(labels), t(signed + signed.T)) <= 2.0 + 1e-12


# ---------------------------------------------------------------------------------------
# angular similarity
# ---------------------------------------------------------------------------------------


def test_angular_similarity_closed_forms() -> None:
    rng = np.random.default_rng(12)
    x = t(rng.standard_normal((20, 7)))
    np.testing.assert_allclose(angular_similarity(x, x).numpy(), 1.0, atol=1e-7)
    np.testing.assert_allclose(angular_similarity(x, -x).numpy(), 0.0, atol=1e-7)
    e = torch.eye(7, dtype=torch.float64)
    np.testing.assert_allclose(angular_similarity(e[:3], e[3:6]).numpy(), 0.5, atol=1e-15)
    y = t(rng.standard_normal((20, 7)))
    base = angular_similarity(x, y)
    np.testing.assert_allclose(angular_similarity(3.5 * x, 1e-3 * y).numpy(), base, rtol=1e-12)
    expected = [ref_gamma(x[i].numpy(), y[i].numpy()) for i in range(20)]
    np.testing.assert_allclose(base.numpy(), expected, rtol=1e-10)


def test_angular_similarity_broadcasts() -> None:
    rng = np.random.default_rng(13)
    x, y = rng.standard_normal((4, 1, 5)), rng.standard_normal((3, 5))
    gamma = angular_similarity(t(x), t(y))
    assert gamma.shape == (4, 3)
    for a, b in itertools.product(range(4), range(3)):
        assert gamma[a, b].item() == pytest.approx(ref_gamma(x[a, 0], y[b]), rel=1e-10)


def test_pairwise_angular_similarity_equals_double_loop() -> None:
    vectors = np.random.default_rng(14).standard_normal((6, 4))
    expected = [ref_gamma(vectors[i], vectors[j]) for i in range(6) for j in range(i + 1, 6)]
    got = pairwise_angular_similarity(t(vectors).float())
    assert got.shape == (15,)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6)


@pytest.mark.parametrize(("K", "d"), [(2, 3), (5, 4), (10, 32)])
def test_etf_pairs_have_simplex_gamma(K: int, d: int) -> None:
    W = etf(K, d, seed=15)
    gamma = pairwise_angular_similarity(t(2.5 * W))
    np.testing.assert_allclose(gamma.numpy(), simplex_gamma(K), atol=1e-6)
    expected = 1.0 - math.acos(-1.0 / (K - 1)) / math.pi
    assert simplex_gamma(K) == pytest.approx(expected, abs=1e-15)


def test_simplex_gamma_limits() -> None:
    assert simplex_gamma(2) == pytest.approx(0.0, abs=1e-15)
    assert simplex_gamma(3) == pytest.approx(1.0 / 3.0, abs=1e-12)  # 120° apart
    values = [simplex_gamma(K) for K in (2, 3, 10, 100, 10_000)]
    assert values == sorted(values) and all(v < 0.5 for v in values)
    assert 0.5 - simplex_gamma(10_000) < 1e-4
    with pytest.raises(ValueError, match=r"num_classes >= 2"):
        simplex_gamma(1)


# ---------------------------------------------------------------------------------------
# the three γ distributions and their summary
# ---------------------------------------------------------------------------------------


def test_gamma_distributions_equal_loops() -> None:
    K, d, n = 5, 6, 60
    features, labels = random_data(n, K, d, seed=16, imbalanced=True)
    classifier = np.random.default_rng(17).standard_normal((K, d))
    dists = gamma_distributions(t(features), t(labels), classifier=t(classifier))
    assert set(dists) == {"class_means", "weights", "within"}
    assert [dists[k].shape[0] for k in ("class_means", "weights", "within")] == [10, 10, n]
    means = ref_means(features, labels, K)
    pairs = [(i, j) for i in range(K) for j in range(i + 1, K)]
    np.testing.assert_allclose(
        dists["class_means"].numpy(), [ref_gamma(means[i], means[j]) for i, j in pairs], rtol=1e-10
    )
    np.testing.assert_allclose(
        dists["weights"].numpy(),
        [ref_gamma(classifier[i], classifier[j]) for i, j in pairs],
        rtol=1e-10,
    )
    within = [ref_gamma(features[i], means[labels[i]]) for i in range(n)]
    np.testing.assert_allclose(dists["within"].numpy(), within, rtol=1e-10)
    without = gamma_distributions(t(features), t(labels))
    assert set(without) == {"class_means", "within"}


def test_gamma_distributions_classifier_shape_errors() -> None:
    features, labels = random_data(30, 3, 4, seed=18)
    with pytest.raises(ValueError, match=r"classifier has 4 rows but num_classes=3"):
        gamma_distributions(t(features), t(labels), classifier=torch.ones(4, 4), num_classes=3)
    with pytest.raises(ValueError, match=r"classifier must have shape \(K, d\) = \(3, 4\)"):
        gamma_distributions(t(features), t(labels), classifier=torch.ones(3, 5))


def test_neural_collapse_zero_at_perfect_etf_collapse() -> None:
    K, d = 10, 32
    W = etf(K, d, seed=20)
    labels = np.random.default_rng(21).permutation(np.arange(200) % K)
    features = 4.0 * W[labels]
    stats = neural_collapse(t(features), t(labels), classifier=t(W))
    keys = "nc1 equinorm equiangularity max_angle self_duality w_equinorm"
    assert set(stats) == set(keys.split())
    assert all(abs(value) < 1e-10 for value in stats.values()), stats
    assert "self_duality" not in neural_collapse(t(features), t(labels))


def ref_nc1(features: np.ndarray, labels: np.ndarray, K: int) -> float:
    """tr(Σ_W Σ_B⁺)/K with Σ_W, Σ_B formed explicitly and numpy's pseudo-inverse."""
    n, d = features.shape
    means = ref_means(features, labels, K)
    global_mean = sum(means[c] for c in range(K)) / K
    sigma_w = np.zeros((d, d))
    for i in range(n):
        r = features[i] - means[labels[i]]
        sigma_w += np.outer(r, r) / n
    sigma_b = np.zeros((d, d))
    for c in range(K):
        m = means[c] - global_mean
        sigma_b += np.outer(m, m) / K
    # Σ_B has rank min(K − 1, d); cut its numerically-zero eigenvalues
    return float(np.trace(sigma_w @ np.linalg.pinv(sigma_b, rtol=1e-10, hermitian=True)) / K)


@pytest.mark.parametrize(
    ("K", "d", "imbalanced"), [(5, 16, False), (5, 16, True), (10, 4, True), (4, 3, False)]
)
def test_neural_collapse_equals_loop_references(K: int, d: int, imbalanced: bool) -> None:
    features, labels = random_data(200, K, d, seed=22 + K + d, imbalanced=imbalanced)
    classifier = np.random.default_rng(23).standard_normal((K, d)) + 0.3
    stats = neural_collapse(t(features).float(), t(labels), classifier=t(classifier).float())
    features = features.astype(np.float32).astype(np.float64)
    classifier = classifier.astype(np.float32).astype(np.float64)

    assert stats["nc1"] > 0.01
    np.testing.assert_allclose(stats["nc1"], ref_nc1(features, labels, K), rtol=1e-6)

    means = ref_means(features, labels, K)
    centred = means - sum(means[c] for c in range(K)) / K
    norms = [float(np.linalg.norm(centred[c])) for c in range(K)]
    assert stats["equinorm"] == pytest.approx(population_std(norms) / (sum(norms) / K), rel=1e-9)
    cosines = [ref_cos(centred[a], centred[b]) for a in range(K) for b in range(a + 1, K)]
    assert stats["equiangularity"] == pytest.approx(population_std(cosines), rel=1e-9)
    max_angle = sum(abs(c + 1.0 / (K - 1)) for c in cosines) / len(cosines)
    assert stats["max_angle"] == pytest.approx(max_angle, rel=1e-9)

    w_unit = classifier / math.sqrt(sum(float(np.dot(w, w)) for w in classifier))
    m_unit = centred / math.sqrt(sum(float(np.dot(m, m)) for m in centred))
    self_duality = math.sqrt(sum(float(np.sum((w_unit[c] - m_unit[c]) ** 2)) for c in range(K)))
    assert stats["self_duality"] == pytest.approx(self_duality, rel=1e-9)
    w_norms = [float(np.linalg.norm(w)) for w in classifier]
    assert stats["w_equinorm"] == pytest.approx(
        population_std(w_norms) / np.mean(w_norms), rel=1e-9
    )


def test_neural_collapse_centres_on_mean_of_class_means() -> None:
    # heavily imbalanced, perfectly collapsed onto an ETF shifted by a common offset:
    # centring on the mean of the class means recovers the ETF exactly.
    K, d = 4, 6
    W = etf(K, d, seed=24)
    labels = np.array([0] * 50 + [1, 2, 3])
    offset = np.full(d, 3.0)
    stats = neural_collapse(t(W[labels] + offset), t(labels), classifier=t(W))
    assert all(abs(value) < 1e-10 for value in stats.values()), stats


def test_neural_collapse_undefined_when_means_coincide() -> None:
    features = np.random.default_rng(25).standard_normal((12, 3))
    labels = np.zeros(12, dtype=np.int64)
    stats = neural_collapse(t(features), t(labels))
    assert all(math.isnan(value) for value in stats.values()), stats


# ---------------------------------------------------------------------------------------
# class means passed in (computed once per evaluation)
# ---------------------------------------------------------------------------------------


def test_given_means_are_used_as_given_and_change_nothing() -> None:
    """Passing the class means the caller has gives bit-identical values; the means are
    used, not recomputed (other means give other values)."""
    K, d, n = 4, 6, 80
    features, labels = random_data(n, K, d, seed=27, imbalanced=True)
    f32, y = t(features).float(), t(labels)
    classifier = t(np.random.default_rng(28).standard_normal((K, d))).float()
    means = class_means(f32, y, K)
    assert means.dtype == torch.float64
    np.testing.assert_allclose(means.numpy(), ref_means(f32.double().numpy(), labels, K))
    plain = gamma_distributions(f32, y, classifier=classifier, num_classes=K)
    given = gamma_distributions(f32, y, classifier=classifier, num_classes=K, means=means)
    assert plain.keys() == given.keys()
    assert all(torch.equal(plain[k], given[k]) for k in plain)
    assert neural_collapse(f32, y, classifier=classifier) == neural_collapse(
        f32, y, classifier=classifier, means=means
    )
    shifted = means + 0.5
    assert not torch.equal(gamma_distributions(f32, y, means=shifted)["within"], plain["within"])
    assert neural_collapse(f32, y, means=shifted)["nc1"] != neural_collapse(f32, y)["nc1"]


def test_given_means_are_checked() -> None:
    features, labels = random_data(30, 3, 4, seed=29)
    f, y = t(features), t(labels)
    means = class_means(f, y)
    with pytest.raises(
        ValueError, match=r"means must have shape \(K, d\) = \(3, 4\).*got \(3, 5\)"
    ):
        gamma_distributions(f, y, means=torch.ones(3, 5, dtype=torch.float64))
    with pytest.raises(
        ValueError, match=r"means must have shape \(K, d\) = \(3, 4\).*got \(2, 4\)"
    ):
        neural_collapse(f, y, num_classes=3, means=means[:2])
    with pytest.raises(ValueError, match=r"means must have shape \(K, d\); got \(12,\)"):
        neural_collapse(f, y, means=means.flatten())
    holed = means.clone()
    holed[1] = float("nan")
    with pytest.raises(ValueError, match=r"means has NaN rows \(classes 1\)"):
        gamma_distributions(f, y, means=holed)
    with pytest.raises(ValueError, match=r"label 2 is out of range for num_classes=2"):
        gamma_distributions(f, y, means=means[:2])


# ---------------------------------------------------------------------------------------
# scale
# ---------------------------------------------------------------------------------------


def test_metrics_at_cifar_scale() -> None:
    n, d, K = 50_000, 512, 100
    gen = torch.Generator().manual_seed(26)
    labels = torch.arange(n) % K
    features = torch.randn(K, d, generator=gen)[labels] + torch.randn(n, d, generator=gen)
    classifier = torch.randn(K, d, generator=gen)
    stats = neural_collapse(features, labels, classifier=classifier)
    assert all(math.isfinite(value) for value in stats.values()), stats
    assert math.isfinite(delta_g(features, labels, classifier @ classifier.T))
    dists = gamma_distributions(features, labels, classifier=classifier)
    assert [v.shape[0] for v in dists.values()] == [K * (K - 1) // 2, K * (K - 1) // 2, n]
    assert all(bool(torch.isfinite(v).all()) for v in dists.values())
