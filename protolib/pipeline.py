"""The pipeline config (``config.yaml``): its schema and its expansion into runs.

``config.yaml`` names one or more experiments; each has ``base`` run-config keys, named
loss variants (a registered loss plus run-config keys for it) and a ``grid`` over
``n_w``, ``imbalance_ratio``, ``label_corruption`` and ``seed``. :func:`expand`
turns it into one validated run config per grid point with a readable run id; the
``n_w`` axis is expanded only for losses that take prototype copies
(``LossNeeds.prototypes == "optional"``), so plain CE is not repeated per ``n_w``.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from protolib.registry import DATASETS, GEOMETRIES, LOSSES, load_plugins
from protolib.train.config import RunConfig

GRID_AXES = ("n_w", "imbalance_ratio", "label_corruption", "seed")
GRID_DEFAULTS: dict[str, list[Any]] = {
    "n_w": [0],
    "imbalance_ratio": [1],
    "label_corruption": [0],
    "seed": [0],
}


class PipelineConfigError(ValueError):
    """An invalid pipeline config; the message names the key and what is allowed."""


def registry_schema(path: str | Path, plugins: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """The JSON schema at ``path`` with registry names filled into its empty ``enum``s
    (after importing ``plugins``, which may register more names)."""
    try:
        load_plugins(plugins)
    except ImportError as error:
        raise PipelineConfigError(f"config: plugins: {error}") from None
    schema = yaml.safe_load(Path(path).read_text())
    variant = schema["$defs"]["loss_variant"]["properties"]
    variant["loss"]["enum"] = LOSSES.names()
    variant["dataset"]["enum"] = DATASETS.names()
    variant["geometry"]["enum"] = GEOMETRIES.names()
    return schema


def describe_validation_error(error: Exception) -> str:
    """One line from a jsonschema ``ValidationError``: the key path and the problem."""
    path = ".".join(str(p) for p in getattr(error, "absolute_path", [])) or "(top level)"
    message = getattr(error, "message", str(error))
    validator = getattr(error, "validator", None)
    if validator == "enum":
        allowed = ", ".join(map(str, error.validator_value))  # type: ignore[attr-defined]
        message = f"{error.instance!r} is not allowed; allowed: {allowed}"  # type: ignore[attr-defined]
    elif validator == "additionalProperties":
        allowed = ", ".join(sorted(getattr(error, "schema", {}).get("properties", {}))) or "none"
        message = f"{message}; allowed keys: {allowed}"
    return f"config: {path}: {message}"


def _number(value: float) -> str:
    return f"{value:g}"


def run_id(
    variant: str, uses_n_w: bool, n_w: int, ratio: float, corruption: float, seed: int
) -> str:
    """Readable run id, e.g. ``supcon_nw10_R10_p0.2_s0`` (``_nw`` only for losses that take it)."""
    middle = f"_nw{n_w}" if uses_n_w else ""
    return f"{variant}{middle}_R{_number(ratio)}_p{_number(corruption)}_s{seed}"


def expand_experiment(
    name: str, experiment: Mapping[str, Any], plugins: list[str] | tuple[str, ...] = ()
) -> dict[str, dict[str, Any]]:
    """``{run_id: run config}`` for one experiment (configs validated by :class:`RunConfig`).
    ``plugins`` (the pipeline's) are added to every run so its job imports them too."""
    base = dict(experiment.get("base", {}))
    if plugins:
        base["plugins"] = [*plugins, *base.get("plugins", [])]
    grid = {
        axis: list(experiment.get("grid", {}).get(axis, GRID_DEFAULTS[axis])) for axis in GRID_AXES
    }
    runs: dict[str, dict[str, Any]] = {}
    for variant, spec in experiment["losses"].items():
        uses_n_w = LOSSES.get(spec["loss"]).needs.prototypes == "optional"
        n_ws = grid["n_w"] if uses_n_w else [0]
        combos = itertools.product(
            n_ws, grid["imbalance_ratio"], grid["label_corruption"], grid["seed"]
        )
        first = True
        for n_w, ratio, corruption, seed in combos:
            rid = run_id(variant, uses_n_w, n_w, ratio, corruption, seed)
            config = {
                **base,
                **spec,
                "run_id": rid,
                "experiment": name,
                "loss_name": variant,
                "n_w": n_w,
                "imbalance_ratio": ratio,
                "label_corruption": corruption,
                "seed": seed,
            }
            if first:  # every run of a variant differs only in its grid keys: check one fully
                try:
                    RunConfig.from_dict(config)
                except ValueError as error:
                    raise PipelineConfigError(
                        f"config: experiments.{name}.losses.{variant}: {error}"
                    ) from None
                first = False
            runs[rid] = config
    return runs


def expand(config: Mapping[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """``{experiment: {run_id: run config}}`` for a validated pipeline config."""
    plugins = list(config.get("plugins", []))
    return {
        name: expand_experiment(name, exp, plugins) for name, exp in config["experiments"].items()
    }
