"""Simulation 5: the minimiser of one batch's SupCon loss depends on the batch's labels
(the SC-vs-CE study's Fig. 5; MATH.md §5.5).

For a batch of ``b`` free points on the circle of radius ``ρ`` with given class sizes
``|B_y|``, two closed forms bracket the minimum of that batch's loss (summed over anchors,
MATH.md §1.3 with ``ρ² = 1/τ``):

- :func:`theorem2_batch_term` — the batch's term of Theorem 2 (MATH.md §4), which is the
  batch's loss at the collapsed regular simplex. Summed over every multiset it is the
  bound of Theorem 2, but for one batch it is *not* a lower bound: every batch whose
  classes are not all of one size has a lower minimum elsewhere.
- :func:`antipodal_batch_bound` — a true lower bound of one batch's loss (per anchor:
  Jensen over the positives, and no negative closer than the antipode), attained when at
  most two classes have members and both collapse to antipodal points.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from protolib.geometry import class_means
from protolib.losses.supcon import supcon_loss
from protolib.theory.ufm.core import Fit, Tables, UFMResult, angle_starts, best_fit, on_circle

#: the label configurations of the study's Fig. 5 (members per class, ``b = 9``, ``K = 3``)
LABEL_CONFIGURATIONS = ((7, 2, 0), (6, 2, 1), (5, 3, 1), (4, 4, 1), (7, 1, 1), (5, 2, 2), (3, 3, 3))
#: a class whose members all lie within this angle (radians) of their mean has collapsed
COLLAPSE_ANGLE = 1e-6


def _check_class_sizes(class_sizes: Sequence[int]) -> tuple[int, ...]:
    sizes = tuple(class_sizes)
    if (
        len(sizes) < 2
        or any(not isinstance(n, int | np.integer) or isinstance(n, bool) or n < 0 for n in sizes)
        or max(sizes) < 2
    ):
        raise ValueError(
            "class sizes must be at least 2 non-negative integers (members per class), one "
            f"of them >= 2 so that some anchor has a positive; got {sizes!r}"
        )
    return tuple(int(n) for n in sizes)


def _batch_terms(class_sizes: Sequence[int], decay: float) -> float:
    """``Σ_{y: |B_y| ≥ 2} |B_y| log(|B_y| − 1 + (b − |B_y|) · decay)``."""
    sizes = _check_class_sizes(class_sizes)
    b = sum(sizes)
    return sum(n * math.log(n - 1 + (b - n) * decay) for n in sizes if n >= 2)


def theorem2_batch_term(class_sizes: Sequence[int], rho: float) -> float:
    """One batch's term of Theorem 2 (MATH.md §4) for ``K = len(class_sizes)`` classes::

        Σ_{y: |B_y| ≥ 2} |B_y| log(|B_y| − 1 + (b − |B_y|) exp(−K ρ² / (K−1)))

    Summed over every multiset batch it is Theorem 2's bound (the sum over ``l`` of
    ``l · M_l · log(…)`` regrouped by batch). It equals the batch's SupCon loss at the
    collapsed regular simplex; it is not a lower bound for one batch (MATH.md §5.5)."""
    K = len(class_sizes)
    return _batch_terms(class_sizes, math.exp(-K * rho * rho / (K - 1)))


def antipodal_batch_bound(class_sizes: Sequence[int], rho: float) -> float:
    """A lower bound of one batch's SupCon loss on the sphere of radius ``ρ``::

        Σ_{y: |B_y| ≥ 2} |B_y| log(|B_y| − 1 + (b − |B_y|) exp(−2ρ²))

    Per anchor ``i`` with positives ``P`` and negatives ``N``: Jensen gives
    ``Σ_P e^{s_ij} ≥ |P| e^{s̄}`` (``s̄`` the mean positive similarity), so
    ``ℓ_i ≥ log(|P| + Σ_N e^{s_in − s̄})``, and ``s_in − s̄ ≥ −2ρ²``. Equality needs every
    class collapsed and every negative antipodal to the anchor, which is possible (and
    the bound attained) when at most two classes have members or only one class has more
    than one member."""
    return _batch_terms(class_sizes, math.exp(-2 * rho * rho))


def _pair_angles(pairs: Tensor) -> Tensor:
    """Angles in ``[0, π]`` between ``u = pairs[0]`` and ``v = pairs[1]`` (vectors of R²,
    shape ``(2, …, 2)``), as ``atan2(|u × v|, u · v)``: exact near 0 and π, where
    ``arccos`` loses half the digits."""
    u, v = pairs.unbind(0)
    cross = u[..., 0] * v[..., 1] - u[..., 1] * v[..., 0]
    return torch.atan2(cross.abs(), (u * v).sum(-1))


def _simplex_loss(sizes: tuple[int, ...], labels: Tensor, tau: float) -> float:
    """The batch's loss with class ``c`` collapsed at angle ``π/2 + 2πc/K`` (``K ≤ 3``:
    the regular simplex in R²)."""
    K = len(sizes)
    angles = math.pi / 2 + 2 * math.pi * labels.to(torch.float64) / K
    return float(supcon_loss(on_circle(angles), labels, tau=tau, reduction="sum")["loss"])


def _add_geometry(out: Tables, setting: str, h: Tensor, labels: Tensor, K: int) -> np.ndarray:
    """Angles and Gram of the class means present, collapse; returns the (K, K) Gram
    (NaN where a class is absent)."""
    means = class_means(h, labels, K, allow_missing=True)
    present = [c for c in range(K) if bool((labels == c).any())]
    for i, a in enumerate(present):
        for c in present[i:]:
            out.add(setting, f"class_mean_gram_{a}_{c}", means[a] @ means[c])
            if c != a:
                angle = _pair_angles(torch.stack([means[a], means[c]]))
                out.add(setting, f"class_mean_angle_{a}_{c}", angle)
    within = _pair_angles(torch.stack([h, means[labels]])).max()
    out.add(setting, "within_angle_max", within)
    out.add(setting, "collapsed", float(within < COLLAPSE_ANGLE))
    return (means @ means.T).numpy()


def _canonical(angles: Tensor, labels: Tensor, sizes: tuple[int, ...]) -> Tensor:
    """The angles rotated, and mirrored if need be (neither changes the loss), so that the
    largest class's mean points up and the first other class present lies on the left,
    as the simplex's class 1 does: the configurations then plot side by side."""
    largest = int(np.argmax(sizes))
    mean = on_circle(angles[labels == largest]).mean(dim=0)
    angles = torch.remainder(angles - torch.atan2(mean[1], mean[0]) + math.pi / 2, 2 * math.pi)
    other = next((c for c, n in enumerate(sizes) if n and c != largest), None)
    if other is not None and float(on_circle(angles[labels == other]).mean(dim=0)[0]) > 0:
        angles = torch.remainder(math.pi - angles, 2 * math.pi)
    return angles


