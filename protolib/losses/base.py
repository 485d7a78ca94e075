"""What every loss shares: its declared needs, the module base class, input checks."""

from __future__ import annotations

import operator
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, get_args

import torch
from torch import Tensor, nn

#: how a batch loss divides its sum over anchors (MATH.md §1.9): ``mean`` by the anchors
#: that have a positive, ``batch`` by all anchors, ``sum`` not at all
Reduction = Literal["mean", "batch", "sum"]
REDUCTIONS: tuple[str, ...] = get_args(Reduction)
#: the heads a loss can ask for (``LossNeeds.head``; built by :mod:`protolib.models.heads`)
HeadKind = Literal["none", "linear", "fixed_linear"]
HEAD_KINDS: tuple[str, ...] = get_args(HeadKind)
#: where the classifier head reads from (``LossNeeds.head_input``): the embedding (the
#: projector's output, the ``features`` the losses see) or the encoder (the backbone's)
HeadInput = Literal["embedding", "encoder"]
HEAD_INPUTS: tuple[str, ...] = get_args(HeadInput)

#: Largest allowed deviation of a row norm from 1 for "unit" inputs, by input precision.
UNIT_NORM_TOL = {torch.float16: 1e-2, torch.bfloat16: 1e-2}
UNIT_NORM_TOL_DEFAULT = 1e-3


class LossInputError(ValueError):
    """Inputs that a loss cannot take (wrong shape, dtype, labels, or non-unit rows)."""


@dataclass(frozen=True)
class LossNeeds:
    """What a loss needs from the model, so the training loop can build the right head.

    - ``head``: ``"none"`` (the loss reads embeddings only), ``"linear"`` (a trainable
      linear classifier producing ``logits``) or ``"fixed_linear"`` (a linear classifier
      fixed to the loss's ``prototypes``, no bias).
    - ``normalized``: the loss works on unit-norm embeddings (its module normalises).
    - ``prototypes``: ``"no"``, ``"optional"`` (used when the loss's ``n_w > 0``; the grid
      expands ``n_w`` only for such losses) or ``"yes"`` (always; built from a geometry).
    - ``priors``: the loss takes ``priors=`` ``(K,)`` float64, the class frequencies
      ``π_c = n_c / N`` of the labels the run trains on (all > 0, summing to 1).
    - ``head_input``: where the head reads from: ``"embedding"`` (the projector's output)
      or ``"encoder"`` (the backbone's output, before the projector). The network's
      ``features`` are the projector's output either way.
    """

    head: HeadKind = "none"
    normalized: bool = False
    prototypes: Literal["no", "optional", "yes"] = "no"
    priors: bool = False
    head_input: HeadInput = "embedding"


@dataclass(frozen=True)
class Shard:
    """This process's part of a batch gathered from ``count`` processes (MATH.md §1.10).

    The gathered batch holds every process's samples in process order, in ``count``
    equal contiguous parts; process ``index`` owns part ``index`` (:meth:`rows`).
    """

    index: int
    count: int

    def __post_init__(self) -> None:
        if not (isinstance(self.count, int) and self.count >= 1 and 0 <= self.index < self.count):
            raise ValueError(f"a shard needs 0 <= index < count, got {self.index} of {self.count}")

    def rows(self, n: int) -> slice:
        """The rows of this process among ``n`` gathered samples (``n`` divisible by
        ``count``)."""
        if n % self.count:
            raise LossInputError(f"{n} samples do not split into {self.count} equal shards")
        size = n // self.count
        return slice(self.index * size, (self.index + 1) * size)


class Loss(nn.Module):
    """Base of the registered loss modules.

    ``forward(features, labels, *, logits=None)`` returns ``{"loss": scalar, ...}`` where
    the other entries are named components (detached-safe scalars a training loop may
    log). Fixed prototypes are a buffer, so ``.to()`` and ``state_dict`` carry them.
    """

    needs: ClassVar[LossNeeds] = LossNeeds()
    prototypes: Tensor | None

    @classmethod
    def needs_for(cls, options: Mapping[str, Any]) -> LossNeeds:
        """The needs of this loss built with ``options`` (its ``loss_options``): ``needs``
        unless the needs depend on the options (a composite's on its parts). Raises
        :class:`LossInputError` on options it cannot judge; called before any work."""
        return cls.needs

    def __init__(self, *, prototypes: Tensor | None = None) -> None:
        super().__init__()
        if prototypes is not None:
            prototypes = torch.as_tensor(prototypes).detach().clone()
        self.register_buffer("prototypes", prototypes)

    def forward(
        self, features: Tensor, labels: Tensor, *, logits: Tensor | None = None
    ) -> dict[str, Tensor]:
        raise NotImplementedError

    def forward_shard(
        self, features: Tensor, labels: Tensor, *, logits: Tensor | None = None, shard: Shard
    ) -> dict[str, Tensor]:
        """This process's share of :meth:`forward` on a gathered batch (MATH.md §1.10).

        ``features``, ``labels`` and ``logits`` are the whole batch gathered from every
        process. The contract: summed over ``shard.index = 0 … count − 1``, the returned
        values equal :meth:`forward`'s, and so do the gradients of the summed ``"loss"``.
        This default computes the whole loss and returns ``1/count`` of it (exact for any
        loss; right for losses that are cheap on the whole batch). Contrastive losses
        override it to compute only their own anchors against every member.
        """
        out = self(features, labels, logits=logits)
        return {name: value / shard.count for name, value in out.items()}

    def _require_prototypes(self, name: str) -> Tensor:
        if self.prototypes is None:
            raise LossInputError(f"loss {name!r} needs prototypes (K, d) from a geometry; got none")
        return self.prototypes


