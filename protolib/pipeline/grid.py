"""The grid: axis values checked, run ids, and an experiment expanded into run configs.

The axes and their defaults are the results contract's (:mod:`protolib.results.contract`):
``n_w``, ``imbalance_ratio``, ``imbalance``, ``minority_fraction``, ``label_corruption``
and ``seed``. An axis is a list under an experiment's ``grid``, or one scalar in its
``base`` or in a loss variant (the variant's wins for that variant): a one-value axis.
The ``n_w`` axis of ``grid`` and ``base`` is expanded only for losses that take prototype
copies (``LossNeeds.prototypes == "optional"``), so plain CE is not repeated per ``n_w``;
likewise ``minority_fraction`` only for ``imbalance: step`` (:data:`APPLIES_WITH`), and a
value of it that no run uses is refused. Each grid point has a distinct, readable run id
(:func:`run_id`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping
from typing import Any

from protolib.data import IMBALANCE_KINDS
from protolib.pipeline.errors import fail as _fail
from protolib.registry import LOSSES
from protolib.results.contract import (
    AXES,
    AXIS_NAMES,
    EXPERIMENT,
    IMBALANCE,
    IMBALANCE_RATIO,
    LABEL_CORRUPTION,
    MINORITY_FRACTION,
    N_W,
    RUN_ID,
    SEED,
)
from protolib.train.config import INT_RANGES, RunConfig

GRID_AXES = AXIS_NAMES
#: the values of an axis that a config does not set
GRID_DEFAULTS: dict[str, list[Any]] = {axis.name: [axis.default] for axis in AXES}
#: an axis that applies only where another axis has one value: elsewhere a grid point
#: takes its default (not repeated per value), as ``n_w`` for losses without prototypes
APPLIES_WITH: dict[str, tuple[str, Any]] = {MINORITY_FRACTION.name: (IMBALANCE.name, "step")}
#: the run-config key of the loss variant's name (the ``loss`` column of every table)
LOSS_NAME = "loss_name"
#: Run-config keys the pipeline sets itself; a config may not set them.
RESERVED_KEYS = (RUN_ID.name, EXPERIMENT.name, LOSS_NAME)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _int_rule(axis: str) -> tuple[Callable[[Any], bool], str]:
    """The run config's own range of an integer axis (``INT_RANGES``): every value of the
    grid is checked here, only the first of each axis through a whole run config."""
    low, high = INT_RANGES[axis]
    return (lambda v: _is_int(v) and low <= v <= high), f"an integer in {low}..{high}"


#: what one value of each axis may be: a check and its description
AXIS_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    N_W.name: _int_rule(N_W.name),
    IMBALANCE_RATIO.name: (lambda v: _is_finite(v) and v >= 1, "a finite number >= 1"),
    IMBALANCE.name: (
        lambda v: isinstance(v, str) and v in IMBALANCE_KINDS,
        f"one of {', '.join(IMBALANCE_KINDS)}",
    ),
    MINORITY_FRACTION.name: (lambda v: _is_finite(v) and 0 < v <= 1, "a number in (0, 1]"),
    LABEL_CORRUPTION.name: (lambda v: _is_finite(v) and 0 <= v <= 1, "a number in [0, 1]"),
    SEED.name: _int_rule(SEED.name),
}


def _check_axis_value(where: str, axis: str, value: Any, hint: str = "") -> None:
    accepts, allowed = AXIS_RULES[axis]
    if not accepts(value):
        raise _fail(f"config: {where}: {value!r} is not allowed; allowed: {allowed}{hint}")


def _check_json_values(where: str, value: Any) -> None:
    """Only JSON values (string keys, finite numbers) may reach a run config."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise _fail(
                    f"config: {where}: key {key!r} is not allowed; allowed: string keys "
                    f"(quote it: '{key}')"
                )
            _check_json_values(f"{where}.{key}", item)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_json_values(f"{where}.{i}", item)
    elif isinstance(value, float) and not math.isfinite(value):
        raise _fail(f"config: {where}: {value!r} is not allowed; allowed: a finite number")
    elif value is not None and not isinstance(value, str | int | float | bool):
        raise _fail(
            f"config: {where}: {value!r} is not allowed; allowed: a number, string, "
            "true/false, null, list or mapping"
        )


def format_number(value: float) -> str:
    """Text for a grid value in a run id: integral values without a fraction (``10``,
    ``0``), others repr-exact so that ``float(text) == value`` (``0.2``, ``0.1000001``)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def run_id(variant: str, values: Mapping[str, Any], *, uses_n_w: bool = True) -> str:
    """Readable run id of the grid point ``values`` (axis → value) of a loss variant: each
    axis's tag and value after the variant's name, e.g. ``supcon_nw10_R10_p0.2_s0``,
    ``ce_R100_exp_p0_s0``, ``supcon_nw0_R10_mu0.3_p0_s0`` (``_nw`` only for losses that
    take it, ``uses_n_w``; an axis with ``omit_default`` only off its default)."""
    parts = []
    for axis in AXES:  # an axis left out of ``values`` with omit_default is at its default
        value = values.get(axis.name, axis.default) if axis.omit_default else values[axis.name]
        if (axis is N_W and not uses_n_w) or (axis.omit_default and value == axis.default):
            continue
        parts.append(f"_{axis.tag}{value if axis.python is str else format_number(value)}")
    return variant + "".join(parts)


def _applicable(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with each :data:`APPLIES_WITH` axis at its default where it does not
    apply (a ``minority_fraction`` of an ``exp`` grid point)."""
    for axis, (other, needed) in APPLIES_WITH.items():
        if values[other] != needed:
            values[axis] = GRID_DEFAULTS[axis][0]
    return values


