"""What a train job asks of a cluster: its time limit, its GPU, its partition and GPU
type (the ``train`` rule's resources; ``slurm/config.v8+.yaml``). A train job is a batch
of runs (:mod:`protolib.batching`), which are trained one after another.

The time limit is derived from the run's budget (iterations or epochs, batch size, views,
evaluation cadence) and a per-model cost per sample, deliberately on the slow side; a run
that still runs out of time checkpoints on SIGTERM and its retry, with ``attempt`` times
the limit, resumes. Runs pinned to the CPU (``device: cpu``) request no GPU, use CPU
costs, go to the general partition and never share a job with GPU runs.

Site values that differ between GPU and CPU runs are read here, from the same
``PROTOLIB_SLURM_*`` environment variables as the profile (README, "Running on SLURM"):
``GPU_MODEL``, ``GPU_PARTITION``, ``PARTITION`` and ``TRAIN_RUNTIME``; and
``PROCESSES_PER_RUN`` (:func:`processes_per_run`, default 1): each run of a train job
trains on that many processes (MATH.md §1.10), one GPU each for GPU runs, started by
``srun`` inside the SLURM job (``torchrun --standalone`` on a machine without SLURM).
Runs whose batches those processes cannot share equally are refused when the workflow
is planned (:func:`check_processes`), not after the job has waited in the queue.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from protolib.registry import DATASETS, MODELS, Registry
from protolib.train.config import ConfigError, RunConfig

# Costs and sizes are facts of the registry entries (Registry.register): a model declares
# ``gpu_seconds_per_sample`` and ``cpu_seconds_per_sample`` (training, one view, forward
# and backward, on one GPU / one CPU core; protolib/models/), a dataset its
# ``size`` (training plus test images: the largest a variant can have, imbalance only
# removes some; protolib/data/). Evaluation passes cost a third of training per sample.
# An entry without these facts (a plugin, a ``timm:`` model) gets these conservative
# defaults, on the slow side:
OTHER_SECONDS_PER_SAMPLE = {"gpu": 1e-3, "cpu": 1e-1}
OTHER_DATASET_SIZE = 60000
START_UP_SECONDS = 120  # interpreter, imports, data loading, the final probe
SAFETY = 2.0
ENV_PREFIX = "PROTOLIB_SLURM_"
#: the most processes one run may train on
MAX_PROCESSES = 4096

_DEFAULTS = {f.name: f.default for f in dataclasses.fields(RunConfig)}


def _get(run: Mapping[str, Any], key: str) -> Any:
    return run[key] if key in run else _DEFAULTS[key]


def _env(name: str) -> str:
    return os.environ.get(ENV_PREFIX + name, "")


def _fact(registry: Registry[Any], name: str, key: str, default: Any, **kw: Any) -> Any:
    """The fact ``key`` of entry ``name`` (checked by the registry's rules), or ``default``
    when the entry is not registered in this process or does not declare it."""
    if not isinstance(name, str) or name not in registry:
        return default
    return registry.fact(name, key, default, **kw)


def _dataset_size(run: Mapping[str, Any]) -> int:
    """Training plus test images of the run's dataset (its ``size`` fact)."""
    options = _get(run, "dataset_options") or {}
    return _fact(DATASETS, _get(run, "dataset"), "size", OTHER_DATASET_SIZE, options=options)


def _seconds_per_sample(run: Mapping[str, Any], device: str) -> float:
    """The run's model's training cost per sample on ``device`` (``gpu`` or ``cpu``)."""
    key = f"{device}_seconds_per_sample"
    return _fact(MODELS, _get(run, "model"), key, OTHER_SECONDS_PER_SAMPLE[device])


def gpus(run: Mapping[str, Any]) -> int:
    """One GPU, unless the run is pinned to the CPU."""
    return 0 if _get(run, "device") == "cpu" else 1


def estimated_seconds(run: Mapping[str, Any]) -> float:
    """A generous estimate of one run's wall time (on one GPU, or on the CPU), in seconds."""
    return START_UP_SECONDS + training_seconds(run)


def training_seconds(run: Mapping[str, Any]) -> float:
    """:func:`estimated_seconds` without the process start-up: training and evaluations."""
    size = _dataset_size(run)
    batch = int(_get(run, "batch_size"))
    epochs = _get(run, "epochs")
    iterations = (
        int(_get(run, "iterations"))
        if epochs is None
        else math.ceil(float(epochs) * math.ceil(size / batch))
    )
    device = "gpu" if gpus(run) else "cpu"
    cost = _seconds_per_sample(run, device)
    training = iterations * batch * int(_get(run, "views")) * cost
    evaluations = iterations // int(_get(run, "eval_every")) + 1
    evaluating = evaluations * size * cost / 3
    return training + evaluating


def runtime_minutes(runs: Sequence[Mapping[str, Any]], attempt: int = 1) -> int:
    """The SLURM time limit in minutes of a train job, which trains ``runs`` (run configs)
    one after another: ``SAFETY`` × the estimate (one start-up, every run's training), or
    PROTOLIB_SLURM_TRAIN_RUNTIME when set; either way × the attempt number (a retry gets
    longer)."""
    override = _env("TRAIN_RUNTIME")
    if override:
        try:
            base = int(override)
        except ValueError:
            raise ValueError(
                f"{ENV_PREFIX}TRAIN_RUNTIME must be a whole number of minutes, got {override!r}"
            ) from None
    else:
        seconds = START_UP_SECONDS + sum(training_seconds(run) for run in runs)
        base = math.ceil(SAFETY * seconds / 60)
    return base * max(1, int(attempt))


def gpu_model(run: Mapping[str, Any]) -> str:
    """The requested GPU type (``--gpus=<model>:1``), empty for any GPU or a CPU run."""
    return _env("GPU_MODEL") if gpus(run) else ""


def partition(run: Mapping[str, Any]) -> str:
    """The run's partition: the GPU partition for GPU runs (else the general one); empty
    leaves the choice to the cluster's default."""
    if gpus(run):
        return _env("GPU_PARTITION") or _env("PARTITION")
    return _env("PARTITION")


def processes_per_run() -> int:
    """PROTOLIB_SLURM_PROCESSES_PER_RUN: how many processes train each run (default 1);
    :class:`ConfigError` naming the variable for anything but an integer in
    1..:data:`MAX_PROCESSES`."""
    raw = _env("PROCESSES_PER_RUN").strip()
    if not raw:
        return 1
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_PROCESSES:
        raise ConfigError(
            f"{ENV_PREFIX}PROCESSES_PER_RUN must be an integer in 1..{MAX_PROCESSES} "
            f"(processes per run), got {raw!r}"
        )
    return value


def job_tasks(run: Mapping[str, Any], processes: int) -> dict[str, Any]:
    """The GPUs and tasks a train job of ``run``'s kind asks for, with ``processes`` per
    run (a value of None: not asked): ``gpu``, one per process for a GPU run; with several
    processes also ``tasks`` (one per process), ``tasks_per_gpu`` (1, for a GPU run) and
    ``mpi`` (``srun``): with it, the SLURM executor plugin runs the job's command as it is
    in the allocation (not under ``srun -n1``), and the command starts the tasks."""
    several = processes > 1
    return {
        "gpu": gpus(run) * processes,
        "tasks": processes if several else None,
        "tasks_per_gpu": 1 if several and gpus(run) else None,
        "mpi": "srun" if several else None,
    }


def check_batch_split(batch_size: int, size: int) -> None:
    """Refuse a ``batch_size`` that ``size`` processes cannot share equally."""
    if batch_size % size:
        raise ConfigError(
            f"batch_size {batch_size} does not split into {size} equal shards, one per "
            f"process; allowed: a multiple of {size} (or another number of processes)"
        )


def check_processes(runs: Mapping[str, Mapping[str, Any]], processes: int) -> None:
    """Refuse, naming the run and :func:`processes_per_run`'s variable, a run
    (``{run_id: run config}``) whose batch ``processes`` processes cannot share equally:
    its ``batch_size``, and the points ``binding`` adds to every batch (per class of its
    dataset, when the dataset declares ``num_classes``)."""
    if processes == 1:
        return
    where = f"{ENV_PREFIX}PROCESSES_PER_RUN is {processes}"
    for run_id, run in runs.items():
        try:
            check_batch_split(int(_get(run, "batch_size")), processes)
        except ConfigError as error:
            raise ConfigError(f"{where}; run {run_id}: {error}") from None
        binding = int(_get(run, "binding"))
        options = _get(run, "dataset_options") or {}
        classes = _fact(DATASETS, _get(run, "dataset"), "num_classes", None, options=options)
        if binding and classes and binding * classes % processes:
            raise ConfigError(
                f"{where}; run {run_id}: binding {binding} adds {binding * classes} bound "
                f"points to every batch, which do not split into {processes} equal shards; "
                f"allowed: a binding whose {classes} classes' points are a multiple of "
                f"{processes} (or another number of processes)"
            )
