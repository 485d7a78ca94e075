"""Datasets as in-memory tensors: train/test splits with their normalisation statistics.

Each named dataset registered in :data:`~protolib.registry.DATASETS` is a function taking
keyword-only options and returning :class:`DatasetSplits`; :func:`load_dataset` calls it by
name. This module is the registry's built-ins: importing it registers ``digits``
(:mod:`protolib.data.digits`), ``cifar10`` and ``cifar100`` (:mod:`protolib.data.cifar`)
and ``synthetic`` (:mod:`protolib.data.synthetic`), each with its facts (``size``,
``num_classes``, ``image_shape``). The test split is never resampled here: imbalance and
label noise (MATH.md §6) apply to the training split only, through
:mod:`protolib.data.transforms`.
"""

from __future__ import annotations

from typing import Any

from protolib.data.cifar import CifarFileError, cifar10, cifar100
from protolib.data.digits import digits, digits_file, read_digits, stratified_split
from protolib.data.splits import DatasetSplits, Split, channel_stats, make_splits
from protolib.data.synthetic import SYNTHETIC_NOISE_SCALE, synthetic
from protolib.registry import DATASETS

__all__ = [
    "SYNTHETIC_NOISE_SCALE",
    "CifarFileError",
    "DatasetSplits",
    "Split",
    "channel_stats",
    "cifar10",
    "cifar100",
    "digits",
    "digits_file",
    "load_dataset",
    "make_splits",
    "read_digits",
    "stratified_split",
    "synthetic",
]


def load_dataset(name: str, **options: Any) -> DatasetSplits:
    """The dataset registered under ``name``, built with ``options`` (see each loader)."""
    return DATASETS.create(name, **options)
