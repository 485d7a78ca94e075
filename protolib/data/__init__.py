"""Datasets (registered in ``DATASETS``), the transforms of MATH.md §6, and a
device-resident loader.

The names below load their module on first use, so importing one of them (or
``protolib.data.datasets``, the registry's built-ins) does not import the others.
"""

from __future__ import annotations

import importlib
from typing import Any

#: exported name → the module that defines it
_EXPORTS = {
    "Augment": "protolib.data.loader",
    "DatasetSplits": "protolib.data.datasets",
    "DeviceLoader": "protolib.data.loader",
    "Split": "protolib.data.datasets",
    "augment_batch": "protolib.data.loader",
    "check_imbalance": "protolib.data.transforms",
    "corrupt_labels": "protolib.data.transforms",
    "largest_valid_ratio": "protolib.data.transforms",
    "load_dataset": "protolib.data.datasets",
    "step_imbalance": "protolib.data.transforms",
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
