"""Simulation 2: full-batch SupCon on the unit circle collapses to a simplex (MATH.md §5.2)."""

from __future__ import annotations

import math

import numpy as np
from torch import Tensor

from protolib.geometry import delta_g, gamma_distributions, target_gram
from protolib.losses.supcon import supcon_loss
from protolib.theory.ufm.core import (
    Tables,
    UFMResult,
    angle_starts,
    balanced_labels,
    best_fit,
    on_circle,
)


# Longer than 60 lines only through its docstring (it documents every quantity of the
# table); the code itself is under 60 lines.
def supcon_circle(
    num_classes: int = 3,
    points_per_class: int = 100,
    tau: float = 0.1,
    steps: int = 100,
    seed: int = 0,
    *,
    starts: int = 3,
    iters_per_step: int = 10,
) -> UFMResult:
    """Full-batch SupCon (MATH.md §1.3, :func:`protolib.losses.supcon.supcon_loss`, mean
    over anchors) of ``K × points_per_class`` free points on the unit circle, from seeded
    uniformly random angles (MATH.md §5.2).

    The angles are the parameters; L-BFGS runs up to ``steps`` outer steps of
    ``iters_per_step`` iterations each and stops early once a step gains nothing; the
    best of ``starts`` random starts is kept. The minimiser collapses every class to a
    point and the points to a regular simplex, where every anchor's loss is
    ``log(n − 1 + (N − n) exp(−K/((K−1)τ)))`` (``simplex_loss``).

    Table (setting ``"tau=<τ>"``): ``final_loss``, ``simplex_loss``, ``gap`` (their
    difference), ``within_gamma_min`` (min over points of ``γ(h_i, μ_{y_i})`` → 1),
    ``class_mean_gamma_<i>_<j>`` per pair (→ ``class_mean_gamma_target`` =
    ``simplex_gamma(K)``), ``class_mean_gamma_max_error``, ``delta_g_etf`` (→ 0),
    ``steps`` (outer steps taken), ``starts``, ``best_start``, ``starts_at_best``.

    Final: ``embeddings`` (N, 2), ``labels`` (N,), ``angles`` (N,), ``angles_history``
    (steps taken + 1, N) — the unwrapped angles at the start and after every step (take
    them mod 2π to plot). Trace: ``loss``, ``within_gamma_min`` and ``delta_g_etf`` per step.
    """
    setting = f"tau={tau:g}"
    K = num_classes
    y = balanced_labels(K, points_per_class)
    N = y.numel()
    etf = target_gram("etf", K)

    def objective(params: list[Tensor]) -> Tensor:
        return supcon_loss(on_circle(params[0]), y, tau=tau)["loss"]

    def monitor(step: int, loss: float, params: list[Tensor]) -> list[tuple[str, float]]:
        h = on_circle(params[0])
        within = float(gamma_distributions(h, y)["within"].min())
        return [("within_gamma_min", within), ("delta_g_etf", delta_g(h, y, etf))]

    best, info = best_fit(
        objective,
        angle_starts(N),
        starts,
        seed,
        steps,
        iters_per_step,
        monitor=monitor,
        keep_history=True,
    )
    angles = best.params[0]
    h = on_circle(angles)
    n = points_per_class
    simplex_loss = math.log(n - 1 + (N - n) * math.exp(-K / ((K - 1) * tau)))
    out = Tables("supcon_circle")
    out.add(setting, "final_loss", best.loss)
    out.add(setting, "simplex_loss", simplex_loss)
    out.add(setting, "gap", best.loss - simplex_loss)
    out.add_gamma_checks(setting, h, y, K)
    out.add(setting, "steps", len(best.history) - 1)
    out.add_fit(setting, best, info)
    final = {
        "embeddings": h.numpy(),
        "labels": y.numpy(),
        "angles": angles.numpy().copy(),
        "angles_history": np.stack(best.history),
    }
    return out.result(final)
