"""Supervised contrastive loss, optionally with ``n_w`` copies of fixed prototypes
(MATH.md §1.3–1.4), and its class-averaged variant BCL (§1.6); reductions ``mean``,
``batch`` and ``sum`` (§1.9)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from protolib.losses.base import (
    LossInputError,
    LossNeeds,
    Reduction,
    TemperatureLoss,
    check_n_w,
    check_prototypes,
    check_reduction,
    check_tau,
    check_unit_rows,
    flatten_views,
)
from protolib.losses.multiset import multiset_contrastive, reduce_anchors
from protolib.registry import LOSSES


def _contrastive(
    members: Tensor,
    labels: Tensor,
    prototypes: Tensor | None,
    n_w: int,
    tau: float,
    reduction: str,
    class_average: bool,
) -> dict[str, Tensor]:
    """Batch loss of flattened members plus ``n_w`` copies of each prototype (unchecked)."""
    n = members.shape[0]
    multiplicity = torch.ones(n, dtype=members.dtype, device=members.device)
    if n_w > 0 and prototypes is not None:
        prototypes = prototypes.detach().to(dtype=members.dtype, device=members.device)
        K = prototypes.shape[0]
        members = torch.cat([members, prototypes])
        labels = torch.cat([labels, torch.arange(K, device=labels.device)])
        multiplicity = torch.cat([multiplicity, multiplicity.new_full((K,), float(n_w))])
    loss, weight = multiset_contrastive(
        members, labels, multiplicity, tau=tau, class_average=class_average
    )
    groups = {"sample_anchors": slice(0, n), "prototype_anchors": slice(n, None)}
    return reduce_anchors(loss, weight, reduction, groups, multiplicity=multiplicity)


def supcon_loss(
    features: Tensor,
    labels: Tensor,
    *,
    tau: float = 0.1,
    prototypes: Tensor | None = None,
    n_w: int = 0,
    reduction: Reduction = "mean",
    class_average: bool = False,
) -> dict[str, Tensor]:
    """Supervised contrastive loss (MATH.md §1.3), with ``n_w`` copies of each fixed
    prototype added to the batch (§1.4).

    Args:
        features: ``(n, d)`` or ``(n, V, d)`` embeddings with unit-norm rows (``V`` views
            of each image become ``V`` members with its label). Rows whose norm is off by
            more than 1e-3 (1e-2 for half precision) raise :class:`LossInputError`;
            :class:`SupCon` normalises for you.
        labels: ``(n,)`` int64.
        tau: temperature; similarities are ``<h_i, h_j>/τ``.
        prototypes: ``(K, d)`` unit rows, one per class; labels must be in ``0..K−1``.
            Used only when ``n_w > 0``; no gradient flows into them.
        n_w: copies of each prototype in the batch; the cost does not grow with it.
        reduction: ``"mean"`` over anchors with at least one positive (prototype copies
            count as ``n_w`` anchors each), ``"batch"`` over all anchors (those without a
            positive contribute 0 but are counted: SupContrast's convention, MATH.md §1.9)
            or ``"sum"``.
        class_average: the class-averaged denominator of BCL (§1.6); :func:`bcl_loss`.

    Returns:
        ``{"loss", "sample_anchors", "prototype_anchors"}``: the loss and the detached
        shares of sample anchors and prototype anchors (they add up to the loss). A batch
        in which no anchor has a positive has loss 0 (and zero gradient).
    """
    check_tau(tau)
    check_reduction(reduction)
    n_w = check_n_w(n_w)
    members, member_labels = flatten_views(features, labels)
    check_unit_rows(members, "features", dtype=features.dtype)
    if n_w > 0:
        if prototypes is None:
            raise LossInputError(
                f"n_w={n_w} needs prototypes (K, d); pass prototypes= or set n_w=0"
            )
        check_prototypes(prototypes, members.shape[1], member_labels)
    return _contrastive(members, member_labels, prototypes, n_w, tau, reduction, class_average)


def bcl_loss(features: Tensor, labels: Tensor, **options: Any) -> dict[str, Tensor]:
    """Balanced contrastive loss, class-averaged (MATH.md §1.6): SupCon whose denominator
    averages ``exp(s_ik)`` within each class of the other members before summing over
    classes. Options (``tau``, ``prototypes``, ``n_w``, ``reduction``) and return value as
    :func:`supcon_loss`."""
    return supcon_loss(features, labels, class_average=True, **options)


class _ContrastiveModule(TemperatureLoss):
    needs = LossNeeds(head="none", normalized=True, prototypes="optional")
    class_average = False

    def __init__(
        self,
        *,
        tau: float = 0.1,
        n_w: int = 0,
        prototypes: Tensor | None = None,
        reduction: Reduction = "mean",
    ) -> None:
        check_tau(tau)
        check_reduction(reduction)
        self.n_w = check_n_w(n_w)
        if self.n_w > 0:
            if prototypes is None:
                raise LossInputError(
                    f"n_w={self.n_w} needs prototypes from a geometry; "
                    "pass prototypes= or set n_w=0"
                )
            check_unit_rows(torch.as_tensor(prototypes), "prototypes")
        super().__init__(tau=tau, reduction=reduction, prototypes=prototypes)

    def forward(
        self, features: Tensor, labels: Tensor, *, logits: Tensor | None = None
    ) -> dict[str, Tensor]:
        members, member_labels = flatten_views(features, labels)
        return _contrastive(
            F.normalize(members, dim=-1),
            member_labels,
            self.prototypes,
            self.n_w,
            self.tau,
            self.reduction,
            self.class_average,
        )

    def extra_repr(self) -> str:
        return f"tau={self.tau}, n_w={self.n_w}, reduction={self.reduction!r}"


@LOSSES.register("supcon")
class SupCon(_ContrastiveModule):
    """SupCon on L2-normalised features (normalised here), with ``n_w`` copies of the
    fixed ``prototypes`` (a buffer) when ``n_w > 0``. See :func:`supcon_loss`."""


@LOSSES.register("bcl")
class BCL(_ContrastiveModule):
    """Class-averaged balanced contrastive loss on L2-normalised features, optionally with
    prototypes. See :func:`bcl_loss`."""

    class_average = True
