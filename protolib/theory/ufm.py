"""Unconstrained-features simulations (MATH.md §5).

The embeddings (and, for cross-entropy, the classifier) are free parameters, optimised
directly in float64 on the CPU by L-BFGS with a strong-Wolfe line search from seeded
random starts, so every run is deterministic and reaches its optimum to near machine
precision. The four simulations:

1. :func:`ce_l2` — CE + λ‖W‖_F² with ‖h_i‖ ≤ ρ in R², against Corollary 2 (§4);
2. :func:`supcon_circle` — full-batch SupCon on the unit circle: collapse to a simplex;
3. :func:`supcon_all_multisets` — SupCon summed over *every* multiset batch, exactly,
   against Theorem 2 (§4), with the histogram of batch losses;
4. :func:`limit_geometries` — the large-``n_w`` limit loss (§1.5) with fixed prototype
   geometries: the learned class-mean Gram against the target Gram.

Each returns a :class:`UFMResult`: a tidy ``table`` (one row per simulation, setting and
quantity), the ``final`` configuration as NumPy arrays, and a per-step ``trace``.

Free features confined to the circle are a non-convex problem with spurious local
minima (a class split into two antipodal clusters is one: its Hessian is positive
semi-definite, so no local method leaves it). The circle simulations therefore take the
best of a few seeded random starts (``starts``); the table reports how many of them
reached the best loss (``starts_at_best``) and which one won (``best_start``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from protolib.geometry import (
    class_mean_gram,
    class_means,
    delta_g,
    gamma_distributions,
    make_prototypes,
    simplex_gamma,
    target_gram,
)
from protolib.losses.limit import supcon_limit_loss, supcon_limit_paper_loss
from protolib.losses.supcon import supcon_loss
from protolib.theory.bounds import ce_l2_bound, supcon_lower_bound

__all__ = [
    "TABLE_COLUMNS",
    "TRACE_COLUMNS",
    "UFMResult",
    "ce_l2",
    "limit_geometries",
    "multiset_counts",
    "multiset_supcon_losses",
    "run_all",
    "supcon_all_multisets",
    "supcon_circle",
]

TABLE_COLUMNS = ("simulation", "setting", "quantity", "value")
TRACE_COLUMNS = ("step", "setting", "quantity", "value")

_DTYPE = torch.float64
# L-BFGS stops on a gradient at round-off level; the outer loop stops once a whole step
# neither lowers the loss nor moves the parameters.
_TOLERANCE_GRAD = 1e-12
_TOLERANCE_CHANGE = 1e-15
_TOLERANCE_MOVE = 1e-12
_OBJECTIVE_SCALE = 1e6
_HISTORY = 50
_SAME_OPTIMUM = 1e-9  # relative loss difference under which two starts reached the same


@dataclass
class UFMResult:
    """Outcome of one simulation.

    - ``table``: tidy results, columns :data:`TABLE_COLUMNS` — ``simulation`` (the
      function's name), ``setting`` (e.g. ``"lambda=0.01"``), ``quantity``, ``value``
      (float); one row per (simulation, setting, quantity).
    - ``final``: the final configuration (embeddings, labels, classifier or prototypes,
      Gram matrices, histograms, ...) as NumPy arrays; keys are documented per function.
    - ``trace``: per-step history of the winning start, columns :data:`TRACE_COLUMNS`
      (``step`` 0 is the start; one step is one call of L-BFGS, i.e. up to
      ``iters_per_step`` iterations).
    """

    table: pd.DataFrame
    final: dict[str, np.ndarray] = field(default_factory=dict)
    trace: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=TRACE_COLUMNS))


# --------------------------------------------------------------------------- helpers


class _Rows:
    """Collects tidy rows (the value last) for a table or a trace."""

    def __init__(self) -> None:
        self.rows: list[tuple] = []

    def add(self, *row: object) -> None:
        self.rows.append((*row[:-1], float(row[-1])))

    def frame(self, columns: Sequence[str]) -> pd.DataFrame:
        frame = pd.DataFrame(self.rows, columns=list(columns))
        frame["value"] = frame["value"].astype(np.float64)
        if "step" in frame:
            frame["step"] = frame["step"].astype(np.int64)
        return frame


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def _balanced_labels(num_classes: int, points_per_class: int) -> Tensor:
    if num_classes < 2 or points_per_class < 1:
        raise ValueError(
            f"need num_classes >= 2 and points_per_class >= 1; got {num_classes}, "
            f"{points_per_class}"
        )
    return torch.arange(num_classes).repeat_interleave(points_per_class)


def _random_angles(n: int, generator: torch.Generator) -> Tensor:
    return 2 * math.pi * torch.rand(n, generator=generator, dtype=_DTYPE)


def _circle(angles: Tensor, radius: float = 1.0) -> Tensor:
    """Points ``radius · (cos θ, sin θ)`` on a circle, ``(n, 2)``."""
    return radius * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)


Monitor = Callable[[int, float, list[Tensor]], list[tuple[str, float]]]


@dataclass
class _Fit:
    """One optimisation run: its final loss and parameters, trace rows and snapshots."""

    loss: float
    params: list[Tensor]
    trace: list[tuple[int, str, float]]
    history: list[np.ndarray]


def _fit(
    params: list[Tensor],
    objective: Callable[[list[Tensor]], Tensor],
    *,
    max_steps: int,
    iters_per_step: int,
    monitor: Monitor | None = None,
    keep_history: bool = False,
) -> _Fit:
    """Minimise ``objective(params)`` by L-BFGS (strong Wolfe) in outer steps of up to
    ``iters_per_step`` iterations, until a step neither lowers the loss nor moves the
    parameters (or ``max_steps``). The trace holds ``("loss", value)`` and the rows of
    ``monitor(step, loss, params)`` at step 0 and after every step; ``keep_history``
    also keeps a copy of ``params[0]`` at each of those steps.

    L-BFGS sees ``1e6 × objective``: torch's L-BFGS drops curvature pairs with
    ``yᵀs ≤ 1e-10`` (an absolute threshold), which near a flat optimum (SupCon's
    within-class collapse is quartic) would leave it taking tiny gradient steps; the
    scale keeps those pairs, so it converges to the precision of the gradient."""
    params = [p.detach().clone().requires_grad_() for p in params]
    scale = _OBJECTIVE_SCALE
    optimiser = torch.optim.LBFGS(
        params,
        lr=1.0,
        max_iter=iters_per_step,
        tolerance_grad=_TOLERANCE_GRAD * scale,
        tolerance_change=_TOLERANCE_CHANGE,
        history_size=_HISTORY,
        line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        optimiser.zero_grad()
        loss = objective(params) * scale
        loss.backward()
        return loss

    trace: list[tuple[int, str, float]] = []
    history: list[np.ndarray] = []

    def value(step: int) -> float:
        with torch.no_grad():
            loss = float(objective(params))
            detached = [p.detach() for p in params]
            trace.append((step, "loss", loss))
            if monitor is not None:
                trace.extend((step, name, float(v)) for name, v in monitor(step, loss, detached))
            if keep_history:
                history.append(detached[0].numpy().copy())
        return loss

    current = value(0)
    for step in range(1, max_steps + 1):
        before = [p.detach().clone() for p in params]
        optimiser.step(closure)
        previous, current = current, value(step)
        moved = max(
            float((p.detach() - b).abs().max()) for p, b in zip(params, before, strict=True)
        )
        gained = previous - current > _TOLERANCE_CHANGE * max(1.0, abs(current))
        if not gained and moved <= _TOLERANCE_MOVE:
            break
    return _Fit(current, [p.detach() for p in params], trace, history)


def _best_of(
    starts: int,
    seed: int,
    draw: Callable[[torch.Generator], list[Tensor]],
    fit: Callable[[list[Tensor]], _Fit],
) -> tuple[_Fit, dict[str, float]]:
    """Fit from ``starts`` initial points drawn in turn from one generator seeded with
    ``seed``; return the fit with the lowest loss (the first on ties) and the table
    quantities ``starts``, ``best_start`` and ``starts_at_best``."""
    if starts < 1:
        raise ValueError(f"starts must be >= 1, got {starts}")
    generator = _generator(seed)
    fits = [fit(draw(generator)) for _ in range(starts)]
    losses = [f.loss for f in fits]
    best = int(np.argmin(losses))
    tolerance = _SAME_OPTIMUM * max(1.0, abs(losses[best]))
    at_best = sum(loss <= losses[best] + tolerance for loss in losses)
    info = {"starts": starts, "best_start": best, "starts_at_best": at_best}
    return fits[best], info


def _add_trace(rows: _Rows, setting: str, fit: _Fit) -> None:
    for step, quantity, value in fit.trace:
        rows.add(step, setting, quantity, value)


def _gamma_checks(rows: _Rows, name: str, setting: str, h: Tensor, y: Tensor, K: int) -> None:
    """Within-class spread, class-mean separation and Δ_G against the ETF."""
    gammas = gamma_distributions(h, y, num_classes=K)
    rows.add(name, setting, "within_gamma_min", gammas["within"].min())
    pairs = torch.triu_indices(K, K, offset=1).T.tolist()
    for (i, j), gamma in zip(pairs, gammas["class_means"].tolist(), strict=True):
        rows.add(name, setting, f"class_mean_gamma_{i}_{j}", gamma)
    target = simplex_gamma(K)
    rows.add(name, setting, "class_mean_gamma_target", target)
    error = (gammas["class_means"] - target).abs().max()
    rows.add(name, setting, "class_mean_gamma_max_error", error)
    rows.add(name, setting, "delta_g_etf", delta_g(h, y, target_gram("etf", K)))


# --------------------------------------------------------------------- 1. CE + L2


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
    name = "ce_l2"
    K = num_classes
    y = _balanced_labels(K, points_per_class)
    table, trace, final = _Rows(), _Rows(), {"labels": y.numpy()}

    def draw(generator: torch.Generator) -> list[Tensor]:
        angles = _random_angles(y.numel(), generator)
        return [angles, 0.1 * torch.randn(K, 2, generator=generator, dtype=_DTYPE)]

    for lam in lams:
        lam = float(lam)
        setting = f"lambda={lam:g}"

        def objective(params: list[Tensor], lam: float = lam) -> Tensor:
            angles, weight = params
            logits = _circle(angles, rho) @ weight.T
            return F.cross_entropy(logits, y) + lam * weight.square().sum()

        def fit(init: list[Tensor], objective: Callable = objective) -> _Fit:
            return _fit(init, objective, max_steps=max_steps, iters_per_step=iters_per_step)

        best, info = _best_of(starts, seed, draw, fit)
        bound, r_star = ce_l2_bound(K, rho, lam)
        h, w = _circle(best.params[0], rho), best.params[1]
        mean_w_norm = float(w.norm(dim=1).mean())
        table.add(name, setting, "attained", best.loss)
        table.add(name, setting, "bound", bound)
        table.add(name, setting, "gap", best.loss - bound)
        table.add(name, setting, "rel_gap", (best.loss - bound) / abs(bound))
        table.add(name, setting, "mean_w_norm", mean_w_norm)
        table.add(name, setting, "r_star", r_star)
        table.add(name, setting, "w_norm_rel_error", abs(mean_w_norm - r_star) / r_star)
        _gamma_checks(table, name, setting, h, y, K)
        for quantity, value in info.items():
            table.add(name, setting, quantity, value)
        _add_trace(trace, setting, best)
        final[f"{setting}/embeddings"] = h.numpy()
        final[f"{setting}/classifier"] = w.numpy()
    return UFMResult(table.frame(TABLE_COLUMNS), final, trace.frame(TRACE_COLUMNS))


# ------------------------------------------------------------ 2. SupCon on the circle


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
    name = "supcon_circle"
    setting = f"tau={tau:g}"
    K = num_classes
    y = _balanced_labels(K, points_per_class)
    N = y.numel()
    etf = target_gram("etf", K)

    def objective(params: list[Tensor]) -> Tensor:
        return supcon_loss(_circle(params[0]), y, tau=tau)["loss"]

    def monitor(step: int, loss: float, params: list[Tensor]) -> list[tuple[str, float]]:
        h = _circle(params[0])
        within = float(gamma_distributions(h, y)["within"].min())
        return [("within_gamma_min", within), ("delta_g_etf", delta_g(h, y, etf))]

    def fit(init: list[Tensor]) -> _Fit:
        return _fit(
            init,
            objective,
            max_steps=steps,
            iters_per_step=iters_per_step,
            monitor=monitor,
            keep_history=True,
        )

    best, info = _best_of(starts, seed, lambda g: [_random_angles(N, g)], fit)
    angles = best.params[0]
    h = _circle(angles)
    n = points_per_class
    simplex_loss = math.log(n - 1 + (N - n) * math.exp(-K / ((K - 1) * tau)))
    table, trace = _Rows(), _Rows()
    table.add(name, setting, "final_loss", best.loss)
    table.add(name, setting, "simplex_loss", simplex_loss)
    table.add(name, setting, "gap", best.loss - simplex_loss)
    _gamma_checks(table, name, setting, h, y, K)
    table.add(name, setting, "steps", len(best.history) - 1)
    for quantity, value in info.items():
        table.add(name, setting, quantity, value)
    _add_trace(trace, setting, best)
    final = {
        "embeddings": h.numpy(),
        "labels": y.numpy(),
        "angles": angles.numpy().copy(),
        "angles_history": np.stack(best.history),
    }
    return UFMResult(table.frame(TABLE_COLUMNS), final, trace.frame(TRACE_COLUMNS))


# ------------------------------------------------- 3. SupCon over every multiset batch


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
    dtype = similarity.dtype
    c = counts.to(dtype)
    same = (labels.unsqueeze(0) == labels.unsqueeze(1)).to(dtype)
    off = 1.0 - torch.eye(members.shape[0], dtype=dtype, device=members.device)
    shift = similarity.detach().max(dim=1).values  # (n,)
    exps = torch.exp(similarity - shift.unsqueeze(1))
    self_copies = (c - 1).clamp_min(0)  # copies of the anchor's own member among the others
    denominator = c @ (exps * off).T + self_copies * exps.diagonal()
    positives = c @ (same * off).T + self_copies  # Σ_t P_at
    positive_sum = c @ (similarity * same * off).T + self_copies * similarity.diagonal()
    counted = (c > 0) & (positives > 0)
    safe_denominator = torch.where(counted, denominator, torch.ones_like(denominator))
    anchor = safe_denominator.log() + shift - positive_sum / positives.clamp_min(1)
    return torch.where(counted, c * anchor, torch.zeros_like(anchor)).sum(dim=1)


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
    (167 960 for ``N = 12``, ``b = 9``), computed exactly by
    :func:`multiset_supcon_losses` over the count vectors of :func:`multiset_counts`.
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
    name = "supcon_all_multisets"
    setting = f"rho={rho:g}"
    K = num_classes
    y = _balanced_labels(K, points_per_class)
    N = y.numel()
    tau = 1.0 / (rho * rho)
    counts = torch.from_numpy(multiset_counts(N, batch_size)).to(_DTYPE)

    def objective(params: list[Tensor]) -> Tensor:
        return multiset_supcon_losses(_circle(params[0]), y, counts, tau=tau).mean()

    def fit(init: list[Tensor]) -> _Fit:
        return _fit(init, objective, max_steps=max_steps, iters_per_step=iters_per_step)

    best, info = _best_of(starts, seed, lambda g: [_random_angles(N, g)], fit)
    angles = best.params[0]
    h = _circle(angles)
    batch_losses = multiset_supcon_losses(h, y, counts, tau=tau)
    bound = supcon_lower_bound(N, K, batch_size, rho)
    table, trace = _Rows(), _Rows()
    table.add(name, setting, "attained_mean", best.loss)
    table.add(name, setting, "bound_mean", bound)
    table.add(name, setting, "gap", best.loss - bound)
    table.add(name, setting, "rel_gap", (best.loss - bound) / abs(bound))
    table.add(name, setting, "attained_total", batch_losses.sum())
    bound_total = supcon_lower_bound(N, K, batch_size, rho, per_batch=False)
    table.add(name, setting, "bound_total", bound_total)
    table.add(name, setting, "num_multisets", counts.shape[0])
    _gamma_checks(table, name, setting, h, y, K)
    for quantity, value in info.items():
        table.add(name, setting, quantity, value)
    losses = batch_losses.numpy()
    hist_counts, hist_edges = np.histogram(losses, bins=bins)
    for centre, count in zip((hist_edges[:-1] + hist_edges[1:]) / 2, hist_counts, strict=True):
        table.add(name, f"bin_centre={centre:.6g}", "hist_count", count)
    _add_trace(trace, setting, best)
    final = {
        "embeddings": (rho * h).numpy(),
        "labels": y.numpy(),
        "angles": angles.numpy().copy(),
        "batch_losses": losses,
        "hist_counts": hist_counts,
        "hist_edges": hist_edges,
    }
    return UFMResult(table.frame(TABLE_COLUMNS), final, trace.frame(TRACE_COLUMNS))


# ------------------------------------------------ 4. the limit loss with prototypes


def limit_geometries(
    geometries: Sequence[str] = ("etf", "minority_angles", "majority_collapse"),
    num_classes: int = 6,
    points_per_class: int = 20,
    dim: int = 6,
    tau: float = 0.1,
    seed: int = 0,
    *,
    include_paper: bool = True,
    max_steps: int = 100,
    iters_per_step: int = 50,
) -> UFMResult:
    """Free unit embeddings under the exact large-``n_w`` limit loss (MATH.md §1.5, §5.4).

    For each geometry, prototypes ``W = make_prototypes(name, K, dim, seed=seed)`` (default
    options: the minority classes are the last ``⌊K/2⌋``) are fixed and the embeddings
    ``h_i = v_i/‖v_i‖`` (``v_i`` free, the same seeded Gaussian start for every geometry)
    minimise :func:`protolib.losses.limit.supcon_limit_loss` (optimised as the sum over
    samples, reported as the mean).

    The loss is a sum of independent per-sample terms, so every class goes to the
    minimiser of its own term. With the ETF that is ``w_y`` itself. For other geometries
    the exact limit's prototype-anchor term cancels most of the alignment pull
    ``−<h, w_y>/τ`` near ``h = w_y`` (the slope left there is ``A_y/(A_y + e^{1/τ})/τ``),
    so the small pushes away from nearby prototypes move the class optimum visibly off
    ``w_y``: at ``τ = 0.1`` and ``K = 6``, Δ_G ≈ 0.049 for ``minority_angles`` and ≈ 0.009
    for ``majority_collapse`` — the true optimum, not an optimisation error. With
    ``include_paper`` the same runs are repeated with the published limit
    (:func:`protolib.losses.limit.supcon_limit_paper_loss`, no such term), whose optima
    lie within ~1e-3 of the prototypes.

    Table (setting ``"geometry=<name>"``): ``delta_g`` (Δ_G of the class means against
    ``target_gram(name, K)``), ``final_loss`` (mean over samples),
    ``max_dist_to_prototype`` (``max_i ‖h_i − w_{y_i}‖``; → 0 for the ETF); with
    ``include_paper`` also ``delta_g_paper``, ``final_loss_paper``,
    ``max_dist_to_prototype_paper``.

    Final, per geometry ``<name>``: ``<name>/class_mean_gram`` and ``<name>/target_gram``
    (K, K), ``<name>/embeddings`` (N, dim), ``<name>/class_means`` and
    ``<name>/prototypes`` (K, dim), and ``<name>/class_mean_gram_paper`` with
    ``include_paper``; and ``labels`` (N,). Trace: the mean loss per step, quantity
    ``"loss"`` (``"loss_paper"``), setting ``"geometry=<name>"``.
    """
    name = "limit_geometries"
    K = num_classes
    y = _balanced_labels(K, points_per_class)
    N = y.numel()
    table, trace, final = _Rows(), _Rows(), {"labels": y.numpy()}
    variants: dict[str, Callable[..., dict[str, Tensor]]] = {"": supcon_limit_loss}
    if include_paper:
        variants["_paper"] = supcon_limit_paper_loss
    start = torch.randn(N, dim, generator=_generator(seed), dtype=_DTYPE)
    for geometry in geometries:
        setting = f"geometry={geometry}"
        prototypes = make_prototypes(geometry, K, dim, seed=seed, dtype=_DTYPE)
        target = target_gram(geometry, K)
        final[f"{geometry}/target_gram"] = target.numpy()
        final[f"{geometry}/prototypes"] = prototypes.numpy()
        for suffix, loss_fn in variants.items():

            def objective(params: list[Tensor], w: Tensor = prototypes, loss_fn=loss_fn) -> Tensor:
                h = F.normalize(params[0], dim=1)
                return loss_fn(h, y, prototypes=w, tau=tau, reduction="sum")["loss"]

            fit = _fit([start], objective, max_steps=max_steps, iters_per_step=iters_per_step)
            h = F.normalize(fit.params[0], dim=1)
            distance = (h - prototypes[y]).norm(dim=1).max()
            table.add(name, setting, f"delta_g{suffix}", delta_g(h, y, target))
            table.add(name, setting, f"final_loss{suffix}", fit.loss / N)
            table.add(name, setting, f"max_dist_to_prototype{suffix}", distance)
            for step, _, value in fit.trace:
                trace.add(step, setting, f"loss{suffix}", value / N)
            final[f"{geometry}/class_mean_gram{suffix}"] = class_mean_gram(h, y, K).numpy()
            if not suffix:
                final[f"{geometry}/embeddings"] = h.numpy()
                final[f"{geometry}/class_means"] = class_means(h, y, K).numpy()
    return UFMResult(table.frame(TABLE_COLUMNS), final, trace.frame(TRACE_COLUMNS))


def run_all(seed: int = 0) -> dict[str, UFMResult]:
    """The four simulations of MATH.md §5 with their defaults, keyed by function name."""
    return {
        "ce_l2": ce_l2(seed=seed),
        "supcon_circle": supcon_circle(seed=seed),
        "supcon_all_multisets": supcon_all_multisets(seed=seed),
        "limit_geometries": limit_geometries(seed=seed),
    }
