"""Contrastive losses over a batch with multiplicities (MATH.md §1.3, §1.4, §1.6).

A batch is a list of distinct *members* ``z_t`` (unit rows) with labels ``y_t`` and
multiplicities ``m_t`` — a sample has ``m = 1``, a fixed prototype repeated ``n_w`` times
has ``m = n_w``. The loss of the batch equals SupCon (or BCL) on the literally replicated
multiset, but costs one ``N×N`` similarity matrix for ``N`` distinct members, whatever
the multiplicities.

For an anchor copy of member ``a``, every member ``t`` occurs ``M_at = m_t − [t = a]``
times among the *other* members (the anchor removes itself once). Then

    ℓ_a = log Σ_t M_at e^{s_at} − (Σ_t P_at s_at) / Σ_t P_at,   P_at = M_at [y_t = y_a],

and all ``m_a`` copies of ``a`` give the same ``ℓ_a``. BCL divides each term of the
denominator by the size ``n_{a,y_t} = Σ_{t': y_t' = y_t} M_at'`` of its class among the
other members. Anchors without positives (``Σ_t P_at = 0``) contribute 0; the ``mean``
reduction does not count them, ``batch`` does (MATH.md §1.9).

Two paths compute the same values and gradients: the dense one (the reference: one
``N×N`` similarity matrix) and the blockwise one (MATH.md §1.10), which never builds an
``N×N`` tensor: the log-denominator comes from :func:`protolib.losses.blockwise.
log_denominator`, and everything else is ``O(N·d)``: ``Σ_t P_at = S_{y_a} − 1`` from the
classes' total multiplicities ``S_c``, and ``Σ_t P_at s_at = <z_a, C_{y_a}>/τ − s_aa`` from
the class sums ``C_c = Σ_{t: y_t = c} m_t z_t``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from protolib.losses.blockwise import class_totals, log_denominator


def multiset_contrastive(
    members: Tensor,
    labels: Tensor,
    multiplicity: Tensor,
    *,
    tau: float,
    class_average: bool = False,
    anchors: Tensor | None = None,
    blockwise: bool = False,
    block_rows: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-anchor losses and anchor weights of a batch with multiplicities.

    Args:
        members: ``(N, d)`` unit rows (not checked here).
        labels: ``(N,)`` int64.
        multiplicity: ``(N,)`` counts ``m_t ≥ 1`` (float or int).
        tau: temperature.
        class_average: BCL's class-averaged denominator (MATH.md §1.6) instead of SupCon's.
        anchors: ``(A,)`` int64 indices of the members taken as anchors (default: all);
            every member is a column either way, and the gradient reaches every member.
        blockwise: the blockwise path (MATH.md §1.10, no ``N×N`` tensor) instead of the
            dense reference.
        block_rows: anchor rows per block of the blockwise path (default: from an element
            budget, :func:`protolib.losses.blockwise.block_rows_for`).

    Returns:
        ``(loss, weight)``, both ``(A,)``: ``loss[i]`` is ``ℓ_a`` of anchor ``a =
        anchors[i]`` (0 where it has no positive) and ``weight[i] = m_a · [a has a
        positive]``, so the batch sum is ``(weight * loss).sum()`` and the mean divides it
        by the weight of all anchors (:func:`anchor_weights`).

    Cost of the dense path: one ``N×N`` similarity matrix and a few elementwise passes over
    it; the constants are row vectors (``log m_t``) plus a diagonal correction, so nothing
    else of size ``N×N`` is built besides the label-equality mask.
    """
    # in the members' own precision, also under autocast (a training loop's bfloat16
    # autocast would otherwise run the dense path's similarity matmul in bfloat16)
    with torch.autocast(members.device.type, enabled=False):
        if blockwise:
            return _blockwise(
                members, labels, multiplicity, tau, class_average, anchors, block_rows
            )
        loss, weight = _dense(members, labels, multiplicity, tau, class_average)
    if anchors is not None:
        return loss[anchors], weight[anchors]
    return loss, weight


