"""Prototype geometries (MATH.md §2), geometry metrics (MATH.md §3) and the registered
evaluation metrics built on them (``protolib.geometry.panel``, the ``METRICS`` built-ins).

The names below load their module on first use: the ``GEOMETRIES`` registry imports
``protolib.geometry.prototypes`` alone, without the metrics.
"""

from __future__ import annotations

from protolib._lazy import lazy_exports

_METRICS = "protolib.geometry.metrics"
_PROTOTYPES = "protolib.geometry.prototypes"
_NEIGHBOURS = "protolib.geometry.neighbours"
_SPHERE = "protolib.geometry.hypersphere"
_VARIABILITY = "protolib.geometry.variability"

#: exported name → the module that defines it
_EXPORTS = {
    "GeometryError": _PROTOTYPES,
    "MetricContext": "protolib.geometry.panel",
    "accuracy_by_group": "protolib.geometry.groups",
    "alignment": _SPHERE,
    "angular_similarity": _METRICS,
    "cdnv": _VARIABILITY,
    "check_metric_options": "protolib.geometry.panel",
    "class_mean_gram": _METRICS,
    "class_means": _METRICS,
    "default_minority": _PROTOTYPES,
    "delta_g": _METRICS,
    "delta_g_from_gram": _METRICS,
    "effective_rank": _VARIABILITY,
    "factor_gram": _PROTOTYPES,
    "gamma_distributions": _METRICS,
    "gram_rank": _PROTOTYPES,
    "knn_accuracy": _NEIGHBOURS,
    "knn_predictions": _NEIGHBOURS,
    "make_prototypes": _PROTOTYPES,
    "ncc_agreement": _NEIGHBOURS,
    "ncc_predictions": _NEIGHBOURS,
    "neural_collapse": _METRICS,
    "pairwise_angular_similarity": _METRICS,
    "simplex_gamma": "protolib.geometry.simplex",
    "target_gram": _PROTOTYPES,
    "uniformity": _SPHERE,
    "validate_gram": _PROTOTYPES,
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
