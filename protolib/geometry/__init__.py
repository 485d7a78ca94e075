"""Prototype geometries (MATH.md §2) and geometry metrics (MATH.md §3)."""

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
    summarize,
)
from protolib.geometry.prototypes import (
    GeometryError,
    default_minority,
    factor_gram,
    gram_rank,
    make_prototypes,
    target_gram,
    validate_gram,
)

__all__ = [
    "GeometryError",
    "angular_similarity",
    "class_mean_gram",
    "class_means",
    "default_minority",
    "delta_g",
    "delta_g_from_gram",
    "factor_gram",
    "gamma_distributions",
    "gram_rank",
    "make_prototypes",
    "neural_collapse",
    "pairwise_angular_similarity",
    "simplex_gamma",
    "summarize",
    "target_gram",
    "validate_gram",
]
