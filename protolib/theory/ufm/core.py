"""The core of the unconstrained-features simulations (MATH.md §5): tidy result tables,
seeded starts and the L-BFGS fit that every simulation runs.

Everything is float64 on the CPU, so every run is deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from protolib.geometry import delta_g, gamma_distributions, simplex_gamma, target_gram

TABLE_COLUMNS = ("simulation", "setting", "quantity", "value")
TRACE_COLUMNS = ("step", "setting", "quantity", "value")

DTYPE = torch.float64
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


class Rows:
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


def seeded_generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def balanced_labels(num_classes: int, points_per_class: int) -> Tensor:
    if num_classes < 2 or points_per_class < 1:
        raise ValueError(
            f"need num_classes >= 2 and points_per_class >= 1; got {num_classes}, "
            f"{points_per_class}"
        )
    return torch.arange(num_classes).repeat_interleave(points_per_class)


def random_angles(n: int, generator: torch.Generator) -> Tensor:
    return 2 * math.pi * torch.rand(n, generator=generator, dtype=DTYPE)


def on_circle(angles: Tensor, radius: float = 1.0) -> Tensor:
    """Points ``radius · (cos θ, sin θ)`` on a circle, ``(n, 2)``."""
    return radius * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)


Monitor = Callable[[int, float, list[Tensor]], list[tuple[str, float]]]


@dataclass
class Fit:
    """One optimisation run: its final loss and parameters, trace rows and snapshots."""

    loss: float
    params: list[Tensor]
    trace: list[tuple[int, str, float]]
    history: list[np.ndarray]


# Longer than 60 lines only through its docstring (why L-BFGS sees a scaled objective);
# the code itself is under 60 lines.
def fit_lbfgs(
    params: list[Tensor],
    objective: Callable[[list[Tensor]], Tensor],
    *,
    max_steps: int,
    iters_per_step: int,
    monitor: Monitor | None = None,
    keep_history: bool = False,
) -> Fit:
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
    return Fit(current, [p.detach() for p in params], trace, history)


def best_of(
    starts: int,
    seed: int,
    draw: Callable[[torch.Generator], list[Tensor]],
    fit: Callable[[list[Tensor]], Fit],
) -> tuple[Fit, dict[str, float]]:
    """Fit from ``starts`` initial points drawn in turn from one generator seeded with
    ``seed``; return the fit with the lowest loss (the first on ties) and the table
    quantities ``starts``, ``best_start`` and ``starts_at_best``."""
    if starts < 1:
        raise ValueError(f"starts must be >= 1, got {starts}")
    generator = seeded_generator(seed)
    fits = [fit(draw(generator)) for _ in range(starts)]
    losses = [f.loss for f in fits]
    best = int(np.argmin(losses))
    tolerance = _SAME_OPTIMUM * max(1.0, abs(losses[best]))
    at_best = sum(loss <= losses[best] + tolerance for loss in losses)
    info = {"starts": starts, "best_start": best, "starts_at_best": at_best}
    return fits[best], info


def best_fit(
    objective: Callable[[list[Tensor]], Tensor],
    draw: Callable[[torch.Generator], list[Tensor]],
    starts: int,
    seed: int,
    max_steps: int,
    iters_per_step: int,
    *,
    monitor: Monitor | None = None,
    keep_history: bool = False,
) -> tuple[Fit, dict[str, float]]:
    """:func:`fit_lbfgs` of ``objective`` from each of :func:`best_of`'s ``starts`` (drawn
    by ``draw`` from ``seed``); the best fit and the table quantities of the starts."""

    def fit(init: list[Tensor]) -> Fit:
        return fit_lbfgs(
            init,
            objective,
            max_steps=max_steps,
            iters_per_step=iters_per_step,
            monitor=monitor,
            keep_history=keep_history,
        )

    return best_of(starts, seed, draw, fit)


def angle_starts(n: int) -> Callable[[torch.Generator], list[Tensor]]:
    """A ``draw`` for :func:`best_fit`: ``n`` uniformly random angles."""
    return lambda generator: [random_angles(n, generator)]


class Tables:
    """The table and trace of one simulation's :class:`UFMResult`, filled per setting."""

    def __init__(self, simulation: str) -> None:
        self.simulation = simulation
        self.table, self.trace = Rows(), Rows()

    def add(self, setting: str, quantity: str, value: float) -> None:
        """One row of the table."""
        self.table.add(self.simulation, setting, quantity, value)

    def add_fit(self, setting: str, fit: Fit, starts: dict[str, float]) -> None:
        """The quantities of the starts (:func:`best_of`) and the fit's trace."""
        for quantity, value in starts.items():
            self.add(setting, quantity, value)
        for step, quantity, value in fit.trace:
            self.trace.add(step, setting, quantity, value)

    def add_gamma_checks(self, setting: str, h: Tensor, y: Tensor, K: int) -> None:
        """Within-class spread, class-mean separation and Δ_G against the ETF."""
        gammas = gamma_distributions(h, y, num_classes=K)
        self.add(setting, "within_gamma_min", gammas["within"].min())
        pairs = torch.triu_indices(K, K, offset=1).T.tolist()
        for (i, j), gamma in zip(pairs, gammas["class_means"].tolist(), strict=True):
            self.add(setting, f"class_mean_gamma_{i}_{j}", gamma)
        target = simplex_gamma(K)
        self.add(setting, "class_mean_gamma_target", target)
        error = (gammas["class_means"] - target).abs().max()
        self.add(setting, "class_mean_gamma_max_error", error)
        self.add(setting, "delta_g_etf", delta_g(h, y, target_gram("etf", K)))

    def result(self, final: dict[str, np.ndarray]) -> UFMResult:
        """The :class:`UFMResult` of the rows added and ``final``."""
        return UFMResult(self.table.frame(TABLE_COLUMNS), final, self.trace.frame(TRACE_COLUMNS))
