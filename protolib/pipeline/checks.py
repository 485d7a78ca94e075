"""Plan-time checks: what can be checked before any job, cheaply.

The ``results`` folder; every imbalance ratio against its dataset under its run's
imbalance (``step`` with its minority fraction, or ``exp``: a class must keep a training
point); every prototype geometry against the embedding it is used with; dataset
options; ``report.gram_runs``. Each dataset is loaded once per process, never
downloaded; one whose files are absent here is left to its train jobs (a note says so).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from protolib.pipeline.errors import fail as _fail
from protolib.pipeline.grid import GRID_AXES, LOSS_NAME
from protolib.registry import DATASETS, LOSSES, RegistryError
from protolib.results.contract import IMBALANCE, IMBALANCE_RATIO, MINORITY_FRACTION, N_W
from protolib.train.config import RunConfig

#: Characters allowed in the ``results`` folder (it goes unquoted into shell commands and
#: into Snakemake patterns, where braces would be wildcards).
RESULTS_PATTERN = re.compile(r"^[A-Za-z0-9._/+=,@:-]+$")
_SHOWN_IDS = 6
RATIO = IMBALANCE_RATIO.name
#: Train labels and class count per (dataset, options), loaded once per process.
_SPLITS: dict[str, Any] = {}  # dataset key -> DatasetSplits, loaded once per process

Runs = Mapping[str, Mapping[str, Mapping[str, Any]]]  # experiment -> run id -> run config


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


def check_imbalance_ratios(config: Mapping[str, Any], runs: Runs) -> tuple[str, ...]:
    """Refuse an imbalance ratio that leaves a class without a training point under its
    run's imbalance (``step`` with its ``minority_fraction``, or ``exp``); each dataset is
    loaded once per options. A dataset whose files are absent here is not checked (its
    train jobs check before writing anything): a note says so."""
    from protolib.data.imbalance import check_imbalance
    from protolib.data.transforms import balance_classes

    wanted: dict[str, tuple[str, dict[str, Any], str, set[tuple[Any, ...]], bool]] = {}
    for name, experiment in runs.items():
        for run in experiment.values():
            dataset = run.get("dataset", RunConfig.dataset)
            options = run.get("dataset_options", {})
            balance = run.get("balance", RunConfig.balance) is True
            key = json.dumps([dataset, options], sort_keys=True)
            where = _written_at(config, name, run[LOSS_NAME], "dataset_options")
            entry = (dataset, options, where, set(), balance)
            wanted.setdefault(f"{key}{balance}", entry)[3].add(_imbalance_of(run))
    notes = []
    for dataset, options, where, imbalances, balance in wanted.values():
        key = json.dumps([dataset, options], sort_keys=True)
        _check_options(where, dataset, options)
        imbalances = {i for i in imbalances if i[0] != 1}  # R = 1 keeps every point
        if not imbalances:
            continue
        try:
            splits = _load(key, dataset, options)
            labels, num_classes = splits.train.labels, splits.num_classes
            if balance:  # every class at the smallest one's size (any seed: same counts)
                labels = labels[balance_classes(labels, num_classes, 0)]
        except OSError as error:
            notes.append(_unreadable(dataset, error))
            continue
        except Exception as error:
            raise _fail(f"config: {where}: {error}") from None
        for ratio, kind, fraction in sorted(imbalances):
            try:
                check_imbalance(labels, ratio, num_classes, kind=kind, minority_fraction=fraction)
            except ValueError as error:
                at = _ratio_key(config, runs, dataset, options, (ratio, kind, fraction))
                raise _fail(f"config: {at}: {error}") from None
    return tuple(notes)


def _imbalance_of(run: Mapping[str, Any]) -> tuple[Any, ...]:
    """A planned run's ``(imbalance_ratio, imbalance, minority_fraction)`` (every grid
    axis is in a planned run)."""
    return (run[RATIO], run[IMBALANCE.name], run[MINORITY_FRACTION.name])


def check_binding(config: Mapping[str, Any], runs: Runs) -> tuple[str, ...]:
    """Refuse a ``binding`` larger than a class of its run's training labels (after
    balancing, imbalance and corruption, computed here as the train job will); a dataset
    whose files are absent here is left to its train jobs (a note says so)."""
    from protolib.data.transforms import bound_points, split_validation, training_labels

    notes: list[str] = []
    defaults = RunConfig()
    for name, experiment in runs.items():
        for run_id, run in experiment.items():
            binding = run.get("binding", defaults.binding)
            if not binding:
                continue
            value = {k: run.get(k, getattr(defaults, k)) for k in _LABEL_KEYS}
            key = json.dumps([value["dataset"], value["dataset_options"]], sort_keys=True)
            try:
                splits = _load(key, value["dataset"], value["dataset_options"])
            except OSError as error:
                notes.append(_unreadable(value["dataset"], error))
                continue
            K = splits.num_classes
            try:
                options = {k: value[k] for k in _LABEL_KEYS[2:]}
                kept, labels, changed = training_labels(splits.train.labels, K, **options)
                held = run.get("validation_fraction", defaults.validation_fraction)
                if held:  # binding draws from what is left for training
                    (_, labels, _), _ = split_validation(
                        kept, labels, changed, held, K, value["seed"]
                    )
                bound_points(labels, binding, K, value["seed"])
            except ValueError as error:
                where = _written_at(config, name, run[LOSS_NAME], "binding")
                raise _fail(
                    f"config: {where}: {' '.join(str(error).split())} (run {run_id})"
                ) from None
    return tuple(dict.fromkeys(notes))


#: the run-config keys that decide a run's training labels (dataset first)
_LABEL_KEYS = (
    "dataset",
    "dataset_options",
    "balance",
    "imbalance",
    "imbalance_ratio",
    "minority_fraction",
    "label_corruption",
    "corruption_mode",
    "seed",
)


def check_prototype_dims(config: Mapping[str, Any], runs: Runs) -> tuple[str, ...]:
    """Refuse a prototype geometry that does not fit the embedding it is used with (e.g.
    ``etf`` with K classes needs at least K − 1 dimensions), for every run that uses
    prototypes (``n_w > 0``, or a loss that always does), each combination of dataset,
    model, projector and geometry once: the dataset gives K and the image shape, the model
    or ``projector_dim`` the embedding size. A dataset whose files are absent here is not
    checked (its train jobs check before writing anything): a note says so."""
    defaults = RunConfig()
    seen: set[str] = set()
    notes: list[str] = []
    for name, experiment in runs.items():
        for run in experiment.values():
            value = {k: run.get(k, getattr(defaults, k)) for k in _PROTOTYPE_KEYS}
            needs = LOSSES.get(value["loss"]).needs_for(value["loss_options"]).prototypes
            if not (needs == "yes" or (needs == "optional" and value[N_W.name] > 0)):
                continue
            key = json.dumps(
                {k: value[k] for k in _PROTOTYPE_KEYS if k != N_W.name}, sort_keys=True
            )
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
                where = _written_at(config, name, run[LOSS_NAME], "dataset_options")
                raise _fail(f"config: {where}: {' '.join(str(error).split())}") from None
            _check_geometry(_written_at(config, name, run[LOSS_NAME], "geometry"), value, splits)
    return tuple(notes)


def _check_geometry(where: str, value: Mapping[str, Any], splits: Any) -> None:
    """Build the prototypes of ``value`` (a run's :data:`_PROTOTYPE_KEYS`) for the
    embedding its model or projector gives on ``splits``; one line when they do not fit."""
    from protolib.geometry import GeometryError, make_prototypes
    from protolib.models import build_backbone

    try:
        if value["projector"] != "none":
            dim = value["projector_dim"]
        else:
            backbone = build_backbone(
                value["model"], in_shape=splits.image_shape, **value["model_options"]
            )
            dim = backbone.out_dim
        make_prototypes(value["geometry"], splits.num_classes, dim, **value["geometry_options"])
    except (GeometryError, RegistryError, TypeError, ValueError) as error:
        raise _fail(
            f"config: {where}: {' '.join(str(error).split())} (the embedding dimension "
            "is set by the model or projector_dim)"
        ) from None


_PROTOTYPE_KEYS = (
    "loss",
    "loss_options",
    N_W.name,
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
    runs: Runs,
    dataset: str,
    options: Mapping[str, Any],
    imbalance: tuple[Any, ...],
) -> str:
    """The key path where the imbalance ratio of a run with ``imbalance`` (its
    :func:`_imbalance_of`) was written (for the error message)."""
    for name, experiment in runs.items():
        for run in experiment.values():
            if (
                _imbalance_of(run) == imbalance
                and run.get("dataset", RunConfig.dataset) == dataset
                and run.get("dataset_options", {}) == dict(options)
            ):
                where = _written_at(config, name, run[LOSS_NAME], RATIO)
                if where.endswith(f".grid.{RATIO}"):
                    values = config["experiments"][name]["grid"][RATIO]
                    where += f".{values.index(imbalance[0])}"
                return where
    return RATIO


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
