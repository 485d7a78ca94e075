"""protolib: embedding geometry under supervised-contrastive and cross-entropy losses.

The registries ``LOSSES``, ``GEOMETRIES``, ``MODELS`` and ``DATASETS`` turn names from a
config into objects; ``protolib.losses``, ``protolib.geometry``, ``protolib.models`` and
``protolib.data`` hold the implementations (see ``spec/MATH.md`` for every formula).

Importing protolib is light: it does not import torch. The subpackages load on first
attribute access (``protolib.losses``), and each registry imports its built-ins on its
first lookup (:class:`~protolib.registry.Registry`).
"""

from __future__ import annotations

import importlib
from typing import Any

from protolib.registry import DATASETS, GEOMETRIES, LOSSES, MODELS, Registry, RegistryError

#: subpackages loaded on first attribute access (each imports torch)
_SUBPACKAGES = ("data", "geometry", "losses", "models")

__all__ = [
    "DATASETS",
    "GEOMETRIES",
    "LOSSES",
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


def __getattr__(name: str) -> Any:
    """``protolib.__version__`` and the subpackages, computed or imported on first use."""
    if name == "__version__":
        value: Any = _version()
    elif name in _SUBPACKAGES:
        value = importlib.import_module(f"protolib.{name}")
    else:
        raise AttributeError(f"module 'protolib' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
