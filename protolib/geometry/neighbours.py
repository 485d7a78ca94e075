"""Nearest-neighbour views of the embeddings (MATH.md §3, "beyond the studies"): the
nearest-class-mean classifier and its agreement with the model (NC4), and k-nearest-
neighbour accuracy by cosine.

features (n, d) and queries (m, d) of one dtype; labels (n,) int64 in ``[0, K)``; class
means (K, d). Nothing of size n×m is formed: queries are taken in blocks
(:mod:`protolib.geometry.chunks`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from protolib.geometry.chunks import chunk_rows, spans

#: the number of neighbours of ``knn_accuracy`` (MATH.md §3)
KNN_K = 20


def ncc_predictions(queries: Tensor, means: Tensor) -> Tensor:
    """The nearest-class-mean prediction ``argmin_c ‖h − μ_c‖`` of each query (NC4).

    queries (m, d), means (K, d) → (m,) int64; ties go to the smaller label. Computed in
    float64 as ``argmax_c 2<h, μ_c> − ‖μ_c‖²`` (the same ranking, no (m, K, d) tensor).
    """
    mu = means.double().to(queries.device)
    scores = 2.0 * (queries.double() @ mu.T) - mu.square().sum(dim=1)
    return scores.argmax(dim=1)  # the first maximum: the smaller label on a tie


def ncc_agreement(predictions: Tensor, queries: Tensor, means: Tensor) -> float:
    """NC4: the fraction of queries whose ``predictions`` (m,) equal their nearest-class-
    mean prediction (:func:`ncc_predictions`); NaN without queries."""
    if predictions.shape != queries.shape[:1]:
        raise ValueError(
            f"predictions must have shape ({queries.shape[0]},), one per query; "
            f"got {tuple(predictions.shape)}"
        )
    if queries.shape[0] == 0:
        return float("nan")
    nearest = ncc_predictions(queries, means)
    return float((nearest == predictions.to(nearest.device)).double().mean())


def knn_predictions(
    features: Tensor,
    labels: Tensor,
    queries: Tensor,
    *,
    num_classes: int,
    k: int = KNN_K,
    chunk_size: int | None = None,
) -> Tensor:
    """Majority vote of each query's ``k`` nearest ``features`` by cosine (MATH.md §3).

    features (n, d) with labels (n,), queries (m, d) → (m,) int64. ``k`` is capped at n.
    A vote tied between classes goes to the smaller label; which of several neighbours at
    exactly equal cosine make the ``k`` is ``torch.topk``'s choice. Blocks of
    ``chunk_size`` queries (default: 64 MiB of similarities per block).
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer; got {k!r}")
    n = features.shape[0]
    k = min(k, n)
    reference = F.normalize(features, dim=1)
    labels = labels.long().to(features.device)
    out = torch.empty(queries.shape[0], dtype=torch.long, device=features.device)
    for start, stop in spans(queries.shape[0], chunk_rows(n, chunk_size)):
        block = F.normalize(queries[start:stop].to(reference), dim=1) @ reference.T
        nearest = labels[block.topk(k, dim=1).indices]  # (rows, k)
        votes = torch.zeros(stop - start, num_classes, device=block.device)
        votes.scatter_add_(1, nearest, torch.ones_like(nearest, dtype=votes.dtype))
        out[start:stop] = votes.argmax(dim=1)  # the first maximum: the smaller label
    return out


def knn_accuracy(
    features: Tensor,
    labels: Tensor,
    queries: Tensor,
    query_labels: Tensor,
    *,
    num_classes: int,
    k: int = KNN_K,
    chunk_size: int | None = None,
) -> float:
    """kNN accuracy: the fraction of queries whose :func:`knn_predictions` equals their
    label (m,); NaN without queries."""
    if queries.shape[0] == 0:
        return float("nan")
    predicted = knn_predictions(
        features, labels, queries, num_classes=num_classes, k=k, chunk_size=chunk_size
    )
    return float((predicted == query_labels.to(predicted.device)).double().mean())
