"""The neural-collapse panel (MATH.md §3, "beyond the studies") against independent
references: explicit Python loops over points and pairs on small random inputs, closed
forms at a planted simplex, and the chunked paths forced to tiny blocks."""

from __future__ import annotations

import itertools
import math
from collections import Counter

import numpy as np
import pytest
import torch

from protolib.geometry import chunks, class_means
from protolib.geometry.groups import accuracy_by_group, group_thresholds
from protolib.geometry.hypersphere import alignment, uniformity
from protolib.geometry.neighbours import knn_accuracy, knn_predictions, ncc_agreement
from protolib.geometry.variability import cdnv, effective_rank

K, D = 4, 5


def random_inputs(n: int = 30, m: int = 12, seed: int = 0) -> dict[str, torch.Tensor]:
    """Float64 training and test embeddings around random class centres (every class
    present in training)."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(K, D, generator=gen, dtype=torch.float64)
    labels = torch.cat([torch.arange(K), torch.randint(0, K, (n - K,), generator=gen)])
    test_labels = torch.randint(0, K, (m,), generator=gen)
    noise = torch.randn(n + m, D, generator=gen, dtype=torch.float64)
    return {
        "features": centres[labels] + 0.8 * noise[:n],
        "labels": labels,
        "queries": centres[test_labels] + 0.8 * noise[n:],
        "query_labels": test_labels,
    }


def unit(rows: np.ndarray) -> np.ndarray:
    """Rows scaled to unit norm; a zero row stays zero."""
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.where(norms > 0, norms, 1.0)


def simplex(K: int, d: int) -> torch.Tensor:
    """A regular simplex of K unit vectors in R^d (d ≥ K): rows of (I − 11ᵀ/K), scaled to
    unit norm, in the first K coordinates."""
    rows = torch.eye(K, dtype=torch.float64) - 1.0 / K
    rows = rows / rows.norm(dim=1, keepdim=True)
    return torch.cat([rows, torch.zeros(K, d - K, dtype=torch.float64)], dim=1)


# -- references: loops written without the module under test ------------------------------


def ref_knn(train: np.ndarray, y: np.ndarray, queries: np.ndarray, k: int) -> list[int]:
    out = []
    for q in queries:
        cosines = [float(q @ t) / (np.linalg.norm(q) * np.linalg.norm(t)) for t in train]
        order = sorted(range(len(train)), key=lambda i: -cosines[i])[:k]
        votes = Counter(int(y[i]) for i in order)
        best = max(votes.values())
        out.append(min(label for label, count in votes.items() if count == best))
    return out


def ref_ncc(queries: np.ndarray, means: np.ndarray) -> list[int]:
    out = []
    for q in queries:
        distances = [float(((q - mu) ** 2).sum()) for mu in means]
        out.append(distances.index(min(distances)))
    return out


def ref_alignment(features: np.ndarray, y: np.ndarray) -> float:
    f = unit(features)
    total, pairs = 0.0, 0
    for i, j in itertools.permutations(range(len(f)), 2):
        if y[i] == y[j]:
            total += float(((f[i] - f[j]) ** 2).sum())
            pairs += 1
    return total / pairs


def ref_uniformity(features: np.ndarray) -> float:
    f = unit(features)
    terms = [
        math.exp(-2.0 * float(((f[i] - f[j]) ** 2).sum()))
        for i, j in itertools.permutations(range(len(f)), 2)
    ]
    return math.log(sum(terms) / len(terms))


def ref_cdnv(features: np.ndarray, y: np.ndarray) -> float:
    classes = sorted(set(y.tolist()))
    mu = {c: features[y == c].mean(axis=0) for c in classes}
    var = {c: float(((features[y == c] - mu[c]) ** 2).sum(axis=1).mean()) for c in classes}
    values = [
        (var[a] + var[b]) / (2.0 * float(((mu[a] - mu[b]) ** 2).sum()))
        for a, b in itertools.combinations(classes, 2)
    ]
    return sum(values) / len(values)


def ref_effective_rank(means: np.ndarray) -> float:
    centred = means - means.mean(axis=0)
    s = np.linalg.svd(centred, compute_uv=False)
    p = [v / s.sum() for v in s if v > 0]
    return math.exp(-sum(q * math.log(q) for q in p))


# -- against brute force --------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 4, 7, 100])
@pytest.mark.parametrize("seed", [0, 1])
def test_knn_equals_brute_force(k, seed):
    x = random_inputs(seed=seed)
    got = knn_predictions(x["features"], x["labels"], x["queries"], num_classes=K, k=k)
    expected = ref_knn(x["features"].numpy(), x["labels"].numpy(), x["queries"].numpy(), k)
    assert got.tolist() == expected
    accuracy = knn_accuracy(
        x["features"], x["labels"], x["queries"], x["query_labels"], num_classes=K, k=k
    )
    assert accuracy == np.mean(np.array(expected) == x["query_labels"].numpy())


def test_knn_vote_ties_go_to_the_smaller_label():
    # around the query, by falling cosine: labels 3, 1, 3, 1, then a far label 0
    train = torch.tensor([[1.0, 0.05], [1.0, -0.1], [1.0, 0.2], [1.0, -0.25], [-1.0, 0.0]])
    labels = torch.tensor([3, 1, 3, 1, 0])
    query = torch.tensor([[1.0, 0.0]])
    assert knn_predictions(train, labels, query, num_classes=4, k=4).tolist() == [1]  # 2–2
    assert knn_predictions(train, labels, query, num_classes=4, k=3).tolist() == [3]
    assert knn_predictions(train, labels, query, num_classes=4, k=1).tolist() == [3]


def test_ncc_agreement_equals_brute_force():
    x = random_inputs(seed=2)
    means = class_means(x["features"], x["labels"], K)
    nearest = ref_ncc(x["queries"].numpy(), means.numpy())
    predictions = torch.tensor(nearest)
    predictions[:3] = (predictions[:3] + 1) % K  # three disagreements, planted
    got = ncc_agreement(predictions, x["queries"], means)
    assert got == pytest.approx((len(nearest) - 3) / len(nearest), abs=1e-15)


@pytest.mark.parametrize("seed", [0, 3])
def test_alignment_uniformity_cdnv_rank_equal_brute_force(seed):
    x = random_inputs(seed=seed)
    f, y = x["features"], x["labels"]
    fn, yn = f.numpy(), y.numpy()
    means = class_means(f, y, K)
    assert alignment(f, y, num_classes=K) == pytest.approx(ref_alignment(fn, yn), rel=1e-12)
    assert uniformity(f) == pytest.approx(ref_uniformity(fn), rel=1e-12)
    assert cdnv(f, y, means) == pytest.approx(ref_cdnv(fn, yn), rel=1e-12)
    assert effective_rank(means) == pytest.approx(ref_effective_rank(means.numpy()), rel=1e-12)


def test_chunked_equals_unchunked(monkeypatch):
    """Tiny blocks (1 and 7 rows, not dividing n) give the default path's values."""
    x = random_inputs(n=41, m=13, seed=4)
    f, y, q = x["features"], x["labels"], x["queries"]
    means = class_means(f, y, K)
    sums = alignment(f, y, num_classes=K), cdnv(f, y, means)
    monkeypatch.setattr(chunks, "CHUNK_ELEMENTS", 3 * D)  # blocks of 3 rows
    assert alignment(f, y, num_classes=K) == pytest.approx(sums[0], rel=1e-13)
    assert cdnv(f, y, means) == pytest.approx(sums[1], rel=1e-13)
    monkeypatch.undo()
    whole = knn_predictions(f, y, q, num_classes=K, k=5)
    for size in (1, 7):
        assert torch.equal(knn_predictions(f, y, q, num_classes=K, k=5, chunk_size=size), whole)
        assert uniformity(f, chunk_size=size) == pytest.approx(uniformity(f), rel=1e-13)
    # a zero embedding stays at the origin: ‖0 − f‖² = 1, not 2 − 2<0, f>
    zeroed = f.clone()
    zeroed[5] = 0.0
    assert uniformity(zeroed, chunk_size=4) == pytest.approx(
        ref_uniformity(zeroed.numpy()), rel=1e-12
    )
    # float32 embeddings (what a run records) agree with the float64 reference closely
    assert uniformity(f.float(), chunk_size=3) == pytest.approx(ref_uniformity(f.numpy()), rel=1e-5)