def _fit_batch(
    labels: Tensor, tau: float, seed: int, starts: int, steps: tuple[int, int]
) -> tuple[Fit, dict[str, float]]:
    """The best of ``starts`` L-BFGS fits of the batch's summed SupCon loss."""

    def objective(params: list[Tensor]) -> Tensor:
        return supcon_loss(on_circle(params[0]), labels, tau=tau, reduction="sum")["loss"]

    return best_fit(objective, angle_starts(labels.numel()), starts, seed, *steps)


# Longer than 60 lines only through its docstring (it documents every quantity of the
# table); the code itself is under 60 lines.
def batchwise_minimisers(
    configurations: Sequence[Sequence[int]] = LABEL_CONFIGURATIONS,
    rho: float = 2.0,
    seed: int = 0,
    *,
    starts: int = 3,
    max_steps: int = 100,
    iters_per_step: int = 50,
) -> UFMResult:
    """The minimiser of one batch's SupCon loss for each label configuration (MATH.md §5.5;
    the SC-vs-CE study's Fig. 5).

    A configuration lists the members per class, e.g. ``(7, 2, 0)``: ``b = 9`` points, ``K =
    3`` classes, one absent. The ``b`` points are free on the circle of radius ``ρ`` (no
    temperature; equivalently unit vectors with ``τ = 1/ρ²``); their angles minimise the
    batch's SupCon loss summed over anchors (MATH.md §1.3, anchors without a positive
    contribute 0), from the best of ``starts`` seeded uniformly random starts, every
    configuration from the same ``seed``. The default ``ρ = 2`` (``τ = 0.25``) is that of
    the all-multisets simulation (§5.3), whose batches these are.

    The minimiser depends on the batch: ``(3, 3, 3)`` collapses to the simplex and attains
    :func:`theorem2_batch_term`; with a class absent the two present classes sit
    antipodal (not at 120°) and the loss falls below that term, down to
    :func:`antipodal_batch_bound`. So no single configuration minimises every batch,
    which is why Theorem 2 bounds the sum over batches and not each batch.

    Table (setting ``"counts=<n_0>,<n_1>,…"``): ``attained``, ``theorem2_term``,
    ``simplex_loss`` (the loss evaluated at the collapsed simplex; equals the term),
    ``antipodal_bound``, ``gap`` (``attained − antipodal_bound`` ≥ 0),
    ``below_theorem2_term`` (``theorem2_term − attained`` ≥ 0; 0 only for equal class
    sizes), ``class_mean_angle_<i>_<j>`` (radians, classes present) and
    ``class_mean_gram_<i>_<j>`` (``i ≤ j``, means of the unit vectors),
    ``within_angle_max`` (largest angle of a point from its class mean), ``collapsed``
    (1 if that is below :data:`COLLAPSE_ANGLE`), ``rho``, ``starts``, ``best_start``,
    ``starts_at_best``.

    Final: ``configurations`` (C, K); per setting ``<setting>/embeddings`` (b, 2, radius
    ρ, rotated so the largest class's mean points up and mirrored so the next class lies
    left), ``<setting>/labels`` (b,) and ``<setting>/class_mean_gram`` (K, K, NaN for an
    absent class). Trace: the loss per
    step (quantity ``"loss"``) per setting.
    """
    sizes_list = [_check_class_sizes(c) for c in configurations]
    if not sizes_list or len({len(s) for s in sizes_list}) != 1 or len(sizes_list[0]) > 3:
        raise ValueError(
            "configurations must be a non-empty list of class sizes with the same number "
            f"of classes, 2 or 3 (a regular simplex on the circle); got {configurations!r}"
        )
    if not (rho > 0 and math.isfinite(rho)):
        raise ValueError(f"rho (the circle's radius) must be > 0, got {rho!r}")
    K, tau = len(sizes_list[0]), 1.0 / (rho * rho)
    out = Tables("batchwise_minimisers")
    final: dict[str, np.ndarray] = {"configurations": np.array(sizes_list, dtype=np.int64)}
    for sizes in sizes_list:
        setting = "counts=" + ",".join(str(n) for n in sizes)
        labels = torch.arange(K).repeat_interleave(torch.tensor(sizes))
        best, info = _fit_batch(labels, tau, seed, starts, (max_steps, iters_per_step))
        angles = _canonical(best.params[0], labels, sizes)
        term, lower = theorem2_batch_term(sizes, rho), antipodal_batch_bound(sizes, rho)
        _add_losses(out, setting, best, term, lower, _simplex_loss(sizes, labels, tau))
        gram = _add_geometry(out, setting, on_circle(angles), labels, K)
        out.add(setting, "rho", rho)
        out.add_fit(setting, best, info)
        final[f"{setting}/embeddings"] = on_circle(angles, rho).numpy()
        final[f"{setting}/labels"] = labels.numpy()
        final[f"{setting}/class_mean_gram"] = gram
    return out.result(final)


def _add_losses(
    out: Tables, setting: str, best: Fit, term: float, lower: float, simplex: float
) -> None:
    """The loss rows of one configuration (see :func:`batchwise_minimisers`)."""
    out.add(setting, "attained", best.loss)
    out.add(setting, "theorem2_term", term)
    out.add(setting, "simplex_loss", simplex)
    out.add(setting, "antipodal_bound", lower)
    out.add(setting, "gap", best.loss - lower)
    out.add(setting, "below_theorem2_term", term - best.loss)
