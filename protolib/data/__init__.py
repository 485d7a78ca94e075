"""Datasets (registered in ``DATASETS``), the transforms of MATH.md §6, and a
device-resident loader.

The names below load their module on first use, so importing one of them (or
``protolib.data.datasets``, the registry's built-ins) does not import the others.
"""

from __future__ import annotations

from protolib._lazy import lazy_exports

#: exported name → the module that defines it
_EXPORTS = {
    "Augment": "protolib.data.loader",
    "DatasetSplits": "protolib.data.splits",
    "DeviceLoader": "protolib.data.loader",
    "Split": "protolib.data.splits",
    "augment_batch": "protolib.data.loader",
    "balance_classes": "protolib.data.transforms",
    "bound_points": "protolib.data.transforms",
    "check_imbalance": "protolib.data.transforms",
    "corrupt_labels": "protolib.data.transforms",
    "largest_valid_ratio": "protolib.data.transforms",
    "load_dataset": "protolib.data.datasets",
    "make_splits": "protolib.data.splits",
    "step_imbalance": "protolib.data.transforms",
    "training_labels": "protolib.data.transforms",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
