"""Simulation 3: SupCon summed over every multiset batch, exactly, against Theorem 2
(MATH.md §5.3), and the batched multiset loss it needs."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from protolib.theory.bounds import supcon_lower_bound
from protolib.theory.ufm.core import (
    DTYPE,
    Tables,
    UFMResult,
    angle_starts,
    balanced_labels,
    best_fit,
    on_circle,
)


def multiset_counts(num_items: int, size: int) -> np.ndarray:
    """Every multiset of ``size`` elements drawn from ``num_items`` items, as count vectors.

    Returns ``(C(num_items + size − 1, size), num_items)`` int64, rows summing to
    ``size``, in lexicographic order of the count vectors. Built column by column
    (vectorised, no per-multiset Python loop)."""
    if num_items < 1 or size < 0:
        raise ValueError(f"need num_items >= 1 and size >= 0; got {num_items}, {size}")
    rows = np.zeros((1, 0), dtype=np.int64)
    remaining = np.array([size], dtype=np.int64)
    for _ in range(num_items - 1):
        choices = remaining + 1  # this item occurs 0..remaining times
        parent = np.repeat(np.arange(rows.shape[0]), choices)
        starts = np.repeat(np.cumsum(choices) - choices, choices)
        count = np.arange(parent.size, dtype=np.int64) - starts
        rows = np.concatenate([rows[parent], count[:, None]], axis=1)
        remaining = remaining[parent] - count
    return np.concatenate([rows, remaining[:, None]], axis=1)


def _copies(labels: Tensor, counts: Tensor, dtype: torch.dtype, device: torch.device):
    """What both multiset losses derive from the labels and counts alone: the counts ``c``
    as ``dtype``, the same-class and off-diagonal masks, ``(c − 1)⁺`` (copies of an anchor's
    own member among the others), ``P_ma = Σ_t P_at`` and whether anchor ``a`` of batch
    ``m`` counts (``c_ma > 0`` and ``P_ma > 0``)."""
    c = counts.to(device=device, dtype=dtype)
    same = (labels.unsqueeze(0) == labels.unsqueeze(1)).to(device=device, dtype=dtype)
    off = 1.0 - torch.eye(c.shape[1], dtype=dtype, device=device)
    self_copies = (c - 1).clamp_min(0)
    positives = c @ (same * off).T + self_copies
    return c, same, off, self_copies, positives, (c > 0) & (positives > 0)


def multiset_supcon_losses(
    members: Tensor, labels: Tensor, counts: Tensor, *, tau: float
) -> Tensor:
    """SupCon summed over anchors (MATH.md §1.3, ``reduction="sum"``) of many batches
    that are multisets of the same ``n`` distinct members, in one batched computation.

    Batch ``m`` holds member ``t`` ``c_t = counts[m, t]`` times. As in
    :func:`protolib.losses.multiset.multiset_contrastive`, with ``M_at = c_t − [t = a]``
    copies of ``t`` among the others of an anchor copy of ``a`` and ``P_at = M_at [y_t =
    y_a]``::

        ℓ_a = log Σ_t M_at e^{s_at} − Σ_t P_at s_at / Σ_t P_at,   s_at = <z_a, z_t>/τ,

    and the batch loss is ``Σ_a c_a [Σ_t P_at > 0] ℓ_a``. The diagonal term enters as
    ``(c_a − 1) e^{s_aa}`` (never as a difference), and each row of the exponentials is
    shifted by its largest similarity, so the sums are exact and stable.

    Args:
        members: ``(n, d)`` unit rows (not checked).
        labels: ``(n,)`` int64.
        counts: ``(M, n)`` non-negative counts (any dtype).
        tau: temperature.

    Returns:
        ``(M,)`` batch losses (differentiable in ``members``).
    """
    similarity = members @ members.T / tau  # (n, n)
    c, same, off, self_copies, positives, counted = _copies(
        labels, counts, similarity.dtype, members.device
    )
    shift = similarity.detach().max(dim=1).values  # (n,)
    exps = torch.exp(similarity - shift.unsqueeze(1))
    denominator = c @ (exps * off).T + self_copies * exps.diagonal()
    positive_sum = c @ (similarity * same * off).T + self_copies * similarity.diagonal()
    safe_denominator = torch.where(counted, denominator, torch.ones_like(denominator))
    anchor = safe_denominator.log() + shift - positive_sum / positives.clamp_min(1)
    return torch.where(counted, c * anchor, torch.zeros_like(anchor)).sum(dim=1)


def multiset_supcon_mean(labels: Tensor, counts: Tensor, *, tau: float):
    """The mean over the multisets ``counts`` of :func:`multiset_supcon_losses`, as a
    function of the members alone, for an optimiser that evaluates it many times.

    What does not depend on the members is summed over the multisets once. With ``w_ma =
    c_ma [c_ma > 0, P_ma > 0]`` (``P_ma = Σ_t P_at``) and ``v_ma = w_ma / P_ma``::

        mean = (1/M) [Σ_ma w_ma log D_ma + Σ_a shift_a Σ_m w_ma
                      − Σ_at (s·same·off)_at Σ_m v_ma c_mt − Σ_a s_aa Σ_m v_ma (c_ma − 1)⁺],

    so an evaluation computes only the denominators, as one product ``D = [c | (c − 1)⁺]
    [(e·off)ᵀ; diag(e_aa)]`` (plus 1 where ``w_ma = 0``, whose logarithm is then finite and
    weighted by 0), their logarithms and one dot product. Equal to the mean of
    :func:`multiset_supcon_losses` to round-off, and so is its gradient
    (``tests/theory/test_ufm.py``).

    Returns:
        ``mean(members)``: ``members`` ``(n, d)`` unit rows, the scalar mean loss.
    """
    c, same, off, self_copies, positives, counted = _copies(
        labels, counts, torch.float64, counts.device
    )
    weight = torch.where(counted, c, torch.zeros_like(c))
    per_positive = weight / positives.clamp_min(1)
    shift_weight = weight.sum(dim=0)  # (n,)
    positive_weight = per_positive.T @ c * same * off  # (n, n)
    self_weight = (per_positive * self_copies).sum(dim=0)  # (n,)
    copies = torch.cat([c, self_copies], dim=1)  # (M, 2n)
    uncounted = (weight == 0).to(c.dtype)
    flat_weight = weight.flatten()
    size = c.shape[0]

    def mean(members: Tensor) -> Tensor:
        similarity = members @ members.T / tau
        shift = similarity.detach().max(dim=1).values
        exps = torch.exp(similarity - shift.unsqueeze(1))
        per_copy = torch.cat([(exps * off).T, torch.diag(exps.diagonal())])  # (2n, n)
        denominator = torch.addmm(uncounted, copies, per_copy)
        linear = (
            (shift * shift_weight).sum()
            - (similarity * positive_weight).sum()
            - (similarity.diagonal() * self_weight).sum()
        )
        return (torch.dot(flat_weight, denominator.log().flatten()) + linear) / size

    return mean


# Longer than 60 lines only through its docstring (it documents every quantity of the
# table); the code itself is under 60 lines.
def supcon_all_multisets(
    num_classes: int = 3,
    points_per_class: int = 4,
    batch_size: int = 9,
    rho: float = 2.0,
    seed: int = 0,
    *,
    starts: int = 1,
    max_steps: int = 100,
    iters_per_step: int = 50,
    bins: int = 40,
) -> UFMResult:
    """SupCon summed over anchors for every multiset batch of size ``b`` drawn from the
    ``N = K × points_per_class`` points, against Theorem 2 (MATH.md §5.3).

    The ``N`` points lie on the circle of radius ``ρ`` (no temperature; equivalently unit
    vectors with ``τ = 1/ρ²``) and their angles are optimised, from seeded uniformly
    random angles, to minimise the mean batch loss over all ``C(N+b−1, b)`` multisets
    (167 960 for ``N = 12``, ``b = 9``), computed exactly over the count vectors of
    :func:`multiset_counts` by :func:`multiset_supcon_mean` (4× faster than averaging
    :func:`multiset_supcon_losses`, which gives the final per-batch losses).
    The default ``ρ = 2`` (``ρ² = 4``, ``τ = 0.25``) keeps the problem well conditioned,
    so L-BFGS reaches the bound to round-off; one start suffices (checked on 30 seeds).

    Table (setting ``"rho=<ρ>"``): ``attained_mean``, ``bound_mean`` (Theorem 2 per batch,
    :func:`protolib.theory.bounds.supcon_lower_bound`), ``gap`` (their difference),
    ``rel_gap``, ``attained_total`` and ``bound_total`` (summed over all multisets),
    ``num_multisets``, ``within_gamma_min``, ``class_mean_gamma_<i>_<j>``,
    ``class_mean_gamma_target``, ``class_mean_gamma_max_error``, ``delta_g_etf``,
    ``starts``, ``best_start``, ``starts_at_best``; and the histogram of the final batch
    losses as quantity ``hist_count`` with setting ``"bin_centre=<c>"``.

    Final: ``embeddings`` (N, 2, radius ρ), ``labels`` (N,), ``angles`` (N,),
    ``batch_losses`` (M,) in the order of :func:`multiset_counts`, ``hist_counts`` (bins,),
    ``hist_edges`` (bins + 1,). Trace: the mean batch loss per step (``"loss"``).
    """
    setting = f"rho={rho:g}"
    K = num_classes
    y = balanced_labels(K, points_per_class)
    N = y.numel()
    tau = 1.0 / (rho * rho)
    counts = torch.from_numpy(multiset_counts(N, batch_size)).to(DTYPE)
    mean_loss = multiset_supcon_mean(y, counts, tau=tau)

    def objective(params: list[Tensor]) -> Tensor:
        return mean_loss(on_circle(params[0]))

    best, info = best_fit(objective, angle_starts(N), starts, seed, max_steps, iters_per_step)
    angles = best.params[0]
    h = on_circle(angles)
    batch_losses = multiset_supcon_losses(h, y, counts, tau=tau)
    bound = supcon_lower_bound(N, K, batch_size, rho)
    out = Tables("supcon_all_multisets")
    out.add(setting, "attained_mean", best.loss)
    out.add(setting, "bound_mean", bound)
    out.add(setting, "gap", best.loss - bound)
    out.add(setting, "rel_gap", (best.loss - bound) / abs(bound))
    out.add(setting, "attained_total", batch_losses.sum())
    bound_total = supcon_lower_bound(N, K, batch_size, rho, per_batch=False)
    out.add(setting, "bound_total", bound_total)
    out.add(setting, "num_multisets", counts.shape[0])
    out.add_gamma_checks(setting, h, y, K)
    out.add_fit(setting, best, info)
    losses = batch_losses.numpy()
    hist_counts, hist_edges = np.histogram(losses, bins=bins)
    for centre, count in zip((hist_edges[:-1] + hist_edges[1:]) / 2, hist_counts, strict=True):
        out.add(f"bin_centre={centre:.6g}", "hist_count", count)
    final = {
        "embeddings": (rho * h).numpy(),
        "labels": y.numpy(),
        "angles": angles.numpy().copy(),
        "batch_losses": losses,
        "hist_counts": hist_counts,
        "hist_edges": hist_edges,
    }
    return out.result(final)
