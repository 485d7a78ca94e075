"""Datasets (registered in ``DATASETS``), the transforms of MATH.md §6, and a
device-resident loader.

The names below load their module on first use, so importing one of them (or
``protolib.data.datasets``, the registry's built-ins) does not import the others.
"""

from __future__ import annotations

from protolib._lazy import lazy_exports

#: the kinds of class imbalance of MATH.md §6 (a run config's ``imbalance``): STEP and
#: exponential (long-tailed); here, not in :mod:`protolib.data.transforms`, so that the run
#: config checks them without importing torch
IMBALANCE_KINDS: tuple[str, ...] = ("step", "exp")
#: STEP's minority fraction ``μ`` when none is given: the last ``⌊K/2⌋`` classes
DEFAULT_MINORITY_FRACTION = 0.5

#: exported name → the module that defines it
_EXPORTS = {
    "Augment": "protolib.data.loader",
    "DatasetSplits": "protolib.data.splits",
    "DeviceLoader": "protolib.data.loader",
    "Split": "protolib.data.splits",
    "augment_batch": "protolib.data.loader",
    "balance_classes": "protolib.data.transforms",
    "bound_points": "protolib.data.transforms",
    "check_imbalance": "protolib.data.imbalance",
    "corrupt_labels": "protolib.data.transforms",
    "exp_imbalance": "protolib.data.imbalance",
    "imbalanced_indices": "protolib.data.imbalance",
    "kept_counts": "protolib.data.imbalance",
    "largest_valid_ratio": "protolib.data.imbalance",
    "load_dataset": "protolib.data.datasets",
    "make_splits": "protolib.data.splits",
    "split_sha256": "protolib.data.transforms",
    "split_validation": "protolib.data.transforms",
    "step_imbalance": "protolib.data.imbalance",
    "training_labels": "protolib.data.transforms",
}

__all__ = sorted([*_EXPORTS, "DEFAULT_MINORITY_FRACTION", "IMBALANCE_KINDS"])

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
