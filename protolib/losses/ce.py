"""Cross-entropy with a trainable (MATH.md §1.1) or fixed (§1.2) linear classifier."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from protolib.losses.base import (
    Loss,
    LossInputError,
    LossNeeds,
    Reduction,
    check_labels,
    check_reduction,
)
from protolib.registry import LOSSES


def _flatten_logits(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """``(n, K)`` or ``(n, V, K)`` logits → ``(n·V, K)`` with labels repeated per view."""
    if not isinstance(logits, Tensor) or logits.ndim not in (2, 3):
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits)
        raise LossInputError(f"logits must be a tensor of shape (n, K) or (n, V, K), got {shape}")
    check_labels(labels, logits.shape[0])
    if logits.ndim == 3:
        labels = labels.repeat_interleave(logits.shape[1])
        logits = logits.reshape(-1, logits.shape[-1])
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    return logits, labels


def ce_loss(logits: Tensor, labels: Tensor, *, reduction: Reduction = "mean") -> dict[str, Tensor]:
    """Cross-entropy ``−log softmax(logits)_y`` (MATH.md §1.1).

    Args:
        logits: ``(n, K)`` or ``(n, V, K)`` (``W h + b`` from the model's linear head).
        labels: ``(n,)`` int64 in ``0..K−1``.
        reduction: ``"mean"`` or ``"sum"`` over members; ``"batch"`` (MATH.md §1.9) is
            ``"mean"``, since every member is an anchor.

    Returns:
        ``{"loss"}``. Weight decay on ``W`` belongs to the optimiser, not here.
    """
    check_reduction(reduction)
    logits, labels = _flatten_logits(logits, labels)
    return {"loss": F.cross_entropy(logits, labels, reduction=torch_reduction(reduction))}


def torch_reduction(reduction: str) -> str:
    """The ``torch.nn.functional`` reduction of a per-member loss: ``"batch"`` divides by
    all members, as ``"mean"`` does (MATH.md §1.9)."""
    return "mean" if reduction == "batch" else reduction


def ce_fix_loss(
    features: Tensor, labels: Tensor, *, classifier: Tensor, reduction: Reduction = "mean"
) -> dict[str, Tensor]:
    """Cross-entropy with a fixed, bias-free classifier (MATH.md §1.2): logits
    ``h Wᵀ`` with ``classifier`` ``W`` of shape ``(K, d)`` (a prototype geometry, the
    simplex ETF by default); no gradient flows into ``W``. ``features`` ``(n, d)`` or
    ``(n, V, d)``, not normalised."""
    if (
        not isinstance(classifier, Tensor)
        or classifier.ndim != 2
        or classifier.shape[1] != features.shape[-1]
    ):
        shape = tuple(classifier.shape) if isinstance(classifier, Tensor) else type(classifier)
        raise LossInputError(f"classifier must have shape (K, {features.shape[-1]}), got {shape}")
    logits = features @ classifier.detach().to(features.dtype).T
    return ce_loss(logits, labels, reduction=reduction)


@LOSSES.register("ce")
class CrossEntropy(Loss):
    """Cross-entropy on the logits of a trainable linear head (the model builds the head)."""

    needs = LossNeeds(head="linear", normalized=False, prototypes="no")

    def __init__(self, *, reduction: Reduction = "mean") -> None:
        check_reduction(reduction)
        super().__init__()
        self.reduction = reduction

    def forward(
        self, features: Tensor, labels: Tensor, *, logits: Tensor | None = None
    ) -> dict[str, Tensor]:
        if logits is None:
            raise LossInputError("loss 'ce' needs logits from a linear head; got logits=None")
        return ce_loss(logits, labels, reduction=self.reduction)


@LOSSES.register("ce_fix")
class CrossEntropyFixed(Loss):
    """Cross-entropy with the classifier fixed to ``prototypes`` (a buffer, no bias).

    Uses the model's ``logits`` when given (a head fixed to the same prototypes), and
    ``features @ prototypes.T`` otherwise."""

    needs = LossNeeds(head="fixed_linear", normalized=False, prototypes="yes")

    def __init__(self, *, prototypes: Tensor, reduction: Reduction = "mean") -> None:
        check_reduction(reduction)
        if prototypes is None:
            raise LossInputError("loss 'ce_fix' needs prototypes (K, d) from a geometry; got none")
        super().__init__(prototypes=prototypes)
        self.reduction = reduction

    def forward(
        self, features: Tensor, labels: Tensor, *, logits: Tensor | None = None
    ) -> dict[str, Tensor]:
        if logits is not None:
            return ce_loss(logits, labels, reduction=self.reduction)
        classifier = self._require_prototypes("ce_fix")
        return ce_fix_loss(features, labels, classifier=classifier, reduction=self.reduction)
