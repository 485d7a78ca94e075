"""What a training run asks of a cluster: its time limit, its GPU, its partition and GPU
type, and its job group (the ``train`` rule's resources; ``slurm/config.v8+.yaml``).

The time limit is derived from the run's budget (iterations or epochs, batch size, views,
evaluation cadence) and a per-model cost per sample, deliberately on the slow side; a run
that still runs out of time checkpoints on SIGTERM and its retry, with ``attempt`` times
the limit, resumes. Runs pinned to the CPU (``device: cpu``) request no GPU, use CPU
costs, go to the general partition and never share a job.

Site values that differ between GPU and CPU runs are read here, from the same
``PROTOLIB_SLURM_*`` environment variables as the profile (README, "Running on SLURM"):
``GPU_MODEL``, ``GPU_PARTITION``, ``PARTITION`` and ``TRAIN_RUNTIME``.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from typing import Any

from protolib.train.config import RunConfig

# Training seconds per sample (one view, forward and backward) on one GPU, and on one CPU
# core, on the slow side: the margin covers slower devices and shared nodes (CPU: a CIFAR
# ResNet-18 trains at about 32 images/s on one core of a 2-core VM, benchmarks/README.md).
# Evaluation passes cost a third of this per sample.
GPU_SECONDS_PER_SAMPLE = {
    "mlp": 2e-5,
    "cnn_small": 5e-5,
    "resnet18_cifar": 2e-4,
    "preact_resnet18_cifar": 2e-4,
}
CPU_SECONDS_PER_SAMPLE = {
    "mlp": 2e-5,
    "cnn_small": 5e-4,
    "resnet18_cifar": 4e-2,
    "preact_resnet18_cifar": 4e-2,
}
OTHER_SECONDS_PER_SAMPLE = {"gpu": 1e-3, "cpu": 1e-1}  # timm and plugin models
# Training plus test images (the largest a variant can have: imbalance only removes some).
DATASET_SIZES = {"digits": 1797, "cifar10": 60000, "cifar100": 60000}
START_UP_SECONDS = 120  # interpreter, imports, data loading, the final probe
SAFETY = 2.0
# GPU runs whose time limit is at most this share SLURM jobs (the group "small_runs").
SMALL_RUN_MINUTES = 15
SMALL_RUNS_GROUP = "small_runs"
ENV_PREFIX = "PROTOLIB_SLURM_"

_DEFAULTS = {f.name: f.default for f in dataclasses.fields(RunConfig)}


def _get(run: Mapping[str, Any], key: str) -> Any:
    return run[key] if key in run else _DEFAULTS[key]


def _env(name: str) -> str:
    return os.environ.get(ENV_PREFIX + name, "")


def _dataset_size(run: Mapping[str, Any]) -> int:
    name = _get(run, "dataset")
    if name == "synthetic":
        options = _get(run, "dataset_options") or {}
        return int(options.get("train_size", 1000)) + int(options.get("test_size", 200))
    return DATASET_SIZES.get(name, 60000)


def gpus(run: Mapping[str, Any]) -> int:
    """One GPU, unless the run is pinned to the CPU."""
    return 0 if _get(run, "device") == "cpu" else 1


def estimated_seconds(run: Mapping[str, Any]) -> float:
    """A generous estimate of one run's wall time (on one GPU, or on the CPU), in seconds."""
    size = _dataset_size(run)
    batch = int(_get(run, "batch_size"))
    epochs = _get(run, "epochs")
    iterations = (
        int(_get(run, "iterations"))
        if epochs is None
        else math.ceil(float(epochs) * math.ceil(size / batch))
    )
    model = _get(run, "model")
    device = "gpu" if gpus(run) else "cpu"
    table = GPU_SECONDS_PER_SAMPLE if device == "gpu" else CPU_SECONDS_PER_SAMPLE
    cost = table.get(model, OTHER_SECONDS_PER_SAMPLE[device])
    training = iterations * batch * int(_get(run, "views")) * cost
    evaluations = iterations // int(_get(run, "eval_every")) + 1
    evaluating = evaluations * size * cost / 3
    return START_UP_SECONDS + training + evaluating


def runtime_minutes(run: Mapping[str, Any], attempt: int = 1) -> int:
    """The SLURM time limit in minutes: ``SAFETY`` × the estimate, or PROTOLIB_SLURM_
    TRAIN_RUNTIME when set; either way × the attempt number (a retry gets longer)."""
    override = _env("TRAIN_RUNTIME")
    if override:
        try:
            base = int(override)
        except ValueError:
            raise ValueError(
                f"{ENV_PREFIX}TRAIN_RUNTIME must be a whole number of minutes, got {override!r}"
            ) from None
    else:
        base = math.ceil(SAFETY * estimated_seconds(run) / 60)
    return base * max(1, int(attempt))


def job_group(run: Mapping[str, Any]) -> str | None:
    """``small_runs`` for GPU runs short enough to share a SLURM job, else None (a job
    each). Members of a group take turns on its one GPU; CPU runs are never grouped."""
    if gpus(run) and runtime_minutes(run) <= SMALL_RUN_MINUTES:
        return SMALL_RUNS_GROUP
    return None


def gpu_model(run: Mapping[str, Any]) -> str:
    """The requested GPU type (``--gpus=<model>:1``), empty for any GPU or a CPU run."""
    return _env("GPU_MODEL") if gpus(run) else ""


def partition(run: Mapping[str, Any]) -> str:
    """The run's partition: the GPU partition for GPU runs (else the general one); empty
    leaves the choice to the cluster's default."""
    if gpus(run):
        return _env("GPU_PARTITION") or _env("PARTITION")
    return _env("PARTITION")
