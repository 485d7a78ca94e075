"""protolib: embedding geometry under supervised-contrastive and cross-entropy losses.

The registries ``LOSSES``, ``GEOMETRIES``, ``MODELS``, ``DATASETS`` and ``METRICS`` turn
names from a config into objects; ``protolib.losses``, ``protolib.geometry``,
``protolib.models`` and ``protolib.data`` hold the implementations (see ``spec/MATH.md``
for every formula).

Importing protolib is light: it does not import torch. The subpackages load on first
attribute access (``protolib.losses``), and each registry imports its built-ins on its
first lookup (:class:`~protolib.registry.Registry`).
"""

from __future__ import annotations

from protolib._lazy import lazy_exports
from protolib.registry import (
    DATASETS,
    GEOMETRIES,
    LOSSES,
    METRICS,
    MODELS,
    Registry,
    RegistryError,
)

#: subpackages loaded on first attribute access (each imports torch)
_SUBPACKAGES = ("data", "geometry", "losses", "models")

__all__ = [
    "DATASETS",
    "GEOMETRIES",
    "LOSSES",
    "METRICS",
    "MODELS",
    "Registry",
    "RegistryError",
    "__version__",
    "data",
    "geometry",
    "losses",
    "models",
]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("protolib")
    except PackageNotFoundError:  # running from a source tree without installation
        return "0+unknown"


__getattr__, __dir__ = lazy_exports(
    __name__, {name: f"protolib.{name}" for name in _SUBPACKAGES}, {"__version__": _version}
)
