"""Planning a pipeline config: everything the workflow does before Snakemake builds its DAG."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protolib.batching import BATCH_SECONDS
from protolib.pipeline.checks import (
    check_binding,
    check_gram_runs,
    check_imbalance_ratios,
    check_prototype_dims,
    check_results,
)
from protolib.pipeline.errors import fail as _fail
from protolib.pipeline.grid import expand
from protolib.pipeline.validation import load_all_plugins, registry_schema, validate_schema


@dataclass(frozen=True)
class Plan:
    """A validated pipeline config, expanded.

    ``runs`` is ``{experiment: {run_id: run config}}``; ``results`` the output folder;
    ``gram_runs`` the run ids whose Gram the report draws (``None``: its own choice);
    ``tracking_uri`` the MLflow store (``None``: SQLite under ``results``); ``notes``
    lines worth telling the user that are not errors (checks skipped at plan time);
    ``batch_seconds`` the estimated training seconds of one train job
    (:mod:`protolib.batching`).
    """

    runs: dict[str, dict[str, dict[str, Any]]]
    results: str
    gram_runs: list[str] | None
    tracking_uri: str | None
    notes: tuple[str, ...] = ()
    batch_seconds: float = BATCH_SECONDS


def _declared_plugins(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(key path, module)`` of every plugin named anywhere in a (not yet validated) config."""
    found: list[tuple[str, str]] = []

    def add(where: str, value: Any) -> None:
        if isinstance(value, list):
            found.extend((where, v) for v in value if isinstance(v, str))

    add("plugins", config.get("plugins"))
    experiments = config.get("experiments")
    for name, experiment in experiments.items() if isinstance(experiments, Mapping) else ():
        if not isinstance(experiment, Mapping):
            continue
        if isinstance(experiment.get("base"), Mapping):
            add(f"experiments.{name}.base.plugins", experiment["base"].get("plugins"))
        losses = experiment.get("losses")
        for variant, spec in losses.items() if isinstance(losses, Mapping) else ():
            if isinstance(spec, Mapping):
                add(f"experiments.{name}.losses.{variant}.plugins", spec.get("plugins"))
    return found


def plan(
    config: Any,
    schema_path: str | Path,
    *,
    workdir: str | Path | None = None,
    check_data: bool = True,
) -> Plan:
    """Validate and expand a pipeline config (everything the workflow does before its DAG).

    ``schema_path`` is ``workflow/schemas/config.schema.yaml``; ``workdir`` resolves a
    relative ``results`` (default: the current directory); ``check_data=False`` skips
    loading datasets to check imbalance ratios (a job re-planning what its main process
    already checked). Nothing is written. Raises
    :class:`PipelineConfigError` with one line naming the key, the value and what is
    allowed.
    """
    if not isinstance(config, Mapping):
        raise _fail(
            f"config: (top level): {type(config).__name__} is not allowed; allowed: a mapping "
            "with the key experiments"
        )
    config = copy.deepcopy(dict(config))
    for where, module in _declared_plugins(config):
        load_all_plugins([module], key=where)
    schema = registry_schema(schema_path)
    validate_schema(config, schema)
    results = check_results(config.get("results", "results"), Path(workdir or Path.cwd()))
    runs = expand(config)
    batch_seconds = config.get("batch_seconds", BATCH_SECONDS)
    if math.isnan(batch_seconds):
        raise _fail(
            f"config: batch_seconds: {batch_seconds} is not allowed; allowed: a number >= 0"
        )
    notes: tuple[str, ...] = ()
    if check_data:
        notes = check_imbalance_ratios(config, runs)
        for check in (check_binding, check_prototype_dims):
            notes += tuple(n for n in check(config, runs) if n not in notes)
    report = config.get("report", {})
    gram_runs = check_gram_runs(report.get("gram_runs"), runs)
    return Plan(
        runs=runs,
        results=results,
        gram_runs=gram_runs,
        tracking_uri=config.get("tracking_uri"),
        notes=notes,
        batch_seconds=float(batch_seconds),
    )
