"""The large-``n_w`` limit of SupCon with fixed prototypes (MATH.md §1.5)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from protolib.losses.base import (
    LossNeeds,
    Reduction,
    TemperatureLoss,
    check_prototypes,
    check_reduction,
    check_tau,
    check_unit_rows,
    flatten_views,
)
from protolib.registry import LOSSES

#: ``batch`` (MATH.md §1.9) is refused: in the limit every member has a positive (its
#: prototype) and the ``n_w·K`` prototype anchors it would count grow without bound
LIMIT_REDUCTIONS = ("mean", "sum")
_NO_BATCH = (
    " ('batch' has no large-n_w limit: it counts the n_w·K prototype anchors; "
    "'mean' divides by the members)"
)


def _limit_terms(
    members: Tensor, labels: Tensor, prototypes: Tensor, tau: float
) -> dict[str, Tensor]:
    """Per-member terms of L∞: ``ce``, ``align`` and ``prototype_anchors`` (all ``(N,)``)."""
    prototypes = prototypes.detach().to(dtype=members.dtype, device=members.device)
    logits = members @ prototypes.T / tau  # (N, K): <h_i, w_c>/τ
    own = logits.gather(1, labels.unsqueeze(1)).squeeze(1)
    ce = torch.logsumexp(logits, dim=1) - own
    # log(A_c + e^{1/τ}) with A_c = Σ_{c'≠c} exp(<w_c, w_c'>/τ)
    proto_logits = (prototypes @ prototypes.T / tau).fill_diagonal_(1.0 / tau)
    log_denominator = torch.logsumexp(proto_logits, dim=1)  # (K,)
    anchors = torch.exp(logits - log_denominator).sum(dim=1)
    return {"ce": ce, "align": -own, "prototype_anchors": anchors}


def _limit_loss(
    features: Tensor,
    labels: Tensor,
    prototypes: Tensor,
    tau: float,
    reduction: str,
    exact: bool,
    checked: bool,
) -> dict[str, Tensor]:
    members, member_labels = flatten_views(features, labels)
    if checked:
        check_tau(tau)
        check_reduction(reduction, LIMIT_REDUCTIONS, why=_NO_BATCH * (reduction == "batch"))
        check_unit_rows(members, "features", dtype=features.dtype)
        check_prototypes(prototypes, members.shape[1], member_labels)
    else:
        members = F.normalize(members, dim=-1)
    terms = _limit_terms(members, member_labels, prototypes, tau)
    if not exact:
        del terms["prototype_anchors"]
    scale = members.shape[0] if reduction == "mean" else 1
    parts = {name: term.sum() / scale for name, term in terms.items()}
    out = {"loss": sum(parts.values())}
    out.update({name: value.detach() for name, value in parts.items()})
    return out


def supcon_limit_loss(
    features: Tensor,
    labels: Tensor,
    *,
    prototypes: Tensor,
    tau: float = 0.1,
    reduction: Reduction = "mean",
    exact: bool = True,
) -> dict[str, Tensor]:
    """The exact ``n_w → ∞`` limit of SupCon with prototypes, additive constants dropped
    (MATH.md §1.5)::

        L∞ = Σ_i [ −log softmax_c(<h_i,w_c>/τ)_{y_i} − <h_i,w_{y_i}>/τ
                   + Σ_c exp(<h_i,w_c>/τ) / (A_c + e^{1/τ}) ]

    Args:
        features: ``(n, d)`` or ``(n, V, d)`` unit rows (as :func:`supcon_loss`).
        labels: ``(n,)`` int64 in ``0..K−1``.
        prototypes: ``(K, d)`` unit rows; no gradient flows into them.
        tau: temperature.
        reduction: ``"mean"`` over members or ``"sum"`` (the limit as stated); not
            ``"batch"``, which has no limit (:data:`LIMIT_REDUCTIONS`).
        exact: ``False`` drops the prototype-anchor term (:func:`supcon_limit_paper_loss`).

    Returns:
        ``{"loss", "ce", "align", "prototype_anchors"}`` (the three terms, detached;
        without ``prototype_anchors`` when not ``exact``).
    """
    return _limit_loss(features, labels, prototypes, tau, reduction, exact=exact, checked=True)


def supcon_limit_paper_loss(features: Tensor, labels: Tensor, **options: Any) -> dict[str, Tensor]:
    """The limit as the prototype study's Proposition 1 states it: CE with the fixed
    classifier ``W/τ`` on normalised embeddings plus the alignment ``−<h_i,w_{y_i}>/τ``,
    without the prototype-anchor term of :func:`supcon_limit_loss` (MATH.md §1.5).

    Options (``prototypes``, ``tau``, ``reduction``) as :func:`supcon_limit_loss`; returns
    ``{"loss", "ce", "align"}``."""
    return supcon_limit_loss(features, labels, exact=False, **options)


class _LimitModule(TemperatureLoss):
    needs = LossNeeds(head="none", normalized=True, prototypes="yes")
    exact = True

    def __init__(
        self, *, prototypes: Tensor, tau: float = 0.1, reduction: Reduction = "mean"
    ) -> None:
        check_tau(tau)
        check_reduction(reduction, LIMIT_REDUCTIONS, why=_NO_BATCH * (reduction == "batch"))
        check_unit_rows(torch.as_tensor(prototypes), "prototypes")
        super().__init__(tau=tau, reduction=reduction, prototypes=prototypes)

    def forward(
        self, features: Tensor, labels: Tensor, *, logits: Tensor | None = None
    ) -> dict[str, Tensor]:
        prototypes = self._require_prototypes(type(self).__name__)
        return _limit_loss(
            features, labels, prototypes, self.tau, self.reduction, self.exact, checked=False
        )

    def extra_repr(self) -> str:
        return f"tau={self.tau}, reduction={self.reduction!r}"


@LOSSES.register("supcon_limit")
class SupConLimit(_LimitModule):
    """Exact large-``n_w`` limit of prototype SupCon. See :func:`supcon_limit_loss`."""


@LOSSES.register("supcon_limit_paper")
class SupConLimitPaper(_LimitModule):
    """The limit as published (no prototype-anchor term). See
    :func:`supcon_limit_paper_loss`."""

    exact = False
