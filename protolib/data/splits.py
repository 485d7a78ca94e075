"""The shape of a dataset: :class:`Split` and :class:`DatasetSplits`, and the per-channel
statistics every dataset records (:func:`make_splits` builds one from two splits).

Images are ``(N, C, H, W)``, either ``uint8`` (0..255, kept compact for CIFAR) or
``float32`` in ``[0, 1]``; labels are ``int64`` ``(N,)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Split:
    """One split: ``images`` ``(N, C, H, W)`` (uint8 0..255 or float32 in [0, 1]) and
    ``labels`` int64 ``(N,)``."""

    images: Tensor
    labels: Tensor

    def __post_init__(self) -> None:
        images, labels = self.images, self.labels
        if not isinstance(images, Tensor) or images.ndim != 4:
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images)
            raise ValueError(f"split images must be a tensor of shape (N, C, H, W), got {shape}")
        if images.dtype not in (torch.uint8, torch.float32):
            raise ValueError(f"split images must be uint8 or float32, got {images.dtype}")
        n = images.shape[0]
        if not isinstance(labels, Tensor) or labels.dtype != torch.int64 or labels.shape != (n,):
            got = (
                f"{labels.dtype} {tuple(labels.shape)}"
                if isinstance(labels, Tensor)
                else type(labels)
            )
            raise ValueError(f"split labels must be an int64 tensor of shape ({n},), got {got}")

    def __len__(self) -> int:
        return self.images.shape[0]


@dataclass(frozen=True)
class DatasetSplits:
    """A dataset: its ``train`` and ``test`` splits, class count, and the per-channel
    ``mean``/``std`` of the train split in ``[0, 1]`` units (population std)."""

    name: str
    train: Split
    test: Split
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        _, c, h, w = self.train.images.shape
        return (c, h, w)


def channel_stats(images: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and population std of ``images`` ``(N, C, H, W)`` in [0, 1] units.

    uint8 images are summarised exactly through one 256-bin histogram per channel (no
    float copy of the data); float images in float64.
    """
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"need a non-empty (N, C, H, W) tensor, got {tuple(images.shape)}")
    channels = images.shape[1]
    if images.dtype == torch.uint8:
        values = torch.arange(256, dtype=torch.float64) / 255.0
        means, stds = [], []
        for c in range(channels):
            counts = torch.bincount(images[:, c].reshape(-1), minlength=256).double()
            total = counts.sum()
            mean = (counts * values).sum() / total
            var = (counts * (values - mean) ** 2).sum() / total
            means.append(float(mean))
            stds.append(float(var.sqrt()))
        return tuple(means), tuple(stds)
    flat = images.transpose(0, 1).reshape(channels, -1).double()
    std, mean = torch.std_mean(flat, dim=1, correction=0)
    return tuple(mean.tolist()), tuple(std.tolist())


def make_splits(name: str, train: Split, test: Split, num_classes: int) -> DatasetSplits:
    """A :class:`DatasetSplits` with the channel statistics of ``train``."""
    mean, std = channel_stats(train.images)
    return DatasetSplits(name, train, test, num_classes, mean, std)
