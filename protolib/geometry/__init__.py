"""Prototype geometries (MATH.md §2) and geometry metrics (MATH.md §3).

The names below load their module on first use: the ``GEOMETRIES`` registry imports
``protolib.geometry.prototypes`` alone, without the metrics.
"""

from __future__ import annotations

import importlib
from typing import Any

_METRICS = "protolib.geometry.metrics"
_PROTOTYPES = "protolib.geometry.prototypes"

#: exported name → the module that defines it
_EXPORTS = {
    "GeometryError": _PROTOTYPES,
    "angular_similarity": _METRICS,
    "class_mean_gram": _METRICS,
    "class_means": _METRICS,
    "default_minority": _PROTOTYPES,
    "delta_g": _METRICS,
    "delta_g_from_gram": _METRICS,
    "factor_gram": _PROTOTYPES,
    "gamma_distributions": _METRICS,
    "gram_rank": _PROTOTYPES,
    "make_prototypes": _PROTOTYPES,
    "neural_collapse": _METRICS,
    "pairwise_angular_similarity": _METRICS,
    "simplex_gamma": "protolib.geometry.simplex",
    "summarize": _METRICS,
    "target_gram": _PROTOTYPES,
    "validate_gram": _PROTOTYPES,
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
