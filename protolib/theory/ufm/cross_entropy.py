"""Simulation 1: CE + λ‖W‖_F² with free features in a disc, against Corollary 2 (MATH.md §5.1)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor

from protolib.theory.bounds import ce_l2_bound
from protolib.theory.ufm.core import (
    DTYPE,
    Tables,
    UFMResult,
    balanced_labels,
    best_fit,
    on_circle,
    random_angles,
)


# Longer than 60 lines only through its docstring (it documents every quantity of the
# table); the code itself is under 60 lines.
def ce_l2(
    lams: Iterable[float] = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1),
    num_classes: int = 3,
    points_per_class: int = 100,
    rho: float = 1.0,
    seed: int = 0,
    *,
    starts: int = 4,
    max_steps: int = 100,
    iters_per_step: int = 50,
) -> UFMResult:
    """CE + weight decay on free features in the disc of radius ``ρ`` in R² (MATH.md §5.1).

    Minimises ``(1/N) Σ_i −log softmax(W h_i)_{y_i} + λ‖W‖_F²`` (no bias) over the
    classifier ``W`` (K×2) and the embeddings ``‖h_i‖ ≤ ρ``. For ``W ≠ 0`` the loss of
    each ``h_i`` decreases along some direction whenever ``h_i`` is interior, so the
    minimiser lies on the boundary circle; the embeddings are therefore parameterised as
    ``h_i = ρ (cos θ_i, sin θ_i)`` and the angles ``θ_i`` optimised with ``W``. Every
    ``λ`` takes the best of the same ``starts`` seeded random starts (uniform angles,
    ``W ~ 0.1·N(0, 1)``).

    Table (setting ``"lambda=<λ>"``): ``attained`` (the final loss), ``bound`` (Corollary 2,
    :func:`protolib.theory.bounds.ce_l2_bound`), ``gap = attained − bound`` (≥ 0, and 0 at
    the optimum), ``rel_gap = gap/|bound|``, ``mean_w_norm`` (mean of ``‖w_y‖``),
    ``r_star`` (the row norm at the bound), ``w_norm_rel_error`` (``|mean_w_norm −
    r*|/r*``), ``within_gamma_min``, ``class_mean_gamma_<i>_<j>``,
    ``class_mean_gamma_target``, ``class_mean_gamma_max_error``, ``delta_g_etf``,
    ``starts``, ``best_start``, ``starts_at_best``.

    Final: ``labels`` (N,), and per ``λ`` ``"lambda=<λ>/embeddings"`` (N, 2),
    ``"lambda=<λ>/classifier"`` (K, 2). Trace: the loss per step (quantity ``"loss"``).
    """
    K = num_classes
    y = balanced_labels(K, points_per_class)
    out, final = Tables("ce_l2"), {"labels": y.numpy()}

    def draw(generator: torch.Generator) -> list[Tensor]:
        angles = random_angles(y.numel(), generator)
        return [angles, 0.1 * torch.randn(K, 2, generator=generator, dtype=DTYPE)]

    for lam in lams:
        lam = float(lam)
        setting = f"lambda={lam:g}"

        def objective(params: list[Tensor], lam: float = lam) -> Tensor:
            angles, weight = params
            logits = on_circle(angles, rho) @ weight.T
            return F.cross_entropy(logits, y) + lam * weight.square().sum()

        best, info = best_fit(objective, draw, starts, seed, max_steps, iters_per_step)
        bound, r_star = ce_l2_bound(K, rho, lam)
        h, w = on_circle(best.params[0], rho), best.params[1]
        mean_w_norm = float(w.norm(dim=1).mean())
        out.add(setting, "attained", best.loss)
        out.add(setting, "bound", bound)
        out.add(setting, "gap", best.loss - bound)
        out.add(setting, "rel_gap", (best.loss - bound) / abs(bound))
        out.add(setting, "mean_w_norm", mean_w_norm)
        out.add(setting, "r_star", r_star)
        out.add(setting, "w_norm_rel_error", abs(mean_w_norm - r_star) / r_star)
        out.add_gamma_checks(setting, h, y, K)
        out.add_fit(setting, best, info)
        final[f"{setting}/embeddings"] = h.numpy()
        final[f"{setting}/classifier"] = w.numpy()
    return out.result(final)
