"""What a training run asks of a cluster: its time limit, its GPU and its job group.

The pipeline's ``train`` rule takes its SLURM resources from here. The time limit is
derived from the run's budget (iterations or epochs, batch size, views, evaluation
cadence) and a per-model cost per sample, deliberately on the slow side for one
data-centre GPU; a run that still runs out of time checkpoints on SIGTERM and its retry,
with ``attempt`` times the limit, resumes.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from protolib.train.config import RunConfig

# Training seconds per sample (one view, forward and backward) on one GPU. Measured rates
# are several times higher (benchmarks/README.md); the margin covers slower GPUs and
# shared nodes. Evaluation passes cost a third of this per sample.
SECONDS_PER_SAMPLE = {
    "mlp": 2e-5,
    "cnn_small": 5e-5,
    "resnet18_cifar": 2e-4,
    "preact_resnet18_cifar": 2e-4,
}
OTHER_SECONDS_PER_SAMPLE = 1e-3  # timm and plugin models
# Training plus test images (the largest a variant can have: imbalance only removes some).
DATASET_SIZES = {"digits": 1797, "cifar10": 60000, "cifar100": 60000}
START_UP_SECONDS = 120  # interpreter, imports, data loading, the final probe
SAFETY = 2.0
# Runs whose time limit is at most this share SLURM jobs (the "small_runs" job group).
SMALL_RUN_MINUTES = 15
SMALL_RUNS_GROUP = "small_runs"

_DEFAULTS = {f.name: f.default for f in dataclasses.fields(RunConfig)}


def _get(run: Mapping[str, Any], key: str) -> Any:
    return run[key] if key in run else _DEFAULTS[key]


def _dataset_size(run: Mapping[str, Any]) -> int:
    name = _get(run, "dataset")
    if name == "synthetic":
        options = _get(run, "dataset_options") or {}
        return int(options.get("train_size", 1000)) + int(options.get("test_size", 200))
    return DATASET_SIZES.get(name, 60000)


def estimated_seconds(run: Mapping[str, Any]) -> float:
    """A generous estimate of one run's wall time on one GPU, in seconds."""
    size = _dataset_size(run)
    batch = int(_get(run, "batch_size"))
    epochs = _get(run, "epochs")
    iterations = (
        int(_get(run, "iterations"))
        if epochs is None
        else math.ceil(float(epochs) * math.ceil(size / batch))
    )
    model = _get(run, "model")
    cost = SECONDS_PER_SAMPLE.get(model, OTHER_SECONDS_PER_SAMPLE)
    training = iterations * batch * int(_get(run, "views")) * cost
    evaluations = iterations // int(_get(run, "eval_every")) + 1
    evaluating = evaluations * size * cost / 3
    return START_UP_SECONDS + training + evaluating


def runtime_minutes(run: Mapping[str, Any], attempt: int = 1) -> int:
    """The SLURM time limit in minutes: ``SAFETY`` × the estimate, × the attempt number."""
    return math.ceil(SAFETY * estimated_seconds(run) / 60) * max(1, int(attempt))


def gpus(run: Mapping[str, Any]) -> int:
    """One GPU, unless the run is pinned to the CPU."""
    return 0 if _get(run, "device") == "cpu" else 1


def job_group(run: Mapping[str, Any]) -> str | None:
    """``small_runs`` for runs short enough to share a SLURM job, else None (a job each)."""
    return SMALL_RUNS_GROUP if runtime_minutes(run) <= SMALL_RUN_MINUTES else None