def _dense(
    members: Tensor, labels: Tensor, multiplicity: Tensor, tau: float, class_average: bool
) -> tuple[Tensor, Tensor]:
    """The reference: every anchor, from one ``N×N`` similarity matrix."""
    n = members.shape[0]
    similarity = (members @ members.T) / tau  # s_at, (N, N)
    if n < 2:  # no other member: no positive, and an empty denominator
        zero = similarity.diagonal() * 0
        return zero, zero.detach()
    with torch.no_grad():
        m = multiplicity.to(dtype=similarity.dtype, device=similarity.device)
        same = labels.unsqueeze(0) == labels.unsqueeze(1)  # [y_t = y_a]
        same_f = same.to(m.dtype)
        count = same_f @ m - 1  # Σ_t P_at: same-label members among the others
        # log M_at = log m_t off the diagonal and log(m_a − 1) on it (the anchor itself)
        column_log = m.log()
        self_log = (m - 1).log() - column_log  # −inf when m_a = 1
        if class_average:  # divide each term by its class size among the others
            class_size = same_f @ m  # Σ_{t': y_t' = y_t} m_t', per member t
            column_other = column_log - class_size.log()
            column_same = column_log - (class_size - 1).clamp_min(1).log()
        weight = m * (count > 0)
    if class_average:
        logits = similarity + torch.where(same, column_same, column_other)
    else:
        logits = similarity + column_log
    logits.diagonal().add_(self_log)
    log_denominator = torch.logsumexp(logits, dim=1)
    positive_sum = torch.where(same, similarity, 0.0) @ m - similarity.diagonal()
    loss = (log_denominator - positive_sum / count.clamp_min(1)) * (count > 0)
    return loss, weight


def anchor_weights(labels: Tensor, multiplicity: Tensor) -> tuple[Tensor, Tensor]:
    """``(count, weight)``, both ``(N,)``, in ``O(N)``: ``count[a] = Σ_t P_at = S_{y_a} −
    1`` (the other members with the anchor's label, with multiplicity) and ``weight[a] =
    m_a [count[a] > 0]`` (MATH.md §1.9: what ``mean`` divides by, summed)."""
    m = multiplicity.detach()
    classes, totals = class_totals(labels, m)
    count = totals[classes] - 1
    return count, m * (count > 0)


def _blockwise(
    members: Tensor,
    labels: Tensor,
    multiplicity: Tensor,
    tau: float,
    class_average: bool,
    anchors: Tensor | None,
    block_rows: int | None,
) -> tuple[Tensor, Tensor]:
    """The blockwise path (module docstring; MATH.md §1.10)."""
    n = members.shape[0]
    if anchors is None:
        anchors = torch.arange(n, device=members.device)
    m = multiplicity.detach().to(dtype=members.dtype, device=members.device)
    with torch.no_grad():
        count, weight = anchor_weights(labels, m)
        count, weight = count[anchors], weight[anchors]
    rows = members[anchors]
    if n < 2:  # no other member: no positive, and an empty denominator
        zero = rows.sum(dim=1) * 0
        return zero, zero.detach()
    ld = log_denominator(
        members,
        labels,
        m,
        tau=tau,
        class_average=class_average,
        anchors=anchors,
        block_rows=block_rows,
    )
    classes, class_sum = class_totals(labels, members * m.unsqueeze(1))  # C_c, with grad
    positive_sum = (
        (rows * class_sum[classes[anchors]]).sum(dim=1) - (rows * rows).sum(dim=1)
    ) / tau
    loss = (ld - positive_sum / count.clamp_min(1)) * (count > 0)
    return loss, weight


def normaliser(reduction: str, weight: Tensor, multiplicity: Tensor | None) -> Tensor:
    """What a reduction divides the weighted sum over anchors by (MATH.md §1.9):
    ``weight.sum()`` for ``"mean"`` (1 when no anchor has a positive), the anchors'
    multiplicities summed for ``"batch"`` (``multiplicity`` required), 1 for ``"sum"``.
    ``weight`` and ``multiplicity`` are those of *all* anchors of the batch."""
    if reduction == "mean":
        return weight.sum().clamp_min(1)
    if reduction == "batch":
        if multiplicity is None:
            raise ValueError("reduction 'batch' needs the multiplicities of all anchors")
        return multiplicity.to(weight.dtype).sum().clamp_min(1)
    return weight.new_ones(())


def reduce_anchors(
    loss: Tensor,
    weight: Tensor,
    reduction: str,
    groups: dict[str, slice] | None = None,
    *,
    multiplicity: Tensor | None = None,
    scale: Tensor | None = None,
) -> dict[str, Tensor]:
    """Reduce per-anchor losses (MATH.md §1.9): ``"mean"`` divides the weighted sum by the
    anchors that have a positive (``weight.sum()``; 0 when none has), ``"batch"`` by all
    anchors (``multiplicity.sum()``, required then: anchors without a positive count 0 in
    the sum and ``m_a`` here), ``"sum"`` not at all; ``scale``, when given, is the divisor
    instead (the global :func:`normaliser` when ``loss`` covers only some anchors).
    ``groups`` name slices of the anchors whose shares of the reduced loss are returned as
    detached components (they add up to ``"loss"``)."""
    weighted = weight * loss
    if scale is None:
        scale = normaliser(reduction, weight, multiplicity)
    out = {"loss": weighted.sum() / scale}
    for name, part in (groups or {}).items():
        out[name] = (weighted[part].sum() / scale).detach()
    return out
