"""Supervised contrastive loss, optionally with ``n_w`` copies of fixed prototypes
(MATH.md §1.3–1.4), and its class-averaged variant BCL (§1.6); reductions ``mean``,
``batch`` and ``sum`` (§1.9); a dense and a blockwise path, and a process's share of a
batch gathered from several processes (§1.10)."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from protolib.losses.base import (
    LossInputError,
    LossNeeds,
    Reduction,
    Shard,
    TemperatureLoss,
    check_n_w,
    check_prototypes,
    check_reduction,
    check_tau,
    check_unit_rows,
    flatten_views,
)
from protolib.losses.multiset import (
    anchor_weights,
    multiset_contrastive,
    normaliser,
    reduce_anchors,
)
from protolib.registry import LOSSES

#: ``blockwise="auto"`` takes the blockwise path (MATH.md §1.10) from this many members on
#: (views and prototype rows included). Measured on a 2-core AMD EPYC CPU, one thread,
#: SupCon forward + backward in CPU seconds, blockwise ÷ dense: d = 128: 1.3 at 256, 1.0 at
#: 512 and 1024, 0.65–0.9 at 1536–2048, 0.38 at 4096; d = 8: 0.85 at 512, 0.8 at 1024.
BLOCKWISE_MIN_MEMBERS = 1024
#: the values of the ``blockwise`` option: ``"auto"``, ``True`` or ``False``
Blockwise = bool | Literal["auto"]


def check_blockwise(blockwise: Any) -> None:
    """``blockwise`` must be ``"auto"``, ``True`` or ``False``."""
    if not (
        blockwise is True
        or blockwise is False
        or (isinstance(blockwise, str) and blockwise == "auto")
    ):
        raise LossInputError(
            f"blockwise must be 'auto' (blockwise from {BLOCKWISE_MIN_MEMBERS} members on), "
            f"true or false; got {blockwise!r}"
        )


def _contrastive(
    members: Tensor,
    labels: Tensor,
    prototypes: Tensor | None,
    n_w: int,
    tau: float,
    reduction: str,
    class_average: bool,
    blockwise: Blockwise,
    own: tuple[slice, bool] | None = None,
) -> dict[str, Tensor]:
    """Batch loss of flattened members plus ``n_w`` copies of each prototype (unchecked).

    ``own``: a process's share (MATH.md §1.10): ``(its sample member rows, whether it
    takes the prototype anchors)``; only those anchors are computed, against every member,
    divided by the normaliser of the whole batch: blockwise unless ``blockwise`` is False
    (then the dense reference computes every anchor and keeps these). ``None``: every
    anchor, on the path ``blockwise`` picks.
    """
    n = members.shape[0]
    multiplicity = torch.ones(n, dtype=members.dtype, device=members.device)
    if n_w > 0 and prototypes is not None:
        prototypes = prototypes.detach().to(dtype=members.dtype, device=members.device)
        K = prototypes.shape[0]
        members = torch.cat([members, prototypes])
        labels = torch.cat([labels, torch.arange(K, device=labels.device)])
        multiplicity = torch.cat([multiplicity, multiplicity.new_full((K,), float(n_w))])
    if own is None:
        if blockwise == "auto":
            blockwise = members.shape[0] >= BLOCKWISE_MIN_MEMBERS
        loss, weight = multiset_contrastive(
            members,
            labels,
            multiplicity,
            tau=tau,
            class_average=class_average,
            blockwise=bool(blockwise),
        )
        groups = {"sample_anchors": slice(0, n), "prototype_anchors": slice(n, None)}
        return reduce_anchors(loss, weight, reduction, groups, multiplicity=multiplicity)
    rows, with_prototypes = own
    anchors = torch.arange(rows.start, rows.stop, device=members.device)
    own_samples = anchors.shape[0]
    if with_prototypes:
        anchors = torch.cat([anchors, torch.arange(n, members.shape[0], device=members.device)])
    loss, weight = multiset_contrastive(
        members,
        labels,
        multiplicity,
        tau=tau,
        class_average=class_average,
        anchors=anchors,
        blockwise=blockwise is not False,
    )
    _, every_weight = anchor_weights(labels, multiplicity)
    scale = normaliser(reduction, every_weight, multiplicity)
    groups = {
        "sample_anchors": slice(0, own_samples),
        "prototype_anchors": slice(own_samples, None),
    }
    return reduce_anchors(loss, weight, reduction, groups, scale=scale)


def supcon_loss(
    features: Tensor,
    labels: Tensor,
    *,
    tau: float = 0.1,
    prototypes: Tensor | None = None,
    n_w: int = 0,
    reduction: Reduction = "mean",
    class_average: bool = False,
    blockwise: Blockwise = "auto",
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
        blockwise: ``True``: the blockwise path (§1.10: no ``N×N`` tensor, memory
            ``O(N·d)`` plus a block); ``False``: the dense reference path (one ``N×N``
            similarity matrix); ``"auto"``: blockwise from :data:`BLOCKWISE_MIN_MEMBERS`
            members on (``N = n·V`` plus ``K`` prototype rows when ``n_w > 0``). Both give
            the same values and gradients up to round-off.

    Returns:
        ``{"loss", "sample_anchors", "prototype_anchors"}``: the loss and the detached
        shares of sample anchors and prototype anchors (they add up to the loss). A batch
        in which no anchor has a positive has loss 0 (and zero gradient).
    """
    check_tau(tau)
    check_reduction(reduction)
    check_blockwise(blockwise)
    n_w = check_n_w(n_w)
    members, member_labels = flatten_views(features, labels)
    check_unit_rows(members, "features", dtype=features.dtype)
    if n_w > 0:
        if prototypes is None:
            raise LossInputError(
                f"n_w={n_w} needs prototypes (K, d); pass prototypes= or set n_w=0"
            )
        check_prototypes(prototypes, members.shape[1], member_labels)
    return _contrastive(
        members, member_labels, prototypes, n_w, tau, reduction, class_average, blockwise
    )


