"""The pipeline's train jobs: short runs trained several to a process.

Starting a training process costs seconds (the interpreter, ``import torch``, the data),
while a digits run trains in a few: one run per job spent half of every job starting.
So a train job is a *batch*, one ``protolib train --batch`` process that trains its runs
in turn, each into its own run directory with its own log, lock and resume state, with
the results it would have alone.

Runs are batched per experiment, in plan order, among runs that ask for the same
resources (GPU or CPU, partition, GPU type). A run whose estimated training time
(:func:`protolib.resources.training_seconds`) exceeds ``batch_seconds`` is a batch of its
own (the GPU presets' long runs: one per job, as before); the others are dealt into
batches of about equal estimated time, each about ``batch_seconds`` at most, and, on one
machine, at least as many as it has cores, so that batching never costs parallelism (on
a cluster, where each job costs a scheduler round trip, ``batch_seconds`` alone
decides). Equal runs are dealt round-robin, so every batch holds its share of each loss
(whose real costs differ more than the estimates say). ``batch_seconds = 0`` gives one
run per job.

A batch is named after its first run and its size (``ce_R1_p0_s0+5``: six runs; a single
run's batch is its run id), so a changed composition is a new job, never a reused one.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from protolib import resources
from protolib.results.contract import CONFIG, SUMMARY
from protolib.results.manifest import run_damage
from protolib.train.config import RunConfig

#: the default ``batch_seconds``: estimated training seconds of one train job (15 min)
BATCH_SECONDS = 900.0


@dataclass(frozen=True)
class Batch:
    """One train job: ``runs`` (run ids, in training order) of one experiment."""

    name: str
    runs: tuple[str, ...]
    seconds: float  # estimated training time, start-up excluded


def _resource_key(run: Mapping[str, Any]) -> tuple[Any, ...]:
    return (resources.gpus(run), resources.partition(run), resources.gpu_model(run))


def _assign(seconds: list[float], parts: int) -> list[list[int]]:
    """Deal runs (indices) to ``parts`` batches, each to the batch with the least estimated
    time so far, longest first (ties in plan order: equal runs are dealt round-robin,
    so that every batch gets its share of each loss and seed); each batch keeps plan order.
    """
    load = [0.0] * parts
    chunks: list[list[int]] = [[] for _ in range(parts)]
    for index in sorted(range(len(seconds)), key=lambda i: -seconds[i]):
        target = min(range(parts), key=lambda b: (load[b], b))
        chunks[target].append(index)
        load[target] += seconds[index]
    return [sorted(chunk) for chunk in chunks if chunk]


def _name(ids: tuple[str, ...]) -> str:
    return ids[0] if len(ids) == 1 else f"{ids[0]}+{len(ids) - 1}"


def plan_batches(
    runs: Mapping[str, Mapping[str, Any]], *, batch_seconds: float, slots: int = 1
) -> dict[str, Batch]:
    """Batches of one experiment's ``runs`` (``{run_id: run config}``), by name."""
    groups: dict[tuple[Any, ...], list[str]] = {}
    for run_id, run in runs.items():
        groups.setdefault(_resource_key(run), []).append(run_id)
    batches: list[Batch] = []
    for ids in groups.values():
        seconds = [resources.training_seconds(runs[r]) for r in ids]
        short = [i for i, s in enumerate(seconds) if s <= batch_seconds]
        for i, s in enumerate(seconds):
            if s > batch_seconds:
                batches.append(Batch(ids[i], (ids[i],), s))
        if not short:
            continue
        total = sum(seconds[i] for i in short)
        parts = max(math.ceil(total / batch_seconds), min(len(short), max(1, slots)))
        chunks = _assign([seconds[i] for i in short], parts)
        for chunk in chunks:
            members = tuple(ids[short[i]] for i in chunk)
            batches.append(Batch(_name(members), members, sum(seconds[short[i]] for i in chunk)))
    order = {run_id: i for i, run_id in enumerate(runs)}
    return {b.name: b for b in sorted(batches, key=lambda b: order[b.runs[0]])}


def stale_reason(run_dir: str, config: Mapping[str, Any]) -> str | None:
    """Why the finished run in ``run_dir`` cannot stand for ``config``, or ``None``.

    It cannot when its files do not match its manifest
    (:func:`protolib.results.manifest.run_damage`) or when its ``config.json`` is another
    config than ``config`` (the experiment was edited; one file read per finished run); a
    key the ``config.json`` lacks (added to the run config since) counts at its default.
    An unfinished run (no ``summary.json``) is not stale: its batch trains or resumes it.
    """
    why = run_damage(run_dir)
    if why is not None or not os.path.exists(os.path.join(run_dir, SUMMARY)):
        return why
    path = os.path.join(run_dir, CONFIG)
    try:
        with open(path, "rb") as handle:
            trained = json.loads(handle.read())
    except (OSError, ValueError) as error:
        return f"{path} cannot be read ({error})"
    if not isinstance(trained, dict):
        return f"{path} does not hold a run config (a JSON object)"
    # a run key added since the run trained counts at its default, which reproduces the
    # old behaviour (protolib.train.checkpoint.with_defaults, the rule of every new key;
    # written out here, so that planning never imports torch)
    trained = json.loads(json.dumps({**RunConfig().to_dict(), **trained}))
    # the planned runs were validated when planned: only their full form is needed here
    planned = json.loads(json.dumps(RunConfig.unchecked(dict(config)).to_dict()))
    if trained != planned:
        changed = sorted(k for k in set(trained) | set(planned) if trained.get(k) != planned.get(k))
        return f"{path} holds another config than the experiment's ({', '.join(changed)} differ)"
    return None
