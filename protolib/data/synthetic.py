"""Gaussian class clusters: a synthetic dataset of any size and shape, for tests and speed
measurements."""

from __future__ import annotations

import math

import numpy as np
import torch

from protolib.data.splits import DatasetSplits, Split, make_splits
from protolib.registry import DATASETS

#: Pixel noise standard deviation at ``noise=1`` (images live in [0, 1]).
SYNTHETIC_NOISE_SCALE = 0.25


def _check_count(name: str, value: int, smallest: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < smallest:
        raise ValueError(f"synthetic: {name} must be an integer >= {smallest}, got {value!r}")


@DATASETS.register(
    "synthetic",
    size=lambda o: int(o["train_size"]) + int(o["test_size"]),
    num_classes=lambda o: o["num_classes"],
    image_shape=lambda o: (o["channels"], o["image_size"], o["image_size"]),
)
def synthetic(
    *,
    num_classes: int = 10,
    channels: int = 3,
    image_size: int = 32,
    train_size: int = 1000,
    test_size: int = 200,
    noise: float = 1.0,
    seed: int = 0,
) -> DatasetSplits:
    """Gaussian class clusters, for tests and speed measurements.

    Class centres ``μ_k`` are uniform in ``[0, 1]^{C×H×W}``; an image of class ``y`` is
    ``clip(μ_y + σ·ε, 0, 1)`` with ``ε ~ N(0, I)`` and ``σ = 0.25·noise``, float32. Labels
    are balanced (``i mod K``, then shuffled). Everything is drawn from
    ``numpy.random.default_rng(seed)``: centres, then train, then test.
    """
    _check_count("num_classes", num_classes, 2)
    _check_count("channels", channels, 1)
    _check_count("image_size", image_size, 1)
    _check_count("train_size", train_size, 1)
    _check_count("test_size", test_size, 1)
    if not isinstance(noise, int | float) or not math.isfinite(noise) or noise < 0:
        raise ValueError(f"synthetic: noise must be a finite number >= 0, got {noise!r}")
    rng = np.random.default_rng(seed)
    shape = (channels, image_size, image_size)
    centres = rng.random((num_classes, *shape))
    sigma = SYNTHETIC_NOISE_SCALE * noise

    def draw(size: int) -> Split:
        labels = rng.permutation(np.arange(size) % num_classes)
        images = centres[labels] + sigma * rng.standard_normal((size, *shape))
        images = np.clip(images, 0.0, 1.0).astype(np.float32)
        return Split(torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64)))

    train = draw(train_size)
    test = draw(test_size)
    return make_splits("synthetic", train, test, num_classes)