def bcl_loss(features: Tensor, labels: Tensor, **options: Any) -> dict[str, Tensor]:
    """Balanced contrastive loss, class-averaged (MATH.md §1.6): SupCon whose denominator
    averages ``exp(s_ik)`` within each class of the other members before summing over
    classes. Options (``tau``, ``prototypes``, ``n_w``, ``reduction``, ``blockwise``) and
    return value as :func:`supcon_loss`."""
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
        blockwise: Blockwise = "auto",
    ) -> None:
        check_tau(tau)
        check_reduction(reduction)
        check_blockwise(blockwise)
        self.blockwise = blockwise
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
        return self._loss(features, labels, self.blockwise)

    def forward_shard(
        self, features: Tensor, labels: Tensor, *, logits: Tensor | None = None, shard: Shard
    ) -> dict[str, Tensor]:
        """This process's share (MATH.md §1.10; :meth:`Loss.forward_shard`): the loss of
        its own anchors — the member rows of its samples (sample ``i``'s ``V`` views are
        rows ``i·V … i·V + V − 1``), and on shard 0 the prototype anchors — against every
        member (blockwise unless ``blockwise`` is False), divided by the normaliser of
        the whole batch; components likewise as shares."""
        views = features.shape[1] if features.ndim == 3 else 1
        rows = shard.rows(features.shape[0])
        own = (slice(rows.start * views, rows.stop * views), shard.index == 0)
        return self._loss(features, labels, self.blockwise, own)

    def _loss(
        self,
        features: Tensor,
        labels: Tensor,
        blockwise: Blockwise,
        own: tuple[slice, bool] | None = None,
    ) -> dict[str, Tensor]:
        """The loss on normalised members (of every anchor, or of ``own``'s)."""
        members, member_labels = flatten_views(features, labels)
        return _contrastive(
            F.normalize(members, dim=-1),
            member_labels,
            self.prototypes,
            self.n_w,
            self.tau,
            self.reduction,
            self.class_average,
            blockwise,
            own,
        )

    def extra_repr(self) -> str:
        return (
            f"tau={self.tau}, n_w={self.n_w}, reduction={self.reduction!r}, "
            f"blockwise={self.blockwise!r}"
        )


@LOSSES.register("supcon")
class SupCon(_ContrastiveModule):
    """SupCon on L2-normalised features (normalised here), with ``n_w`` copies of the
    fixed ``prototypes`` (a buffer) when ``n_w > 0``. See :func:`supcon_loss`."""


@LOSSES.register("bcl")
class BCL(_ContrastiveModule):
    """Class-averaged balanced contrastive loss on L2-normalised features, optionally with
    prototypes. See :func:`bcl_loss`."""

    class_average = True