# -- at a planted simplex ------------------------------------------------------------------


@pytest.mark.parametrize("Kp", [3, 10])
def test_values_at_a_collapsed_simplex(Kp):
    """Every point on its class's simplex vertex: effective rank K − 1, CDNV 0, alignment
    0, NCC agreement and kNN accuracy 1, uniformity in closed form."""
    per_class = 21  # more than k = 20: a point's neighbours are its own class
    vertices = simplex(Kp, Kp + 2)
    y = torch.arange(Kp).repeat(per_class)
    f = vertices[y].float()
    means = class_means(f, y, Kp)
    assert effective_rank(means) == pytest.approx(Kp - 1, rel=1e-6)
    assert cdnv(f, y, means) == pytest.approx(0.0, abs=1e-12)
    assert alignment(f, y, num_classes=Kp) == pytest.approx(0.0, abs=1e-6)
    test_y = torch.arange(Kp).flip(0)
    predictions = (f[:0] @ means.float().T).argmax(1)  # empty: NaN, not a ratio of nothing
    assert math.isnan(ncc_agreement(predictions, f[:0], means))
    model = (vertices[test_y].float() @ means.float().T).argmax(1)  # the class-mean classifier
    assert ncc_agreement(model, vertices[test_y].float(), means) == 1.0
    assert knn_accuracy(f, y, vertices[test_y].float(), test_y, num_classes=Kp) == 1.0
    n = Kp * per_class
    same = Kp * per_class * (per_class - 1)
    apart = math.exp(-2.0 * 2.0 * Kp / (Kp - 1))  # ‖μ_c − μ_c'‖² = 2K/(K − 1)
    expected = math.log((same + (n * (n - 1) - same) * apart) / (n * (n - 1)))
    assert uniformity(f) == pytest.approx(expected, rel=1e-5)


