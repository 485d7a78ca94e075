"""Datasets (registered in ``DATASETS``), the transforms of MATH.md §6, and a
device-resident loader."""

from protolib.data.datasets import DatasetSplits, Split, load_dataset
from protolib.data.loader import Augment, DeviceLoader, augment_batch
from protolib.data.transforms import corrupt_labels, step_imbalance

__all__ = [
    "Augment",
    "DatasetSplits",
    "DeviceLoader",
    "Split",
    "augment_batch",
    "corrupt_labels",
    "load_dataset",
    "step_imbalance",
]
