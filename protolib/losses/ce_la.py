"""Logit-adjusted cross-entropy (MATH.md §1.7; Menon et al., ICLR 2021)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from protolib.losses.base import Loss, LossInputError, LossNeeds, Reduction, check_reduction
from protolib.losses.ce import ce_loss
from protolib.registry import LOSSES

#: how far the priors' sum may be from 1
PRIORS_SUM_TOL = 1e-6


def check_t(t: float) -> float:
    """The adjustment strength ``t`` must be a finite number ``>= 0``."""
    if not isinstance(t, int | float) or isinstance(t, bool) or not math.isfinite(t) or not t >= 0:
        raise LossInputError(
            f"t (the logit adjustment strength) must be a finite number >= 0, got {t!r}"
        )
    return float(t)


def check_priors(priors: Tensor | None, num_classes: int | None = None) -> Tensor:
    """``priors`` must be a finite ``(K,)`` floating tensor with every entry ``> 0``,
    summing to 1 (within :data:`PRIORS_SUM_TOL`); ``K`` is ``num_classes`` when given."""
    if priors is None:
        raise LossInputError(
            "loss 'ce_la' needs priors=(K,) class frequencies n_c/N of the training labels; "
            "got none"
        )
    if not isinstance(priors, Tensor) or priors.ndim != 1 or not priors.is_floating_point():
        got = f"{priors.dtype} {tuple(priors.shape)}" if isinstance(priors, Tensor) else priors
        raise LossInputError(f"priors must be a floating tensor of shape (K,), got {got!r}")
    if num_classes is not None and priors.shape[0] != num_classes:
        raise LossInputError(
            f"priors must have one entry per class: logits have {num_classes} classes, "
            f"priors {priors.shape[0]}"
        )
    values = priors.detach().double()
    if not (torch.isfinite(values).all() and (values > 0).all()):
        raise LossInputError(
            "priors must be finite and > 0 for every class (a class without training "
            f"points has no prior), got {values.tolist()}"
        )
    total = float(values.sum())
    if not abs(total - 1) <= PRIORS_SUM_TOL:
        raise LossInputError(f"priors must sum to 1, got a sum of {total!r}")
    return priors


def ce_la_loss(
    logits: Tensor,
    labels: Tensor,
    *,
    priors: Tensor,
    t: float = 1.0,
    reduction: Reduction = "mean",
) -> dict[str, Tensor]:
    """Logit-adjusted cross-entropy ``−log softmax(logits + t·log π)_y`` (MATH.md §1.7).

    Args:
        logits: ``(n, K)`` or ``(n, V, K)``: the unadjusted ``W h + b`` of the linear head
            (predictions keep using them; only the loss adds ``t·log π``).
        labels: ``(n,)`` int64 in ``0..K−1``.
        priors: ``(K,)`` class frequencies ``π_c = n_c / N`` of the training labels (after
            imbalance and corruption): every entry ``> 0``, summing to 1.
        t: adjustment strength, finite and ``>= 0``; ``t = 0`` is plain cross-entropy.
        reduction: ``"mean"`` (= ``"batch"``) or ``"sum"`` over members.

    Returns:
        ``{"loss"}``.
    """
    t = check_t(t)
    check_reduction(reduction)
    if not isinstance(logits, Tensor) or logits.ndim not in (2, 3):
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits)
        raise LossInputError(f"logits must be a tensor of shape (n, K) or (n, V, K), got {shape}")
    check_priors(priors, logits.shape[-1])
    return _adjusted(logits, labels, priors, t, reduction)


def _adjusted(
    logits: Tensor, labels: Tensor, priors: Tensor, t: float, reduction: Reduction
) -> dict[str, Tensor]:
    """:func:`ce_la_loss` on inputs already checked (no value is read back to the host)."""
    dtype = torch.float32 if logits.dtype in (torch.float16, torch.bfloat16) else logits.dtype
    shift = (t * priors.detach().double().log()).to(dtype=dtype, device=logits.device)
    return ce_loss(logits.to(dtype) + shift, labels, reduction=reduction)


@LOSSES.register("ce_la")
class CrossEntropyLogitAdjusted(Loss):
    """Logit-adjusted cross-entropy on the logits of a trainable linear head; ``priors``
    (the run's class frequencies) are a buffer. See :func:`ce_la_loss`."""

    needs = LossNeeds(head="linear", normalized=False, prototypes="no", priors=True)
    priors: Tensor

    def __init__(
        self, *, priors: Tensor | None = None, t: float = 1.0, reduction: Reduction = "mean"
    ) -> None:
        self.t = check_t(t)
        check_reduction(reduction)
        priors = check_priors(priors)
        super().__init__()
        self.reduction = reduction
        self.register_buffer("priors", priors.detach().to(torch.float64).clone())

    def forward(
        self, features: Tensor, labels: Tensor, *, logits: Tensor | None = None
    ) -> dict[str, Tensor]:
        if logits is None:
            raise LossInputError("loss 'ce_la' needs logits from a linear head; got logits=None")
        # the priors were checked when the module was built: a training step reads nothing
        # back from the device (only the class count, a shape, is compared)
        if not isinstance(logits, Tensor) or logits.shape[-1:] != self.priors.shape:
            shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits)
            raise LossInputError(
                f"logits must end in the {self.priors.shape[0]} classes of the priors, got {shape}"
            )
        return _adjusted(logits, labels, self.priors, self.t, self.reduction)

    def extra_repr(self) -> str:
        return f"t={self.t}, reduction={self.reduction!r}, classes={self.priors.shape[0]}"
