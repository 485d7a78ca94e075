"""protolib: embedding geometry under supervised-contrastive and cross-entropy losses.

The registries ``LOSSES`` and ``GEOMETRIES`` turn names from a config into objects;
``protolib.losses``, ``protolib.geometry`` hold the implementations (see
``spec/MATH.md`` for every formula).
"""

from importlib.metadata import PackageNotFoundError, version

from protolib import data, geometry, losses, models
from protolib.registry import DATASETS, GEOMETRIES, LOSSES, MODELS, Registry, RegistryError

try:
    __version__ = version("protolib")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0+unknown"

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