class TemperatureLoss(Loss):
    """Base of the loss modules with a temperature ``tau`` and a ``reduction``; each
    subclass checks its options (``check_tau``, ``check_reduction``, …) before calling
    this ``__init__``, which only stores them."""

    def __init__(self, *, tau: float, reduction: Reduction, prototypes: Tensor | None) -> None:
        super().__init__(prototypes=prototypes)
        self.tau = float(tau)
        self.reduction = reduction


def check_reduction(
    reduction: str, allowed: tuple[str, ...] = REDUCTIONS, *, why: str = ""
) -> None:
    """``reduction`` must be one of ``allowed`` (all of :data:`REDUCTIONS` by default);
    ``why`` ends the message (why the others are not allowed)."""
    if not isinstance(reduction, str) or reduction not in allowed:
        raise LossInputError(
            f"reduction must be one of {', '.join(allowed)}; got {reduction!r}{why}"
        )


def check_tau(tau: float) -> None:
    if not isinstance(tau, int | float) or isinstance(tau, bool) or not tau > 0:
        raise LossInputError(f"temperature tau must be a positive number, got {tau!r}")


def check_n_w(n_w: int) -> int:
    """``n_w`` must be a non-negative integer."""
    try:
        value = operator.index(n_w)
    except TypeError:
        raise LossInputError(f"n_w must be a non-negative integer, got {n_w!r}") from None
    if value < 0:
        raise LossInputError(f"n_w must be a non-negative integer, got {n_w!r}")
    return value


def check_labels(labels: Tensor, n: int) -> None:
    if not isinstance(labels, Tensor) or labels.dtype != torch.int64 or labels.shape != (n,):
        got = (
            f"{labels.dtype} {tuple(labels.shape)}" if isinstance(labels, Tensor) else type(labels)
        )
        raise LossInputError(f"labels must be an int64 tensor of shape ({n},), got {got}")


def flatten_views(features: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """``(n, d)`` or ``(n, V, d)`` features → ``(n·V, d)`` members with their labels.

    Views become extra batch members with the label of their image (MATH.md §1.3).
    Half-precision inputs are promoted to float32.
    """
    if not isinstance(features, Tensor) or features.ndim not in (2, 3):
        shape = tuple(features.shape) if isinstance(features, Tensor) else type(features)
        raise LossInputError(f"features must be a tensor of shape (n, d) or (n, V, d), got {shape}")
    if not features.is_floating_point():
        raise LossInputError(f"features must be floating point, got {features.dtype}")
    check_labels(labels, features.shape[0])
    if features.ndim == 3:
        views = features.shape[1]
        labels = labels.repeat_interleave(views)
        features = features.reshape(-1, features.shape[-1])
    if features.dtype in (torch.float16, torch.bfloat16):
        features = features.float()
    return features, labels


def check_unit_rows(vectors: Tensor, what: str, *, dtype: torch.dtype | None = None) -> None:
    """Raise :class:`LossInputError` unless every row has norm 1 (within the tolerance of
    ``dtype``, the precision the rows were produced in)."""
    if vectors.numel() == 0:
        return
    tol = UNIT_NORM_TOL.get(dtype or vectors.dtype, UNIT_NORM_TOL_DEFAULT)
    deviation = (vectors.detach().float().norm(dim=-1) - 1).abs().max().item()
    if not deviation <= tol:  # also catches NaN
        raise LossInputError(
            f"{what} must have unit-norm rows (max |‖row‖ − 1| = {deviation:.3g} > {tol:g}); "
            "normalise them (torch.nn.functional.normalize) or use the loss module, which does"
        )


def check_prototypes(prototypes: Tensor, dim: int, labels: Tensor) -> None:
    """Prototypes are ``(K, dim)`` unit rows and every label indexes one of them."""
    if not isinstance(prototypes, Tensor) or prototypes.ndim != 2 or prototypes.shape[1] != dim:
        shape = tuple(prototypes.shape) if isinstance(prototypes, Tensor) else type(prototypes)
        raise LossInputError(f"prototypes must have shape (K, {dim}), got {shape}")
    check_unit_rows(prototypes, "prototypes")
    if labels.numel():
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= prototypes.shape[0]:
            raise LossInputError(
                f"labels must lie in 0..{prototypes.shape[0] - 1} (one prototype per class), "
                f"got labels in {low}..{high}"
            )
