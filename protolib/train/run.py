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
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from protolib.io import write_json
from protolib.results.contract import CONFIG, SUMMARY
from protolib.train.build import Prepared, prepare, resolve_device
from protolib.train.checkpoint import (
    CHECKPOINT,
    CHECKPOINT_FORMAT,
    CHECKPOINT_KEYS,
    RESUME,
    load_resume,
)
from protolib.train.config import ConfigError, RunConfig
from protolib.train.lock import RunDirectoryLock
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
    if _read_json(out / CONFIG) != config_dict:
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
