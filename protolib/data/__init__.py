"""Datasets (registered in ``DATASETS``), the transforms of MATH.md §6, and a
device-resident loader."""

from protolib.data.datasets import DatasetSplits, Split, load_dataset
from protolib.data.loader import Augment, DeviceLoader, augment_batch
from protolib.data.transforms import (
    check_imbalance,
    corrupt_labels,
    largest_valid_ratio,
    step_imbalance,
)

__all__ = [
    "Augment",
    "DatasetSplits",
    "DeviceLoader",
    "Split",
    "augment_batch",
    "check_imbalance",
    "corrupt_labels",
    "largest_valid_ratio",
    "load_dataset",
    "step_imbalance",
]