# -- accuracy by class-size group --------------------------------------------------------------


def test_group_accuracy_equals_counting_by_hand():
    counts = torch.tensor([150, 101, 100, 20, 19, 3])  # many, many, medium, medium, few, few
    labels = torch.tensor([0, 0, 1, 2, 3, 3, 3, 4, 5, 5])
    predictions = torch.tensor([0, 1, 1, 2, 0, 3, 3, 4, 0, 0])
    got = accuracy_by_group(predictions, labels, counts)
    groups = {"many": {0, 1}, "medium": {2, 3}, "few": {4, 5}}
    for name, classes in groups.items():
        points = [i for i in range(len(labels)) if int(labels[i]) in classes]
        hits = sum(int(predictions[i] == labels[i]) for i in points)
        assert got[name] == hits / len(points), name
    # thresholds as options: many > 19, few < 4 → {150, 101, 100, 20}, {19}, {3}
    got = accuracy_by_group(predictions, labels, counts, many_above=19, few_below=4)
    assert got == {"many": 5 / 7, "medium": 1.0, "few": 0.0}


def test_a_group_without_classes_has_no_accuracy():
    got = accuracy_by_group(torch.tensor([0, 1]), torch.tensor([0, 1]), torch.tensor([500, 400]))
    assert got == {"many": 1.0, "medium": None, "few": None}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"few_below": -1}, "few_below: -1 is not allowed; allowed: an integer >= 0"),
        ({"many_above": 2.5}, "many_above: 2.5 is not allowed; allowed: an integer >= 0"),
        ({"many_above": True}, "many_above: True is not allowed"),
        ({"fewest": 5}, "fewest: 5 is not an option; allowed: many_above, few_below"),
        (
            {"many_above": 10, "few_below": 12},
            "few_below: 12 is not allowed with many_above: 10; allowed: an integer <= 11",
        ),
    ],
)
def test_group_thresholds_refuse_what_they_cannot_honour(options, message):
    with pytest.raises(ValueError) as caught:
        group_thresholds(options)
    assert str(caught.value).startswith(message), caught.value
    assert "\n" not in str(caught.value)
