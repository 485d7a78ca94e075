"""The pipeline config (``config.yaml``): reading, validation and expansion into runs.

``config.yaml`` names one or more experiments; each has ``base`` run-config keys, named
loss variants (a registered loss plus run-config keys for it) and a ``grid`` over
``n_w``, ``imbalance_ratio``, ``label_corruption`` and ``seed``. A grid key may instead
be one scalar in ``base`` or in a loss variant (the variant's wins for that variant): a
one-value axis. The ``n_w`` axis of ``grid`` and ``base`` is expanded only for losses
that take prototype copies (``LossNeeds.prototypes == "optional"``), so plain CE is not
repeated per ``n_w``.

:func:`plan` is everything the workflow does before Snakemake builds its DAG: import the
plugins, validate against the JSON schema (registry names filled in), expand the grid
into one run config per grid point with a distinct, readable run id, and check what can
be checked cheaply (every run config, every imbalance ratio against its dataset,
``report.gram_runs``, the ``results`` folder). Each problem raises
:class:`PipelineConfigError` with one line naming the key, the value and what is allowed.
:func:`read_config_file` reads a YAML file strictly (duplicate keys and syntax errors are
one-line errors with file and line).
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from protolib.batching import BATCH_SECONDS
from protolib.registry import DATASETS, GEOMETRIES, LOSSES, RegistryError, load_plugins
from protolib.train.config import RunConfig

GRID_AXES = ("n_w", "imbalance_ratio", "label_corruption", "seed")
GRID_DEFAULTS: dict[str, list[Any]] = {
    "n_w": [0],
    "imbalance_ratio": [1],
    "label_corruption": [0],
    "seed": [0],
}
#: Run-config keys the pipeline sets itself; a config may not set them.
RESERVED_KEYS = ("run_id", "experiment", "loss_name")
#: What each grid axis allows (one value).
AXIS_ALLOWED = {
    "n_w": "an integer >= 0",
    "imbalance_ratio": "a finite number >= 1",
    "label_corruption": "a number in [0, 1]",
    "seed": "an integer in [0, 2**32)",
}
MAX_SEED = 2**32 - 1
#: Characters allowed in the ``results`` folder (it goes unquoted into shell commands and
#: into Snakemake patterns, where braces would be wildcards).
RESULTS_PATTERN = re.compile(r"^[A-Za-z0-9._/+=,@:-]+$")
_SHOWN_IDS = 6
#: Train labels and class count per (dataset, options), loaded once per process.
_SPLITS: dict[str, Any] = {}  # dataset key -> DatasetSplits, loaded once per process


class PipelineConfigError(ValueError):
    """An invalid pipeline config; the one-line message names the key and what is allowed."""


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


def _fail(message: str) -> PipelineConfigError:
    return PipelineConfigError(" ".join(str(message).split()))


# ------------------------------------------------------------------------- reading files


class _StrictLoader(yaml.SafeLoader):
    """A SafeLoader that refuses duplicate mapping keys (merge keys ``<<`` may be overridden)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: SafeLoader refuses it below
                    continue
                line = key_node.start_mark.line + 1
                if first is not None:
                    raise _fail(
                        f"config: {key_node.start_mark.name}:{line}: duplicate key {key!r} "
                        f"(first at line {first}); each key may appear once in a mapping"
                    )
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def read_config_file(path: str | Path) -> Any:
    """The YAML (or JSON) document in ``path``, read strictly: a duplicate key, a syntax
    error or a missing file raises :class:`PipelineConfigError` naming file and line."""
    path = Path(path)
    try:
        with path.open(encoding="utf-8") as handle:
            return yaml.load(handle, Loader=_StrictLoader)
    except FileNotFoundError:
        raise _fail(f"config: {path}: no such file; allowed: an existing YAML file") from None
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = error.problem or error.context or "syntax error"
        if error.context and error.problem and error.context_mark:
            start = error.context_mark
            problem += f" ({error.context} at line {start.line + 1}, column {start.column + 1})"
        raise _fail(f"config: {where}: invalid YAML: {problem}") from None
    except (yaml.YAMLError, OSError, UnicodeDecodeError) as error:
        raise _fail(f"config: {path}: cannot be read as YAML: {error}") from None


# ------------------------------------------------------------------------------ schema


def load_all_plugins(modules: list[str] | tuple[str, ...], key: str = "plugins") -> None:
    """Import each plugin module (and the installed entry points); any failure on import
    becomes one :class:`PipelineConfigError` naming the module."""
    for module in modules:
        try:
            load_plugins([module])
        except ImportError as error:
            raise _fail(f"config: {key}: {error}") from None
        except (Exception, SystemExit) as error:
            raise _fail(
                f"config: {key}: plugin module {module!r} could not be imported: "
                f"{type(error).__name__}: {error}"
            ) from None
    try:
        load_plugins([])
    except (Exception, SystemExit) as error:
        raise _fail(
            f"config: {key}: an installed 'protolib.plugins' entry point failed to load: "
            f"{type(error).__name__}: {error}"
        ) from None


