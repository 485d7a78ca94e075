"""One training run, end to end: ``train_run(config, out_dir)``.

Everything is validated and built before anything is written
(:mod:`protolib.train.build`); the loop (:mod:`protolib.train.loop`) then trains, and the
run directory receives (each file written atomically; :mod:`protolib.train.outputs`)::

    config.json        the resolved run config
    data.parquet       the training points used: split index, original and training label
    metrics.parquet    long format, one row per step × split × metric (results.schema)
    geometry.parquet   final class-mean Gram, target Gram, prototype / classifier Gram
    gamma.parquet      histograms of the final γ distributions (MATH.md §3)
    checkpoint.pt      the final state (model, optimiser, loader; weights_only-loadable)
    summary.json       final figures; written last, so its presence marks a finished run

While training, ``resume.pt`` holds the periodic state; it is removed at the end. It is
deliberately not a declared output of the workflow's train rule, so that a workflow
manager's clean-up of an interrupted job keeps it. Re-running the same command on the
same directory resumes from ``resume.pt`` (the
result is bit-identical on the CPU to an uninterrupted run) or, when ``summary.json``
exists, returns the finished summary without work. SIGTERM or Ctrl-C saves a
checkpoint and raises :class:`RunInterrupted`. One process owns a run directory at a
time (:mod:`protolib.train.lock`); a second one is refused at once.

Started by ``torchrun`` on several processes (:mod:`protolib.train.distributed`), the
processes train the one run together, with the results of one process to float32
round-off: rank 0 holds the lock and writes every file, the others write nothing; the
checkpoint holds global state, so a run resumes on any number of processes.
"""

from __future__ import annotations

import io
import json
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch

from protolib.io import write_json
from protolib.results.contract import CONFIG, SUMMARY
from protolib.train.build import Prepared, prepare, resolve_device
from protolib.train.checkpoint import (
    CHECKPOINT,
    CHECKPOINT_FORMAT,
    CHECKPOINT_KEYS,
    RESUME,
    load_resume,
    with_defaults,
)
from protolib.train.config import ConfigError, RunConfig
from protolib.train.distributed import Launch, ProcessGroup, launch_from_environment
from protolib.train.lock import RunDirectoryInUse, RunDirectoryLock
from protolib.train.loop import DIVERGENCE_CHECK_EVERY, Loop, RunInterrupted
from protolib.train.outputs import GAMMA_BINS


def train_run(
    config: RunConfig | dict[str, Any] | str | Path,
    out_dir: str | Path,
    *,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Train one run into ``out_dir`` and return its summary (see the module docstring).

    Raises :class:`ConfigError` for any invalid input (config, ``out_dir``, a
    ``resume.pt`` that is not this run's) before writing anything,
    :class:`~protolib.train.lock.RunDirectoryInUse` when another process owns
    ``out_dir``, ``OSError`` when the outputs cannot be written, and
    :class:`RunInterrupted` after SIGTERM or Ctrl-C.
    """
    if isinstance(config, str | Path):
        config = RunConfig.from_file(config)
    elif isinstance(config, dict):
        config = RunConfig.from_dict(config)
    else:
        config.validate()
    out = Path(out_dir)
    _check_out(out)
    launch = launch_from_environment()
    if launch is not None:
        return _train_processes(config, out, launch, progress)
    # a new run directory: everything is built before it exists
    prep = None if out.is_dir() else prepare(config)
    with RunDirectoryLock(out):
        config_dict = config.to_dict()
        if (out / SUMMARY).exists():
            return _finished_summary(out, config_dict)
        state = load_resume(out / RESUME, config_dict)
        loop = Loop(prep or prepare(config), out, progress)  # raises before any write
        if state is not None:
            loop.restore(state)
        write_json(out / CONFIG, config_dict)
        return loop.run()


def _train_processes(
    config: RunConfig, out: Path, launch: Launch, progress: bool | None
) -> dict[str, Any]:
    """One run on several processes (MATH.md §1.10): each builds everything (refusing
    before any work); then rank 0 alone owns ``out`` (lock, finished summary, resume
    state, every file) and tells the others what it found."""
    prep = prepare(config, launch)  # the same refusal on every process, before any work
    config_dict = config.to_dict()
    with ProcessGroup(launch, prep.device) as group, ExitStack() as owner:
        found: dict[str, Any] = {}
        resume, refusal = None, None
        if group.main:
            try:
                found, resume = _open_run_directory(owner, out, config_dict)
            except (ConfigError, RunDirectoryInUse, OSError) as error:
                found, refusal = {"refused": str(error)}, error
        found = group.broadcast_json(found)
        if refusal is not None:
            raise refusal
        if "refused" in found:  # rank 0 says why; the others end with the same status
            raise ConfigError(found["refused"])
        if "finished" in found:
            return found["finished"]
        data = group.broadcast_bytes(resume)
        loop = Loop(prep, out, progress, group)
        if data:
            loop.restore(torch.load(io.BytesIO(data), map_location="cpu", weights_only=True))
        if group.main:
            write_json(out / CONFIG, config_dict)
        return loop.run()


def _open_run_directory(
    owner: ExitStack, out: Path, config_dict: dict[str, Any]
) -> tuple[dict[str, Any], bytes | None]:
    """Rank 0: lock ``out`` (held until ``owner`` closes) and say what it holds:
    ``{"finished": summary}``, or ``{}`` and the bytes of a checked ``resume.pt`` (None:
    a new run). Raises what :func:`train_run` raises for a run directory it refuses."""
    owner.enter_context(RunDirectoryLock(out))
    if (out / SUMMARY).exists():
        return {"finished": _finished_summary(out, config_dict)}, None
    if load_resume(out / RESUME, config_dict) is None:
        return {}, None
    return {}, (out / RESUME).read_bytes()


def _check_out(out: Path) -> None:
    """Refuse an ``out`` that is, or lies under, something other than a directory."""
    for path in (out, *out.parents):
        if path.exists():
            if not path.is_dir():
                what = "is" if path == out else f"lies under {path}, which is"
                raise ConfigError(
                    f"--out {out} {what} an existing file, not a directory; give a directory path"
                )
            return


def _finished_summary(out: Path, config_dict: dict[str, Any]) -> dict[str, Any]:
    """The summary of the finished run in ``out``, if it is this config's run."""
    saved = _read_json(out / CONFIG)
    if not isinstance(saved, dict) or with_defaults(saved) != config_dict:
        raise ConfigError(f"{out} already holds a different run; use another --out or delete it")
    summary = _read_json(out / SUMMARY)
    if not isinstance(summary, dict):
        raise ConfigError(
            f"{out / SUMMARY} is not a valid summary; delete it to run this run again"
        )
    return summary


def _read_json(path: Path) -> Any:
    """The JSON in ``path``; None when it is missing or not valid JSON."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


__all__ = [
    "CHECKPOINT",
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_KEYS",
    "DIVERGENCE_CHECK_EVERY",
    "GAMMA_BINS",
    "RESUME",
    "SUMMARY",
    "Prepared",
    "RunInterrupted",
    "prepare",
    "resolve_device",
    "train_run",
]
