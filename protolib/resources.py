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
``GPU_MODEL``, ``GPU_PARTITION``, ``PARTITION`` and ``TRAIN_RUNTIME``.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
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
    model = _get(run, "model")
    device = "gpu" if gpus(run) else "cpu"
    table = GPU_SECONDS_PER_SAMPLE if device == "gpu" else CPU_SECONDS_PER_SAMPLE
    cost = table.get(model, OTHER_SECONDS_PER_SAMPLE[device])
    training = iterations * batch * int(_get(run, "views")) * cost
    evaluations = iterations // int(_get(run, "eval_every")) + 1
    evaluating = evaluations * size * cost / 3
    return training + evaluating


def runtime_minutes(runs: Mapping[str, Any] | Sequence[Mapping[str, Any]], attempt: int = 1) -> int:
    """The SLURM time limit in minutes of a job training ``runs`` (one run config, or a
    batch's, one after another): ``SAFETY`` × the estimate (one start-up, every run's
    training), or PROTOLIB_SLURM_TRAIN_RUNTIME when set; either way × the attempt number
    (a retry gets longer)."""
    override = _env("TRAIN_RUNTIME")
    if override:
        try:
            base = int(override)
        except ValueError:
            raise ValueError(
                f"{ENV_PREFIX}TRAIN_RUNTIME must be a whole number of minutes, got {override!r}"
            ) from None
    else:
        batch = [runs] if isinstance(runs, Mapping) else list(runs)
        seconds = START_UP_SECONDS + sum(training_seconds(run) for run in batch)
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