def registry_schema(path: str | Path, plugins: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """The JSON schema at ``path`` with registry names filled into its empty ``enum``s
    (after importing ``plugins``, which may register more names)."""
    load_all_plugins(list(plugins))
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
    return " ".join(f"config: {path}: {message}".split())


def validate_schema(config: Any, schema: Mapping[str, Any]) -> None:
    """Raise :class:`PipelineConfigError` for the most relevant schema violation."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import best_match

    error = best_match(Draft202012Validator(schema).iter_errors(config))
    if error is not None:
        raise _fail(describe_validation_error(error))


# --------------------------------------------------------------------------- values


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _axis_value_ok(axis: str, value: Any) -> bool:
    if axis == "n_w":
        return _is_int(value) and value >= 0
    if axis == "seed":
        return _is_int(value) and 0 <= value <= MAX_SEED
    if not _is_number(value) or not math.isfinite(value):
        return False
    if axis == "imbalance_ratio":
        return value >= 1
    return 0 <= value <= 1


def _check_axis_value(where: str, axis: str, value: Any, hint: str = "") -> None:
    if not _axis_value_ok(axis, value):
        raise _fail(
            f"config: {where}: {value!r} is not allowed; allowed: {AXIS_ALLOWED[axis]}{hint}"
        )


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


def run_id(
    variant: str, uses_n_w: bool, n_w: int, ratio: float, corruption: float, seed: int
) -> str:
    """Readable run id, e.g. ``supcon_nw10_R10_p0.2_s0`` (``_nw`` only for losses that take it)."""
    middle = f"_nw{n_w}" if uses_n_w else ""
    return f"{variant}{middle}_R{format_number(ratio)}_p{format_number(corruption)}_s{seed}"


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
    variant): a valid axis value, and not also a list under the experiment's grid."""
    where = f"{mapping}.{axis}"
    if axis in grid:
        raise _fail(
            f"config: {where}: {value!r} conflicts with experiments.{name}.grid.{axis}; "
            f"allowed: {axis} in one place (a list in grid, or one value in base or a loss "
            "variant)"
        )
    _check_axis_value(where, axis, value, f" (a list of values belongs in experiments.{name}.grid)")


def _variant_axes(
    name: str,
    variant: str,
    spec: Mapping[str, Any],
    uses_n_w: bool,
    base_axes: Mapping[str, Any],
    grid: Mapping[str, list[Any]],
) -> dict[str, list[Any]]:
    """The values of each axis for one loss variant."""
    axes: dict[str, list[Any]] = {}
    for axis in GRID_AXES:
        if axis in spec:
            where = f"experiments.{name}.losses.{variant}"
            _check_scalar_axis(name, where, axis, spec[axis], grid)
            axes[axis] = [spec[axis]]
        elif axis == "n_w" and not uses_n_w:
            axes[axis] = [0]  # losses without prototype copies are not repeated per n_w
        elif axis in base_axes:
            axes[axis] = [base_axes[axis]]
        else:
            axes[axis] = list(grid.get(axis, GRID_DEFAULTS[axis]))
    return axes


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
    for variant, spec in experiment["losses"].items():
        where = f"experiments.{name}.losses.{variant}"
        _check_reserved(where, spec)
        _check_json_values(where, spec)
        uses_n_w = LOSSES.get(spec["loss"]).needs.prototypes == "optional"
        axes = _variant_axes(name, variant, spec, uses_n_w, base_axes, grid)
        fixed = {
            **shared,
            **{k: v for k, v in spec.items() if k not in GRID_AXES},
            "experiment": name,
            "loss_name": variant,
        }
        run_plugins = list(dict.fromkeys([*plugins, *base_plugins, *_plugin_list(where, spec)]))
        if run_plugins:
            fixed["plugins"] = run_plugins
        elif "plugins" in fixed:
            fixed["plugins"] = []
        # Run configs of a variant differ only in their grid keys, each checked above for
        # every value (as RunConfig checks them: one at a time); validate one run fully.
        corner = {axis: values[0] for axis, values in axes.items()}
        _validate_run(
            where, {**fixed, **corner, "run_id": run_id(variant, uses_n_w, **_args(corner))}
        )
        for combo in itertools.product(*(axes[a] for a in GRID_AXES)):
            values = dict(zip(GRID_AXES, combo, strict=True))
            rid = run_id(variant, uses_n_w, **_args(values))
            if rid in runs:
                raise _fail(
                    f"config: experiments.{name}.losses: grid points {points[rid]} and "
                    f"{_point(variant, values)} would share the run id {rid!r}; allowed: "
                    "one run id per grid point (rename a loss variant)"
                )
            points[rid] = _point(variant, values)
            runs[rid] = {**fixed, "run_id": rid, **values}
    return runs


def _args(values: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "n_w": values["n_w"],
        "ratio": values["imbalance_ratio"],
        "corruption": values["label_corruption"],
        "seed": values["seed"],
    }


def expand(config: Mapping[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """``{experiment: {run_id: run config}}`` for a schema-valid pipeline config."""
    plugins = list(config.get("plugins", []))
    return {
        name: expand_experiment(name, exp, plugins) for name, exp in config["experiments"].items()
    }


# ------------------------------------------------------------------------------ checks


def check_results(results: str, workdir: Path) -> str:
    """The results folder, normalised; refused when it cannot be a folder we can write."""
    if not results.strip():
        raise _fail(f"config: results: {results!r} is not allowed; allowed: a folder path")
    if not RESULTS_PATTERN.match(results):
        raise _fail(
            f"config: results: {results!r} is not allowed; allowed: a folder path of letters, "
            "digits and . _ - + = , @ : / (no spaces, quotes or braces)"
        )
    normal = os.path.normpath(results)
    path = Path(normal) if Path(normal).is_absolute() else workdir / normal
    if path.exists() and not path.is_dir():
        raise _fail(
            f"config: results: {results!r} is an existing file; allowed: a folder "
            "(existing or to be created)"
        )
    for parent in Path(normal).parents:
        if (workdir / parent).exists():
            if not (workdir / parent).is_dir():
                raise _fail(
                    f"config: results: {results!r} lies under {str(parent)!r}, which is a "
                    "file; allowed: a folder (existing or to be created)"
                )
            break
    return normal


def _plan_time_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Dataset options for a plan-time load: never download (the train job may)."""
    return {**options, "download": False} if "download" in options else dict(options)


def _unreadable(dataset: str, error: OSError) -> str:
    return (
        f"note: dataset {dataset!r} is not readable here ({type(error).__name__}); its "
        "imbalance ratios and prototype geometries are checked by each train job before it "
        "writes anything"
    )


def _load(key: str, dataset: str, options: Mapping[str, Any]) -> Any:
    """The dataset's splits, loaded once per process (never downloaded here)."""
    from protolib.data import load_dataset

    if key not in _SPLITS:
        _SPLITS[key] = load_dataset(dataset, **_plan_time_options(options))
    return _SPLITS[key]


def check_imbalance_ratios(
    config: Mapping[str, Any], runs: Mapping[str, Mapping[str, Mapping[str, Any]]]
) -> tuple[str, ...]:
    """Refuse an imbalance ratio that leaves a class without a training point; each
    dataset is loaded once per options. A dataset whose files are absent here is not
    checked (its train jobs check before writing anything): a note says so."""
    from protolib.data.transforms import check_imbalance

    wanted: dict[str, tuple[str, dict[str, Any], str, set[float]]] = {}
    for name, experiment in runs.items():
        for run in experiment.values():
            dataset = run.get("dataset", RunConfig.dataset)
            options = run.get("dataset_options", {})
            key = json.dumps([dataset, options], sort_keys=True)
            where = _written_at(config, name, run["loss_name"], "dataset_options")
            wanted.setdefault(key, (dataset, options, where, set()))[3].add(run["imbalance_ratio"])
    notes = []
    for key, (dataset, options, where, ratios) in wanted.items():
        _check_options(where, dataset, options)
        ratios.discard(1)
        if not ratios:
            continue
        try:
            splits = _load(key, dataset, options)
            labels, num_classes = splits.train.labels, splits.num_classes
        except OSError as error:
            notes.append(_unreadable(dataset, error))
            continue
        except Exception as error:
            raise _fail(f"config: {where}.dataset_options: {error}") from None
        for ratio in sorted(ratios):
            try:
                check_imbalance(labels, ratio, num_classes)
            except ValueError as error:
                raise _fail(
                    f"config: {_ratio_key(config, runs, dataset, options, ratio)}: {error}"
                ) from None
    return tuple(notes)


def check_prototype_dims(
    config: Mapping[str, Any], runs: Mapping[str, Mapping[str, Mapping[str, Any]]]
) -> tuple[str, ...]:
    """Refuse a prototype geometry that does not fit the embedding it is used with (e.g.
    ``etf`` with K classes needs at least K − 1 dimensions), for every run that uses
    prototypes (``n_w > 0``, or a loss that always does), each combination of dataset,
    model, projector and geometry once: the dataset gives K and the image shape, the model
    or ``projector_dim`` the embedding size. A dataset whose files are absent here is not
    checked (its train jobs check before writing anything): a note says so."""
    from protolib.geometry import GeometryError, make_prototypes
    from protolib.models import build_backbone

    defaults = RunConfig()
    seen: set[str] = set()
    notes: list[str] = []
    for name, experiment in runs.items():
        for run in experiment.values():
            value = {k: run.get(k, getattr(defaults, k)) for k in _PROTOTYPE_KEYS}
            needs = LOSSES.get(value["loss"]).needs.prototypes
            if not (needs == "yes" or (needs == "optional" and value["n_w"] > 0)):
                continue
            key = json.dumps({k: value[k] for k in _PROTOTYPE_KEYS if k != "n_w"}, sort_keys=True)
            if key in seen:
                continue
            seen.add(key)
            dataset, options = value["dataset"], value["dataset_options"]
            try:
                splits = _load(json.dumps([dataset, options], sort_keys=True), dataset, options)
            except OSError as error:
                notes.append(_unreadable(dataset, error))
                continue
            except Exception as error:
                where = _written_at(config, name, run["loss_name"], "dataset_options")
                raise _fail(f"config: {where}: {' '.join(str(error).split())}") from None
            where = _written_at(config, name, run["loss_name"], "geometry")
            try:
                if value["projector"] != "none":
                    dim = value["projector_dim"]
                else:
                    backbone = build_backbone(
                        value["model"], in_shape=splits.image_shape, **value["model_options"]
                    )
                    dim = backbone.out_dim
                make_prototypes(
                    value["geometry"], splits.num_classes, dim, **value["geometry_options"]
                )
            except (GeometryError, RegistryError, TypeError, ValueError) as error:
                raise _fail(
                    f"config: {where}: {' '.join(str(error).split())} (the embedding dimension "
                    "is set by the model or projector_dim)"
                ) from None
    return tuple(notes)


_PROTOTYPE_KEYS = (
    "loss",
    "n_w",
    "dataset",
    "dataset_options",
    "model",
    "model_options",
    "projector",
    "projector_dim",
    "geometry",
    "geometry_options",
)


def _check_options(where: str, dataset: str, options: Mapping[str, Any]) -> None:
    """Dataset options the dataset's loader does not accept are refused."""
    try:
        DATASETS.check_options(dataset, **options)
    except RegistryError as error:
        raise _fail(f"config: {where}: {dict(options)!r} is not allowed ({error})") from None


def _written_at(config: Mapping[str, Any], name: str, variant: str, key: str) -> str:
    """The key path where a run-config key of a loss variant is written."""
    experiment = config["experiments"][name]
    if key in experiment["losses"][variant]:
        return f"experiments.{name}.losses.{variant}.{key}"
    if key in experiment.get("base", {}) or key not in GRID_AXES:
        return f"experiments.{name}.base.{key}"
    return f"experiments.{name}.grid.{key}"


def _ratio_key(
    config: Mapping[str, Any],
    runs: Mapping[str, Mapping[str, Mapping[str, Any]]],
    dataset: str,
    options: Mapping[str, Any],
    ratio: float,
) -> str:
    """The key path where an imbalance ratio was written (for the error message)."""
    for name, experiment in runs.items():
        for run in experiment.values():
            if (
                run["imbalance_ratio"] == ratio
                and run.get("dataset", RunConfig.dataset) == dataset
                and run.get("dataset_options", {}) == dict(options)
            ):
                where = _written_at(config, name, run["loss_name"], "imbalance_ratio")
                if where.endswith(".grid.imbalance_ratio"):
                    values = config["experiments"][name]["grid"]["imbalance_ratio"]
                    where += f".{values.index(ratio)}"
                return where
    return "imbalance_ratio"


def check_gram_runs(
    gram_runs: list[str] | None, runs: Mapping[str, Mapping[str, Any]]
) -> list[str] | None:
    """``report.gram_runs`` must name run ids of every experiment (each report draws them)."""
    if gram_runs is None:
        return None
    for i, rid in enumerate(gram_runs):
        for name, experiment in runs.items():
            if rid not in experiment:
                ids = sorted(experiment)
                shown = ", ".join(ids[:_SHOWN_IDS]) + (", …" if len(ids) > _SHOWN_IDS else "")
                raise _fail(
                    f"config: report.gram_runs.{i}: {rid!r} is not a run id of experiment "
                    f"{name!r}; allowed: its run ids ({len(ids)}: {shown})"
                )
    return list(gram_runs)


# -------------------------------------------------------------------------------- plan


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
        notes += tuple(n for n in check_prototype_dims(config, runs) if n not in notes)
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
