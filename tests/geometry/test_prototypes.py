"""Prototype geometries (MATH.md §2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from protolib import GEOMETRIES, RegistryError
from protolib.geometry import GeometryError, delta_g, make_prototypes, target_gram


def gram(W):
    return (W.double() @ W.double().T).numpy()


@pytest.mark.parametrize(("K", "d"), [(2, 1), (3, 2), (10, 9), (10, 128), (100, 512)])
def test_etf_gram_is_exact_and_rows_sum_to_zero(K, d):
    W = make_prototypes("etf", K, d, seed=3)
    assert W.shape == (K, d) and W.dtype == torch.float32
    want = (K / (K - 1)) * np.eye(K) - 1 / (K - 1)
    np.testing.assert_allclose(gram(W), want, atol=1e-6)
    np.testing.assert_allclose(W.double().sum(0).numpy(), 0, atol=1e-5)


def test_deterministic_in_seed_and_rotated_by_it():
    a = make_prototypes("etf", 5, 16, seed=7)
    assert torch.equal(a, make_prototypes("etf", 5, 16, seed=7))
    b = make_prototypes("etf", 5, 16, seed=8)
    assert not torch.allclose(a, b)
    np.testing.assert_allclose(gram(a), gram(b), atol=1e-6)


def test_orthonormal():
    W = make_prototypes("orthonormal", 6, 6, seed=1)
    np.testing.assert_allclose(gram(W), np.eye(6), atol=1e-6)


@pytest.mark.parametrize(
    ("name", "K", "options", "smallest"),
    [
        ("etf", 10, {}, 9),
        ("orthonormal", 10, {}, 10),
        ("majority_collapse", 10, {}, 5),
        ("majority_collapse", 10, {"minority": [9]}, 1),
        ("minority_angles", 10, {"strength": 0.3}, 9),
    ],
)
def test_too_small_dimension_names_the_smallest_valid_one(name, K, options, smallest):
    make_prototypes(name, K, smallest, **options)
    with pytest.raises(GeometryError, match=rf"needs dim >= {smallest}, got {smallest - 1}"):
        make_prototypes(name, K, smallest - 1, **options)


def angle_blocks(G, minority):
    K = G.shape[0]
    is_min = np.zeros(K, bool)
    is_min[minority] = True
    off = ~np.eye(K, dtype=bool)
    return (
        G[np.ix_(~is_min, ~is_min)][off[np.ix_(~is_min, ~is_min)]],
        G[np.ix_(is_min, is_min)][off[np.ix_(is_min, is_min)]],
        G[np.ix_(~is_min, is_min)].ravel(),
    )


@pytest.mark.parametrize("strength", [0.1, 0.5, 1.0])
@pytest.mark.parametrize(("K", "minority"), [(10, None), (7, [0, 3, 5]), (4, [3])])
def test_minority_angles_widen_minority_and_narrow_majority(K, minority, strength):
    W = make_prototypes("minority_angles", K, K + 2, minority=minority, strength=strength)
    G = gram(W)
    chosen = list(range((K + 1) // 2, K)) if minority is None else minority
    majority_pairs, minority_pairs, _ = angle_blocks(G, chosen)
    etf_cos = -1 / (K - 1)
    assert (majority_pairs > etf_cos + 1e-3).all()  # smaller angles than the ETF
    if len(chosen) > 1:
        assert (minority_pairs < etf_cos - 1e-3).all()  # larger angles than the ETF
    np.testing.assert_allclose(
        G, target_gram("minority_angles", K, minority=minority, strength=strength), atol=1e-6
    )
    assert np.linalg.eigvalsh(G).min() > -1e-6


def test_minority_angles_strength_zero_is_etf_and_angles_monotone():
    np.testing.assert_allclose(
        target_gram("minority_angles", 8, strength=0.0).numpy(),
        target_gram("etf", 8).numpy(),
        atol=1e-12,
    )
    previous = None
    for s in np.linspace(0, 1, 6):
        G = target_gram("minority_angles", 8, strength=float(s)).numpy()
        maj, mino, _ = angle_blocks(G, [4, 5, 6, 7])
        if previous is not None:
            assert maj[0] > previous[0] and mino[0] < previous[1]
        previous = (maj[0], mino[0])


def test_majority_collapse():
    K, minority = 10, [5, 6, 7, 8, 9]
    G = gram(make_prototypes("majority_collapse", K, 12, seed=2))
    majority_pairs, minority_pairs, mixed = angle_blocks(G, minority)
    np.testing.assert_allclose(majority_pairs, 1.0, atol=1e-6)  # one shared prototype
    # the shared prototype and the 5 minorities: a simplex of 6 points
    np.testing.assert_allclose(minority_pairs, -1 / 5, atol=1e-6)
    np.testing.assert_allclose(mixed, -1 / 5, atol=1e-6)


def random_gram(K, rank, seed=0):
    rng = np.random.default_rng(seed)
    V = rng.standard_normal((K, rank))
    V /= np.linalg.norm(V, axis=1, keepdims=True)
    return V @ V.T


@pytest.mark.parametrize("source", ["array", "tensor", "list", ".npy", ".csv", ".pt"])
def test_from_gram_realises_any_valid_gram(source, tmp_path):
    G = random_gram(6, 3)
    if source == "array":
        arg = G
    elif source == "tensor":
        arg = torch.from_numpy(G)
    elif source == "list":
        arg = G.tolist()
    else:
        arg = tmp_path / f"gram{source}"
        if source == ".npy":
            np.save(arg, G)
        elif source == ".csv":
            np.savetxt(arg, G, delimiter=",", fmt="%.17g")
        else:
            torch.save(torch.from_numpy(G), arg)
    W = make_prototypes("from_gram", 6, 3, gram=arg, seed=4, dtype=torch.float64)
    np.testing.assert_allclose(gram(W), G, atol=1e-10)
    with pytest.raises(GeometryError, match="needs dim >= 3, got 2"):
        make_prototypes("from_gram", 6, 2, gram=arg)


@pytest.mark.parametrize(
    ("G", "message"),
    [
        (np.array([[1.0, 0.2], [0.3, 1.0]]), "not symmetric"),
        (np.array([[2.0, 0.0], [0.0, 1.0]]), "unit diagonal"),
        (
            np.array([[1.0, 0.0, -0.9], [0.0, 1.0, -0.9], [-0.9, -0.9, 1.0]]),
            "not positive semi-definite",
        ),
        (np.array([[1.0, np.nan], [np.nan, 1.0]]), "non-finite"),
        (np.ones((2, 3)), "must be square"),
        ("no/such/file.npy", "no Gram file"),
    ],
)
def test_from_gram_rejects_invalid(G, message):
    with pytest.raises(GeometryError, match=message):
        make_prototypes("from_gram", 2 if not isinstance(G, np.ndarray) else G.shape[0], 4, gram=G)


def test_bad_options_and_names():
    with pytest.raises(
        RegistryError, match=r"unknown geometry 'eft'; known: etf, .*did you mean 'etf'"
    ):
        make_prototypes("eft", 4, 4)
    with pytest.raises(
        RegistryError, match=r"unexpected keyword argument 'strenght'.*accepted options"
    ):
        make_prototypes("minority_angles", 4, 4, strenght=0.2)
    with pytest.raises(GeometryError, match=r"strength must be in \[0, 1\]"):
        make_prototypes("minority_angles", 4, 4, strength=1.5)
    with pytest.raises(GeometryError, match="non-empty proper subset"):
        make_prototypes("majority_collapse", 4, 4, minority=[0, 1, 2, 3])
    with pytest.raises(GeometryError, match=r"distinct classes in 0\.\.3"):
        make_prototypes("majority_collapse", 4, 4, minority=[1, 7])
    with pytest.raises(GeometryError, match="integer num_classes >= 2"):
        make_prototypes("etf", 1, 4)


@pytest.mark.parametrize("name", GEOMETRIES.names())
def test_every_geometry_realises_its_gram_and_delta_g_is_zero_at_it(name):
    """Across the registry: unit rows, W Wᵀ = G*, and class means equal to scaled
    prototypes (plus within-class noise of mean zero) have Δ_G = 0 against G*."""
    K, d = 6, 8
    options = {"gram": random_gram(K, 4, seed=1)} if name == "from_gram" else {}
    W = make_prototypes(name, K, d, seed=0, dtype=torch.float64, **options)
    G_star = target_gram(name, K, **options)
    np.testing.assert_allclose(W.norm(dim=1).numpy(), 1, atol=1e-12)
    np.testing.assert_allclose(gram(W), G_star.numpy(), atol=1e-10)
    labels = torch.arange(60) % K
    noise = torch.randn(60, d, dtype=torch.float64)
    noise -= torch.stack([noise[labels == c].mean(0) for c in range(K)])[labels]
    features = 2.5 * W[labels] + 0.3 * noise
    assert delta_g(features, labels, G_star) < 1e-6
