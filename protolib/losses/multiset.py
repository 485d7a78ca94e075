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
"""

from __future__ import annotations

import torch
from torch import Tensor


def multiset_contrastive(
    members: Tensor,
    labels: Tensor,
    multiplicity: Tensor,
    *,
    tau: float,
    class_average: bool = False,
) -> tuple[Tensor, Tensor]:
    """Per-member anchor losses and anchor weights of a batch with multiplicities.

    Args:
        members: ``(N, d)`` unit rows (not checked here).
        labels: ``(N,)`` int64.
        multiplicity: ``(N,)`` counts ``m_t ≥ 1`` (float or int).
        tau: temperature.
        class_average: BCL's class-averaged denominator (MATH.md §1.6) instead of SupCon's.

    Returns:
        ``(loss, weight)``, both ``(N,)``: ``loss[a]`` is ``ℓ_a`` (0 where the anchor has
        no positive) and ``weight[a] = m_a · [a has a positive]``, so the batch sum is
        ``(weight * loss).sum()`` and the mean divides it by ``weight.sum()``.

    Cost: one ``N×N`` similarity matrix and a few elementwise passes over it; the
    constants are row vectors (``log m_t``) plus a diagonal correction, so nothing else of
    size ``N×N`` is built besides the label-equality mask.
    """
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


def reduce_anchors(
    loss: Tensor,
    weight: Tensor,
    reduction: str,
    groups: dict[str, slice] | None = None,
    *,
    multiplicity: Tensor | None = None,
) -> dict[str, Tensor]:
    """Reduce per-anchor losses (MATH.md §1.9): ``"mean"`` divides the weighted sum by the
    anchors that have a positive (``weight.sum()``; 0 when none has), ``"batch"`` by all
    anchors (``multiplicity.sum()``, required then: anchors without a positive count 0 in
    the sum and ``m_a`` here), ``"sum"`` not at all. ``groups`` name slices of the members
    whose shares of the reduced loss are returned as detached components (they add up to
    ``"loss"``)."""
    weighted = weight * loss
    if reduction == "mean":
        scale = weight.sum().clamp_min(1)
    elif reduction == "batch":
        if multiplicity is None:
            raise ValueError("reduction 'batch' needs the multiplicities of all anchors")
        scale = multiplicity.to(weighted.dtype).sum().clamp_min(1)
    else:
        scale = weight.new_ones(())
    out = {"loss": weighted.sum() / scale}
    for name, part in (groups or {}).items():
        out[name] = (weighted[part].sum() / scale).detach()
    return out