def _point(variant: str, values: Mapping[str, Any]) -> str:
    coords = ", ".join(f"{axis}={values[axis]!r}" for axis in GRID_AXES)
    return f"{variant} ({coords})"


# -------------------------------------------------------------------------- expansion


def _axis_sources(
    name: str, experiment: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    """Base scalars and grid lists of an experiment, checked (types, duplicates, conflicts)."""
    base = experiment.get("base", {})
    grid = experiment.get("grid", {})
    for axis, values in grid.items():
        where = f"experiments.{name}.grid.{axis}"
        for i, value in enumerate(values):
            _check_axis_value(f"{where}.{i}", axis, value)
        for i, value in enumerate(values):
            if value in values[:i]:
                first = values[values.index(value)]
                raise _fail(
                    f"config: {where}: the value {value!r} is listed twice "
                    f"(as {first!r} and {value!r}); allowed: each value once"
                )
    for axis in GRID_AXES:
        if axis in base:
            _check_scalar_axis(name, f"experiments.{name}.base", axis, base[axis], grid)
    return {a: base[a] for a in GRID_AXES if a in base}, grid


def _check_scalar_axis(
    name: str, mapping: str, axis: str, value: Any, grid: Mapping[str, list[Any]]
) -> None:
    """A grid key written as one value in ``mapping`` (an experiment's base or a loss
    variant): a valid axis value, and (in the base, pass the experiment's ``grid``) not
    also a list under the experiment's grid; a variant's value replaces the grid's."""
    where = f"{mapping}.{axis}"
    if axis in grid:
        raise _fail(
            f"config: {where}: {value!r} conflicts with experiments.{name}.grid.{axis}; "
            f"allowed: {axis} in one place (a list in grid or one value in base; a loss "
            "variant may set its own value)"
        )
    _check_axis_value(where, axis, value, f" (a list of values belongs in experiments.{name}.grid)")


def _variant_axes(
    name: str,
    variant: str,
    spec: Mapping[str, Any],
    uses_n_w: bool,
    base_axes: Mapping[str, Any],
    grid: Mapping[str, list[Any]],
) -> tuple[dict[str, list[Any]], dict[str, list[str]]]:
    """The values of each axis for one loss variant, and where each value is written (a
    key path; ``""`` for a default)."""
    axes: dict[str, list[Any]] = {}
    written: dict[str, list[str]] = {}
    for axis in GRID_AXES:
        if axis in spec:  # the variant's one value, over the base's and the grid's
            where = f"experiments.{name}.losses.{variant}"
            _check_scalar_axis(name, where, axis, spec[axis], {})
            axes[axis], written[axis] = [spec[axis]], [f"{where}.{axis}"]
        elif axis == N_W.name and not uses_n_w:
            axes[axis] = [N_W.default]  # losses without prototype copies: not repeated per n_w
            written[axis] = [""]
        elif axis in base_axes:
            axes[axis] = [base_axes[axis]]
            written[axis] = [f"experiments.{name}.base.{axis}"]
        elif axis in grid:
            axes[axis] = list(grid[axis])
            written[axis] = [f"experiments.{name}.grid.{axis}.{i}" for i in range(len(grid[axis]))]
        else:
            axes[axis], written[axis] = list(GRID_DEFAULTS[axis]), [""]
    return axes, written


def _check_all_used(name: str, asked: Mapping[tuple[str, str], tuple[Any, bool]]) -> None:
    """Refuse a value of an :data:`APPLIES_WITH` axis that no run of the experiment uses
    (``asked``: (axis, key path) → (value, used))."""
    for (axis, where), (value, used) in asked.items():
        if not used:
            other, needed = APPLIES_WITH[axis]
            raise _fail(
                f"config: {where}: {value!r} is not allowed: no run of experiment {name!r} "
                f"has {other} {needed!r}, the only one {axis} applies to; allowed: {axis} "
                f"with {other} {needed!r} (set {other}: {needed} for those runs, or remove "
                f"{axis})"
            )


def _check_reserved(where: str, mapping: Mapping[str, Any]) -> None:
    for key in RESERVED_KEYS:
        if key in mapping:
            raise _fail(
                f"config: {where}.{key}: {mapping[key]!r} is not allowed; run_id, experiment "
                "and loss_name are set by the pipeline (from the grid point, the experiment's "
                "name and the loss variant's name)"
            )


def _plugin_list(where: str, mapping: Mapping[str, Any]) -> list[str]:
    plugins = mapping.get("plugins", [])
    if not isinstance(plugins, list) or not all(isinstance(p, str) for p in plugins):
        raise _fail(
            f"config: {where}.plugins: {plugins!r} is not allowed; allowed: a list of module names"
        )
    return plugins


def _validate_run(where: str, config: dict[str, Any]) -> None:
    """Validate one run config with :class:`RunConfig` (any failure is one line)."""
    try:
        RunConfig.from_dict(config)
    except Exception as error:
        raise _fail(f"config: {where}: {error}") from None


def expand_experiment(
    name: str, experiment: Mapping[str, Any], plugins: list[str] | tuple[str, ...] = ()
) -> dict[str, dict[str, Any]]:
    """``{run_id: run config}`` for one schema-valid experiment.

    Every value of every axis is checked, one run config per loss variant is validated
    by :class:`RunConfig`, and every grid point gets a distinct run id. ``plugins`` (the
    pipeline's) are added to every run so that its job imports them too.
    """
    base = dict(experiment.get("base", {}))
    _check_reserved(f"experiments.{name}.base", base)
    _check_json_values(f"experiments.{name}.base", base)
    base_plugins = _plugin_list(f"experiments.{name}.base", base)
    base_axes, grid = _axis_sources(name, experiment)
    shared = {k: v for k, v in base.items() if k not in GRID_AXES}
    runs: dict[str, dict[str, Any]] = {}
    points: dict[str, str] = {}
    asked: dict[tuple[str, str], tuple[Any, bool]] = {}  # APPLIES_WITH values and their use
    for axis, values in grid.items():  # a grid list that every variant replaces is unused
        if experiment["losses"] and all(axis in s for s in experiment["losses"].values()):
            raise _fail(
                f"config: experiments.{name}.grid.{axis}: {values!r} is not allowed: every loss "
                f"variant of experiment {name!r} sets its own {axis}, so no run would use it; "
                f"allowed: {axis} in grid or in the variants, not both everywhere"
            )
    for variant, spec in experiment["losses"].items():
        where = f"experiments.{name}.losses.{variant}"
        _check_reserved(where, spec)
        _check_json_values(where, spec)
        options = spec.get("loss_options", shared.get("loss_options", {}))
        try:  # a composite loss takes n_w when one of its parts does
            uses_n_w = LOSSES.get(spec["loss"]).needs_for(options).prototypes == "optional"
        except (TypeError, ValueError) as error:
            raise _fail(f"config: {where}.loss_options: {' '.join(str(error).split())}") from None
        axes, written = _variant_axes(name, variant, spec, uses_n_w, base_axes, grid)
        fixed = {
            **shared,
            **{k: v for k, v in spec.items() if k not in GRID_AXES},
            EXPERIMENT.name: name,
            LOSS_NAME: variant,
        }
        run_plugins = list(dict.fromkeys([*plugins, *base_plugins, *_plugin_list(where, spec)]))
        if run_plugins:
            fixed["plugins"] = run_plugins
        elif "plugins" in fixed:
            fixed["plugins"] = []
        # Run configs of a variant differ only in their grid keys, each checked above for
        # every value (as RunConfig checks them: one at a time); validate one run fully.
        corner = _applicable({axis: values[0] for axis, values in axes.items()})
        _validate_run(
            where, {**fixed, **corner, RUN_ID.name: run_id(variant, corner, uses_n_w=uses_n_w)}
        )
        seen: set[tuple[Any, ...]] = set()
        for combo in itertools.product(*(axes[a] for a in GRID_AXES)):
            values = _applicable(dict(zip(GRID_AXES, combo, strict=True)))
            point = tuple(values.values())
            if point in seen:  # an axis that does not apply here, at its default once
                continue
            seen.add(point)
            rid = run_id(variant, values, uses_n_w=uses_n_w)
            if rid in runs:
                raise _fail(
                    f"config: experiments.{name}.losses: grid points {points[rid]} and "
                    f"{_point(variant, values)} would share the run id {rid!r}; allowed: "
                    "one run id per grid point (rename a loss variant)"
                )
            points[rid] = _point(variant, values)
            runs[rid] = {**fixed, RUN_ID.name: rid, **values}
        for axis in APPLIES_WITH:
            taken = {point[GRID_AXES.index(axis)] for point in seen}
            for value, at in zip(axes[axis], written[axis], strict=True):
                if at and value != GRID_DEFAULTS[axis][0]:
                    before = asked.get((axis, at), (value, False))[1]
                    asked[(axis, at)] = (value, before or value in taken)
    _check_all_used(name, asked)
    return runs


def expand(config: Mapping[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """``{experiment: {run_id: run config}}`` for a schema-valid pipeline config."""
    plugins = list(config.get("plugins", []))
    return {
        name: expand_experiment(name, exp, plugins) for name, exp in config["experiments"].items()
    }
