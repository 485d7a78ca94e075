"""A device-resident loader: one split held on the device, batched augmentation, no workers.

The whole split is moved to the device once (uint8 stays uint8 there). Each batch is
gathered by index, converted to float in ``[0, 1]``, augmented (every view independently),
then normalised by the train statistics, all on the device. Optionally a fixed set of
bound points is appended to every batch (batch binding, MATH.md §6). All randomness comes from
``torch.Generator`` objects on the loader's device, whose states are part of
:meth:`DeviceLoader.state_dict`, so a resumed run sees exactly the batches and
augmentations of an uninterrupted one. On CUDA the split travels through pinned memory
without blocking the host (:func:`to_device`), and drawing a batch reads nothing back.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from protolib.choices import SAMPLINGS

_STATE_VERSION = 1


@dataclass(frozen=True)
class Augment:
    """Training augmentation: random crop with zero padding ``crop_padding`` (0 = off) and
    random horizontal flip with probability 1/2."""

    crop_padding: int = 0
    flip: bool = False

    def __post_init__(self) -> None:
        p = self.crop_padding
        if not isinstance(p, int) or isinstance(p, bool) or p < 0:
            raise ValueError(f"crop_padding must be an integer >= 0, got {p!r}")
        if not isinstance(self.flip, bool):
            raise ValueError(f"flip must be a bool, got {self.flip!r}")

    @property
    def active(self) -> bool:
        """Whether this augmentation changes anything."""
        return self.crop_padding > 0 or self.flip


def augment_batch(
    images: Tensor,
    augment: Augment,
    generator: torch.Generator,
    *,
    of: tuple[int, int] | None = None,
) -> Tensor:
    """Augment float ``images`` ``(B, C, H, W)`` on their device, each sample independently.

    Crop: pad every side with ``p`` zeros, then take the ``H×W`` window at a per-sample
    offset ``(dy, dx)`` uniform in ``{0..2p}²`` (one ``gather``, no loop over samples). Flip:
    mirror the width axis of each sample with probability 1/2. Random draws, in this order:
    offsets ``(B, 2)`` then the flip mask ``(B,)``, on ``generator``'s device. Returns
    ``images`` itself when ``augment`` is inactive.

    ``of=(start, total)``: ``images`` are members ``start … start+B−1`` of a batch of
    ``total``; the draws are the whole batch's and these members get theirs, so the parts
    of a batch augmented apart (one per process, MATH.md §1.10) equal the batch augmented
    at once.
    """
    if not isinstance(images, Tensor) or images.ndim != 4 or not images.is_floating_point():
        what = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, Tensor) else images
        raise ValueError(f"images must be a float tensor (B, C, H, W), got {what}")
    if not augment.active:
        return images
    B, C, H, W = images.shape
    start, total = (0, B) if of is None else of
    if not 0 <= start <= total - B:
        raise ValueError(f"of=(start, total) must hold the {B} images, got {of!r}")
    mine = slice(start, start + B)
    device, draw_on = images.device, generator.device
    p = augment.crop_padding
    if p > 0:
        Hp, Wp = H + 2 * p, W + 2 * p
        padded = F.pad(images, (p, p, p, p)).reshape(B, C, Hp * Wp)
        offsets = torch.randint(0, 2 * p + 1, (total, 2), generator=generator, device=draw_on)
        offsets = offsets[mine].to(device)
        rows = offsets[:, 0, None, None] + torch.arange(H, device=device)[:, None]  # (B, H, 1)
        cols = offsets[:, 1, None, None] + torch.arange(W, device=device)  # (B, 1, W)
        flat = (rows * Wp + cols).reshape(B, 1, H * W).expand(B, C, H * W)
        images = padded.gather(2, flat).view(B, C, H, W)
    if augment.flip:
        mask = torch.rand(total, generator=generator, device=draw_on)[mine].to(device) < 0.5
        images = torch.where(mask[:, None, None, None], images.flip(-1), images)
    return images


def to_device(tensor: Tensor, device: torch.device) -> Tensor:
    """``tensor`` on ``device``. From the CPU to CUDA through pinned (page-locked) memory
    with ``non_blocking``: the host does not wait for the copy, which the device's stream
    orders before any later use of the result (torch keeps the pinned source alive until
    the copy is done)."""
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def _seeds(seed: int) -> tuple[int, int]:
    """Two independent 64-bit generator seeds (sampling, augmentation) from one ``seed``."""
    state = np.random.SeedSequence(seed).generate_state(2, dtype=np.uint64)
    return int(state[0]), int(state[1])


def _check_int(name: str, value: Any, smallest: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < smallest:
        raise ValueError(f"{name} must be an integer >= {smallest}, got {value!r}")


class DeviceLoader:
    """Batches of one split, held on ``device``.

    ``images`` ``(N, C, H, W)`` uint8 (0..255) or float (in [0, 1]); ``labels`` int ``(N,)``;
    ``mean``/``std`` per channel in [0, 1] units. ``sampling="epoch"``: consecutive slices of
    a fresh seeded permutation per epoch (``drop_last`` drops the short tail);
    ``"replacement"``: each batch is ``batch_size`` indices drawn uniformly with
    replacement (a multiset, MATH.md §7). ``views`` independent augmentations per image.
    ``bound``: int ``(L,)`` positions in the split (from
    :func:`protolib.data.transforms.bound_points`) appended to every sampled batch and
    augmented like its other members (batch binding, MATH.md §6); the sampling and
    ``steps_per_epoch`` do not depend on it.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        *,
        batch_size: int,
        mean: Sequence[float] | Tensor,
        std: Sequence[float] | Tensor,
        device: str | torch.device = "cpu",
        sampling: str = "epoch",
        views: int = 1,
        augment: Augment | None = None,
        seed: int = 0,
        drop_last: bool = True,
        bound: Tensor | None = None,
    ) -> None:
        labels = _checked_labels(images, labels)
        n, channels = images.shape[0], images.shape[1]
        if sampling not in SAMPLINGS:
            raise ValueError(f"unknown sampling {sampling!r}; known: {', '.join(SAMPLINGS)}")
        _check_int("batch_size", batch_size, 1)
        if sampling == "epoch" and drop_last and batch_size > n:
            raise ValueError(
                f"batch_size must be <= the split size {n} for epoch sampling with "
                f"drop_last=True, got {batch_size}"
            )
        _check_int("views", views, 1)
        bound = _checked_bound(bound, n)
        augment = Augment() if augment is None else augment
        if not isinstance(augment, Augment):
            raise ValueError(f"augment must be an Augment or None, got {augment!r}")
        self.device = torch.device(device)
        mean_t = torch.as_tensor(mean, dtype=torch.float32).flatten()
        std_t = torch.as_tensor(std, dtype=torch.float32).flatten()
        if mean_t.numel() != channels or std_t.numel() != channels or not (std_t > 0).all():
            raise ValueError(
                f"mean and std need {channels} values (one per channel, std > 0), "
                f"got mean {mean_t.tolist()} and std {std_t.tolist()}"
            )

        if images.is_floating_point() and images.dtype != torch.float32:
            images = images.float()
        self.images = to_device(images, self.device)
        self.labels = to_device(labels.to(torch.int64), self.device)
        self.mean = to_device(mean_t, self.device).view(1, channels, 1, 1)
        self.std = to_device(std_t, self.device).view(1, channels, 1, 1)
        self.batch_size = batch_size
        self.sampling = sampling
        self.views = views
        self.augment = augment
        self.seed = seed
        self.drop_last = bool(drop_last)
        # None when nothing is bound; the checksum identifies the bound points in the state
        self.bound = None if bound.numel() == 0 else to_device(bound, self.device)
        self._bound_sha256 = _checksum(bound)

        sample_seed, augment_seed = _seeds(seed)
        self._sample_gen = torch.Generator(device=self.device).manual_seed(sample_seed)
        self._augment_gen = torch.Generator(device=self.device).manual_seed(augment_seed)
        self._perm: Tensor | None = None  # epoch sampling: the current epoch's permutation
        self._position = 0  # epoch sampling: batches taken from ``_perm``
        self._step = 0

    # ------------------------------------------------------------------ counters
    @property
    def num_samples(self) -> int:
        """``N``, the split size."""
        return self.images.shape[0]

    @property
    def steps_per_epoch(self) -> int:
        """Batches per epoch: ``N // B`` with ``drop_last``, else ``⌈N / B⌉`` (for
        ``"replacement"`` sampling, the number of batches that make one nominal epoch)."""
        n, b = self.num_samples, self.batch_size
        return n // b if self.drop_last else math.ceil(n / b)

    @property
    def step(self) -> int:
        """Batches drawn so far."""
        return self._step

    @property
    def epoch(self) -> int:
        """Completed epochs: ``step // steps_per_epoch``."""
        return self._step // self.steps_per_epoch

    # ------------------------------------------------------------------- batches
    def _to_unit(self, images: Tensor) -> Tensor:
        if images.dtype == torch.uint8:
            return images.float().div_(255.0)
        return images.float()

    def _normalise(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    def _next_indices(self) -> Tensor:
        n, b = self.num_samples, self.batch_size
        if self.sampling == "replacement":
            return torch.randint(0, n, (b,), generator=self._sample_gen, device=self.device)
        if self._perm is None or self._position >= self.steps_per_epoch:
            self._perm = torch.randperm(n, generator=self._sample_gen, device=self.device)
            self._position = 0
        start = self._position * b
        self._position += 1
        return self._perm[start : start + b].clone()

    def next_batch(self, rows: slice | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """The next ``(x, y, idx)``: ``x`` float32 ``(B, C, H, W)`` for one view, else
        ``(B, V, C, H, W)``; ``y`` int64 ``(B,)``; ``idx`` int64 ``(B,)`` positions in the
        split. ``B`` is the sampled ``batch_size`` (less for the short tail of an epoch
        without ``drop_last``) plus the ``L`` bound points, which come last, in the order of
        ``bound``. One augmentation draw covers all ``B·V`` members.

        ``rows`` (a process's shard, MATH.md §1.10): ``x`` holds only those members of the
        batch, as the whole batch would have them (the same draws), while ``y`` and
        ``idx`` still cover the whole batch (every process needs every label)."""
        idx = self._next_indices()
        if self.bound is not None:
            idx = torch.cat((idx, self.bound))
        self._step += 1
        members = idx if rows is None else idx[rows]
        x = self._to_unit(self.images[members])
        b, rest = x.shape[0], x.shape[1:]
        if self.views > 1:
            x = x.unsqueeze(1).expand(b, self.views, *rest).reshape(b * self.views, *rest)
        of = None
        if rows is not None:
            of = (rows.indices(idx.numel())[0] * self.views, idx.numel() * self.views)
        x = self._normalise(augment_batch(x, self.augment, self._augment_gen, of=of))
        if self.views > 1:
            x = x.view(b, self.views, *rest)
        return x, self.labels[idx], idx

    def iterate(self, batch_size: int | None = None) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """Every sample in order, un-augmented, normalised, one view: ``(x, y, idx)`` with
        ``x`` ``(b, C, H, W)``. Touches no generator and no counter."""
        batch_size = self.batch_size if batch_size is None else batch_size
        _check_int("batch_size", batch_size, 1)
        for start in range(0, self.num_samples, batch_size):
            stop = min(start + batch_size, self.num_samples)
            idx = torch.arange(start, stop, device=self.device)
            x = self._normalise(self._to_unit(self.images[start:stop]))
            yield x, self.labels[start:stop], idx

    def __len__(self) -> int:
        return self.steps_per_epoch

    # --------------------------------------------------------------------- state
    def _config(self) -> dict[str, Any]:
        return {
            "sampling": self.sampling,
            "batch_size": self.batch_size,
            "num_samples": self.num_samples,
            "views": self.views,
            "drop_last": self.drop_last,
            "crop_padding": self.augment.crop_padding,
            "flip": self.augment.flip,
            "bound_points": 0 if self.bound is None else self.bound.numel(),
            "bound_sha256": self._bound_sha256,
        }

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed loader needs: generator states, the current permutation and
        position, the step counter (plus the configuration, with the count and a checksum of
        the bound points, checked on load). Holds only
        tensors (on the CPU), ints, bools and strs: safe for ``torch.load(weights_only=True)``.
        """
        perm = torch.empty(0, dtype=torch.int64) if self._perm is None else self._perm.cpu()
        return {
            "version": _STATE_VERSION,
            "config": self._config(),
            "step": self._step,
            "position": self._position,
            "has_permutation": self._perm is not None,
            "permutation": perm.clone(),
            "sample_generator": self._sample_gen.get_state().clone(),
            "augment_generator": self._augment_gen.get_state().clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (from :meth:`state_dict` of a loader built the same way;
        a state saved before batch binding existed is one of a loader without bound points)."""
        if state.get("version") != _STATE_VERSION:
            raise ValueError(
                f"loader state version must be {_STATE_VERSION}, got {state.get('version')!r}"
            )
        saved = {**_NO_BINDING, **state["config"]}  # states saved before batch binding
        current = self._config()
        for key, value in current.items():
            if saved.get(key) != value:
                raise ValueError(
                    f"loader state was saved with {key}={saved.get(key)!r}, "
                    f"but this loader has {key}={value!r}"
                )
        self._sample_gen.set_state(state["sample_generator"].cpu())
        self._augment_gen.set_state(state["augment_generator"].cpu())
        self._perm = state["permutation"].to(self.device) if state["has_permutation"] else None
        self._position = int(state["position"])
        self._step = int(state["step"])


def _checksum(bound: Tensor) -> str:
    """A short SHA-256 of the bound positions, in order ("" when there are none)."""
    if bound.numel() == 0:
        return ""
    data = bound.detach().cpu().numpy().astype("<i8").tobytes()
    return hashlib.sha256(data).hexdigest()[:16]


#: the configuration entries of a loader without batch binding
_NO_BINDING = {"bound_points": 0, "bound_sha256": ""}


def _checked_bound(bound: Tensor | None, n: int) -> Tensor:
    """``bound`` as int64 (empty for ``None``) after checking it is a 1-D integer tensor of
    positions in ``0..n−1``; ``ValueError`` naming what is wrong."""
    if bound is None:
        return torch.empty(0, dtype=torch.int64)
    if (
        not isinstance(bound, Tensor)
        or bound.ndim != 1
        or bound.is_floating_point()
        or bound.is_complex()
        or bound.dtype == torch.bool
    ):
        what = f"{bound.dtype} {tuple(bound.shape)}" if isinstance(bound, Tensor) else bound
        raise ValueError(f"bound must be a 1-D integer tensor of split positions, got {what}")
    if bound.numel() and (bound.min() < 0 or bound.max() >= n):
        raise ValueError(
            f"bound must hold positions in 0..{n - 1} (the split size is {n}), "
            f"got {int(bound.min())}..{int(bound.max())}"
        )
    return bound.to(torch.int64, copy=True)


def _checked_labels(images: Tensor, labels: Tensor) -> Tensor:
    """``labels`` as a tensor, after checking ``images`` (N, C, H, W; uint8 or float, N > 0)
    and that ``labels`` are N integers; ``ValueError`` naming what is wrong."""
    if not isinstance(images, Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images)
        raise ValueError(f"images must be a tensor of shape (N, C, H, W), got {shape}")
    if images.dtype != torch.uint8 and not images.is_floating_point():
        raise ValueError(f"images must be uint8 (0..255) or float (0..1), got {images.dtype}")
    n = images.shape[0]
    if n == 0:
        raise ValueError("images must hold at least one sample, got N = 0")
    labels = torch.as_tensor(labels)
    if labels.shape != (n,) or labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(
            f"labels must be an integer tensor of shape ({n},), "
            f"got {labels.dtype} {tuple(labels.shape)}"
        )
    return labels
